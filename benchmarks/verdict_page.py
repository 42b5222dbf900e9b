def render(document):
    return "stub"

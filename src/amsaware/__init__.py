"""amsaware: signal/background classifiers trained for discovery significance (AMS)."""

__version__ = "0.1.0"


def _register_resolvers() -> None:
    # conf/hydra/default.yaml names run folders through `amsaware.tags`; any process that
    # composes the project's configs imports this package first.
    from amsaware.cli import register_resolvers

    register_resolvers()


_register_resolvers()

"""amsaware: signal/background classifiers trained for discovery significance (AMS)."""

__version__ = "0.1.0"

"""Data: formats, synthetic generator, download, preprocessing and the LightningDataModule."""

from amsaware.data.schema import B_TOT, FEATURES, S_TOT, Dataset, EventTable

__all__ = ["B_TOT", "FEATURES", "S_TOT", "Dataset", "EventTable"]

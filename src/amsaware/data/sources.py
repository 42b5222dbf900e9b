"""Data sources selected by `data=...`: each returns a `Dataset` of training and test events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from amsaware.data import synthetic as synthetic_data
from amsaware.data.download import OPENDATA_SHA1, OPENDATA_URL, fetch_opendata
from amsaware.data.formats import read_cern, read_kaggle_test, read_kaggle_train
from amsaware.data.samples import load_samples
from amsaware.data.schema import Dataset


def synthetic(
    n_train: int = 250_000, n_test: int = 550_000, generator: str = "copula", seed: int = 0
) -> Dataset:
    """Embedded synthetic events with labelled test events split like the leaderboard."""
    return synthetic_data.make_dataset(n_train, n_test, generator, seed)


def kaggle(train_path: str | Path, test_path: str | Path | None = None) -> Dataset:
    """Kaggle's training.csv (Weight, Label) and, optionally, test.csv (unlabelled)."""
    train = read_kaggle_train(train_path)
    test = read_kaggle_test(test_path) if test_path else None
    return Dataset(train=train, test=test)


def opendata(
    path: str | Path,
    download: bool = True,
    url: str = OPENDATA_URL,
    sha1: str = OPENDATA_SHA1,
    limit: int | None = None,
) -> Dataset:
    """The CERN Open Data file: train on KaggleSet t, score b (public) and v (private).

    Weights are KaggleWeight, which sums to the full totals within each KaggleSet. Rows of the
    unused set u are dropped. A file with only t rows trains and cross-validates, with no test.
    `limit` (`data.limit`) keeps the file's first `limit` events, so a small run is reproducible
    from the public file alone: its first 12,000 events are all of set t.
    """
    check_limit(limit)
    path = Path(path)
    if download:
        fetch_opendata(path, url=url, sha1=sha1)
    table = read_cern(path, weight_column="KaggleWeight", limit=limit)
    if table.kaggle_set is None:
        raise ValueError(f"{path}: a CERN Open Data file needs a KaggleSet column")
    train = table.subset(np.flatnonzero(table.kaggle_set == "t"))
    test_rows = np.flatnonzero(np.isin(table.kaggle_set, ["b", "v"]))
    test = table.subset(test_rows) if len(test_rows) else None
    return Dataset(train=train, test=test)


def check_limit(limit: object) -> None:
    """Refuse a `data.limit` that is not a positive integer (or null), before any download."""
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1:
        raise ValueError(
            f"data.limit must be a positive integer number of events (or null for the whole "
            f"file), got {limit!r}"
        )


def samples(
    signal: Mapping[str, Any],
    background: Mapping[str, Any],
    features: Sequence[str],
    **options: Any,
) -> Dataset:
    """A physicist's samples (ROOT, Parquet, CSV): labels from the sample, totals from weights.

    The options (tree, placeholder, test, test_fraction, seed, n_train, n_test) are those of
    `amsaware.data.samples.load_samples`; conf/data/samples.yaml documents each.
    """
    return load_samples(signal, background, features, **options)

"""Data sources selected by `data=...`: each returns a `Dataset` of training and test events.

`SOURCES` is the allowlist a run folder's data config is reloaded through (explain.py, and
the source's name for predict.py and export.py): a run folder is data, so its `data` section
is checked key by key and value by value (`source_options`) and never instantiated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from amsaware.data import synthetic as synthetic_data
from amsaware.data.download import OPENDATA_SHA1, OPENDATA_URL, fetch_opendata
from amsaware.data.formats import DataFormatError, read_cern, read_kaggle_test, read_kaggle_train
from amsaware.data.samples import load_samples
from amsaware.data.schema import Dataset, EventTable


def synthetic(
    n_train: int = 250_000,
    n_test: int = 550_000,
    generator: str = synthetic_data.DEFAULT_GENERATOR,
    seed: int = 0,
) -> Dataset:
    """Embedded synthetic events with labelled test events split like the leaderboard."""
    return synthetic_data.make_dataset(n_train, n_test, generator, seed)


def kaggle(
    train_path: str | Path,
    test_path: str | Path | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
) -> Dataset:
    """Kaggle's training.csv (Weight, Label) and, optionally, test.csv (unlabelled);
    `n_train`/`n_test` keep each file's first events (`first_events`)."""
    train = first_events(read_kaggle_train(train_path), n_train, "n_train")
    test = read_kaggle_test(test_path) if test_path else None
    test = None if test is None else first_events(test, n_test, "n_test")
    return Dataset(train=train, test=test)


def first_events(table: EventTable, n: int | None, key: str) -> EventTable:
    """The first `n` events of a file's table (all of them for null or more than it has).

    Every source takes `n_train`/`n_test` (the synthetic one generates that many, samples keeps
    a stratified subset), so that a small run (`experiment=smoke`) works with any `data=`. A
    file's first events keep a small run reproducible from the file alone; their weights are
    the file's, so the totals shrink with the subset.
    """
    if n is None:
        return table
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise DataFormatError(f"data.{key} is {n!r}; expected a number of events >= 1 (or null)")
    return table if n >= len(table) else table.subset(np.arange(n))


def opendata(
    path: str | Path,
    download: bool = True,
    url: str = OPENDATA_URL,
    sha1: str = OPENDATA_SHA1,
    limit: int | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
) -> Dataset:
    """The CERN Open Data file: train on KaggleSet t, score b (public) and v (private).

    Weights are KaggleWeight, which sums to the full totals within each KaggleSet. Rows of the
    unused set u are dropped. A file with only t rows trains and cross-validates, with no test.
    `limit` (`data.limit`) keeps the file's first `limit` events, so a small run is reproducible
    from the public file alone: its first 12,000 events are all of set t. `n_train`/`n_test`
    then keep the first events of the training and of the test rows (`first_events`).
    """
    check_limit(limit)
    path = Path(path)
    if path.is_dir():
        raise DataFormatError(
            f"data.path={path} is a directory; expected the CERN Open Data file itself "
            "(atlas-higgs-challenge-2014-v2.csv.gz)."
        )
    if download:
        fetch_opendata(path, url=url, sha1=sha1)
    table = read_cern(path, weight_column="KaggleWeight", limit=limit)
    if table.kaggle_set is None:
        raise ValueError(f"{path}: a CERN Open Data file needs a KaggleSet column")
    training = table.kaggle_set == "t"
    if not training.any():
        found = sorted(set(table.kaggle_set.tolist()))
        raise DataFormatError(
            f"{path}: column 'KaggleSet': no 't' (training) rows among its {len(table)} rows "
            f"(it has {found}); data=opendata trains on the t rows and scores b and v."
        )
    train = first_events(table.subset(np.flatnonzero(training)), n_train, "n_train")
    test_rows = np.flatnonzero(np.isin(table.kaggle_set, ["b", "v"]))
    test = first_events(table.subset(test_rows), n_test, "n_test") if len(test_rows) else None
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


#: The project's own sources, by the name a run's `data._target_` gives them.
SOURCES: dict[str, Callable[..., Dataset]] = {
    f"amsaware.data.sources.{f.__name__}": f for f in (synthetic, kaggle, opendata, samples)
}

_Type = type | tuple[type, ...]
_NUMBER = (int, float)
_PATHS = (str, list)  # one path or glob, or a list of them


def _is(value: Any, expected: _Type) -> bool:
    """isinstance, except that a bool is no number (YAML's true is not 1)."""
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


#: Per source, its options and their types (the function's own checks come on top).
_OPTIONS: dict[str, dict[str, _Type]] = {
    "synthetic": {"n_train": int, "n_test": int, "generator": str, "seed": int},
    "kaggle": {
        "train_path": str,
        "test_path": (str, type(None)),
        "n_train": (int, type(None)),
        "n_test": (int, type(None)),
    },
    "opendata": {
        "path": str,
        "download": bool,
        "url": str,
        "sha1": str,
        "limit": (int, type(None)),
        "n_train": (int, type(None)),
        "n_test": (int, type(None)),
    },
    "samples": {
        "signal": dict,
        "background": dict,
        "features": list,
        "tree": (str, type(None)),
        "placeholder": (int, float, dict, type(None)),
        "test": (dict, type(None)),
        "test_fraction": _NUMBER,
        "seed": int,
        "n_train": (int, type(None)),
        "n_test": (int, type(None)),
    },
}
_SAMPLE_OPTIONS: dict[str, _Type] = {
    "files": _PATHS,
    "tree": (str, type(None)),
    "weight": (str, int, float),
    "scale": (str, int, float),
}


def source_options(data: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """A run's `data` section as (source name, checked options), or an error naming the key.

    Only the sources of `SOURCES`, only their options, only plain values of the documented
    types: nothing in it can name a function to call. `batch_size` (training's) is dropped;
    `opendata`'s download address and hash must be the CERN record's.
    """
    if not isinstance(data, Mapping):
        raise DataFormatError(f"{where}: data is {data!r}; expected a data source section")
    target = data.get("_target_")
    if target not in SOURCES:
        raise DataFormatError(
            f"{where}: data._target_ is {target!r}; a run folder's data is reloaded only "
            f"through the project's sources {sorted(SOURCES)}"
        )
    name = target.rsplit(".", 1)[-1]
    allowed = _OPTIONS[name]
    options = {k: v for k, v in data.items() if k not in ("_target_", "batch_size")}
    for key, value in options.items():
        if key not in allowed:
            raise DataFormatError(
                f"{where}: data.{key} is not an option of data source {name!r} "
                f"(it has {sorted(allowed)})"
            )
        if not _is(value, allowed[key]):
            raise DataFormatError(
                f"{where}: data.{key} is {value!r}; expected {_names(allowed[key])}"
            )
    for key in ("url", "sha1"):
        default = {"url": OPENDATA_URL, "sha1": OPENDATA_SHA1}[key]
        if name == "opendata" and options.get(key, default) != default:
            raise DataFormatError(
                f"{where}: data.{key} is {options[key]!r}; a run folder may only name the CERN "
                f"record's {default}"
            )
    if name == "samples":
        _check_samples(options, where)
    return target, options


def _check_samples(options: dict[str, Any], where: str) -> None:
    features = options.get("features", [])
    if not all(isinstance(f, str) for f in features):
        raise DataFormatError(f"{where}: data.features is {features!r}; expected branch names")
    placeholder = options.get("placeholder")
    if isinstance(placeholder, dict):
        for key, value in placeholder.items():
            if not isinstance(key, str) or not _is(value, (int, float, type(None))):
                raise DataFormatError(
                    f"{where}: data.placeholder.{key} is {value!r}; expected a number or null"
                )
    for group in ("signal", "background", "test"):
        for sample, config in (options.get(group) or {}).items():
            at = f"data.{group}.{sample}"
            if _is(config, _PATHS):
                config = {"files": config}
            if not isinstance(config, dict):
                raise DataFormatError(f"{where}: {at} is {config!r}; expected files or a section")
            for key, value in config.items():
                if key not in _SAMPLE_OPTIONS or not _is(value, _SAMPLE_OPTIONS[key]):
                    raise DataFormatError(
                        f"{where}: {at}.{key} is {value!r}; a sample has files (paths), tree, "
                        "weight and scale (arithmetic text or numbers)"
                    )
                listed = value if key == "files" and isinstance(value, list) else []
                if not all(isinstance(f, str) for f in listed):
                    raise DataFormatError(f"{where}: {at}.files is {value!r}; expected paths")


def _names(expected: _Type) -> str:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    words = {
        int: "an integer",
        float: "a number",
        str: "text",
        bool: "true or false",
        dict: "a section",
        list: "a list",
        type(None): "null",
    }
    return " or ".join(dict.fromkeys(words[k] for k in kinds))


def load_source(target: str, options: Mapping[str, Any]) -> Dataset:
    """The data set of a source of `SOURCES` with options checked by `source_options`."""
    return SOURCES[target](**options)

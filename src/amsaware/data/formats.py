"""Readers for the challenge's three file formats, validated before any training starts.

Every reader returns an `EventTable`; every problem with a file raises one `DataFormatError`
that names the file, the column and the first offending row, so a bad input fails in seconds
with a message a user can act on instead of as a NaN loss an hour into training.

Rows are counted from 1 over the data rows; "line" is the physical line in the file (the
header is line 1). Blank lines are kept as rows so that both numbers stay exact.
"""

from __future__ import annotations

import csv
import gzip
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from amsaware.data.schema import FEATURES, MISSING, EventTable
from amsaware.data.systematics import KAGGLE_TRAIN_BACKGROUND_SCALE, processes_from_weights

__all__ = [
    "KAGGLE_SETS",
    "DataFormatError",
    "check_trainable",
    "read_cern",
    "read_events",
    "read_kaggle_test",
    "read_kaggle_train",
]

#: KaggleSet letters of the CERN file: training, public and private leaderboard, unused.
KAGGLE_SETS: tuple[str, ...] = ("t", "b", "v", "u")
LABELS: tuple[str, ...] = ("s", "b")
JET_NUMS: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)
WEIGHT_COLUMNS: tuple[str, ...] = ("Weight", "KaggleWeight")

_DTYPES: dict[str, str] = {
    "EventId": "int64",
    **dict.fromkeys(FEATURES, "float32"),
    "Weight": "float64",
    "KaggleWeight": "float64",
    "Label": "category",
    "KaggleSet": "category",
}
_EXPECTED: dict[str, str] = {
    "EventId": "an integer event number",
    **dict.fromkeys(FEATURES, "a number (-999 marks a value undefined for the event)"),
    "Weight": "a finite weight >= 0",
    "KaggleWeight": "a finite weight >= 0",
}
_INTEGER = r"\s*[+-]?\d{1,18}(?:\.0*)?\s*"  # what the int64 parser accepts, without overflow
_FIELD_COUNT = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_CHUNK_ROWS = 65_536
_MAX_HEADER_BYTES = 1 << 20  # the real header is ~700 bytes; never slurp a binary file
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


class DataFormatError(ValueError):
    """A data file that cannot be used as it is; the message says where and what was expected."""


@dataclass(frozen=True)
class _Format:
    name: str
    reader: str
    columns: tuple[str, ...]

    @property
    def dtypes(self) -> dict[str, str]:
        return {c: _DTYPES[c] for c in self.columns}


KAGGLE_TRAIN = _Format(
    "Kaggle training file (training.csv)",
    "read_kaggle_train / data=kaggle data.train_path=...",
    ("EventId", *FEATURES, "Weight", "Label"),
)
KAGGLE_TEST = _Format(
    "Kaggle test file (test.csv)",
    "read_kaggle_test / data=kaggle data.test_path=...",
    ("EventId", *FEATURES),
)
CERN = _Format(
    "CERN Open Data file (atlas-higgs-challenge-2014-v2.csv.gz)",
    "read_cern / data=opendata data.path=...",
    ("EventId", *FEATURES, "Weight", "Label", "KaggleSet", "KaggleWeight"),
)
_FORMATS = (KAGGLE_TRAIN, KAGGLE_TEST, CERN)


def read_kaggle_train(path: str | Path) -> EventTable:
    """Read a Kaggle `training.csv` (EventId, 30 features, Weight, Label), plain or gzipped."""
    df = _read_frame(path, KAGGLE_TRAIN)
    return _to_table(df, path, weight_column="Weight")


def read_kaggle_test(path: str | Path) -> EventTable:
    """Read a Kaggle `test.csv` (EventId and 30 features; no labels or weights)."""
    df = _read_frame(path, KAGGLE_TEST)
    return _to_table(df, path, weight_column=None)


def read_cern(
    path: str | Path, weight_column: str = "KaggleWeight", limit: int | None = None
) -> EventTable:
    """Read the CERN Open Data file (all 818,238 events, with KaggleSet and both weights).

    `weight_column` picks the weight the table carries: `KaggleWeight` (default) sums to the
    full-data totals within each KaggleSet, as the Kaggle files did; `Weight` sums to them over
    the whole file. `limit` reads only the file's first `limit` events (None: all).
    """
    if weight_column not in WEIGHT_COLUMNS:
        raise ValueError(f"weight_column must be one of {WEIGHT_COLUMNS}, got {weight_column!r}")
    df = _read_frame(path, CERN, nrows=limit)
    return _to_table(df, path, weight_column=weight_column)


def read_events(path: str | Path) -> EventTable:
    """Read a file of any of the three formats, recognised by its header's columns.

    For scoring new events: labels, weights and KaggleSet are kept where the file has them
    (the CERN file's weight is KaggleWeight, as `data=opendata` trains with).
    """
    path = Path(path)
    if not path.is_file():
        what = "file not found" if not path.exists() else "not a file"
        raise DataFormatError(f"{path}: {what} (expected a CSV file of events).")
    compression = "gzip" if _is_gzip(path) else None
    header = set(_read_header(path, compression, KAGGLE_TEST))
    for fmt, read in ((KAGGLE_TEST, read_kaggle_test), (KAGGLE_TRAIN, read_kaggle_train)):
        if header == set(fmt.columns):
            return read(path)
    if header == set(CERN.columns):
        return read_cern(path)
    closest = min(_FORMATS, key=lambda fmt: len(header.symmetric_difference(fmt.columns)))
    _check_columns(path, sorted(header), closest)  # raises, naming what is missing or extra
    raise AssertionError("unreachable: the header matched no format yet lacks nothing")


def check_trainable(table: EventTable, n_folds: int) -> None:
    """Fail early where stratified `n_folds`-fold CV cannot run on `table`.

    StratifiedKFold needs at least `n_folds` events of each class, and AMS rescaling needs a
    positive total weight per class; both are cheaper to report now than mid-run.
    """
    if table.label is None or table.weight is None:
        raise DataFormatError(
            f"{table.source}: has no Label/Weight columns; training needs labelled, weighted "
            "events (a Kaggle training file or the CERN Open Data file)."
        )
    need = max(n_folds, 1)
    for value, name in ((1, "signal (Label 's')"), (0, "background (Label 'b')")):
        in_class = table.label == value
        count = int(np.count_nonzero(in_class))
        if count == 0:
            raise DataFormatError(
                f"{table.source}: column 'Label': no {name} events in {len(table)} rows; "
                "expected both classes."
            )
        if count < need:
            raise DataFormatError(
                f"{table.source}: column 'Label': only {count} {name} events; "
                f"{n_folds}-fold stratified CV needs at least {need} of each class."
            )
        if not table.weight[in_class].sum() > 0:
            raise DataFormatError(
                f"{table.source}: column 'Weight': the {name} events' weights sum to 0; "
                "expected a positive total per class (AMS rescales each class to its total)."
            )
        _check_weight_shares(table, in_class, name)
    _check_feature_magnitudes(table)


#: An event may carry at most this share of its class's total weight (in a class of at least
#: `MIN_EVENTS_FOR_SHARE` events: in a handful of events one may well carry half) ...
MAX_WEIGHT_SHARE = 0.5
MIN_EVENTS_FOR_SHARE = 10
#: Two events may carry at most this share of their class's total weight together (in a
#: class of at least `MIN_EVENTS_FOR_PAIR_SHARE` events), so that two mistyped weights cannot
#: split a class between them under the single-event bound. On the 12,000 real events of the
#: CERN file's training set, the heaviest background event carries 0.038% of the background
#: weight and the heaviest pair 0.077% (signal: 0.055%, 0.11%), 6.1 times the mean weight
#: for the pair; 10% leaves room for samples with a far wider spread of weights (such a pair
#: is 3% of a class of 200 events).
MAX_PAIR_SHARE = 0.1
MIN_EVENTS_FOR_PAIR_SHARE = 200
#: ... and at most this many times its class's median weight.
MAX_WEIGHT_RATIO = 1e6
#: |value| beyond which a feature cannot be standardised in float32 (the model's precision):
#: its square, which the variance sums, overflows float32 (sqrt of 3.4e38).
MAX_FEATURE_MAGNITUDE = float(np.sqrt(np.finfo(np.float32).max))
#: A value this many interquartile ranges from its feature's median sets the scale alone.
MAX_FEATURE_SPREAD = 1e6


def _check_weight_shares(table: EventTable, in_class: np.ndarray, name: str) -> None:
    """No event (nor pair of events) may stand for its class alone: a mistyped weight (1e300
    for 1.3) would pass the per-cell checks, then decide every AMS of the run."""
    rows = np.flatnonzero(in_class)
    weight = table.weight[rows]
    total = float(weight.sum())
    heaviest = int(np.argmax(weight))
    top = float(weight[heaviest])
    where = f"{table.source}: {table.where(int(rows[heaviest]))}"
    if not np.isfinite(total):
        raise DataFormatError(
            f"{where}: the {name} events' weights sum to {total} (the largest is {top:g}); "
            "expected finite weights of the scale of the others."
        )
    if len(rows) >= MIN_EVENTS_FOR_SHARE and top > MAX_WEIGHT_SHARE * total * (1 + 1e-12):
        raise DataFormatError(
            f"{where}: weight {top:g} is {top / total:.1%} of the {name} events' total "
            f"{total:g}; expected no event to carry more than half of its class's weight "
            "(a unit or typing error?)."
        )
    positive = weight[weight > 0]
    median = float(np.median(positive)) if len(positive) else 0.0
    if median > 0 and top > MAX_WEIGHT_RATIO * median:
        raise DataFormatError(
            f"{where}: weight {top:g} is {top / median:.3g} times the median {name} weight "
            f"{median:g}; expected at most {MAX_WEIGHT_RATIO:g} times (a unit or typing error?)."
        )
    if len(rows) >= MIN_EVENTS_FOR_PAIR_SHARE:
        first, second = np.argpartition(weight, -2)[-2:][::-1]  # the two heaviest
        pair = float(weight[first] + weight[second])
        if pair > MAX_PAIR_SHARE * total * (1 + 1e-12):
            raise DataFormatError(
                f"{table.source}: {table.where(int(rows[first]))} and "
                f"{table.where(int(rows[second]))}: weights {weight[first]:g} and "
                f"{weight[second]:g} are {pair / total:.1%} of the {name} events' total "
                f"{total:g}; expected no two events to carry more than {MAX_PAIR_SHARE:.0%} "
                f"of their class's weight in a class of {MIN_EVENTS_FOR_PAIR_SHARE} or more "
                "(a unit or typing error?)."
            )


def _check_feature_magnitudes(table: EventTable) -> None:
    """Error for a value that cannot be standardised in float32; warning for one that would
    set its feature's scale alone and flatten every other event's value (a 1e30 in a feature
    of O(100) makes the fitted scale ~1e28)."""
    features = table.features
    magnitude = np.abs(features)
    largest = np.nanmax(magnitude, axis=0, initial=0.0)
    for j in np.flatnonzero(largest > MAX_FEATURE_MAGNITUDE):
        k = int(np.nanargmax(magnitude[:, j]))
        raise DataFormatError(
            f"{table.source}: column {table.feature_names[j]!r}, {table.where(k)}: value "
            f"{features[k, j]:g} is beyond {MAX_FEATURE_MAGNITUDE:.3g}, where standard scaling "
            "in float32 overflows; expected a physical value (a unit or typing error?)."
        )
    for j, name in enumerate(table.feature_names):
        column = features[:, j]
        defined = column[~np.isnan(column)]
        if len(defined) < 4:
            continue
        low, median, high = np.percentile(defined, [25, 50, 75])
        spread = float(high - low)
        distance = np.abs(column - median)
        if spread > 0 and np.nanmax(distance) > MAX_FEATURE_SPREAD * spread:
            k = int(np.nanargmax(distance))
            warnings.warn(
                f"{table.source}: column {name!r}, {table.where(k)}: value {column[k]:g} is "
                f"{distance[k] / spread:.3g} interquartile ranges from the median {median:g}; "
                "it alone will set the feature's scale and flatten every other event's value "
                "(a unit or typing error?)",
                stacklevel=3,
            )


# --- reading ---------------------------------------------------------------------------------


def _read_frame(path: str | Path, fmt: _Format, nrows: int | None = None) -> pd.DataFrame:
    """The file (its first `nrows` rows) as a typed frame, or a DataFormatError saying what is
    wrong."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: file not found (expected a {fmt.name}).")
    if not path.is_file():
        raise DataFormatError(f"{path}: not a file (expected a {fmt.name}).")
    try:
        compression = "gzip" if _is_gzip(path) else None
    except PermissionError:
        raise DataFormatError(
            f"{path}: not readable (permission denied); give this user read access to it."
        ) from None
    header = _read_header(path, compression, fmt)
    _check_columns(path, header, fmt)
    options = {
        "compression": compression,
        "encoding": "utf-8-sig",
        "index_col": False,
        "skip_blank_lines": False,
        "keep_default_na": False,
        "na_values": [""],
    }
    try:
        with warnings.catch_warnings():
            # pandas only warns when the first data row has more fields than the header.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, dtype=fmt.dtypes, nrows=nrows, **options)
    except pd.errors.ParserWarning:
        raise DataFormatError(
            f"{path}: row 1 (line 2) has more fields than the header's {len(header)} columns; "
            f"expected one value per column of a {fmt.name}."
        ) from None
    except pd.errors.ParserError as err:
        raise _field_count_error(path, err, fmt) from None
    except _GZIP_ERRORS as err:
        raise DataFormatError(
            f"{path}: the gzip stream is truncated or corrupt ({err}); an incomplete "
            "download? Fetch the file again."
        ) from None
    except UnicodeDecodeError as err:
        raise _locate_undecodable(path, compression, header, err) from None
    except (ValueError, OverflowError) as err:
        raise _locate_unparsable(path, fmt, options, err) from None
    if len(df) == 0:
        raise DataFormatError(f"{path}: has a header but no data rows (expected a {fmt.name}).")
    return df


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open_bytes(path: Path, compression: str | None) -> BinaryIO:
    return gzip.open(path, "rb") if compression == "gzip" else path.open("rb")


def _read_header(path: Path, compression: str | None, fmt: _Format) -> list[str]:
    try:
        with _open_bytes(path, compression) as f:
            first_line = f.readline(_MAX_HEADER_BYTES)
    except _GZIP_ERRORS as err:
        raise DataFormatError(f"{path}: not a readable gzip file ({err}).") from None
    try:
        text = first_line.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataFormatError(
            f"{path}: not a text CSV file (nor gzip-compressed CSV); expected a {fmt.name}."
        ) from None
    header = next(csv.reader([text.rstrip("\r\n")]), [])
    if not header or header == [""]:
        raise DataFormatError(f"{path}: the file is empty (expected a {fmt.name} with a header).")
    return header


def _check_columns(path: Path, header: list[str], fmt: _Format) -> None:
    missing = [c for c in fmt.columns if c not in header]
    extra = [c for c in header if c not in fmt.columns]
    repeated = sorted({c for c in header if header.count(c) > 1})
    if not (missing or extra or repeated):
        return
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    if repeated:
        problems.append(f"repeated columns {repeated}")
    message = (
        f"{path}: {'; '.join(problems)}. Expected the {len(fmt.columns)} columns of a "
        f"{fmt.name}: {', '.join(_abbreviate(fmt.columns))}."
    )
    for other in _FORMATS:
        if other is not fmt and set(header) == set(other.columns):
            message += f" This looks like a {other.name}; read it with {other.reader}."
    raise DataFormatError(message)


def _abbreviate(columns: tuple[str, ...]) -> list[str]:
    """Column list for messages, with the 30 features as one entry."""
    rest = [c for c in columns if c not in FEATURES]
    return [rest[0], f"the {len(FEATURES)} features ({FEATURES[0]} ... {FEATURES[-1]})", *rest[1:]]


def _field_count_error(path: Path, err: Exception, fmt: _Format) -> DataFormatError:
    match = _FIELD_COUNT.search(str(err))
    if match is None:
        return DataFormatError(f"{path}: cannot be parsed as a {fmt.name}: {err}")
    expected, line, saw = (int(g) for g in match.groups())
    return DataFormatError(
        f"{path}: row {line - 1} (line {line}) has {saw} fields; expected {expected}, one per "
        "header column."
    )


def _locate_unparsable(
    path: Path, fmt: _Format, options: dict, cause: Exception
) -> DataFormatError:
    """Find the first cell the typed fast path choked on; runs only after that failed.

    A typed re-read in chunks finds the failing chunk at parsing speed; only that chunk is then
    read as text and checked cell by cell, so a bad value near the end of the 818k-row file
    costs about two fast reads, not a text pass over every row.
    """
    offset = 0
    with pd.read_csv(path, dtype=fmt.dtypes, chunksize=_CHUNK_ROWS, **options) as chunks:
        while True:
            try:
                offset += len(next(chunks))
            except StopIteration:
                break
            except (ValueError, OverflowError):
                found = _first_bad_cell(path, fmt, options, offset)
                if found is not None:
                    return found
                break
    return DataFormatError(f"{path}: cannot be parsed as a {fmt.name}: {cause}")


def _first_bad_cell(path: Path, fmt: _Format, options: dict, offset: int) -> DataFormatError | None:
    """The first empty or unparsable numeric cell in the chunk of rows starting at `offset`."""
    text = pd.read_csv(
        path,
        dtype=str,
        na_filter=False,
        skiprows=range(1, offset + 1),
        nrows=_CHUNK_ROWS,
        **_without(options, "na_values"),
    ).fillna("")  # fields missing from a short row
    first: tuple[int, str] | None = None
    for column in fmt.columns:
        if fmt.dtypes[column] == "int64":
            bad = ~text[column].str.fullmatch(_INTEGER)
        elif fmt.dtypes[column] in ("float32", "float64"):
            bad = pd.to_numeric(text[column], errors="coerce").isna()
        else:
            continue
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            if first is None or row < first[0]:
                first = (row, column)
    if first is None:
        return None
    row, column = first
    if (text.iloc[row] == "").all():
        return DataFormatError(
            f"{path}: row {offset + row + 1} (line {offset + row + 2}) is blank; "
            f"expected one event per line of a {fmt.name}."
        )
    value = text[column].iloc[row]
    problem = "empty value" if not value.strip() else f"non-numeric value {value!r}"
    return _cell_error(path, column, offset + row, problem, _EXPECTED[column])


def _locate_undecodable(
    path: Path, compression: str | None, header: list[str], cause: UnicodeDecodeError
) -> DataFormatError:
    """Name the first field that is not UTF-8 (pandas only gives a buffer position)."""
    with _open_bytes(path, compression) as f:
        for line_number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                fields = line.rstrip(b"\r\n").split(b",")
                k = next(k for k, field in enumerate(fields) if not _is_utf8(field))
                column = header[k] if k < len(header) else f"field {k + 1}"
                return _cell_error(
                    path,
                    column,
                    line_number - 2,
                    f"bytes {fields[k]!r} are not UTF-8 text",
                    "a number or letter in UTF-8 (or ASCII)",
                )
    return DataFormatError(f"{path}: not UTF-8 text ({cause}).")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _without(options: dict, key: str) -> dict:
    return {k: v for k, v in options.items() if k != key}


# --- validation ------------------------------------------------------------------------------


def _to_table(df: pd.DataFrame, path: str | Path, weight_column: str | None) -> EventTable:
    """Validate the typed frame and convert it into an EventTable (features -999 -> NaN)."""
    path = Path(path)
    event_id = df["EventId"].to_numpy(dtype=np.int64)
    _check_unique(path, event_id)

    features = np.empty((len(df), len(FEATURES)), dtype=np.float32)
    for j, name in enumerate(FEATURES):
        features[:, j] = df[name].to_numpy()
    _check_features(path, features)

    label = weight = kaggle_set = None
    if "Label" in df:
        label_text = df["Label"]
        _check_letters(path, "Label", label_text, LABELS, "'s' (signal) or 'b' (background)")
        label = (label_text == "s").to_numpy().astype(np.int8)
    for column in WEIGHT_COLUMNS:
        if column in df:
            _check_weights(path, column, df[column].to_numpy())
    if weight_column is not None:
        weight = df[weight_column].to_numpy(dtype=np.float64)
    if "KaggleSet" in df:
        sets = df["KaggleSet"]
        _check_letters(path, "KaggleSet", sets, KAGGLE_SETS, "one of " + "/".join(KAGGLE_SETS))
        kaggle_set = sets.to_numpy().astype("<U1")

    process = None
    if label is not None and "Weight" in df:
        # the CERN file's Weight is the raw weight; a Kaggle training.csv's is KaggleWeight of t
        scale = 1.0 if "KaggleWeight" in df else KAGGLE_TRAIN_BACKGROUND_SCALE
        process = processes_from_weights(df["Weight"].to_numpy(), label, scale=scale)

    features[features == MISSING] = np.nan
    return EventTable(
        event_id=event_id,
        features=features,
        label=label,
        weight=weight,
        kaggle_set=kaggle_set,
        source=str(path),
        feature_names=FEATURES,
        row=np.arange(len(df)),
        process=process,
    )


def _cell_error(path: Path, column: str, row: int, problem: str, expected: str) -> DataFormatError:
    return DataFormatError(
        f"{path}: column {column!r}, row {row + 1} (line {row + 2}): {problem}; "
        f"expected {expected}."
    )


def _check_unique(path: Path, event_id: np.ndarray) -> None:
    repeated = pd.Series(event_id).duplicated().to_numpy()
    if repeated.any():
        second = int(np.argmax(repeated))
        first = int(np.argmax(event_id == event_id[second]))
        raise DataFormatError(
            f"{path}: column 'EventId': rows {first + 1} (line {first + 2}) and {second + 1} "
            f"(line {second + 2}) both have EventId {event_id[second]}; expected each event once."
        )


def _check_features(path: Path, features: np.ndarray) -> None:
    finite = np.isfinite(features)
    if not finite.all():
        row, j = np.argwhere(~finite)[0]
        value = features[row, j]
        problem = (
            "empty or NaN value"
            if np.isnan(value)
            else f"infinite value {value} (or beyond float32's ±3.4e38)"
        )
        raise _cell_error(path, FEATURES[j], int(row), problem, _EXPECTED[FEATURES[j]])
    j = FEATURES.index("PRI_jet_num")
    bad = ~np.isin(features[:, j], JET_NUMS)
    if bad.any():
        row = int(np.argmax(bad))
        raise _cell_error(
            path, "PRI_jet_num", row, f"value {features[row, j]:g}", "an integer in 0..3"
        )


def _check_letters(
    path: Path, column: str, values: pd.Series, allowed: tuple[str, ...], expected: str
) -> None:
    bad = ~values.isin(allowed).to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        value = values.iloc[row]
        problem = "empty value" if pd.isna(value) else f"value {value!r}"
        raise _cell_error(path, column, row, problem, expected)


def _check_weights(path: Path, column: str, weight: np.ndarray) -> None:
    bad = ~(np.isfinite(weight) & (weight >= 0))
    if bad.any():
        row = int(np.argmax(bad))
        value = weight[row]
        if np.isnan(value):
            problem = "empty or NaN weight"
        elif np.isinf(value):
            problem = f"infinite weight {value}"
        else:
            problem = f"negative weight {value}"
        raise _cell_error(path, column, row, problem, _EXPECTED[column])

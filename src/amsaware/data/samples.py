"""A physicist's own samples: ROOT, Parquet or CSV files per process, labelled by their sample.

Simulated samples carry no label column: an event is signal because it came from a signal
sample. Their weights are products of branches (generator weight, scale factors) times a
per-sample scale (cross-section x luminosity / generated events), and the full-data totals
S_tot and B_tot that AMS rescales to are the sums of those weights per class, not the
challenge's constants.

Everything is checked before training, and every problem raises one `DataFormatError` naming
the sample, the file, the tree or branch and what was expected. Weight expressions are parsed
into a small arithmetic tree (branch names, numbers, + - * / **, parentheses) and evaluated
with numpy: they are never handed to Python's `eval`.
"""

from __future__ import annotations

import ast
import difflib
import glob
import logging
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from amsaware.data.formats import DataFormatError
from amsaware.data.schema import Dataset, EventTable

log = logging.getLogger(__name__)

__all__ = [
    "Sample",
    "WeightExpression",
    "expand_files",
    "file_kind",
    "load_samples",
    "placeholder_values",
    "read_feature_file",
    "read_sample",
]

#: File kinds recognised by their first bytes (else by name, else CSV).
_MAGIC = {b"root": "root", b"PAR1": "parquet"}
_SUFFIXES = {".root": "root", ".parquet": "parquet", ".pq": "parquet"}
_GLOB_CHARS = frozenset("*?[")
_ID_COLUMN = "EventId"
_KIND = {1: "signal", 0: "background", None: "test"}


# --- weight expressions ----------------------------------------------------------------------

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_ALLOWED = "branch names, numbers, + - * / ** and parentheses"


@dataclass(frozen=True)
class WeightExpression:
    """An arithmetic expression over branches, e.g. `genWeight * puWeight * btagSF`.

    Parsed once into Python's AST and checked against a whitelist (names, numbers, arithmetic
    operators), so a config cannot run code; evaluated in float64 with numpy.
    """

    text: str
    tree: ast.expr
    names: tuple[str, ...]

    @classmethod
    def parse(cls, text: str | float | int, where: str) -> WeightExpression:
        """Parse `text`; `where` (e.g. "sample 'ttbar'") prefixes any error."""
        if isinstance(text, bool) or not isinstance(text, str | int | float):
            raise DataFormatError(
                f"{where}: weight {text!r} is not an expression; expected a string of "
                f"{_ALLOWED}, e.g. 'genWeight * puWeight'."
            )
        source = str(text).strip()
        try:
            tree = ast.parse(source, mode="eval").body
        except SyntaxError as error:
            raise DataFormatError(
                f"{where}: weight expression {source!r} is not valid arithmetic "
                f"({error.msg}); expected {_ALLOWED}."
            ) from None
        names: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                if node.id not in names:
                    names.append(node.id)
            elif isinstance(node, ast.Constant):
                if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                    raise _bad_part(where, source, f"the constant {node.value!r}")
            elif isinstance(node, ast.BinOp | ast.UnaryOp):
                op = node.op
                if type(op) not in _BINARY and type(op) not in _UNARY:
                    raise _bad_part(where, source, f"the operator {type(op).__name__}")
            elif not isinstance(node, ast.operator | ast.unaryop | ast.Load):
                raise _bad_part(where, source, ast.unparse(node) if node is not tree else source)
        return cls(source, tree, tuple(names))

    def evaluate(self, columns: Mapping[str, np.ndarray]) -> np.ndarray | float:
        """The expression's value per event (or a number, for an expression without names)."""
        with np.errstate(all="ignore"):  # non-finite results are reported by the caller
            return self._eval(self.tree, columns)

    def _eval(self, node: ast.expr, columns: Mapping[str, np.ndarray]) -> Any:
        if isinstance(node, ast.Constant):
            try:
                return float(node.value)
            except OverflowError:  # an integer literal beyond float64
                return math.inf
        if isinstance(node, ast.Name):
            return np.asarray(columns[node.id], dtype=np.float64)
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, columns))
        if isinstance(node, ast.BinOp):
            left, right = self._eval(node.left, columns), self._eval(node.right, columns)
            if isinstance(left, float) and isinstance(right, float):
                # Numbers only (a scale like 0.05 * 139e3 / 1e6): Python floats, which raise
                # on overflow and division by zero; make that an inf the caller reports.
                try:
                    value = _BINARY[type(node.op)](left, right)
                except (ZeroDivisionError, OverflowError):
                    return math.inf
                return math.nan if isinstance(value, complex) else float(value)  # (-8) ** 0.5
            return _BINARY[type(node.op)](np.float64(left), right)
        raise AssertionError(f"unchecked node {ast.dump(node)}")  # parse() admits no other


def _bad_part(where: str, source: str, part: str) -> DataFormatError:
    return DataFormatError(
        f"{where}: weight expression {source!r} contains {part}, which is not allowed; "
        f"expected only {_ALLOWED}."
    )


# --- files -----------------------------------------------------------------------------------


def expand_files(patterns: str | Sequence[str], where: str) -> list[Path]:
    """The files of a sample: each pattern a path or a glob (sorted), duplicates dropped.

    A path that does not exist and a glob that matches nothing are errors: a typo in a sample
    list would otherwise silently train without that process.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise DataFormatError(f"{where}: no files given; expected files: [path or glob, ...].")
    files: list[Path] = []
    for pattern in patterns:
        pattern = str(Path(str(pattern)).expanduser())
        if _GLOB_CHARS & set(pattern):
            matched = sorted(glob.glob(pattern, recursive=True))
            matched = [m for m in matched if Path(m).is_file()]
            if not matched:
                raise DataFormatError(f"{where}: the pattern {pattern!r} matches no file.")
        else:
            path = Path(pattern)
            if not path.is_file():
                what = "file not found" if not path.exists() else "not a file"
                raise DataFormatError(f"{where}: {path}: {what}.")
            matched = [pattern]
        files += [Path(m) for m in matched if Path(m) not in files]
    return files


def file_kind(path: str | Path) -> str:
    """`root`, `parquet` or `csv`: by the file's first bytes, else by its suffix."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if head in _MAGIC:
        return _MAGIC[head]
    return _SUFFIXES.get(path.suffix.lower(), "csv")


def _open_tree(path: Path, tree: str | None, where: str) -> tuple[Any, str]:
    """The open ROOT file and the name of its TTree (or RNTuple) `tree`.

    With `tree=None`, the file's only tree.
    """
    import uproot

    try:
        file = uproot.open(path)
    except Exception as error:  # uproot raises several kinds for a file that is not ROOT
        raise DataFormatError(f"{where}: {path}: not a readable ROOT file ({error}).") from None
    try:
        return file, _tree_name(file, path, tree, where)
    except DataFormatError:
        file.close()
        raise


def _tree_name(file: Any, path: Path, tree: str | None, where: str) -> str:
    kinds = file.classnames(cycle=False)
    trees = [name for name, kind in kinds.items() if kind in ("TTree", "ROOT::RNTuple")]
    if tree is None:
        if len(trees) != 1:
            raise DataFormatError(
                f"{where}: {path}: holds {len(trees)} trees {trees}; name the one to read "
                "with `tree:` (in the sample or for all samples)."
            )
        tree = trees[0]
    if tree not in kinds:
        raise DataFormatError(
            f"{where}: {path}: no tree {tree!r}; expected one of the file's trees {trees}."
        )
    if tree not in trees:
        raise DataFormatError(
            f"{where}: {path}: {tree!r} is a {kinds[tree]}, not a tree; expected one of {trees}."
        )
    return tree


def _columns_of(path: Path, kind: str, where: str) -> list[str]:
    """The column names of a Parquet or CSV file."""
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ModuleNotFoundError(
                f"{where}: {path} is a Parquet file; reading it needs pyarrow: "
                "pip install 'amsaware[parquet]' (or pip install pyarrow)"
            ) from None
        try:
            return list(pq.read_schema(path).names)
        except Exception as error:
            raise DataFormatError(
                f"{where}: {path}: not a readable Parquet file ({error})."
            ) from None
    try:
        return list(pd.read_csv(path, nrows=0).columns)
    except (ValueError, UnicodeDecodeError, OSError, EOFError) as error:
        raise DataFormatError(f"{where}: {path}: not a readable CSV file ({error}).") from None


def _read_columns(
    path: Path,
    names: Sequence[str],
    tree: str | None,
    where: str,
    optional: Sequence[str] = (),
    used_by: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """The named branches of one file as flat numeric arrays (`optional` ones where present).

    Every missing branch is named at once, with what needs it (`used_by`, default "a feature")
    and the closest names the file has.
    """
    kind = file_kind(path)
    if kind != "root":
        available = _columns_of(path, kind, where)
        wanted = _wanted(path, available, names, optional, where, "", used_by)
        try:
            read = pd.read_parquet if kind == "parquet" else pd.read_csv
            frame = read(path, columns=wanted) if kind == "parquet" else read(path, usecols=wanted)
        except Exception as error:
            raise DataFormatError(f"{where}: {path}: cannot read {wanted}: {error}") from None
        columns = {name: frame[name].to_numpy() for name in wanted}
    else:
        file, tree = _open_tree(path, tree, where)
        try:
            handle = file[tree]
            wanted = _wanted(path, list(handle.keys()), names, optional, where, tree, used_by)
            try:
                columns = handle.arrays(wanted, library="np")
            except Exception as error:
                raise DataFormatError(
                    f"{where}: {path} tree {tree!r}: cannot read {wanted}: {error}"
                ) from None
        finally:
            file.close()
    for name in wanted:
        values = columns[name]
        if values.dtype == object or values.ndim != 1:
            raise DataFormatError(
                f"{where}: {path}: branch {name!r} is not one number per event (it is "
                f"{'jagged' if kind == 'root' else 'non-numeric'}, {values.dtype}); expected a "
                "flat numeric branch (for a jagged one, store e.g. its leading element)."
            )
        if not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
            raise DataFormatError(
                f"{where}: {path}: branch {name!r} has type {values.dtype}; expected numbers."
            )
    return columns


def _wanted(
    path: Path,
    available: list[str],
    names: Sequence[str],
    optional: Sequence[str],
    where: str,
    tree: str,
    used_by: Mapping[str, str] | None = None,
) -> list[str]:
    """`names` plus the `optional` names the file has; an error naming every missing one."""
    missing = [name for name in names if name not in available]
    if missing:
        hints = []
        for name in missing:
            close = difflib.get_close_matches(name, available, n=3)
            role = (used_by or {}).get(name, "a feature")
            hints.append(f"{name!r} ({role}" + (f"; did you mean {close}?)" if close else ")"))
        in_tree = f" tree {tree!r}" if tree else ""
        shown = available if len(available) <= 40 else [*available[:40], "..."]
        raise DataFormatError(
            f"{where}: {path}{in_tree}: no branch {', '.join(hints)}; the file has "
            f"{len(available)} branches: {shown}."
        )
    return list(dict.fromkeys([*names, *(n for n in optional if n in available)]))


# --- features and placeholders ---------------------------------------------------------------


def placeholder_values(
    placeholder: float | Mapping[str, float | None] | None, features: Sequence[str]
) -> np.ndarray:
    """Per feature, the value that marks "undefined for this event" (NaN where none).

    `placeholder` is one number for every feature (the challenge's -999), a mapping
    feature -> number for some of them, or None.
    """
    values = np.full(len(features), np.nan)
    if placeholder is None:
        return values
    if isinstance(placeholder, Mapping):
        unknown = [name for name in placeholder if name not in features]
        if unknown:
            raise DataFormatError(
                f"data.placeholder names {unknown}, which are not among the features "
                f"{list(features)}."
            )
        for j, name in enumerate(features):
            value = placeholder.get(name)
            values[j] = np.nan if value is None else _number(value, f"data.placeholder.{name}")
        return values
    values[:] = _number(placeholder, "data.placeholder")
    return values


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataFormatError(f"{what} is {value!r}; expected a number (or null).")
    return float(value)


def _feature_matrix(
    columns: Mapping[str, np.ndarray],
    features: Sequence[str],
    placeholders: np.ndarray,
    path: Path,
    where: str,
) -> np.ndarray:
    """float32 (n, features): placeholder values and NaN -> NaN; infinities are errors."""
    n = len(next(iter(columns.values()))) if columns else 0
    matrix = np.empty((n, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        raw = columns[name]
        floating = np.issubdtype(raw.dtype, np.floating)
        undefined = np.isnan(raw) if floating else np.zeros(n, dtype=bool)
        if not np.isnan(placeholders[j]):
            # A float branch is compared in its own type (a float32 -99.9 is not the float64
            # -99.9); an integer one in float64, which holds any placeholder unwrapped.
            if floating:
                undefined |= raw == raw.dtype.type(placeholders[j])
            else:
                undefined |= raw.astype(np.float64) == placeholders[j]
        values = raw.astype(np.float32)
        bad = ~np.isfinite(values) & ~undefined
        if bad.any():
            entry = int(np.argmax(bad))
            raise DataFormatError(
                f"{where}: {path}: branch {name!r}, entry {entry}: value {raw[entry]} "
                "(infinite, or beyond float32's ±3.4e38); expected a finite number, NaN or the "
                "placeholder for an undefined value."
            )
        values[undefined] = np.nan
        matrix[:, j] = values
    return matrix


# --- samples ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One process: its files, tree, weight expression and scale, and its class.

    `label` is 1 (signal), 0 (background) or None (events to score, e.g. data).
    """

    name: str
    files: tuple[str, ...]
    label: int | None = None
    tree: str | None = None
    weight: str = "1"
    scale: float | str = 1.0

    @property
    def where(self) -> str:
        return f"{_KIND[self.label]} sample {self.name!r}"

    @classmethod
    def from_config(
        cls, name: str, config: Mapping[str, Any], label: int | None, tree: str | None
    ) -> Sample:
        """A sample from its config entry (`files`, optional `tree`, `weight`, `scale`)."""
        where = f"{_KIND[label]} sample {name!r}"
        if isinstance(config, str | Sequence):  # just the files
            config = {"files": config}
        if not isinstance(config, Mapping):
            raise DataFormatError(
                f"{where}: expected a mapping with files (and optionally tree, weight, "
                f"scale), got {config!r}."
            )
        unknown = sorted(set(config) - {"files", "tree", "weight", "scale"})
        if unknown:
            raise DataFormatError(
                f"{where}: unknown keys {unknown}; expected files, tree, weight, scale."
            )
        if "files" not in config or config["files"] is None:
            raise DataFormatError(f"{where}: no files given; expected files: [path or glob].")
        files = config["files"]
        files = (files,) if isinstance(files, str) else tuple(str(f) for f in files)
        weight = config.get("weight")
        scale = config.get("scale")
        return cls(
            name=str(name),
            files=files,
            label=label,
            tree=config.get("tree") or tree,
            weight="1" if weight is None else weight,
            scale=1.0 if scale is None else scale,
        )


@dataclass(frozen=True)
class SampleEvents:
    """The events read from one sample: features, and weights for a labelled sample."""

    sample: Sample
    features: np.ndarray
    weight: np.ndarray | None
    n_files: int


def _scale_of(sample: Sample) -> float:
    """The sample's scale: a positive number, or an arithmetic expression of numbers."""
    where = f"{sample.where}: scale"
    expression = WeightExpression.parse(sample.scale, where)
    if expression.names:
        raise DataFormatError(
            f"{where} {sample.scale!r} names {list(expression.names)}; expected a number or "
            "an arithmetic expression of numbers (e.g. xsec * lumi / n_generated written out); "
            "per-event factors belong in weight."
        )
    value = float(expression.evaluate({}))
    if not (math.isfinite(value) and value > 0):
        raise DataFormatError(f"{where} {sample.scale!r} is {value}; expected a finite number > 0.")
    return value


def read_sample(sample: Sample, features: Sequence[str], placeholders: np.ndarray) -> SampleEvents:
    """Read and check every file of `sample`: features, and weight = expression x scale.

    Labelled samples need finite, non-negative weights and a positive total; any sample needs
    at least one event.
    """
    files = expand_files(sample.files, sample.where)
    labelled = sample.label is not None
    expression = WeightExpression.parse(sample.weight, sample.where) if labelled else None
    scale = _scale_of(sample) if labelled else 1.0
    weight_names = [n for n in expression.names if n not in features] if expression else []
    parts, weights = [], []
    used_by = {name: f"in weight {expression.text!r}" for name in weight_names}
    for path in files:
        names = [*features, *weight_names]
        columns = _read_columns(path, names, sample.tree, sample.where, used_by=used_by)
        parts.append(_feature_matrix(columns, features, placeholders, path, sample.where))
        if expression is not None:
            weights.append(_weights(expression, scale, columns, path, sample))
    matrix = np.concatenate(parts) if parts else np.empty((0, len(features)), np.float32)
    weight = np.concatenate(weights) if labelled else None
    if len(matrix) == 0:
        raise DataFormatError(
            f"{sample.where}: its {len(files)} file(s) {[str(f) for f in files]} hold no "
            "events; expected at least one."
        )
    if weight is not None and not weight.sum() > 0:
        raise DataFormatError(
            f"{sample.where}: all {len(weight)} weights are 0 ({sample.weight!r} x {scale:g}); "
            "expected a positive total."
        )
    return SampleEvents(sample, matrix, weight, len(files))


def _weights(
    expression: WeightExpression,
    scale: float,
    columns: Mapping[str, np.ndarray],
    path: Path,
    sample: Sample,
) -> np.ndarray:
    n = len(next(iter(columns.values())))
    values = np.broadcast_to(expression.evaluate(columns), (n,)).astype(np.float64) * scale
    bad = ~(np.isfinite(values) & (values >= 0))
    if bad.any():
        entry = int(np.argmax(bad))
        value = values[entry]
        problem = "not finite" if not np.isfinite(value) else "negative"
        inputs = ", ".join(f"{name}={columns[name][entry]!r}" for name in expression.names)
        raise DataFormatError(
            f"{sample.where}: {path}: entry {entry}: weight {expression.text!r} x scale "
            f"{scale:g} = {value} is {problem}" + (f" ({inputs})" if inputs else "") + "; "
            f"expected a finite weight >= 0 ({int(bad.sum())} of {n} entries are bad)."
        )
    return values


def _samples(
    entries: Mapping[str, Any] | None, label: int | None, tree: str | None, what: str
) -> list[Sample]:
    if entries is None:
        return []
    if not isinstance(entries, Mapping):
        raise DataFormatError(
            f"data.{what} must map sample names to samples ({{name: {{files: [...], ...}}}}), "
            f"got {entries!r}."
        )
    return [Sample.from_config(name, config, label, tree) for name, config in entries.items()]


def load_samples(
    signal: Mapping[str, Any],
    background: Mapping[str, Any],
    features: Sequence[str],
    tree: str | None = None,
    placeholder: float | Mapping[str, float | None] | None = None,
    test: Mapping[str, Any] | None = None,
    test_fraction: float = 0.0,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
) -> Dataset:
    """Training events from labelled samples, totals from their weights, and test events.

    Events are numbered (EventId) in the order of the samples and their files (a glob's files
    sorted by name), entries in file order: signal samples first, then background, then test.
    Test events are either the unlabelled `test` samples or, with `test_fraction`, a stratified
    hold-out of the labelled events; the totals are those of all labelled events.
    `n_train`/`n_test` keep at most that many of them (a seeded random subset, stratified for
    labelled events; None: all), so `experiment=smoke` runs on any samples in seconds; the
    totals stay those of all events, so AMS keeps its full-data scale.
    """
    if isinstance(features, str) or not isinstance(features, Sequence) or not features:
        raise DataFormatError(
            f"data.features is {features!r}; expected a list of branch names, e.g. "
            "[lep_pt, met, mjj]."
        )
    features = tuple(str(f) for f in features)
    repeated = sorted({f for f in features if features.count(f) > 1})
    if repeated:
        raise DataFormatError(f"data.features lists {repeated} more than once.")
    if not 0.0 <= test_fraction < 1.0:
        raise DataFormatError(f"data.test_fraction is {test_fraction}; expected 0 <= f < 1.")
    labelled = _samples(signal, 1, tree, "signal") + _samples(background, 0, tree, "background")
    unlabelled = _samples(test, None, tree, "test")
    for label, what in ((1, "signal"), (0, "background")):
        if not any(s.label == label for s in labelled):
            raise DataFormatError(
                f"data.{what} lists no samples; expected at least one {what} sample "
                "(name: {files: [...], weight: ..., scale: ...})."
            )
    if unlabelled and test_fraction > 0:
        raise DataFormatError(
            "data.test and data.test_fraction are both set; score either the test samples or "
            "a held-out fraction of the labelled events, not both."
        )
    names = [s.name for s in labelled + unlabelled]
    if len(set(names)) != len(names):
        raise DataFormatError(f"sample names must be distinct, got {names}.")

    placeholders = placeholder_values(placeholder, features)
    read = [read_sample(s, features, placeholders) for s in labelled]
    for events in read:
        s = events.sample
        log.info(
            "%s: %d events from %d file(s), weights sum to %.6g",
            s.where,
            len(events.features),
            events.n_files,
            events.weight.sum(),
        )
    label = np.concatenate([np.full(len(e.features), e.sample.label, dtype=np.int8) for e in read])
    weight = np.concatenate([e.weight for e in read])
    s_tot = float(weight[label == 1].sum())
    b_tot = float(weight[label == 0].sum())
    source = "samples " + ", ".join(s.name for s in labelled)
    train = EventTable(
        event_id=np.arange(len(label), dtype=np.int64),
        features=np.concatenate([e.features for e in read]),
        label=label,
        weight=weight,
        source=source,
        feature_names=features,
        s_tot=s_tot,
        b_tot=b_tot,
        process=_process_names(read),
    )
    log.info("totals: S_tot = %.6g (signal), B_tot = %.6g (background)", s_tot, b_tot)
    test_table = None
    if test_fraction > 0:
        train, test_table = _hold_out(train, test_fraction, seed)
    elif unlabelled:
        test_table = _unlabelled(unlabelled, features, placeholders, len(label), s_tot, b_tot)
    train = _at_most(train, n_train, seed, "n_train")
    test_table = None if test_table is None else _at_most(test_table, n_test, seed, "n_test")
    return Dataset(train=train, test=test_table)


def _at_most(table: EventTable, n: int | None, seed: int, what: str) -> EventTable:
    """A seeded random subset of `n` events (stratified when labelled), in EventId order."""
    if n is None or n >= len(table):
        return table
    if n < 1:
        raise DataFormatError(f"data.{what} is {n}; expected a number of events >= 1 (or null).")
    from sklearn.model_selection import train_test_split

    try:
        kept, _ = train_test_split(
            np.arange(len(table)), train_size=n, stratify=table.label, random_state=seed
        )
    except ValueError as error:
        raise DataFormatError(
            f"data.{what}={n}: cannot keep a stratified subset of {len(table)} events ({error})."
        ) from None
    return table.subset(np.sort(kept))


def _hold_out(table: EventTable, fraction: float, seed: int) -> tuple[EventTable, EventTable]:
    """A stratified, seeded split into training and held-out (labelled) test events."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(table))
    try:
        train_rows, test_rows = train_test_split(
            rows, test_size=fraction, stratify=table.label, random_state=seed
        )
    except ValueError as error:
        raise DataFormatError(
            f"data.test_fraction={fraction}: cannot hold out a stratified test set from "
            f"{len(table)} events ({error})."
        ) from None
    return table.subset(np.sort(train_rows)), table.subset(np.sort(test_rows))


def _unlabelled(
    samples: Iterable[Sample],
    features: tuple[str, ...],
    placeholders: np.ndarray,
    first_id: int,
    s_tot: float,
    b_tot: float,
) -> EventTable:
    read = [read_sample(s, features, placeholders) for s in samples]
    matrix = np.concatenate([e.features for e in read])
    return EventTable(
        event_id=np.arange(first_id, first_id + len(matrix), dtype=np.int64),
        features=matrix,
        source="samples " + ", ".join(e.sample.name for e in read),
        feature_names=features,
        s_tot=s_tot,
        b_tot=b_tot,
        process=_process_names(read),
    )


def _process_names(read: Sequence[SampleEvents]) -> np.ndarray:
    """Each event's sample name: its process, for per-process normalisation nuisances."""
    return np.concatenate([np.full(len(e.features), e.sample.name) for e in read])


def read_feature_file(
    path: str | Path,
    features: Sequence[str],
    tree: str | None = None,
    placeholder: float | Mapping[str, float | None] | None = None,
) -> EventTable:
    """One file's events with the named feature branches, for scoring (no labels or weights).

    EventId is the file's `EventId` branch (column) where it has one, else the entry number.
    """
    path = Path(path)
    where = "input"
    if not path.is_file():
        what = "not a file" if path.exists() else "file not found"
        raise DataFormatError(f"{where}: {path}: {what}.")
    features = tuple(features)
    columns = _read_columns(path, features, tree, where, optional=[_ID_COLUMN])
    placeholders = placeholder_values(placeholder, features)
    matrix = _feature_matrix(columns, features, placeholders, path, where)
    event_id = columns.get(_ID_COLUMN, np.arange(len(matrix)))
    return EventTable(
        event_id=np.asarray(event_id, dtype=np.int64),
        features=matrix,
        source=str(path),
        feature_names=features,
    )

"""What a finished fold keeps so that a resumed run need not train it again.

`checkpoints/<stage>/fold_scores.npz`, written after the fold's checkpoint, marks the fold as
done; a resumed run reloads its scores, checked against a digest of the events they were
computed on, and trains only the stages without one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amsaware.atomic import atomic_path
from amsaware.run_folder.layout import RunFolderError


@dataclass(frozen=True)
class FoldScores:
    """What a finished fold contributes to its run, kept so that a resumed run need not train
    it again: its validation rows and their logits (with a fine-tune also from before the
    second phase), its test logits (fold ensemble), `events`, a digest of the data they were
    computed on (so that changed data is noticed), and `files`, the sha256 of the fold's
    checkpoint (of its weights) and preprocessing as it finished (so that a replaced or
    truncated file is noticed before it is reloaded). `metrics` are the fold's validation
    metrics that need its network, not only its logits (val/sigma_mu scores shifted events):
    a resumed run reports them as the uninterrupted run did."""

    val_index: np.ndarray
    val_logits: np.ndarray
    events: str
    test_logits: np.ndarray | None = None
    pretrain_logits: np.ndarray | None = None
    files: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def events_digest(*arrays: np.ndarray) -> str:
    """sha256 of arrays' dtypes, shapes and bytes: the identity of the events a fold saw."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_fold_scores(scores: FoldScores, path: Path, within: Path | None = None) -> Path:
    """`scores` in NumPy's format (read back without pickle), atomically; links under
    `within` refused."""
    arrays = {
        "val_index": np.asarray(scores.val_index, dtype=np.int64),
        "val_logits": np.asarray(scores.val_logits),
        "events": np.array(scores.events),
        "files": np.array(json.dumps(scores.files, sort_keys=True)),
        "metrics": np.array(json.dumps(scores.metrics, sort_keys=True)),
    }
    for name in ("test_logits", "pretrain_logits"):
        if getattr(scores, name) is not None:
            arrays[name] = np.asarray(getattr(scores, name))
    with atomic_path(path, within) as tmp, tmp.open("wb") as handle:
        np.savez(handle, **arrays)
    return path


def read_fold_scores(path: Path) -> FoldScores | None:
    """A finished fold's scores, checked, or None where the file is not there."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as error:
        raise RunFolderError(
            f"{path}: corrupt, not a fold's scores ({type(error).__name__}); delete it and "
            "the fold is trained again"
        ) from None
    required = {"val_index", "val_logits", "events"}
    known = required | {"test_logits", "pretrain_logits", "files", "metrics"}
    if not required <= set(arrays) <= known:
        raise RunFolderError(
            f"{path}: corrupt, holds {sorted(arrays)}; expected {sorted(required)} "
            "(and test_logits, pretrain_logits)"
        )
    index, logits = arrays["val_index"], arrays["val_logits"]
    fine = index.ndim == 1 and index.dtype.kind == "i" and logits.shape == index.shape
    for name in ("val_logits", "test_logits", "pretrain_logits"):
        if name in arrays:
            value = arrays[name]
            fine = fine and value.dtype.kind == "f" and value.ndim == 1
            fine = fine and bool(np.isfinite(value).all())
    if "pretrain_logits" in arrays:
        fine = fine and arrays["pretrain_logits"].shape == index.shape
    if not fine or arrays["events"].shape != ():
        raise RunFolderError(
            f"{path}: corrupt, the arrays are not one fold's finite logits of its rows"
        )
    if "files" not in arrays:
        raise RunFolderError(
            f"{path}: written by an older amsaware, without the digests of the fold's "
            "checkpoint that a resume checks; delete it (the fold trains again) or start over "
            "with overwrite=true"
        )
    files = _files(arrays["files"]) if arrays["files"].shape == () else None
    if files is None:
        raise RunFolderError(f"{path}: corrupt, 'files' is not a record of sha256 digests")
    metrics = _metrics(arrays["metrics"]) if "metrics" in arrays else {}  # older: none kept
    if metrics is None:
        raise RunFolderError(f"{path}: corrupt, 'metrics' is not a record of val/ numbers")
    return FoldScores(
        index,
        logits,
        str(arrays["events"]),
        arrays.get("test_logits"),
        arrays.get("pretrain_logits"),
        files,
        metrics,
    )


def _metrics(value: np.ndarray) -> dict[str, float] | None:
    """The `metrics` record ({"val/...": number}, NaN allowed), or None if malformed."""
    if value.shape != ():
        return None
    try:
        metrics = json.loads(str(value))
    except json.JSONDecodeError:
        return None
    fine = isinstance(metrics, dict) and all(
        isinstance(k, str) and k.startswith("val/") and isinstance(v, int | float)
        and not isinstance(v, bool)
        for k, v in metrics.items()
    )  # fmt: skip
    return {k: float(v) for k, v in metrics.items()} if fine else None


def _files(value: np.ndarray) -> dict[str, str] | None:
    """The `files` record ({"checkpoint"|"preprocessing": sha256}), or None if malformed."""
    try:
        files = json.loads(str(value))
    except json.JSONDecodeError:
        return None
    fine = isinstance(files, dict) and set(files) <= {"checkpoint", "preprocessing"}
    fine = fine and all(
        isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for v in files.values()
    )
    return files if fine else None

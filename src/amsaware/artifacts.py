"""The run folder's files (contract: docs/run-folder.md), written atomically and read back.

Every writer goes through a temporary file in the same folder and a rename, so a run that is
interrupted never leaves a half-written artifact for compare.py or a notebook to trip over.
Under DDP every process runs the whole protocol with the same synchronised models, and only
the main one writes (`rank_zero_only`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import pandas as pd
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from amsaware.data.preprocessing import FittedPreprocessing

METRICS = "metrics.json"
OOF_PREDICTIONS = "oof_predictions.csv"
TEST_PREDICTIONS = "test_predictions.csv"
SUBMISSION = "submission.csv"
#: With ensemble=both, the fold ensemble's files beside the final model's.
TEST_PREDICTIONS_FOLDS = "test_predictions_folds.csv"
SUBMISSION_FOLDS = "submission_folds.csv"
#: Beside each stage's checkpoint: checkpoints/<fold0|...|final>/preprocessing.json.
PREPROCESSING = "preprocessing.json"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to `path`, renamed onto it only if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; expected the name of a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise type(error)(
            error.errno, f"{path}: cannot write it ({error.strerror} in {path.parent})"
        ) from None
    os.close(fd)
    # mkstemp makes the file private (0600); artifacts get the permissions of any new file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@rank_zero_only
def _write_frame(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


@rank_zero_only
def write_json(data: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")


def write_oof_predictions(
    run_dir: Path,
    event_id: np.ndarray,
    fold: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray,
    score: np.ndarray,
    logit: np.ndarray | None = None,
) -> Path:
    """`EventId,fold,label,weight,score[,logit]` for every training event, in EventId order.

    `logit` (the ranking key: it never rounds to a tie) is written last, so readers of the
    older five columns keep working.
    """
    columns = {"EventId": event_id, "fold": fold, "label": label, "weight": weight, "score": score}
    if logit is not None:
        columns["logit"] = logit
    frame = pd.DataFrame(columns).sort_values("EventId", kind="stable")
    path = Path(run_dir) / OOF_PREDICTIONS
    _write_frame(frame, path)
    return path


def write_test_predictions(
    run_dir: Path,
    event_id: np.ndarray,
    score: np.ndarray,
    name: str = TEST_PREDICTIONS,
    logit: np.ndarray | None = None,
) -> Path:
    """`EventId,score[,logit]` per test event."""
    path = Path(run_dir) / name
    columns = {"EventId": event_id, "score": score}
    if logit is not None:
        columns["logit"] = logit
    _write_frame(pd.DataFrame(columns), path)
    return path


def submission_frame(event_id: np.ndarray, score: np.ndarray, selected: np.ndarray) -> pd.DataFrame:
    """The challenge's `EventId,RankOrder,Class`: RankOrder N is the most signal-like event.

    Every selected ('s') event must rank above every other one, so the ranking breaks score
    ties in favour of the selection.
    """
    order = np.lexsort((score, selected))  # ascending: unselected first, then by score
    rank = np.empty(len(score), dtype=np.int64)
    rank[order] = np.arange(1, len(score) + 1)
    return pd.DataFrame(
        {"EventId": event_id, "RankOrder": rank, "Class": np.where(selected, "s", "b")}
    )


def write_submission(
    run_dir: Path,
    event_id: np.ndarray,
    score: np.ndarray,
    selected: np.ndarray,
    name: str = SUBMISSION,
) -> Path:
    path = Path(run_dir) / name
    _write_frame(submission_frame(event_id, score, selected), path)
    return path


@rank_zero_only
def write_preprocessing(preprocessing: FittedPreprocessing, path: Path) -> Path:
    """A stage's fitted imputation and scaling statistics as JSON (no pickle)."""
    write_json(preprocessing.to_dict(), Path(path))
    return Path(path)


@rank_zero_only
def write_checkpoint(net: torch.nn.Module, path: Path) -> Path:
    """A checkpoint of `net` shaped like Lightning's (`state_dict` with `net.` keys).

    For models trained outside their own Trainer (fold-parallel training), so that
    `amsaware.inference` loads every stage the same way.
    """
    state = {f"net.{name}": value.detach().cpu() for name, value in net.state_dict().items()}
    checkpoint = {"state_dict": state, "pytorch-lightning_version": lightning.__version__}
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


class CorruptFileError(ValueError):
    """A run folder's file that cannot be read back as written; the message names it."""


def read_json(path: Path) -> Any:
    """A JSON artifact, or an error naming the file as corrupt (never a bare decode error)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{path}: corrupt, not valid JSON ({error})") from None


def read_preprocessing(path: Path) -> FittedPreprocessing:
    return FittedPreprocessing.from_dict(read_json(path), source=str(path))


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json as written; a file that is no JSON object is reported as corrupt."""
    path = Path(run_dir) / METRICS
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise CorruptFileError(f"{path}: corrupt, expected a JSON object of metrics")
    return metrics


def read_oof_predictions(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / OOF_PREDICTIONS)

"""`RunFolder`: one run's folder, every file of it written and read back here.

The contract is docs/run-folder.md; the names are `amsaware.run_folder.layout`'s. Each file is
written atomically (`amsaware.atomic`: a temporary name in the same folder, renamed into
place; under DDP only the main process writes), never through a symbolic link inside the
folder, and read back validated, with a `RunFolderError` naming the file for anything missing,
damaged or out of range. Checkpoints are loaded with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import pandas as pd
import torch

from amsaware.atomic import (
    SymlinkError,
    atomic_path,
    main_process,
    refuse_symlinks,
    write_frame,
    write_json,
)
from amsaware.data.schema import B_TOT, S_TOT
from amsaware.run_folder.config import RunConfig, read_config, read_plain_config
from amsaware.run_folder.cut import Cut
from amsaware.run_folder.layout import (
    CHECKPOINT,
    CHECKPOINTS,
    CONFIG,
    FIT_EVENTS,
    FOLD_SCORES,
    LOGGER_FOLDERS,
    METRICS,
    OOF_COLUMNS,
    OOF_PREDICTIONS,
    PREPROCESSING,
    PRETRAIN,
    STAGE_FILES,
    SUBMISSION,
    SUBMISSION_FOLDS,
    TEST_PREDICTIONS,
    TEST_PREDICTIONS_FOLDS,
    RunFolderError,
    is_number,
)
from amsaware.run_folder.resume import FoldScores, read_fold_scores, write_fold_scores

if TYPE_CHECKING:
    from torch import nn

    from amsaware.data.preprocessing import FittedPreprocessing
    from amsaware.fit import FitInput


def read_json(path: str | Path) -> Any:
    """A JSON file, or an error naming the file as corrupt (never a bare decode error)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except PermissionError:
        raise _unreadable(path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path}: corrupt, not valid JSON ({error})") from None


def _unreadable(path: Path) -> RunFolderError:
    """A file the process may not read: said so, not called corrupt."""
    return RunFolderError(
        f"{path}: not readable (permission denied); give this user read access to it"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except PermissionError:
        raise _unreadable(path) from None
    return digest.hexdigest()


def _weights_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A digest of a network's tensors (names, dtypes, shapes, values), not of the checkpoint
    file: the same weights give the same digest whatever else Lightning saved beside them."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(
            tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        )
    return digest.hexdigest()


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


# --- the folder ---------------------------------------------------------------------------------


class RunFolder:
    """One run's folder: its paths, atomic writers and validated readers (module docstring)."""

    def __init__(self, path: str | Path, within: str | Path | None = None) -> None:
        self.path = Path(path)
        #: The run folder this one lies in (`pretrain/`'s is its run's): no folder inside it
        #: is written through if it is a symbolic link.
        self.within = self.path if within is None else Path(within)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    # -- paths --

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def oof_path(self) -> Path:
        return self.path / OOF_PREDICTIONS

    @property
    def pretrain(self) -> RunFolder:
        """`pretrain/`: the first phase's out-of-fold results with finetune=..."""
        return RunFolder(self.path / PRETRAIN, self.within)

    def stage_dir(self, stage: str) -> Path:
        """`checkpoints/<stage>/`, where the stage's checkpoint callbacks write."""
        return self.path / CHECKPOINTS / stage

    def checkpoint_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / CHECKPOINT

    def preprocessing_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / PREPROCESSING

    def test_predictions_path(self, primary: bool = True) -> Path:
        """The first scorer's test scores, or (`primary=False`) the fold ensemble's beside them."""
        return self.path / (TEST_PREDICTIONS if primary else TEST_PREDICTIONS_FOLDS)

    def submission_path(self, primary: bool = True) -> Path:
        return self.path / (SUBMISSION if primary else SUBMISSION_FOLDS)

    def onnx_path(self, scorer: str) -> Path:
        """`model.onnx` (final model) or `model_folds.onnx` (fold ensemble), written by export."""
        return self.path / ("model.onnx" if scorer == "final" else f"model_{scorer}.onnx")

    def require(self) -> RunFolder:
        """The folder itself, or an error saying it is not there."""
        if not self.path.is_dir():
            raise RunFolderError(f"{self.path}: no such run folder")
        return self

    def _require_file(self, name: str, why: str) -> Path:
        self.require()
        path = self.path / name
        if not path.is_file():
            raise RunFolderError(
                f"{self.path}: no {name}; {why} ({path} is missing: is {self.path} a finished "
                "train.py run folder?)"
            )
        return path

    # -- writers --

    def writable(self, path: Path) -> Path:
        """`path`, unless it or a folder on the way to it from the run folder (`within`) is a
        symbolic link: a run writes into its own folder only, never where a planted link
        points."""
        try:
            refuse_symlinks(path, self.within)
        except SymlinkError as error:
            raise RunFolderError(error.strerror) from None
        return path

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        """metrics.json, recording each stage's checkpoint and preprocessing files (paths and
        sha256) so that the tools load exactly those."""
        if not main_process():
            return self.metrics_path
        record = self._stage_record()
        data = metrics | ({STAGE_FILES: record} if record else {})
        events = self.path / FIT_EVENTS
        if isinstance(data.get("fit"), dict) and events.is_file():
            record_fit = {"path": FIT_EVENTS, "sha256": _sha256(events)}
            data["fit"] = {**data["fit"], "files": {"held_out": record_fit}}
        return write_json(data, self.writable(self.metrics_path), self.within)

    def write_json(self, data: Any, name: str) -> Path:
        """Any other JSON file of the run (e.g. `pretrain/metrics.json` via `pretrain`)."""
        return write_json(data, self.writable(self.path / name), self.within)

    def _stage_record(self) -> dict[str, dict[str, dict[str, str]]]:
        """Per stage folder under checkpoints/: its files, with the digests readers check."""
        record: dict[str, dict[str, dict[str, str]]] = {}
        folder = self.path / CHECKPOINTS
        for stage_dir in sorted(folder.iterdir() if folder.is_dir() else []):
            entry = {}
            checkpoint, preprocessing = stage_dir / CHECKPOINT, stage_dir / PREPROCESSING
            if checkpoint.is_file():
                digest = _weights_sha256(_read_weights(checkpoint))
                entry["checkpoint"] = {"path": self._relative(checkpoint), "sha256": digest}
            if preprocessing.is_file():
                digest = _sha256(preprocessing)
                entry["preprocessing"] = {"path": self._relative(preprocessing), "sha256": digest}
            if entry:
                record[stage_dir.name] = entry
        return record

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.path).as_posix()

    def write_oof_predictions(
        self,
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
        columns = {"EventId": event_id, "fold": fold, "label": label, "weight": weight}
        columns["score"] = score
        if logit is not None:
            columns["logit"] = logit
        frame = pd.DataFrame(columns).sort_values("EventId", kind="stable")
        return write_frame(frame, self.writable(self.oof_path), self.within)

    def write_test_predictions(
        self,
        event_id: np.ndarray,
        score: np.ndarray,
        logit: np.ndarray | None = None,
        primary: bool = True,
    ) -> Path:
        """`EventId,score[,logit]` per test event."""
        columns = {"EventId": event_id, "score": score}
        if logit is not None:
            columns["logit"] = logit
        path = self.writable(self.test_predictions_path(primary))
        return write_frame(pd.DataFrame(columns), path, self.within)

    def write_submission(
        self, event_id: np.ndarray, ranking: np.ndarray, selected: np.ndarray, primary: bool = True
    ) -> Path:
        """The challenge's submission, RankOrder following `ranking` (the logit, never tied)."""
        frame = submission_frame(event_id, ranking, selected)
        return write_frame(frame, self.writable(self.submission_path(primary)), self.within)

    def write_preprocessing(self, stage: str, preprocessing: FittedPreprocessing) -> Path:
        """A stage's fitted imputation and scaling statistics as JSON (no pickle)."""
        path = self.writable(self.preprocessing_path(stage))
        return write_json(preprocessing.to_dict(), path, self.within)

    def write_checkpoint(self, stage: str, net: nn.Module) -> Path:
        """A checkpoint of `net` shaped like Lightning's (`state_dict` with `net.` keys).

        For models trained outside their own Trainer (fold-parallel training, a zero-epoch
        fine-tune), so that every stage loads the same way.
        """
        path = self.checkpoint_path(stage)
        if not main_process():
            return path
        state = {f"net.{name}": value.detach().cpu() for name, value in net.state_dict().items()}
        checkpoint = {"state_dict": state, "pytorch-lightning_version": L.__version__}
        with atomic_path(self.writable(path), self.within) as tmp:
            torch.save(checkpoint, tmp)
        return path

    def fold_scores_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / FOLD_SCORES

    def write_fold_scores(self, stage: str, scores: FoldScores) -> Path:
        """A finished fold's scores (`FoldScores`), written after its checkpoint: the mark that
        the fold is done. NumPy's format, read back without pickle."""
        path = self.fold_scores_path(stage)
        if not main_process():
            return path
        return write_fold_scores(scores, self.writable(path), self.within)

    def stage_digests(self, stage: str) -> dict[str, str]:
        """The sha256 of the stage's checkpoint (of its weights, as metrics.json records it)
        and preprocessing, for those that are there: what a finished fold records so that a
        resume reloads it only beside the same files. Empty outside the main process, which
        writes nothing."""
        if not main_process():
            return {}
        checkpoint, preprocessing = self.checkpoint_path(stage), self.preprocessing_path(stage)
        digests = {}
        if checkpoint.is_file():
            digests["checkpoint"] = _weights_sha256(_read_weights(checkpoint))
        if preprocessing.is_file():
            digests["preprocessing"] = _sha256(preprocessing)
        return digests

    def check_stage_files(self, stage: str, digests: dict[str, str], who: str) -> None:
        """Refuse, naming `who` (e.g. "fold 0") and how to recover, when a file `digests`
        records is missing, unreadable, truncated or replaced."""
        recover = (
            f"delete {self.stage_dir(stage)} (then {who} trains again) or start over with "
            "overwrite=true"
        )
        for kind, digest in digests.items():
            path = (
                self.checkpoint_path(stage)
                if kind == "checkpoint"
                else self.preprocessing_path(stage)
            )
            if not path.is_file():
                raise RunFolderError(f"{path}: missing, but {who} finished with it; {recover}")
            try:
                found = (
                    _weights_sha256(_read_weights(path)) if kind == "checkpoint" else _sha256(path)
                )
            except (RunFolderError, OSError) as error:
                reason = error.strerror if isinstance(error, OSError) else str(error)
                raise RunFolderError(
                    f"{path}: {who}'s {kind} cannot be checked ({reason}); {recover}"
                ) from None
            if found != digest:
                raise RunFolderError(
                    f"{path}: not the {kind} {who} finished with (its sha256 differs: truncated, "
                    f"replaced or changed since); {recover}"
                )

    def clear_stage(self, stage: str) -> None:
        """Delete what an interrupted stage left (`checkpoints/<stage>/`, its loggers' folders),
        so that it restarts from scratch without mixing files of two attempts. A stage folder
        that is a link is refused, not skipped: the stage's training would write through it."""
        if not main_process():
            return
        for folder in (self.stage_dir(stage), *(self.path / n / stage for n in LOGGER_FOLDERS)):
            if self.writable(folder).is_dir():
                shutil.rmtree(folder)

    # -- readers --

    def fold_scores(self, stage: str) -> FoldScores | None:
        """A finished fold's scores, or None where the fold did not finish."""
        return read_fold_scores(self.fold_scores_path(stage))

    def config(self) -> RunConfig:
        """The run's config (`.hydra/config.yaml`) as checked plain values, with clear errors.

        YAML is read with a safe loader and nothing in it is instantiated or resolved by a
        resolver; an unknown architecture or data source, a nested `_target_`, or a value of
        the wrong type is refused with the file and key named.
        """
        self.require()
        if not self.config_path.is_file():
            raise RunFolderError(f"{self.path}: no {CONFIG}; not a run folder of train.py")
        return read_config(self.config_path)

    def loss_name(self) -> str | None:
        """The loss class's name, for compare's tables (None without a config). Only this key
        is read, so runs of architectures predict cannot rebuild still compare."""
        if not self.config_path.is_file():
            return None
        target = (read_plain_config(self.config_path).get("loss") or {}).get("_target_")
        return target.rsplit(".", 1)[-1] if isinstance(target, str) else None

    def metrics(self) -> dict[str, Any]:
        """metrics.json, with the cut's values that the tools apply checked to be in range."""
        path = self._require_file(
            METRICS, "the run did not finish (or failed), and its cut is chosen only at the end"
        )
        metrics = read_json(path)
        if not isinstance(metrics, dict):
            raise RunFolderError(f"{path}: corrupt, expected a JSON object of metrics")
        Cut.from_dict(metrics.get("cut"), str(path))
        return metrics

    def cut(self) -> Cut:
        """The run's cut (metrics.json's `cut`), checked."""
        return Cut.from_dict(self.metrics()["cut"], str(self.metrics_path))

    def totals(self) -> tuple[float, float]:
        """The (S_tot, B_tot) the run's AMS is rescaled to; runs from before metrics.json
        recorded them trained on the challenge's data, whose constants they are."""
        data = self.metrics().get("data") or {}
        totals = (data.get("s_tot", S_TOT), data.get("b_tot", B_TOT))
        for name, value in zip(("s_tot", "b_tot"), totals, strict=True):
            if not (is_number(value) and math.isfinite(value) and value > 0):
                raise RunFolderError(
                    f"{self.metrics_path}: data.{name} is {value!r}; expected a number > 0"
                )
        return float(totals[0]), float(totals[1])

    def oof_predictions(self) -> pd.DataFrame:
        """oof_predictions.csv in EventId order, its columns and scores checked."""
        path = self._require_file(OOF_PREDICTIONS, "the run did not finish its cross-validation")
        frame = _read_predictions(path, [OOF_COLUMNS, [*OOF_COLUMNS, "logit"]])
        return frame

    def test_predictions(self, primary: bool = True) -> pd.DataFrame:
        """test_predictions(_folds).csv: `EventId,score[,logit]`, scores checked."""
        name = self.test_predictions_path(primary).name
        path = self._require_file(name, "the run scored no test events with that scorer")
        return _read_predictions(path, [["EventId", "score"], ["EventId", "score", "logit"]])

    def submission(self, primary: bool = True) -> pd.DataFrame:
        """submission(_folds).csv: `EventId,RankOrder,Class`, checked to be a ranking."""
        name = self.submission_path(primary).name
        path = self._require_file(name, "the run scored no test events with that scorer")
        frame = _read_csv(path)
        if list(frame.columns) != ["EventId", "RankOrder", "Class"]:
            raise RunFolderError(
                f"{path}: has columns {list(frame.columns)}, expected ['EventId', 'RankOrder', "
                "'Class']"
            )
        ranks = np.sort(frame.RankOrder.to_numpy())
        if not np.array_equal(ranks, np.arange(1, len(frame) + 1)):
            raise RunFolderError(f"{path}: RankOrder is not a permutation of 1..{len(frame)}")
        if not frame.Class.isin(["s", "b"]).all():
            raise RunFolderError(f"{path}: Class holds values other than 's' and 'b'")
        return frame

    def stage_files(self, stage: str) -> dict[str, tuple[Path, str | None]]:
        """The stage's `checkpoint` and `preprocessing` files with the sha256 metrics.json
        records for them; an unfinished run folder has the fixed names and no hash. A finished
        run whose metrics.json records no files, though it holds some, is refused: its files
        could not be checked."""
        fixed = {
            "checkpoint": (self.checkpoint_path(stage), None),
            "preprocessing": (self.preprocessing_path(stage), None),
        }
        if not self.metrics_path.is_file():
            return fixed
        record = read_json(self.metrics_path)
        record = record.get(STAGE_FILES) if isinstance(record, dict) else None
        if record is None:
            present = [path for path, _ in fixed.values() if path.is_file()]
            if present:
                # Loading by the fixed names would skip the sha256 check, unnoticed.
                raise RunFolderError(
                    f"{self.metrics_path}: records no {STAGE_FILES} (the sha256 of each stage's "
                    "checkpoint and preprocessing), yet the run holds "
                    f"{present[0].relative_to(self.path).as_posix()}: it was written by an "
                    "amsaware from before the record, or the record was removed, so replaced "
                    "files could not be told apart; train the run again"
                )
            return fixed
        where = f"{self.metrics_path}: {STAGE_FILES}"
        if not isinstance(record, dict) or not all(isinstance(v, dict) for v in record.values()):
            raise RunFolderError(f"{where}: corrupt, expected a mapping of stages to files")
        files: dict[str, tuple[Path, str | None]] = {}
        for kind, entry in (record.get(stage) or {}).items():
            if kind not in fixed or not isinstance(entry, dict):
                raise RunFolderError(f"{where}.{stage}: corrupt, unexpected entry {kind!r}")
            relative, digest = entry.get("path"), entry.get("sha256")
            parts = PurePosixPath(relative).parts if isinstance(relative, str) else ()
            if not parts or parts[0] != CHECKPOINTS or ".." in parts or relative.startswith("/"):
                raise RunFolderError(
                    f"{where}.{stage}.{kind}: path {relative!r} is not a file under {CHECKPOINTS}/"
                )
            if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
                raise RunFolderError(f"{where}.{stage}.{kind}: sha256 {digest!r} is not a hash")
            files[kind] = (self.path / relative, digest)
        return files

    def fit_events(self) -> tuple[FitInput, np.ndarray]:
        """The fit's events (`fit/held_out.npz`) and their EventIds, checked against the
        sha256 metrics.json's `fit.files` records; a clear error for a run without them."""
        from amsaware.fit import load_input

        section = self.metrics().get("fit")
        if not isinstance(section, dict):
            raise RunFolderError(
                f"{self.metrics_path}: no fit section; the run had no fit (train it with "
                "systematics=... or fit.enabled=true)"
            )
        entry = (section.get("files") or {}).get("held_out")
        if not isinstance(entry, dict):
            raise RunFolderError(
                f"{self.metrics_path}: fit.files.held_out is missing; the run's fit kept no "
                f"events ({FIT_EVENTS}, written by runs since it existed): train it again"
            )
        relative, digest = entry.get("path"), entry.get("sha256")
        if relative != FIT_EVENTS:
            raise RunFolderError(
                f"{self.metrics_path}: fit.files.held_out.path is {relative!r}; expected "
                f"{FIT_EVENTS!r}"
            )
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise RunFolderError(
                f"{self.metrics_path}: fit.files.held_out.sha256 {digest!r} is not a hash"
            )
        path = self._require_file(FIT_EVENTS, "the run's fit events were deleted")
        self._verify(path, digest)
        try:
            return load_input(path)
        except ValueError as error:
            raise RunFolderError(str(error)) from None

    def has_checkpoint(self, stage: str) -> bool:
        """Whether the stage's checkpoint (as metrics.json records it) is there."""
        entry = self.stage_files(stage).get("checkpoint")
        return entry is not None and entry[0].is_file()

    def _stage_file(self, stage: str, kind: str, missing: str) -> tuple[Path, str | None]:
        entry = self.stage_files(stage).get(kind)
        name = CHECKPOINT if kind == "checkpoint" else PREPROCESSING
        if entry is None or not entry[0].is_file():
            shown = entry[0].relative_to(self.path) if entry else f"{CHECKPOINTS}/{stage}/{name}"
            raise RunFolderError(f"{self.path}: no {PurePosixPath(shown)}{missing}")
        return entry

    @staticmethod
    def _verify(path: Path, digest: str | None) -> None:
        if digest is not None and _sha256(path) != digest:
            raise RunFolderError(
                f"{path}: not the file the run's metrics.json records (its sha256 differs): "
                "it was replaced or changed after the run finished; restore it or train the "
                "run again"
            )

    def preprocessing(self, stage: str) -> FittedPreprocessing:
        """The stage's fitted imputation and scaling, checked (format, keys, finite, scale > 0)."""
        from amsaware.data.preprocessing import FittedPreprocessing

        path, digest = self._stage_file(
            stage,
            "preprocessing",
            "; the run was trained without saving its preprocessing "
            "(callbacks.preprocessing=null, or before it existed), so its inputs cannot be "
            "reproduced. Train it again.",
        )
        data = read_json(path)
        try:
            preprocessing = FittedPreprocessing.from_dict(data, source=str(path))
        except RunFolderError:
            raise
        except (ValueError, KeyError, TypeError) as error:
            raise RunFolderError(str(error)) from None
        self._verify(path, digest)
        return preprocessing

    def checkpoint(self, stage: str) -> dict[str, torch.Tensor]:
        """The network's tensors of the stage's checkpoint (`net.` prefix removed), loaded with
        `weights_only=True`.

        A file that is not such a checkpoint is reported as corrupt; torch's own message, which
        suggests turning `weights_only` off (letting the file run code), is not passed on.
        """
        path, digest = self._stage_file(stage, "checkpoint", "")
        folder = path.parent
        versions = sorted(p.name for p in folder.glob("last-v*.ckpt"))
        if versions:
            raise RunFolderError(
                f"{folder}: holds {versions} beside {path.name}: more than one run was written "
                "into this folder, so which weights belong to its metrics.json and "
                "preprocessing is unknown. Train it again into an empty folder."
            )
        weights = _read_weights(path)
        if digest is not None and _weights_sha256(weights) != digest:
            raise RunFolderError(
                f"{path}: not the file the run's metrics.json records (the sha256 of its weights "
                "differs): it was replaced or changed after the run finished; restore it or "
                "train the run again"
            )
        return {
            name.removeprefix("net."): value
            for name, value in weights.items()
            if isinstance(name, str) and name.startswith("net.")
        }


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's `state_dict`, loaded with `weights_only=True`; corrupt files named."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise _unreadable(path) from None
    except Exception as error:
        raise RunFolderError(
            f"{path}: corrupt or not a checkpoint of train.py ({type(error).__name__}); "
            "it is only ever read as tensors, so restore the file or train the run again"
        ) from None
    tensors = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(tensors, dict) or not all(
        isinstance(v, torch.Tensor) for v in tensors.values()
    ):
        raise RunFolderError(f"{path}: corrupt, no state_dict of tensors")
    return tensors


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except PermissionError:
        raise _unreadable(path) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path}: corrupt, not a CSV table ({error})") from None


def _read_predictions(path: Path, layouts: list[list[str]]) -> pd.DataFrame:
    """A predictions file with one of `layouts`' columns and a finite `score` in every row."""
    frame = _read_csv(path)
    if list(frame.columns) not in layouts:
        raise RunFolderError(
            f"{path} has columns {list(frame.columns)}, expected {layouts[0]} (with a 'logit' "
            "column last in newer runs)"
        )
    score = pd.to_numeric(frame.score, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(score))
    if len(bad):
        raise RunFolderError(
            f"{path}: column 'score' is not a finite number in {len(bad)} rows, the first at "
            f"row {bad[0] + 2} (EventId {frame.EventId[bad[0]]})"
        )
    return frame


class SavePreprocessing(L.Callback):
    """Writes the stage's fitted preprocessing to `dirpath/preprocessing.json` as training starts.

    Configured beside ModelCheckpoint with the same per-stage `dirpath` (`checkpoints/<stage>/`),
    so each stage's folder holds everything needed to score new events without a refit.
    """

    def __init__(self, dirpath: str | Path | None = None) -> None:
        self.dirpath = dirpath

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from amsaware.data.datamodule import HiggsDataModule

        datamodule = trainer.datamodule
        if self.dirpath is None or not trainer.is_global_zero:
            return
        if not isinstance(datamodule, HiggsDataModule):
            raise TypeError(
                f"SavePreprocessing needs a HiggsDataModule, got {type(datamodule).__name__}"
            )
        write_json(datamodule.fitted_preprocessing.to_dict(), Path(self.dirpath) / PREPROCESSING)

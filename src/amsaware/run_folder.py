"""A finished (or running) train.py run: every file of its folder, written and read back here.

The contract is docs/run-folder.md. `RunFolder(path)` is the one place that knows the layout
(`.hydra/config.yaml`, `metrics.json`, the predictions and submissions, `pretrain/`,
`checkpoints/<stage>/last.ckpt` and `preprocessing.json`), writes each file atomically (a
temporary name in the same folder, renamed into place; under DDP only the main process
writes) and reads each back validated, with a `RunFolderError` naming the file for anything
missing, damaged or out of range. A run folder is data: its config is read as plain values
(nothing is instantiated, no resolver runs), checkpoints are loaded with `weights_only=True`.

Vocabulary: a *stage* is one trained model, `fold<k>` or `final`; a *scorer* is what scores
test events, `final` (the final fit) or `folds` (the mean of the fold models); the config's
`ensemble` (final|folds|both) says which scorers a run uses. `Cut` is the run's selection,
with its threshold on each scorer's scale.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import pandas as pd
import torch

from amsaware.data.schema import B_TOT, S_TOT

if TYPE_CHECKING:
    from torch import nn

    from amsaware.data.preprocessing import FittedPreprocessing


class RunFolderError(ValueError):
    """A run folder that is missing, unfinished, damaged, already used, or that cannot be
    applied as asked; the message names the file (or key) and what was expected."""


# --- names -------------------------------------------------------------------------------------

CONFIG = ".hydra/config.yaml"
METRICS = "metrics.json"
OOF_PREDICTIONS = "oof_predictions.csv"
TEST_PREDICTIONS = "test_predictions.csv"
SUBMISSION = "submission.csv"
#: With ensemble=both, the fold ensemble's files beside the final model's.
TEST_PREDICTIONS_FOLDS = "test_predictions_folds.csv"
SUBMISSION_FOLDS = "submission_folds.csv"
CHECKPOINTS = "checkpoints"
CHECKPOINT = "last.ckpt"
#: Beside each stage's checkpoint: checkpoints/<stage>/preprocessing.json.
PREPROCESSING = "preprocessing.json"
#: With finetune=...: the first phase's out-of-fold results, a run folder of their own.
PRETRAIN = "pretrain"
#: Written by eval.py beside the scores it writes (not into the run folder).
EVAL_METRICS = "eval_metrics.json"
#: metrics.json's record of each stage's files (paths relative to the folder, and sha256).
STAGE_FILES = "stages"
#: Beside a finished fold's checkpoint, written after it: the fold's validation and test logits,
#: what a resumed run reloads instead of training the fold again.
FOLD_SCORES = "fold_scores.npz"
#: The loggers' per-stage folders (`<logger>/<stage>/`), cleared when a stage restarts.
LOGGER_FOLDERS = ("tensorboard", "csv")

FINAL = "final"
SCORERS = ("final", "folds")
ENSEMBLES = ("final", "folds", "both")
#: How predict.py applies the cut to new events (`Cut.select`).
CUTS = ("threshold", "fraction")
OOF_COLUMNS = ["EventId", "fold", "label", "weight", "score"]


def fold_stage(index: int) -> str:
    """The stage name of fold model `index` (over all repeats): `fold0`, `fold1`, ..."""
    return f"fold{index}"


def scorers_of(ensemble: str) -> tuple[str, ...]:
    """The scorers a run with `ensemble` scores its test events with, the contract's first."""
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    return SCORERS if ensemble == "both" else (ensemble,)


# --- atomic writes ------------------------------------------------------------------------------


def _main_process() -> bool:
    """False in the other processes of a DDP run: only the main one writes."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
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
    # mkstemp makes the file private (0600); run files get the permissions of any new file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(data: Any, path: str | Path) -> Path:
    """`data` as indented JSON, atomically (only the main process writes under DDP)."""
    path = Path(path)
    if _main_process():
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")
    return path


def write_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """A CSV file (gzipped where the name ends in .gz), atomically, main process only."""
    path = Path(path)
    if _main_process():
        with atomic_path(path) as tmp:
            compression = "gzip" if path.suffix == ".gz" else None
            frame.to_csv(tmp, index=False, compression=compression)
    return path


def read_json(path: str | Path) -> Any:
    """A JSON file, or an error naming the file as corrupt (never a bare decode error)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path}: corrupt, not valid JSON ({error})") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
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


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- the cut ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """The selection applied to test events: the top `fraction` of them, ranked by logit.

    `threshold` is the out-of-fold score at that fraction, `threshold_logit` the out-of-fold
    logit there (the exact cut where probabilities round to 1); `ams` is the raw out-of-fold
    AMS there and `ams_smoothed` the smoothed curve's value that chose it. Test events are cut
    by rank, as the challenge winners did: the final model's scores are calibrated differently
    from the fold models'. `threshold_<scorer>` (and `threshold_logit_<scorer>`) are the
    lowest test score each scorer selected, the cut on that scorer's own scale, which
    predict.py applies to new events; they are None where the scorer selected no test events.
    """

    fraction: float
    threshold: float
    ams: float
    ams_smoothed: float
    threshold_logit: float | None = None
    threshold_final: float | None = None
    threshold_logit_final: float | None = None
    threshold_folds: float | None = None
    threshold_logit_folds: float | None = None

    _ALWAYS = ("fraction", "threshold", "ams", "ams_smoothed", "threshold_logit")

    def to_dict(self) -> dict[str, float | None]:
        """metrics.json's `cut`: the out-of-fold cut, and each scorer's threshold it has."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in values.items() if k in self._ALWAYS or v is not None}

    @classmethod
    def from_dict(cls, cut: Any, where: str) -> Cut:
        """metrics.json's `cut`, every value the tools apply checked to be in range."""
        if not isinstance(cut, dict) or "fraction" not in cut or "threshold" not in cut:
            raise RunFolderError(f"{where}: corrupt, no cut.fraction and cut.threshold")
        values: dict[str, float | None] = {}
        for f in fields(cls):
            value = cut.get(f.name)
            if value is None and f.name not in ("fraction", "threshold"):
                values[f.name] = math.nan if f.name.startswith("ams") else None
                continue
            fine = _number(value) and (f.name.startswith("ams") or math.isfinite(value))
            if f.name == "fraction":
                fine = fine and 0.0 < value <= 1.0
                bounds = "in (0, 1]"
            elif f.name.startswith("threshold_logit"):
                bounds = "a finite logit"
            elif f.name.startswith("threshold"):
                fine = fine and 0.0 <= value <= 1.0
                bounds = "a probability in [0, 1]"
            else:
                bounds = "a number"
            if not fine:
                raise RunFolderError(
                    f"{where}: cut.{f.name} is {value!r}; expected {bounds} (damaged?)"
                )
            values[f.name] = float(value)
        return cls(**values)

    def thresholds(self, scorer: str) -> tuple[float | None, float | None]:
        """The cut as (score, logit) thresholds on `scorer`'s scale.

        The fold ensemble of a run that scored no test events falls back to the out-of-fold
        values, its models' scale on events they did not see; a final model has none then.
        """
        if scorer == "final":
            return self.threshold_final, self.threshold_logit_final
        if scorer == "folds":
            score = self.threshold if self.threshold_folds is None else self.threshold_folds
            logit = self.threshold_logit_folds
            return score, self.threshold_logit if logit is None else logit
        raise ValueError(f"scorer must be one of {SCORERS}, got {scorer!r}")

    def select(
        self,
        scores: np.ndarray,
        scorer: str = "final",
        how: str = "fraction",
        logits: np.ndarray | None = None,
    ) -> np.ndarray:
        """Pass/fail per event: the top `fraction` (`how='fraction'`), or `scorer`'s threshold.

        Events are ranked by `logits` where given: probabilities that round to 1 do not tie.
        """
        if how not in CUTS:
            raise ValueError(f"cut must be one of {CUTS}, got {how!r}")
        if how == "fraction":
            from amsaware.metrics import select_top_fraction

            ranking = np.asarray(scores if logits is None else logits)
            return select_top_fraction(torch.from_numpy(ranking), self.fraction).numpy()
        threshold, threshold_logit = self.thresholds(scorer)
        if logits is not None and threshold_logit is not None:
            return logits >= threshold_logit
        if threshold is None:
            raise RunFolderError(
                f"the run's {scorer} model has no score threshold: the run scored no test events "
                "with it, so its cut is known only as a fraction. Use cut=fraction (the top "
                f"{self.fraction:.2%} of the file's events) or ensemble=folds."
            )
        return scores >= threshold

    def with_test_selection(
        self, scorer: str, scores: np.ndarray, selected: np.ndarray, logits: np.ndarray | None
    ) -> Cut:
        """The cut with `scorer`'s thresholds: the lowest test score (and logit) it selected."""
        if not selected.any():
            return self
        from dataclasses import replace

        low_logit = None if logits is None else float(logits[selected].min())
        return replace(
            self,
            **{
                f"threshold_{scorer}": float(scores[selected].min()),
                f"threshold_logit_{scorer}": low_logit,
            },
        )


# --- the config -------------------------------------------------------------------------------

#: The architectures a run folder may name (`model._target_`): the class's module and name, and
#: its options' types. Nothing else a config names is ever built.
ARCHITECTURES: dict[str, dict[str, type]] = {
    "amsaware.model.MLP": {"n_layers": int, "hidden_size": int, "dropout": float},
}


@dataclass(frozen=True)
class ModelSpec:
    """A run's network as plain values: a known architecture's name and its options."""

    architecture: str
    options: dict[str, int | float]

    def build(self, n_features: int) -> nn.Module:
        import importlib

        module, name = self.architecture.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        return cls(n_features=n_features, **self.options)


@dataclass(frozen=True)
class RunConfig:
    """What the tools need of a run's `.hydra/config.yaml`, every value checked."""

    path: Path
    model: ModelSpec
    folds: int
    repeats: int
    ensemble: str
    final_fit: bool
    #: The data source (`amsaware.data.sources.SOURCES`) and its checked options.
    data_source: str
    data: dict[str, Any] = field(default_factory=dict)
    #: The whole file as plain values, references unresolved (for comparing configs).
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def default_scorer(self) -> str:
        """The scorer of the run's own submission: the final fit unless ensemble=folds."""
        return "folds" if self.ensemble == "folds" else "final"

    @property
    def fold_stages(self) -> list[str]:
        """`fold0` ... `fold<R k - 1>`: with cv.repeats, R x k fold models."""
        return [fold_stage(k) for k in range(self.folds * self.repeats)]


_REFERENCE = re.compile(r"\$\{([^{}]*)\}")
_KEY_PATH = re.compile(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*")


def _substitute(value: Any, root: dict[str, Any], where: str, depth: int = 0) -> Any:
    """`value` with each `${a.b}` replaced by the plain value of key a.b of the same file.

    Only references to other keys: a resolver call (`${oc.env:...}`, `${hydra:...}`) is
    refused, so reading a run folder's config runs nothing.
    """
    if depth > 20:
        raise RunFolderError(f"{where}: references nest more than 20 deep (a cycle?)")
    if isinstance(value, dict):
        return {k: _substitute(v, root, f"{where}.{k}", depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, root, f"{where}[{i}]", depth) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(key: str) -> Any:
        if not _KEY_PATH.fullmatch(key):
            raise RunFolderError(
                f"{where}: ${{{key}}} is not a reference to another key (resolvers such as "
                "oc.env are not evaluated in a run folder's config)"
            )
        node: Any = root
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise RunFolderError(
                    f"{where}: ${{{key}}} refers to a key the config does not have"
                )
            node = node[part]
        return _substitute(node, root, key, depth + 1)

    whole = _REFERENCE.fullmatch(value)
    if whole:
        return lookup(whole.group(1))
    return _REFERENCE.sub(lambda m: str(lookup(m.group(1))), value)


def _model_spec(model: Any, where: str) -> ModelSpec:
    if not isinstance(model, dict):
        raise RunFolderError(f"{where}: model is {model!r}; expected the model section")
    target = model.get("_target_")
    if target not in ARCHITECTURES:
        raise RunFolderError(
            f"{where}: model._target_ {target!r} is not a known architecture; a run folder's "
            f"network is rebuilt only as one of {sorted(ARCHITECTURES)}"
        )
    types = ARCHITECTURES[target]
    options = {k: v for k, v in model.items() if k != "_target_"}
    if set(options) != set(types):
        raise RunFolderError(
            f"{where}: model has options {sorted(options)}; {target} takes exactly {sorted(types)}"
        )
    for key, kind in types.items():
        value = options[key]
        if not (isinstance(value, int) if kind is int else _number(value)) or isinstance(
            value, bool
        ):
            expected = "an integer" if kind is int else "a number"
            raise RunFolderError(f"{where}: model.{key} is {value!r}; expected {expected}")
        if kind is float and not math.isfinite(value):
            raise RunFolderError(f"{where}: model.{key} is {value!r}; expected a finite number")
        options[key] = kind(value)
    return ModelSpec(target, options)


def read_plain_config(path: Path) -> dict[str, Any]:
    """A YAML config as plain values: safely loaded, nothing resolved or instantiated."""
    from omegaconf import OmegaConf

    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as error:
        raise RunFolderError(
            f"{path}: corrupt, not a YAML config ({type(error).__name__})"
        ) from None
    if not isinstance(raw, dict):
        raise RunFolderError(f"{path}: corrupt, expected a YAML mapping")
    return raw


def read_config(path: Path) -> RunConfig:
    """A run's `.hydra/config.yaml` as checked plain values (see `RunFolder.config`)."""
    from amsaware.data.sources import source_options

    raw = read_plain_config(path)
    where = str(path)
    model = _model_spec(_substitute(raw.get("model"), raw, "model"), where)
    data = _substitute(raw.get("data"), raw, "data")
    try:
        source, options = source_options(data, where)
    except ValueError as error:
        raise RunFolderError(str(error)) from None
    cv = _substitute(raw.get("cv") or {}, raw, "cv")
    folds = cv.get("folds") if isinstance(cv, dict) else None
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise RunFolderError(f"{where}: cv.folds is {folds!r}; expected an integer >= 2")
    repeats = cv.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise RunFolderError(f"{where}: cv.repeats is {repeats!r}; expected an integer >= 1")
    ensemble = _substitute(raw.get("ensemble", "final"), raw, "ensemble")
    if ensemble not in ENSEMBLES:
        raise RunFolderError(f"{where}: ensemble is {ensemble!r}; expected one of {ENSEMBLES}")
    final_fit = _substitute(raw.get("final_fit", True), raw, "final_fit")
    if not isinstance(final_fit, bool):
        raise RunFolderError(f"{where}: final_fit is {final_fit!r}; expected true or false")
    return RunConfig(Path(path), model, folds, repeats, ensemble, final_fit, source, options, raw)


# --- a finished fold, for resuming -------------------------------------------------------------


@dataclass(frozen=True)
class FoldScores:
    """What a finished fold contributes to its run, kept so that a resumed run need not train
    it again: its validation rows and their logits (with a fine-tune also from before the
    second phase), its test logits (fold ensemble), and `events`, a digest of the events they
    were computed on (so that changed data is noticed)."""

    val_index: np.ndarray
    val_logits: np.ndarray
    events: str
    test_logits: np.ndarray | None = None
    pretrain_logits: np.ndarray | None = None


def events_digest(*arrays: np.ndarray) -> str:
    """sha256 of arrays' dtypes, shapes and bytes: the identity of the events a fold saw."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


# --- submissions ------------------------------------------------------------------------------


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

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

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
        return RunFolder(self.path / PRETRAIN)

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

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        """metrics.json, recording each stage's checkpoint and preprocessing files (paths and
        sha256) so that the tools load exactly those."""
        if not _main_process():
            return self.metrics_path
        record = self._stage_record()
        return write_json(metrics | ({STAGE_FILES: record} if record else {}), self.metrics_path)

    def write_json(self, data: Any, name: str) -> Path:
        """Any other JSON file of the run (e.g. `pretrain/metrics.json` via `pretrain`)."""
        return write_json(data, self.path / name)

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
        return write_frame(frame, self.oof_path)

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
        return write_frame(pd.DataFrame(columns), self.test_predictions_path(primary))

    def write_submission(
        self, event_id: np.ndarray, ranking: np.ndarray, selected: np.ndarray, primary: bool = True
    ) -> Path:
        """The challenge's submission, RankOrder following `ranking` (the logit, never tied)."""
        frame = submission_frame(event_id, ranking, selected)
        return write_frame(frame, self.submission_path(primary))

    def write_preprocessing(self, stage: str, preprocessing: FittedPreprocessing) -> Path:
        """A stage's fitted imputation and scaling statistics as JSON (no pickle)."""
        return write_json(preprocessing.to_dict(), self.preprocessing_path(stage))

    def write_checkpoint(self, stage: str, net: nn.Module) -> Path:
        """A checkpoint of `net` shaped like Lightning's (`state_dict` with `net.` keys).

        For models trained outside their own Trainer (fold-parallel training, a zero-epoch
        fine-tune), so that every stage loads the same way.
        """
        path = self.checkpoint_path(stage)
        if not _main_process():
            return path
        state = {f"net.{name}": value.detach().cpu() for name, value in net.state_dict().items()}
        checkpoint = {"state_dict": state, "pytorch-lightning_version": L.__version__}
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
        return path

    def fold_scores_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / FOLD_SCORES

    def write_fold_scores(self, stage: str, scores: FoldScores) -> Path:
        """A finished fold's scores (`FoldScores`), written after its checkpoint: the mark that
        the fold is done. NumPy's format, read back without pickle."""
        path = self.fold_scores_path(stage)
        if not _main_process():
            return path
        arrays = {
            "val_index": np.asarray(scores.val_index, dtype=np.int64),
            "val_logits": np.asarray(scores.val_logits),
            "events": np.array(scores.events),
        }
        for name in ("test_logits", "pretrain_logits"):
            if getattr(scores, name) is not None:
                arrays[name] = np.asarray(getattr(scores, name))
        with atomic_path(path) as tmp, tmp.open("wb") as handle:
            np.savez(handle, **arrays)
        return path

    def clear_stage(self, stage: str) -> None:
        """Delete what an interrupted stage left (`checkpoints/<stage>/`, its loggers' folders),
        so that it restarts from scratch without mixing files of two attempts."""
        if not _main_process():
            return
        for folder in (self.stage_dir(stage), *(self.path / n / stage for n in LOGGER_FOLDERS)):
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)

    # -- readers --

    def fold_scores(self, stage: str) -> FoldScores | None:
        """A finished fold's scores, or None where the fold did not finish."""
        path = self.fold_scores_path(stage)
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
        known = required | {"test_logits", "pretrain_logits"}
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
        return FoldScores(
            index,
            logits,
            str(arrays["events"]),
            arrays.get("test_logits"),
            arrays.get("pretrain_logits"),
        )

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
            if not (_number(value) and math.isfinite(value) and value > 0):
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
        records for them; a run folder from before metrics.json kept the record (or an
        unfinished one) has the fixed names and no hash."""
        fixed = {
            "checkpoint": (self.checkpoint_path(stage), None),
            "preprocessing": (self.preprocessing_path(stage), None),
        }
        if not self.metrics_path.is_file():
            return fixed
        record = read_json(self.metrics_path)
        record = record.get(STAGE_FILES) if isinstance(record, dict) else None
        if record is None:
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

"""What the console says while a run trains: stage names in the progress bar, a time estimate.

On a terminal, Lightning's bar redraws one line; in a pipe or a file each redraw is a new frame
joined by carriage returns (kilobytes per epoch). `progress: null` (auto) shows the bar only when
stdout is a terminal and otherwise logs one line per epoch per stage (`EpochLines`), which also
lands in the run's train.log; `progress: true|false` forces either.

Stages keep the names of the run folder (`fold0`, `fold1`, ..., `final`: checkpoints,
TensorBoard runs and metrics.json use them); the console adds a 1-based count, `fold0 [1/3]`,
so a name always means the same model and the count says how far the run is.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

log = logging.getLogger(__name__)


def stage_label(stage: str | list[str], n_fold_models: int, phase: str | None = None) -> str:
    """`fold0 [1/3]`, `final`, `fold0-2` (trained at once), plus the phase when there are two."""
    if not isinstance(stage, str):
        label = f"{stage[0]}-{stage[-1].removeprefix('fold')}" if len(stage) > 1 else stage[0]
        label += f" [{len(stage)}/{n_fold_models} at once]"
    elif stage.startswith("fold") and stage[4:].isdigit():
        label = f"{stage} [{int(stage[4:]) + 1}/{n_fold_models}]"
    else:
        label = stage
    return f"{label} {phase}" if phase else label


class StageProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar naming the stage and epoch (`fold0 [1/3] epoch 2/10`) instead of
    the logger's version (`v_num`), which Lightning cuts to its last 4 characters."""

    def __init__(self, *args: Any, stage: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Set per trainer by `amsaware.experiment` (one trainer per stage and phase).
        self.stage = stage

    def _description(self, trainer: L.Trainer) -> str:
        epoch = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        return f"{self.stage} {epoch}" if self.stage else epoch

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(self._description(trainer))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


def show_bar(progress: bool | None, trainer_bar: bool | None = None) -> bool:
    """Whether a stage shows Lightning's bar: `progress` if set, else only on a terminal.

    `trainer_bar` is `trainer.enable_progress_bar` where the config sets it: Lightning's own
    switch (`+trainer.enable_progress_bar=false`) means `progress=false`, epoch lines included.
    """
    if trainer_bar is False:
        return False
    if progress is not None:
        return bool(progress)
    return sys.stdout.isatty()


#: What an epoch line reports, in order, where the stage logged it.
EPOCH_METRICS = ("train/loss", "val/loss", "val/ams_max")


class EpochLines(L.Callback):
    """One log line per finished epoch: `fold0 [1/3] epoch 2/10: train/loss 0.512 ... (3 s)`.

    Replaces the progress bar where nobody watches it redraw (a pipe, a file, a batch job); the
    line goes through logging, so Hydra's train.log keeps it too. Metrics are Lightning's
    `callback_metrics` (a fold-parallel stage logs per fold to its loggers only: its line has
    the epoch and time). Lightning calls callbacks' `on_train_epoch_end` before the module's,
    which logs `train/loss`, so an epoch's line is written by the next hook (the next epoch's
    start or the end of training), with nothing run in between.
    """

    def __init__(self, stage: str = "") -> None:
        #: Set per trainer by `amsaware.experiment`, as `StageProgressBar.stage`.
        self.stage = stage
        self._started = time.perf_counter()
        self._pending: tuple[int, int, float] | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        took = time.perf_counter() - self._started
        self._pending = (trainer.current_epoch + 1, trainer.max_epochs, took)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        if self._pending is None or not trainer.is_global_zero:
            return
        epoch, epochs, took = self._pending
        self._pending = None
        values = []
        for name in EPOCH_METRICS:
            value = trainer.callback_metrics.get(name)
            if value is not None and value.numel() == 1 and math.isfinite(float(value)):
                values.append(f"{name} {float(value):.4g}")
        where = f"{self.stage} epoch {epoch}/{epochs}" if self.stage else f"epoch {epoch}/{epochs}"
        log.info("%s: %s (%s)", where, ", ".join(values) or "no metrics", format_seconds(took))


class _DropMessages(logging.Filter):
    """Drops records whose message starts with one of `prefixes` (known, harmless notices)."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


#: Third-party notices that say nothing to act on, by logger and message start: MLflow's
#: first use of a SQLite store and of an experiment name (each run folder's store is new).
KNOWN_NOTICES = {
    "lightning.pytorch.loggers.mlflow": ("Experiment with name",),
}


def quiet_libraries() -> None:
    """Keep libraries' informational chatter off the console and train.log: MLflow's own
    INFO lines (database creation and migration; MLflow sets its level from
    `MLFLOW_LOGGING_LEVEL` when imported, so a user's own setting wins) and the notices in
    `KNOWN_NOTICES`. Their warnings and errors still show."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if "mlflow" in sys.modules:  # imported already: its level is set
        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())
    for name, prefixes in KNOWN_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(*prefixes))


class RunClock:
    """Logs one line per finished stage: its time, the run's elapsed time and an estimate of
    the time left, from the stages done so far.

    Stages are weighted by their training events: with k folds a fold trains on (k-1)/k of the
    events and the final fit on all of them, so the final fit counts k/(k-1) folds.
    """

    def __init__(
        self,
        n_fold_models: int,
        n_folds: int,
        final: bool,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.clock = clock
        self.n_fold_models = n_fold_models
        self.final_weight = n_folds / (n_folds - 1) if final else 0.0
        self.total = n_fold_models + self.final_weight
        self.done_weight = 0.0
        self.started = self.last = clock()

    def stage_done(self, label: str, n_fold_models: int = 1, final: bool = False) -> float:
        """Record that `label` finished (`n_fold_models` folds, or the final fit); returns the
        estimated seconds left."""
        now = self.clock()
        self.done_weight += self.final_weight if final else n_fold_models
        elapsed = now - self.started
        left = elapsed / self.done_weight * max(self.total - self.done_weight, 0.0)
        log.info(
            "%s done in %s; run: %s elapsed, about %s left",
            label,
            format_seconds(now - self.last),
            format_seconds(elapsed),
            format_seconds(left),
        )
        self.last = now
        return left


def format_seconds(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"

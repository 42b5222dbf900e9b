"""The protocol: stratified CV -> out-of-fold predictions -> cut -> final fit -> test scores.

The protocol functions take plain values and callables, so they are testable without Hydra;
`run_experiment` is the one place that turns a composed config into those values.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from amsaware import plots
from amsaware.checks import check_run, resuming
from amsaware.data.datamodule import HiggsDataModule, stratified_folds
from amsaware.data.formats import check_trainable
from amsaware.data.schema import B_TOT, S_TOT, Dataset, EventTable
from amsaware.loggers import StageLoggers
from amsaware.metrics import (
    add_to_logit_sums,
    ams_curve,
    ams_of_selection,
    evaluate,
)
from amsaware.model import SignificanceClassifier, predict_logit
from amsaware.parallel import fit_folds_in_parallel
from amsaware.progress import RunClock, StageProgressBar, stage_label
from amsaware.pruning import fold_hook
from amsaware.run_folder import (
    FINAL,
    Cut,
    FoldScores,
    RunFolder,
    RunFolderError,
    events_digest,
    fold_stage,
    scorers_of,
)
from amsaware.search import check_optimized_metric, load_for_trial
from amsaware.stopping import EarlyStopping, median_epochs

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """Training produced non-finite scores or metrics (a NaN loss, an exploding step size)."""


ModuleFactory = Callable[[], SignificanceClassifier]
#: A Trainer for one stage ("fold0", "final"), or one for several trained at once (a logger each).
TrainerFactory = Callable[[str | list[str]], L.Trainer]
#: Writes a stage's checkpoint and preprocessing where its callbacks would have.
StageWriter = Callable[[str, nn.Module, HiggsDataModule], None]
#: The early-stopping callbacks of the fold stages, by (stage, phase): their best epochs set
#: the final fit's epoch count.
EarlyStops = dict[tuple[str, str | None], EarlyStopping]


def check_cut_options(min_fraction: float, max_fraction: float, smoothing: float) -> None:
    """Reject impossible `cut.*` options before any training starts."""
    if not 0.0 < min_fraction < max_fraction <= 1.0:
        raise ValueError(
            "cut.min_fraction and cut.max_fraction must satisfy 0 < min < max <= 1, got "
            f"{min_fraction} and {max_fraction}"
        )
    if smoothing < 0.0:
        raise ValueError(f"cut.smoothing must be >= 0, got {smoothing}")


def choose_cut(
    scores: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray,
    min_fraction: float = 0.05,
    max_fraction: float = 0.5,
    smoothing: float = 0.02,
    step: float = 0.001,
    s_tot: float = S_TOT,
    b_tot: float = B_TOT,
) -> Cut:
    """The selected fraction that maximises the smoothed out-of-fold AMS curve.

    The raw maximum is noisy at small selections, where a handful of heavy background events
    move the AMS a lot. So the curve is read on a grid of fractions (`step`), averaged over a
    moving window `smoothing` wide, and the argmax is taken within [min_fraction, max_fraction].
    The challenge winners read their cut (~15%) off such a cross-validated curve.
    """
    check_cut_options(min_fraction, max_fraction, smoothing)
    curve = ams_curve(
        torch.from_numpy(scores), torch.from_numpy(label), torch.from_numpy(weight), s_tot, b_tot
    )
    half = round(smoothing / step / 2)
    lo = max(step, min_fraction - half * step)
    hi = min(1.0, max_fraction + half * step)
    grid = np.arange(lo, hi + step / 2, step)
    n_events = curve.n_events
    n_wanted = np.clip(np.ceil(grid * n_events - 1e-9).astype(np.int64), 1, n_events)
    point = np.searchsorted(curve.n_selected.numpy(), n_wanted)  # first cut keeping >= wanted
    raw = curve.ams.numpy()[point]
    kernel = np.full(2 * half + 1, 1.0 / (2 * half + 1))
    padded = np.pad(raw, half, mode="edge")
    smoothed = np.convolve(padded, kernel, mode="valid")
    inside = np.flatnonzero((grid >= min_fraction - 1e-12) & (grid <= max_fraction + 1e-12))
    best = inside[np.argmax(smoothed[inside])]
    # Report the fraction a cut can really select: a run of tied scores cannot be split.
    return Cut(
        fraction=float(curve.fraction.numpy()[point[best]]),
        threshold=float(curve.thresholds.numpy()[point[best]]),
        ams=float(raw[best]),
        ams_smoothed=float(smoothed[best]),
    )


def choose_cut_of(cv: CrossValidation, train: EventTable, options: dict[str, Any]) -> Cut:
    """`choose_cut` on the out-of-fold scores, ranking events by their logits; the threshold
    is reported as a probability, the score users see."""
    cut = choose_cut(cv.ranking, train.label, train.weight, **options)
    if cv.logits is None:
        return cut
    probability = float(torch.sigmoid(torch.tensor(cut.threshold, dtype=torch.float64)))
    return replace(cut, threshold=probability, threshold_logit=cut.threshold)


def fit(
    datamodule: HiggsDataModule,
    make_module: ModuleFactory,
    make_trainer: TrainerFactory,
    stage: str,
    seed: int,
) -> SignificanceClassifier:
    """Train a freshly initialised module (seeded) on the datamodule's training rows."""
    L.seed_everything(seed, verbose=False)
    module = make_module()
    make_trainer(stage).fit(module, datamodule=datamodule)
    return module


@dataclass(frozen=True)
class FineTune:
    """The second training phase (`finetune=<loss>`): the trained network continues with its
    own loss, batch size, optimizer, scheduler and epochs. Nothing is re-initialised.

    `make_module(net)` wraps the trained network in the phase's module; `make_trainer(stage,
    callbacks)` builds the phase's trainer, which writes the stage's checkpoint.
    `save_stage` writes checkpoint and preprocessing where a zero-epoch phase trains nothing.
    """

    make_module: Callable[[nn.Module], SignificanceClassifier]
    make_trainer: Callable[[str | list[str], list[L.Callback]], L.Trainer]
    batch_size: int
    max_epochs: int
    save_stage: StageWriter | None = None

    def fit(
        self, pretrained: SignificanceClassifier, datamodule: HiggsDataModule, stage: str
    ) -> SignificanceClassifier:
        """Continue `pretrained.net` on the same rows and preprocessing, in larger batches."""
        module = self.make_module(pretrained.net)
        if self.max_epochs == 0:
            if self.save_stage is not None:
                self.save_stage(stage, module.net, datamodule)
            return module
        module.epoch_offset = pretrained.epoch  # the stage's curves continue
        trainer = self.make_trainer(stage, [])
        trainer.fit(module, datamodule=datamodule.rebatched(self.batch_size))
        return module


@dataclass(frozen=True)
class CrossValidation:
    """Per-fold validation metrics and the out-of-fold score of every training event.

    With `cv.repeats` > 1 there are R x k fold models (fold index `r * k + fold`) and `scores`
    is each event's mean out-of-fold probability over the R repeats; `fold` is its fold in the
    first repeat. With a fine-tune, `pretrain` holds the same before the fine-tune phase.
    """

    fold_metrics: list[dict[str, float]]
    fold: np.ndarray
    scores: np.ndarray
    #: With `test`: the fold models' mean probability per test event (the fold ensemble).
    test_scores: np.ndarray | None = None
    pretrain: CrossValidation | None = None
    #: The ranking keys of `scores` and `test_scores`: the logit of the (mean) probability,
    #: which keeps apart events whose probability rounds to 1 (`metrics.logit_of_mean`).
    logits: np.ndarray | None = None
    test_logits: np.ndarray | None = None

    @property
    def ranking(self) -> np.ndarray:
        """What cuts rank events by: the logits, or the scores where none were kept."""
        return self.scores if self.logits is None else self.logits


@dataclass(frozen=True)
class _FoldPlan:
    """One fold model to train: its index over all repeats, rows and seed."""

    index: int
    repeat: int
    train_index: np.ndarray
    val_index: np.ndarray
    seed: int

    @property
    def stage(self) -> str:
        return fold_stage(self.index)


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of repeat `repeat`'s split; its fold k trains with `repeat_seed + k`.

    Repeat 0 is the plain k-fold CV. The offset keeps repeats of one run apart from the repeats
    of runs seeded a few apart (seed 1's second repeat is not seed 2's first).
    """
    return seed + 1000 * repeat


def plan_folds(label: np.ndarray, n_folds: int, seed: int, repeats: int = 1) -> list[_FoldPlan]:
    """The R x k fold models of `repeats` stratified k-fold splits."""
    check_folds(n_folds, repeats)
    plans = []
    for r in range(repeats):
        split_seed = repeat_seed(seed, r)
        for k, (train_index, val_index) in enumerate(stratified_folds(label, n_folds, split_seed)):
            plans.append(_FoldPlan(r * n_folds + k, r, train_index, val_index, split_seed + k))
    return plans


def check_folds(n_folds: int, repeats: int) -> None:
    """Reject fold counts that cannot be meant, naming the key."""
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"cv.folds must be an integer >= 2, got {n_folds!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"cv.repeats must be an integer >= 1, got {repeats!r}")


@dataclass
class _Accumulator:
    """Sums of out-of-fold (and test) probabilities over repeats, and per-fold metrics."""

    n_events: int
    n_test: int | None
    totals: tuple[float, float]
    fold_metrics: list[dict[str, float]]
    score_sum: np.ndarray
    score_count: np.ndarray
    fold: np.ndarray
    test_sum: np.ndarray | None
    n_models: int = 0
    #: Per event, log sum_models p and log sum_models (1 - p): the logit of the mean probability.
    log_p: np.ndarray | None = None
    log_q: np.ndarray | None = None
    test_log_p: np.ndarray | None = None
    test_log_q: np.ndarray | None = None

    @classmethod
    def empty(cls, n_events: int, n_test: int | None, totals: tuple[float, float]):
        return cls(
            n_events,
            n_test,
            totals,
            [],
            np.zeros(n_events),
            np.zeros(n_events, dtype=np.int64),
            np.full(n_events, -1, dtype=np.int64),
            None if n_test is None else np.zeros(n_test),
        )

    def add(
        self, plan: _FoldPlan, z_val: torch.Tensor, y_val, w_val, z_test: np.ndarray | None
    ) -> dict[str, float]:
        """Add one fold model's validation and test logits."""
        p_val = torch.sigmoid(z_val)
        if not torch.isfinite(p_val).all():
            # Stop at the first diverged fold: the others would cost time and say nothing.
            raise DivergedError(
                f"fold {plan.index} diverged: {int((~torch.isfinite(p_val)).sum())} of "
                f"{len(p_val)} validation scores are not finite (NaN loss or exploding weights; "
                "lower optimizer.lr or check the loss settings)"
            )
        metrics = {"fold": plan.index, **evaluate(p_val, y_val, w_val, "val/", *self.totals)}
        if plan.repeat:
            metrics["repeat"] = plan.repeat
        self.fold_metrics.append(metrics)
        self.score_sum[plan.val_index] += p_val.numpy()
        self.score_count[plan.val_index] += 1
        if self.log_p is None:
            self.log_p, self.log_q = np.full((2, self.n_events), -np.inf)
        rows = plan.val_index
        self.log_p[rows], self.log_q[rows] = add_to_logit_sums(
            self.log_p[rows], self.log_q[rows], z_val.numpy()
        )
        if plan.repeat == 0:
            self.fold[plan.val_index] = plan.index
        if self.test_sum is not None and z_test is not None:
            self.test_sum += torch.sigmoid(torch.from_numpy(z_test)).numpy()
            if self.test_log_p is None:
                self.test_log_p, self.test_log_q = np.full((2, len(z_test)), -np.inf)
            self.test_log_p, self.test_log_q = add_to_logit_sums(
                self.test_log_p, self.test_log_q, z_test
            )
        self.n_models += 1
        return metrics

    def result(self, pretrain: CrossValidation | None = None) -> CrossValidation:
        scores = np.full(self.n_events, np.nan)
        seen = self.score_count > 0
        scores[seen] = self.score_sum[seen] / self.score_count[seen]
        test = None if self.test_sum is None else self.test_sum / self.n_models
        logits = np.full(self.n_events, np.nan)
        if self.log_p is not None:
            logits[seen] = self.log_p[seen] - self.log_q[seen]
        test_logits = None
        if test is not None and self.test_log_p is not None:
            test_logits = self.test_log_p - self.test_log_q
        return CrossValidation(
            self.fold_metrics, self.fold, scores, test, pretrain, logits, test_logits
        )


@dataclass(frozen=True)
class FoldStore:
    """Each finished fold's scores in its run folder (`RunFolder.write_fold_scores`), and, when
    resuming, the folds found finished there instead of training them again.

    A fold without saved scores was interrupted (or never started): its folders are cleared
    and it trains from scratch, seeded as in an uninterrupted run, so the resumed run's results
    are those of a run never stopped.
    """

    run: RunFolder
    resume: bool = False

    @staticmethod
    def _events(table: EventTable, plan: _FoldPlan, test: EventTable | None) -> str:
        rows = plan.val_index
        parts = [table.event_id[rows], table.features[rows], table.label[rows], table.weight[rows]]
        if test is not None:
            parts += [test.event_id, test.features]
        return events_digest(*parts)

    def load(
        self, plan: _FoldPlan, table: EventTable, test: EventTable | None, finetune: bool
    ) -> FoldScores | None:
        """The fold's saved scores when resuming and it finished; else None (folders cleared)."""
        if not self.resume:
            return None
        scores = self.run.fold_scores(plan.stage)
        if scores is None:
            self.run.clear_stage(plan.stage)
            return None
        path = self.run.fold_scores_path(plan.stage)
        same = np.array_equal(scores.val_index, plan.val_index)
        same = same and scores.events == self._events(table, plan, test)
        same = same and (scores.test_logits is None) == (test is None)
        same = same and (scores.pretrain_logits is None) == (not finetune)
        if not same:
            raise RunFolderError(
                f"{path}: this fold was scored on other events than the command's data gives "
                "now (the data changed since the run): it cannot be resumed; train it again "
                "into another folder or with overwrite=true"
            )
        return scores

    def save(
        self,
        plan: _FoldPlan,
        table: EventTable,
        test: EventTable | None,
        z_val: torch.Tensor,
        z_test: np.ndarray | None,
        z_pretrain: torch.Tensor | None,
    ) -> None:
        """Mark the fold finished: its scores, written after its checkpoint."""
        scores = FoldScores(
            plan.val_index,
            z_val.numpy(),
            self._events(table, plan, test),
            z_test,
            None if z_pretrain is None else z_pretrain.numpy(),
        )
        self.run.write_fold_scores(plan.stage, scores)


def cross_validate(
    table: EventTable,
    n_folds: int,
    batch_size: int,
    seed: int,
    make_module: ModuleFactory,
    make_trainer: TrainerFactory,
    test: EventTable | None = None,
    parallel: bool = False,
    save_stage: StageWriter | None = None,
    repeats: int = 1,
    finetune: FineTune | None = None,
    on_fold: Callable[[int, dict[str, float]], None] | None = None,
    clock: RunClock | None = None,
    store: FoldStore | None = None,
) -> CrossValidation:
    """Train one model per stratified fold and score its held-out events (and `test`'s).

    `repeats` > 1 repeats the k-fold CV with other splits (`plan_folds`) and averages each
    event's out-of-fold probability over them. `finetune` continues every fold model in a
    second phase; the result's `pretrain` then holds the scores from before it.
    `parallel=True` trains the fold models at once as one batched model
    (`amsaware.parallel`); `save_stage` then writes each fold's checkpoint and preprocessing,
    which the sequential path's callbacks write. `on_fold(k, metrics)` is called after each
    fold with its validation metrics (a search's pruning may raise there to stop the run).
    `clock` logs each finished stage's time. `store` keeps each finished fold's scores and,
    when resuming, reloads the folds that finished instead of training them (sequential only).
    """
    if parallel and store is not None and store.resume:
        raise ValueError("resuming needs sequential folds (cv.parallel=false)")
    plans = plan_folds(table.label, n_folds, seed, repeats)
    totals = (table.s_tot, table.b_tot)
    n_test = None if test is None else len(test)
    after = _Accumulator.empty(len(table), n_test, totals)
    before = _Accumulator.empty(len(table), None, totals) if finetune else None
    if parallel:
        trained = fit_folds_in_parallel(
            table,
            [(p.train_index, p.val_index) for p in plans],
            batch_size,
            [p.seed for p in plans],
            make_module,
            make_trainer,
            finetune=finetune,
        )
        if clock is not None:
            clock.stage_done(stage_label([p.stage for p in plans], len(plans)), len(plans))
    for j, plan in enumerate(plans):
        saved = None if store is None else store.load(plan, table, test, finetune is not None)
        if saved is not None:
            label = stage_label(plan.stage, len(plans))
            log.info("%s: finished before the interruption; its scores reloaded", label)
            _add_saved(plan, saved, table, batch_size, after, before, on_fold)
            continue
        if parallel:
            datamodule, net, logger = trained[j].datamodule, trained[j].net, trained[j].logger
            pretrained_net = trained[j].pretrained
            if save_stage is not None:
                save_stage(plan.stage, net, datamodule)
        else:
            log.info(
                "%s: training on %d events, validating on %d",
                stage_label(plan.stage, len(plans)),
                len(plan.train_index),
                len(plan.val_index),
            )
            datamodule = HiggsDataModule(
                table, batch_size, plan.seed, train_index=plan.train_index, val_index=plan.val_index
            )
            module = fit(datamodule, make_module, make_trainer, plan.stage, plan.seed)
            pretrained_net = None
            if finetune is not None:
                pretrained_net = copy.deepcopy(module.net)
                module = finetune.fit(module, datamodule, plan.stage)
            net, logger = module.net, module.loggers
            if clock is not None:
                clock.stage_done(stage_label(plan.stage, len(plans)))
        x_val, y_val, w_val = datamodule.val_tensors
        z_pretrain = None if before is None else predict_logit(pretrained_net, x_val)
        if before is not None:
            before.add(plan, z_pretrain, y_val, w_val, None)
        z_val = predict_logit(net, x_val)
        z_test = None if test is None else predict_logit(net, datamodule.preprocess(test)).numpy()
        metrics = after.add(plan, z_val, y_val, w_val, z_test)
        if store is not None and not parallel:
            store.save(plan, table, test, z_val, z_test, z_pretrain)
        if on_fold is not None:
            on_fold(plan.index, metrics)
        p_val = torch.sigmoid(z_val).numpy()
        plots.log_to_logger(logger, "val/", p_val, y_val.numpy(), w_val.numpy(), totals=totals)
    return after.result(None if before is None else before.result())


def _add_saved(
    plan: _FoldPlan,
    saved: FoldScores,
    table: EventTable,
    batch_size: int,
    after: _Accumulator,
    before: _Accumulator | None,
    on_fold: Callable[[int, dict[str, float]], None] | None,
) -> None:
    """A finished fold's saved scores into the accumulators, as if it had just trained."""
    datamodule = HiggsDataModule(
        table, batch_size, plan.seed, train_index=plan.train_index, val_index=plan.val_index
    )
    _, y_val, w_val = datamodule.val_tensors  # the labels and weights training scores with
    if before is not None:
        before.add(plan, torch.from_numpy(saved.pretrain_logits), y_val, w_val, None)
    metrics = after.add(plan, torch.from_numpy(saved.val_logits), y_val, w_val, saved.test_logits)
    if on_fold is not None:
        on_fold(plan.index, metrics)


def summarise_cv(cv: CrossValidation, table: EventTable) -> dict[str, Any]:
    """The `cv` section of metrics.json: folds, their mean and std, and out-of-fold metrics."""
    names = [name for name in cv.fold_metrics[0] if name not in ("fold", "repeat")]
    values = {name: np.array([m[name] for m in cv.fold_metrics]) for name in names}
    oof = evaluate(
        torch.from_numpy(cv.scores),
        torch.from_numpy(table.label.astype(np.int64)),
        torch.from_numpy(table.weight),
        "oof/",
        table.s_tot,
        table.b_tot,
    )
    return {
        "folds": cv.fold_metrics,
        "mean": {name: float(v.mean()) for name, v in values.items()},
        "std": {name: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for name, v in values.items()},
        "oof": oof,
    }


def test_metrics(
    test: EventTable, scores: np.ndarray, selected: np.ndarray, prefix: str = "test/"
) -> dict[str, float]:
    """`test/...` (or `prefix`) metrics, `ams` at the chosen cut and the leaderboard splits'.

    Public and private AMS follow the challenge: one global selection, scored on the 'b' and
    'v' events separately with weights rescaled within each split.
    """
    # Copies: arrays read from a file can be read-only (pandas' copy-on-write), which
    # torch.from_numpy warns about.
    p = torch.tensor(scores)
    y = torch.tensor(test.label, dtype=torch.int64)
    w = torch.tensor(test.weight)
    chosen = torch.tensor(selected)
    totals = (test.s_tot, test.b_tot)
    result = evaluate(p, y, w, prefix, *totals)
    result[f"{prefix}ams"] = float(ams_of_selection(chosen, y, w, *totals))
    if test.kaggle_set is not None:
        for name, letter in (("public", "b"), ("private", "v")):
            rows = torch.from_numpy(test.kaggle_set == letter)
            if rows.any():
                ams = ams_of_selection(chosen[rows], y[rows], w[rows], *totals)
                result[f"{prefix}ams_{name}"] = float(ams)
    return result


@dataclass(frozen=True)
class ScorerResult:
    """One scorer's (`final` or `folds`) test scores (probabilities), selection, `test/` or
    `test_folds/` metrics, and the logits that rank events."""

    scores: np.ndarray
    selected: np.ndarray
    metrics: dict[str, float] | None
    logits: np.ndarray | None = None


def final_fit(
    dataset: Dataset,
    cut: Cut,
    batch_size: int,
    seed: int,
    make_module: ModuleFactory,
    make_trainer: TrainerFactory,
    finetune: FineTune | None = None,
    clock: RunClock | None = None,
) -> ScorerResult | None:
    """Train on all training events (both phases with `finetune`) and select the top
    `cut.fraction` of the test events."""
    datamodule = HiggsDataModule(dataset.train, batch_size, seed)
    log.info("final fit on all %d training events", len(dataset.train))
    module = fit(datamodule, make_module, make_trainer, FINAL, seed)
    if finetune is not None:
        module = finetune.fit(module, datamodule, FINAL)
    if clock is not None:
        clock.stage_done(FINAL, final=True)
    if dataset.test is None:
        return None
    logits = predict_logit(module.net, datamodule.preprocess(dataset.test))
    scores = torch.sigmoid(logits).numpy()
    selected = cut.select(scores, "final", "fraction", logits.numpy())
    labelled = dataset.test.labelled
    metrics = test_metrics(dataset.test, scores, selected) if labelled else None
    return ScorerResult(scores, selected, metrics, logits.numpy())


def check_ensemble(ensemble: str) -> str:
    """`ensemble` must name the scorers of a run (final|folds|both)."""
    scorers_of(ensemble)
    return ensemble


def score_with_folds(
    test: EventTable, cut: Cut, scores: np.ndarray, logits: np.ndarray | None = None
) -> ScorerResult:
    """The fold ensemble's test selection (top `cut.fraction`) and `test_folds/...` metrics."""
    selected = cut.select(scores, "folds", "fraction", logits)
    labelled = test.labelled
    metrics = test_metrics(test, scores, selected, "test_folds/") if labelled else None
    return ScorerResult(scores, selected, metrics, logits)


def write_test_results(
    run: RunFolder, test: EventTable, results: dict[str, ScorerResult], cut: Cut
) -> tuple[Cut, dict[str, Any]]:
    """Test predictions and submissions of each scorer ('final' and/or 'folds'), and metrics.

    The contract's files hold the first scorer's; with both, the fold ensemble's go to
    `*_folds.csv`. Metrics are `test/...` for the final model and `test_folds/...` for the
    ensemble. Returns the cut with each scorer's threshold (the lowest selected test score:
    the run's cut on that scorer's scale, which predict.py applies to new events) and the
    metrics sections.
    """
    sections: dict[str, Any] = {}
    for k, (scorer, result) in enumerate(results.items()):
        primary = k == 0
        run.write_test_predictions(test.event_id, result.scores, result.logits, primary)
        # RankOrder follows the logit: probabilities that round to 1 would tie.
        ranking = result.scores if result.logits is None else result.logits
        run.write_submission(test.event_id, ranking, result.selected, primary)
        cut = cut.with_test_selection(scorer, result.scores, result.selected, result.logits)
        if result.metrics is not None:
            section = "test" if scorer == "final" else "test_folds"
            sections[section] = result.metrics
            log.info("%s: %s", section, _format(result.metrics))
    return cut, sections


def lookup_metric(metrics: dict[str, Any], name: str) -> float:
    """A metric of metrics.json by name (docs/run-folder.md): `oof/`, `val/` (fold mean), `test/`,
    or `cut/ams`, `cut/ams_smoothed`, `cut/fraction` of the chosen cut.

    `cut/ams_smoothed` is the steadier search objective on small samples: `oof/ams_max` is
    often reached at a selection of a few dozen events, where it mostly measures noise.
    """
    sections = {
        "oof": metrics["cv"]["oof"],
        "val": metrics["cv"]["mean"],
        "test": metrics.get("test", {}),
        "test_folds": metrics.get("test_folds", {}),
        "cut": {f"cut/{key}": value for key, value in metrics.get("cut", {}).items()},
    }
    section = sections.get(name.split("/", 1)[0], {})
    if name not in section:
        known = sorted(key for values in sections.values() for key in values)
        raise KeyError(f"optimized_metric {name!r} is not among this run's metrics: {known}")
    return float(section[name])


# --------------------------------------------------------------------------------------------
# Composition from config (the only Hydra-aware part of the library)


def _quiet_lightning() -> None:
    """Route Lightning's messages through Hydra's handlers and drop its per-trainer banners.

    Lightning installs console handlers of its own, so under Hydra every line printed twice; its
    device and tip banners would repeat for every fold. Warnings still show.
    """
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    # lightning 2.6 with torch 2.13 warns about its own use of a deprecated torch class.
    warnings.filterwarnings(
        "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
    )


def _loss_totals(loss: DictConfig, s_tot: float, b_tot: float) -> dict[str, float]:
    """The data's totals for a loss class that takes `s_tot`/`b_tot` and was not given them."""
    from hydra.utils import get_class

    parameters = inspect.signature(get_class(loss._target_)).parameters
    totals = {"s_tot": s_tot, "b_tot": b_tot}
    return {
        name: value for name, value in totals.items() if name in parameters and name not in loss
    }


def _make_module(
    cfg: DictConfig,
    section: DictConfig,
    net: nn.Module,
    phase: int | None,
    totals: tuple[float, float],
) -> SignificanceClassifier:
    """A phase's module around `net`: `section`'s (the config's, or `finetune`'s) loss,
    optimizer and scheduler; `phase` 0 or 1 with a fine-tune, None without."""
    from hydra.utils import instantiate

    return SignificanceClassifier(
        net=net,
        loss=instantiate(section.loss, **_loss_totals(section.loss, *totals)),
        optimizer=instantiate(section.optimizer),
        s_tot=totals[0],
        b_tot=totals[1],
        scheduler=instantiate(section.scheduler) if section.get("scheduler") else None,
        compile_mode=cfg.get("compile"),
        phase=phase,
    )


def _factories(
    cfg: DictConfig,
    run_dir: Path,
    n_features: int,
    totals: tuple[float, float] = (S_TOT, B_TOT),
    loggers: StageLoggers | None = None,
    early_stops: EarlyStops | None = None,
) -> tuple[ModuleFactory, TrainerFactory, StageWriter]:
    """The first phase's module and trainer factories and the stage writer.

    With a fine-tune the first phase writes no checkpoint or preprocessing: the stage's files
    are those of the model after the fine-tune (`_finetune`'s trainer writes them).
    """
    from hydra.utils import instantiate

    finetuning = bool(cfg.get("finetune"))

    def make_module() -> SignificanceClassifier:
        net = instantiate(cfg.model, n_features=n_features)
        return _make_module(cfg, cfg, net, 0 if finetuning else None, totals)

    def make_trainer(stages: str | list[str]) -> L.Trainer:
        phase = "pretrain" if finetuning else None
        return _trainer(
            cfg,
            run_dir,
            stages,
            stage_files=not finetuning,
            phase=phase,
            loggers=loggers,
            early_stops=early_stops,
        )

    def save_stage(stage: str, net: nn.Module, datamodule: HiggsDataModule) -> None:
        callbacks = cfg.get("callbacks") or {}
        run = RunFolder(run_dir)
        if callbacks.get("model_checkpoint"):
            run.write_checkpoint(stage, net)
        if callbacks.get("preprocessing"):
            run.write_preprocessing(stage, datamodule.fitted_preprocessing)

    return make_module, make_trainer, save_stage


def _trainer(
    cfg: DictConfig,
    run_dir: Path,
    stages: str | list[str],
    stage_files: bool = True,
    max_epochs: int | None = None,
    extra_callbacks: Sequence[L.Callback] = (),
    phase: str | None = None,
    loggers: StageLoggers | None = None,
    early_stops: EarlyStops | None = None,
) -> L.Trainer:
    """One stage's trainer; for several trained at once (cv.parallel), a logger per stage
    and no per-stage callbacks (`save_stage` writes their files after the fit).

    `stage_files=False` leaves out the callbacks that write into the stage's folder
    (checkpoint, preprocessing): a first phase whose model is not the stage's final one.
    A `StageProgressBar` is told the stage (and `phase`) it shows. `loggers` (default: a
    fresh `StageLoggers` of `cfg.logger`) gives each stage its loggers. An `EarlyStopping`
    callback is kept in `early_stops` per fold stage; the final fit, which has no validation,
    gets none and trains for the folds' median best epoch count instead.
    """
    from hydra.utils import instantiate

    together = not isinstance(stages, str)
    if loggers is None:
        loggers = StageLoggers(cfg.get("logger"))
    logger: Any = False
    if loggers and together:
        if len(loggers.kinds()) > 1:
            raise ValueError(
                "cv.parallel=true logs each fold through one logger; choose one logger "
                f"(logger=tensorboard|csv|mlflow|wandb), not {loggers.kinds()}"
            )
        logger = [item for name in stages for item in loggers.make(name)]
    elif loggers:
        logger = loggers.make(stages)
    callbacks = list(extra_callbacks)
    for callback in (cfg.get("callbacks") or {}).values():
        if callback is None:  # switched off, e.g. callbacks.model_checkpoint=null
            continue
        if "dirpath" in callback:  # a per-stage folder: checkpoints/<stage>/
            if together or not stage_files:
                continue
            dirpath = str(RunFolder(run_dir).stage_dir(stages))
            callback = OmegaConf.merge(callback, {"dirpath": dirpath})
        callbacks.append(instantiate(callback))
    stopping = [c for c in callbacks if isinstance(c, EarlyStopping)]
    if stopping and together:
        raise ValueError(
            "callbacks.early_stopping needs each fold's own trainer: use it with cv.parallel=false"
        )
    if stages == "final" and stopping:
        callbacks = [c for c in callbacks if not isinstance(c, EarlyStopping)]
        epochs = [
            stop.epochs
            for (_, stop_phase), stop in (early_stops or {}).items()
            if stop_phase == phase and stop.epochs is not None
        ]
        if epochs:
            max_epochs = median_epochs(epochs)
            log.info("final fit%s: %d epochs, the folds' median best", _of(phase), max_epochs)
    elif stopping and early_stops is not None and isinstance(stages, str):
        early_stops[(stages, phase)] = stopping[0]
    n_fold_models = int(cfg.cv.folds) * int(cfg.cv.get("repeats", 1))
    for callback in callbacks:
        if isinstance(callback, StageProgressBar):
            callback.stage = stage_label(stages, n_fold_models, phase)
    overrides: dict[str, Any] = {} if max_epochs is None else {"max_epochs": max_epochs}
    if not any(isinstance(callback, ModelCheckpoint) for callback in callbacks):
        # Else Lightning adds its own, writing epoch=...ckpt files nothing reads.
        overrides["enable_checkpointing"] = False
    if stages == "final":
        overrides["limit_val_batches"] = 0  # the final fit has no validation rows
    return instantiate(cfg.trainer, logger=logger, callbacks=callbacks, **overrides)


FINETUNE_LOSSES = (
    "amsaware.losses.SoftAMSLoss",
    "amsaware.losses.AsimovLoss",
    "amsaware.losses.DeltaZBarLoss",
    "amsaware.losses.BCELoss",
)


def check_finetune(finetune: DictConfig | None, totals: tuple[float, float]) -> None:
    """Reject a fine-tune that cannot be meant before any training, naming the key.

    The loss and optimizer are built once here, so a bad loss option fails now, not after
    the first phase of the first fold.
    """
    if not finetune:
        return
    from hydra.utils import instantiate

    loss = finetune.get("loss")
    target = None if not loss else loss.get("_target_")
    if target not in FINETUNE_LOSSES:
        raise ValueError(
            f"finetune.loss._target_ must be one of {list(FINETUNE_LOSSES)} "
            f"(finetune=ams|asimov|deltaz|bce), got {target!r}"
        )
    for key, least in (("batch_size", 1), ("max_epochs", 0)):
        value = finetune.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"finetune.{key} must be an integer >= {least}, got {value!r}")
    optimizer = finetune.get("optimizer")
    if not optimizer or "_target_" not in optimizer:
        raise ValueError("finetune.optimizer must name a torch optimizer (_target_, _partial_)")
    lr = optimizer.get("lr")
    if lr is not None and not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"finetune.optimizer.lr must be a number > 0, got {lr!r}")
    try:
        instantiate(loss, **_loss_totals(loss, *totals))
    except Exception as error:  # the loss's own message names its option
        raise ValueError(f"finetune.loss: {error}") from error


def _finetune(
    cfg: DictConfig,
    run_dir: Path,
    totals: tuple[float, float],
    save_stage: StageWriter,
    loggers: StageLoggers | None = None,
    early_stops: EarlyStops | None = None,
) -> FineTune | None:
    """The fine-tune phase of `cfg.finetune`, or None without one."""
    ft = cfg.get("finetune")
    if not ft:
        return None

    def make_module(net: nn.Module) -> SignificanceClassifier:
        return _make_module(cfg, ft, net, 1, totals)

    def make_trainer(stages: str | list[str], callbacks: list[L.Callback]) -> L.Trainer:
        phase = f"finetune={_choice('finetune') or ft.loss._target_.rsplit('.', 1)[-1]}"
        return _trainer(
            cfg, run_dir, stages, True, int(ft.max_epochs), callbacks, phase, loggers, early_stops
        )

    return FineTune(make_module, make_trainer, int(ft.batch_size), int(ft.max_epochs), save_stage)


def _of(phase: str | None) -> str:
    return f" ({phase})" if phase else ""


def early_stopping_section(early_stops: EarlyStops) -> dict[str, Any]:
    """metrics.json's `early_stopping`: per fold (and phase) the epochs up to the best one,
    and the final fit's (their median)."""
    first = next(iter(early_stops.values()))
    folds: dict[str, int | None] = {}
    phases: dict[str | None, list[int]] = {}
    for (stage, phase), stop in early_stops.items():
        folds[stage if phase is None else f"{stage}/{phase}"] = stop.epochs
        if stop.epochs is not None:
            phases.setdefault(phase, []).append(stop.epochs)
    final = {
        "final" if phase is None else f"final/{phase}": median_epochs(epochs)
        for phase, epochs in phases.items()
    }
    return {
        "monitor": first.monitor,
        "mode": first.mode,
        "restore_best": first.restore_best,
        "fold_epochs": folds,
        "final_epochs": final,
    }


def _choice(group: str) -> str | None:
    """The option Hydra selected for a config group (`loss=ams` -> "ams"), when under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def describe_run(cfg: DictConfig) -> str:
    """The run's key choices in one line, logged at start: `loss=X` also sets the model size,
    learning rate and batch size, which would otherwise go unseen."""
    model = cfg.model

    def number(value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    sizes = "x".join(str(model.get(key)) for key in ("n_layers", "hidden_size") if key in model)
    sizes += f", dropout={number(model.get('dropout'))}" if "dropout" in model else ""
    parts = [
        f"loss={_choice('loss') or cfg.loss._target_.rsplit('.', 1)[-1]}",
        f"model={model._target_.rsplit('.', 1)[-1]}({sizes})",
        f"lr={number(cfg.optimizer.get('lr'))}",
        f"batch={cfg.data.batch_size}",
        f"epochs={cfg.trainer.max_epochs}",
    ]
    ft = cfg.get("finetune")
    if ft:
        name = _choice("finetune") or ft.loss._target_.rsplit(".", 1)[-1]
        parts.append(
            f"finetune={name}(lr={number(ft.optimizer.get('lr'))}, batch={ft.batch_size}, "
            f"epochs={ft.max_epochs})"
        )
    parts.append(f"data={_choice('data') or cfg.data._target_.rsplit('.', 1)[-1]}")
    parts.append(f"cv={cfg.cv.folds} folds x {cfg.cv.get('repeats', 1)}")
    parts.append(f"seed={cfg.seed}")
    return " ".join(parts)


def run_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The settings that tell runs apart in TensorBoard's HParams view, as flat scalars.

    The selected loss and data (config choices), every scalar of `loss`, `model` and
    `optimizer`, and the training sizes; `_target_` entries name the class.
    """
    from hydra.core.hydra_config import HydraConfig

    params: dict[str, Any] = {}
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        groups = ("loss", "finetune", "data")
        params |= {group: choices.get(group) for group in groups if choices.get(group)}

    def flatten(section: Any, prefix: str) -> None:
        for key, value in OmegaConf.to_container(section, resolve=True).items():
            if key == "_target_":
                params[f"{prefix}.class"] = str(value).rsplit(".", 1)[-1]
            elif isinstance(value, bool | int | float | str) and key != "_partial_":
                params[f"{prefix}.{key}"] = value

    for group in ("loss", "model", "optimizer"):
        flatten(cfg[group], group)
    if cfg.get("finetune"):
        flatten(cfg.finetune, "finetune")
        for group in ("loss", "optimizer"):
            flatten(cfg.finetune[group], f"finetune.{group}")
    params |= {
        "data.batch_size": int(cfg.data.batch_size),
        "trainer.max_epochs": int(cfg.trainer.max_epochs),
        "cv.folds": int(cfg.cv.folds),
        "cv.repeats": int(cfg.cv.get("repeats", 1)),
        "seed": int(cfg.seed),
    }
    return params


def _log_hparams(cfg: DictConfig, metrics: dict[str, Any], loggers: StageLoggers) -> None:
    """One `summary` run per run folder and logger: its settings and final metrics (for
    TensorBoard's HParams view, MLflow's and W&B's run tables)."""
    final = dict(metrics["cv"]["oof"]) | {"cut/fraction": metrics["cut"]["fraction"]}
    final |= metrics.get("test", {}) | metrics.get("test_folds", {})
    final = {name: value for name, value in final.items() if math.isfinite(value)}
    for logger in loggers.make("summary"):
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(run_hparams(cfg), final)
        else:
            logger.log_hyperparams(run_hparams(cfg))
            logger.log_metrics(final)
        logger.finalize("success")


def _log_oof_figures(
    scores: np.ndarray, train: EventTable, cut: Cut, loggers: StageLoggers
) -> None:
    """The out-of-fold ROC, AMS curve (cut marked) and score figures, as each figure-taking
    logger's run `oof`."""
    for logger in loggers.make("oof", only=plots.FIGURE_LOGGERS):
        totals = (train.s_tot, train.b_tot)
        plots.log_to_logger(
            logger, "oof/", scores, train.label, train.weight, 0, cut.fraction, totals=totals
        )
        logger.finalize("success")


def load_dataset(cfg: DictConfig) -> Dataset:
    """Instantiate the data source (`data._target_`); `data.batch_size` belongs to training.

    Without a final fit nothing scores test events, so a source that generates them
    (`data.n_test`, the synthetic one) generates none: a search trial at default size would
    otherwise spend seconds making 550,000 events it never looks at.
    """
    from hydra.utils import instantiate

    source = OmegaConf.to_container(cfg.data, resolve=True)
    source.pop("batch_size", None)
    if not cfg.final_fit and source.get("n_test"):
        source["n_test"] = 0
    return load_for_trial(source, instantiate)


def run_experiment(cfg: DictConfig) -> float:
    """Cross-validate, choose the cut, fit on everything, score the test events, write artifacts.

    Returns `cfg.optimized_metric` (default `oof/ams_max`) for Hydra's sweepers.
    """
    _quiet_lightning()
    try:
        return _run(cfg)
    except Exception as error:
        # In a search this is the trial's reason for failing, kept in its train.log.
        log.error("run failed: %s: %s", type(error).__name__, error)
        raise


def _run(cfg: DictConfig) -> float:
    check_run(cfg)  # schema, impossible values, one run per folder, Ctrl-C (amsaware.checks)
    check_cut_options(**cfg.cut)
    ensemble = check_ensemble(cfg.get("ensemble", "final"))
    repeats = cfg.cv.get("repeats", 1)
    check_folds(cfg.cv.folds, repeats)
    check_optimized_metric(cfg.optimized_metric, bool(cfg.final_fit), ensemble)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    log.info("run: %s", describe_run(cfg))
    started = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    dataset = load_dataset(cfg)
    check_trainable(dataset.train, cfg.cv.folds)
    totals = (dataset.train.s_tot, dataset.train.b_tot)
    check_finetune(cfg.get("finetune"), totals)
    loggers = StageLoggers(cfg.get("logger"))
    try:
        return _run_with(cfg, dataset, run_dir, started, loggers)
    finally:
        loggers.close()


def _run_with(
    cfg: DictConfig, dataset: Dataset, run_dir: Path, started: float, loggers: StageLoggers
) -> float:
    ensemble = check_ensemble(cfg.get("ensemble", "final"))
    repeats = cfg.cv.get("repeats", 1)
    totals = (dataset.train.s_tot, dataset.train.b_tot)
    early_stops: EarlyStops = {}
    n_features = len(dataset.train.feature_names)
    factories = _factories(cfg, run_dir, n_features, totals, loggers, early_stops)
    make_module, make_trainer, save_stage = factories
    finetune = _finetune(cfg, run_dir, totals, save_stage, loggers, early_stops)
    batch_size = int(cfg.data.batch_size)
    cut_options = {**cfg.cut, "s_tot": totals[0], "b_tot": totals[1]}

    fold_test = dataset.test if cfg.final_fit and ensemble != "final" else None
    final = bool(cfg.final_fit) and ensemble != "folds"
    clock = RunClock(int(cfg.cv.folds) * int(repeats), int(cfg.cv.folds), final)
    parallel = bool(cfg.cv.get("parallel", False))
    run = RunFolder(run_dir)
    if resuming(cfg):
        log.info("resuming the run in %s: finished folds are reloaded, the rest trained", run)
        for stage in (FINAL, "oof", "summary"):  # after the folds: always trained again
            run.clear_stage(stage)
    store = None if parallel else FoldStore(run, resuming(cfg))
    cv = cross_validate(
        dataset.train,
        cfg.cv.folds,
        batch_size,
        cfg.seed,
        make_module,
        make_trainer,
        fold_test,
        parallel=parallel,
        save_stage=save_stage,
        repeats=repeats,
        finetune=finetune,
        on_fold=fold_hook(cfg),
        clock=clock,
        store=store,
    )
    train = dataset.train
    metrics: dict[str, Any] = {}
    if cv.pretrain is not None:
        metrics["pretrain"] = _write_pretrain(run, cv.pretrain, train, cut_options)
    run.write_oof_predictions(
        train.event_id, cv.fold, train.label, train.weight, cv.scores, cv.logits
    )
    cut = choose_cut_of(cv, train, cut_options)
    metrics = {"cv": summarise_cv(cv, train), "cut": cut.to_dict()} | metrics
    log.info("out-of-fold: %s", _format(metrics["cv"]["oof"]))
    log.info("cut: top %.1f%% of events (out-of-fold AMS %.3f)", 100 * cut.fraction, cut.ams)
    _log_oof_figures(cv.scores, train, cut, loggers)

    if cfg.final_fit:
        results = {}
        if ensemble != "folds":
            results[FINAL] = final_fit(
                dataset, cut, batch_size, cfg.seed, make_module, make_trainer, finetune, clock
            )
        if dataset.test is None:
            log.warning("%s has no test events to score: no submission written", train.source)
        else:
            if cv.test_scores is not None:
                results["folds"] = score_with_folds(
                    dataset.test, cut, cv.test_scores, cv.test_logits
                )
            cut, sections = write_test_results(run, dataset.test, results, cut)
            metrics["cut"] = cut.to_dict()
            metrics |= sections
    metrics["run"] = {
        "seconds": round(time.perf_counter() - started, 1),
        "n_train": len(train),
        "n_test": 0 if dataset.test is None else len(dataset.test),
        "ensemble": ensemble,
        "n_fold_models": len(cv.fold_metrics),
    }
    if early_stops:
        metrics["early_stopping"] = early_stopping_section(early_stops)
    # The totals every AMS of this run is rescaled to; compare.py reads them back.
    metrics["data"] = {"s_tot": totals[0], "b_tot": totals[1]}
    run.write_metrics(metrics)
    if loggers:
        _log_hparams(cfg, metrics, loggers)
    log.info("run folder: %s", run_dir)
    value = lookup_metric(metrics, cfg.optimized_metric)
    if not math.isfinite(value):
        raise DivergedError(f"optimized_metric {cfg.optimized_metric} is {value}")
    return value


def _write_pretrain(
    run: RunFolder, cv: CrossValidation, train: EventTable, cut_options: dict[str, Any]
) -> dict[str, Any]:
    """The first phase's out-of-fold results, before the fine-tune: `metrics.json`'s
    `pretrain` section, and `pretrain/` holding them as a run folder of their own
    (`oof_predictions.csv`, `metrics.json`), so `compare.py runs='[RUN/pretrain,RUN]'`
    bootstraps the fine-tune against its own starting point."""
    cut = choose_cut_of(cv, train, cut_options)
    section = {"cv": summarise_cv(cv, train), "cut": cut.to_dict()}
    log.info("before the fine-tune, out-of-fold: %s", _format(section["cv"]["oof"]))
    pretrain = run.pretrain
    pretrain.write_oof_predictions(
        train.event_id, cv.fold, train.label, train.weight, cv.scores, cv.logits
    )
    totals = {"s_tot": cut_options["s_tot"], "b_tot": cut_options["b_tot"]}
    pretrain.write_metrics(section | {"data": totals})
    return section


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if math.isfinite(v))

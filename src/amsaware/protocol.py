"""The protocol: stratified CV -> out-of-fold predictions -> cut -> final fit -> test scores.

Pure functions of plain values and callables (tables, folds, module and trainer factories), so
every step is testable without Hydra; `amsaware.experiment` composes them from a config.
What a step writes goes through `amsaware.run_folder`.

`cross_validate` composes `train_folds` (the fold models, sequential or all at once with
`cv.parallel`; both train through `amsaware.phase`) with scoring and accumulating. After each
fold model it calls the per-fold hook `on_fold(report)` with a `FoldReport`: the fold's stage
name, its validation row indices into the training table, its metrics and logits, and `score`,
a `RawScorer` that maps a raw feature matrix (n x the table's features, NaN where undefined,
exactly as `EventTable.features` holds them) to logits through that fold's fitted
preprocessing and network, e.g. to re-score shifted copies of its held-out events. A fold
reloaded on resume from its saved scores has no model in memory: its `score` is None (load
its checkpoint with `amsaware.inference` where one is needed). Figures, pruning and the fold
ensemble's scorer hang on that hook (`amsaware.experiment`). For the test events, the final
fit's `ScorerResult.score` is its `RawScorer`, and the fold ensemble's is the logit of the
fold models' mean probability (`phase.ensemble_scorer`), kept where no fold was reloaded.

About 640 lines: the protocol's steps in order, one concept; training itself is in `phase`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from amsaware.checks import check_cut_options
from amsaware.data.datamodule import HiggsDataModule, stratified_folds
from amsaware.data.schema import B_TOT, S_TOT, Dataset, EventTable
from amsaware.metrics import (
    add_to_logit_sums,
    ams_curve,
    evaluate,
    test_metrics,
)
from amsaware.model import predict_logit
from amsaware.parallel import fit_folds_in_parallel
from amsaware.phase import (
    FineTune,
    ModuleFactory,
    RawScorer,
    StageWriter,
    TrainedFold,
    TrainerFactory,
    fit,
    raw_scorer,
)
from amsaware.progress import RunClock, stage_label
from amsaware.run_folder import (
    FINAL,
    Cut,
    FoldScores,
    RunFolder,
    RunFolderError,
    events_digest,
    fold_stage,
)

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """Training produced non-finite scores or metrics (a NaN loss, an exploding step size)."""


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
    # Copies: arrays read from pandas may be read-only views, which torch cannot wrap.
    curve = ams_curve(*(torch.tensor(np.asarray(a)) for a in (scores, label, weight)), s_tot, b_tot)
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
    plans = []
    for r in range(repeats):
        split_seed = repeat_seed(seed, r)
        for k, (train_index, val_index) in enumerate(stratified_folds(label, n_folds, split_seed)):
            plans.append(_FoldPlan(r * n_folds + k, r, train_index, val_index, split_seed + k))
    return plans


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
        self,
        plan: _FoldPlan,
        z_val: torch.Tensor,
        y_val,
        w_val,
        z_test: np.ndarray | None,
        extra: dict[str, float] | None = None,
    ) -> dict[str, float]:
        """Add one fold model's validation and test logits (and `extra` validation metrics
        that need more than them: val/sigma_mu)."""
        p_val = torch.sigmoid(z_val)
        if not torch.isfinite(p_val).all():
            # Stop at the first diverged fold: the others would cost time and say nothing.
            raise DivergedError(
                f"fold {plan.index} diverged: {int((~torch.isfinite(p_val)).sum())} of "
                f"{len(p_val)} validation scores are not finite (NaN loss or exploding weights; "
                "lower optimizer.lr or check the loss settings)"
            )
        metrics = {"fold": plan.index, **evaluate(p_val, y_val, w_val, "val/", *self.totals)}
        metrics |= extra or {}
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
    are those of a run never stopped. Before anything is reloaded or trained, every finished
    fold is checked (`finished`): it must have been scored on exactly the command's data (a
    digest of every training and test event, not only the fold's own rows, since the other
    rows trained it) and its checkpoint and preprocessing must be the files it finished with
    (their sha256, recorded in its scores). `data` names the data in the refusal.
    """

    run: RunFolder
    resume: bool = False
    data: str = "the command's data"

    @staticmethod
    def digest(table: EventTable, test: EventTable | None) -> str:
        """The identity of the events a fold saw (its training table, with the test events
        where scored): what a resumed fold and `fit.reference` are checked against."""
        parts = [table.event_id, table.features, table.label, table.weight]
        if test is not None:
            parts += [test.event_id, test.features]
        return events_digest(*parts)

    def finished(
        self,
        plans: list[_FoldPlan],
        table: EventTable,
        test: EventTable | None,
        finetune: bool,
    ) -> dict[int, FoldScores]:
        """The saved scores of `plans`' finished folds, by fold index, each checked; then the
        unfinished folds' folders are cleared. Empty when not resuming."""
        if not self.resume:
            return {}
        events = self.digest(table, test)
        found = {}
        for plan in plans:
            scores = self.run.fold_scores(plan.stage)
            if scores is not None:
                self._check(plan, scores, events, test is not None, finetune)
                found[plan.index] = scores
        for plan in plans:
            if plan.index not in found:
                self.run.clear_stage(plan.stage)
        return found

    def _check(
        self, plan: _FoldPlan, scores: FoldScores, events: str, tested: bool, finetune: bool
    ) -> None:
        path = self.run.fold_scores_path(plan.stage)
        same = np.array_equal(scores.val_index, plan.val_index) and scores.events == events
        same = same and (scores.test_logits is None) == (not tested)
        same = same and (scores.pretrain_logits is None) == (not finetune)
        if not same:
            raise RunFolderError(
                f"{path}: this fold was scored on other events than {self.data} gives now "
                f"(fold {plan.index}: the training or test data changed since the run was "
                "interrupted): it cannot be resumed; train again with overwrite=true or into "
                "another folder"
            )
        self.run.check_stage_files(plan.stage, scores.files, f"fold {plan.index}")

    def load(
        self, plan: _FoldPlan, table: EventTable, test: EventTable | None, finetune: bool
    ) -> FoldScores | None:
        """One fold's saved scores when resuming and it finished, checked; else None (its
        folders cleared)."""
        return self.finished([plan], table, test, finetune).get(plan.index)

    def save(
        self,
        plan: _FoldPlan,
        table: EventTable,
        test: EventTable | None,
        z_val: torch.Tensor,
        z_test: np.ndarray | None,
        z_pretrain: torch.Tensor | None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Mark the fold finished: its scores, the validation `metrics` that need its network
        (val/sigma_mu) and its files' digests, written after its checkpoint."""
        scores = FoldScores(
            plan.val_index,
            z_val.numpy(),
            self.digest(table, test),
            z_test,
            None if z_pretrain is None else z_pretrain.numpy(),
            self.run.stage_digests(plan.stage),
            dict(metrics or {}),
        )
        self.run.write_fold_scores(plan.stage, scores)


@dataclass(frozen=True)
class FoldReport:
    """What the per-fold hook (`cross_validate(on_fold=...)`) is given after each fold model.

    `score` is the fold's `RawScorer`: logits of a raw feature matrix (n x the table's
    features, NaN where undefined, as `EventTable.features` holds them) through the fold's own
    fitted preprocessing and network, e.g. to re-score shifted copies of its held-out events
    (`table.features[val_index]`). A fold reloaded on resume from its saved scores has no
    network in memory: its `score` is None (and `loggers` too).
    """

    index: int
    stage: str
    repeat: int
    #: The fold's `val/...` metrics (with `fold`, and `repeat` after the first).
    metrics: dict[str, float]
    #: The fold's held-out rows: indices into the training table.
    val_index: np.ndarray
    val_logits: np.ndarray
    #: The held-out rows' labels and weights, as the metrics were computed on them.
    label: np.ndarray
    weight: np.ndarray
    totals: tuple[float, float]
    loggers: Any = None
    score: RawScorer | None = None

    @property
    def reloaded(self) -> bool:
        """Whether the fold was reloaded from its saved scores instead of trained."""
        return self.score is None


#: Called after each fold model with its `FoldReport` (pruning may raise there to stop).
FoldHook = Callable[[FoldReport], None]


def train_folds(
    table: EventTable,
    plans: list[_FoldPlan],
    batch_size: int,
    make_module: ModuleFactory,
    make_trainer: TrainerFactory,
    test: EventTable | None = None,
    parallel: bool = False,
    save_stage: StageWriter | None = None,
    finetune: FineTune | None = None,
    clock: RunClock | None = None,
    store: FoldStore | None = None,
) -> Iterator[tuple[_FoldPlan, TrainedFold | FoldScores]]:
    """The fold models of `plans`, one at a time: trained (sequentially, or all at once with
    `parallel`), or, when resuming, a finished fold's saved scores from `store`.

    A generator, so that the caller scores and saves each sequential fold before the next one
    trains: a run stopped between folds keeps the finished ones.
    """
    if parallel and store is not None and store.resume:
        raise ValueError("resuming needs sequential folds (cv.parallel=false)")
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
        for plan, fold in zip(plans, trained, strict=True):
            if save_stage is not None:
                save_stage(plan.stage, fold.net, fold.datamodule)
            yield plan, fold
        return
    # Every finished fold is checked before any is reloaded or any trains.
    finished = {} if store is None else store.finished(plans, table, test, finetune is not None)
    for plan in plans:
        label = stage_label(plan.stage, len(plans))
        saved = finished.get(plan.index)
        if saved is not None:
            log.info("%s: finished before the interruption; its scores reloaded", label)
            yield plan, saved
            continue
        log.info(
            "%s: training on %d events, validating on %d",
            label,
            len(plan.train_index),
            len(plan.val_index),
        )
        datamodule = HiggsDataModule(
            table, batch_size, plan.seed, train_index=plan.train_index, val_index=plan.val_index
        )
        module = fit(datamodule, make_module, make_trainer, plan.stage, plan.seed)
        pretrained = None
        if finetune is not None:
            pretrained = copy.deepcopy(module.net)
            module = finetune.fit(module, datamodule, plan.stage)
        if clock is not None:
            clock.stage_done(label)
        extra = module.final_validation_metrics(datamodule)  # val/sigma_mu, with systematics
        yield plan, TrainedFold(module.net, datamodule, module.loggers, pretrained, extra)


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
    on_fold: FoldHook | None = None,
    clock: RunClock | None = None,
    store: FoldStore | None = None,
) -> CrossValidation:
    """Train one model per stratified fold and score its held-out events (and `test`'s).

    `repeats` > 1 repeats the k-fold CV with other splits (`plan_folds`) and averages each
    event's out-of-fold probability over them. `finetune` continues every fold model in a
    second phase; the result's `pretrain` then holds the scores from before it.
    `parallel=True` trains the fold models at once as one batched model
    (`amsaware.parallel`); `save_stage` then writes each fold's checkpoint and preprocessing,
    which the sequential path's callbacks write. `on_fold(report)` is called after each fold
    with its `FoldReport` (a search's pruning may raise there to stop the run; figures are
    drawn there). `clock` logs each finished stage's time. `store` keeps each finished fold's
    scores and, when resuming, reloads the folds that finished instead of training them
    (sequential only). Training is `train_folds`; scoring and accumulating happen here.
    """
    plans = plan_folds(table.label, n_folds, seed, repeats)
    totals = (table.s_tot, table.b_tot)
    n_test = None if test is None else len(test)
    after = _Accumulator.empty(len(table), n_test, totals)
    before = _Accumulator.empty(len(table), None, totals) if finetune else None
    folds = train_folds(
        table, plans, batch_size, make_module, make_trainer, test, parallel, save_stage,
        finetune, clock, store,
    )  # fmt: skip
    for plan, fold in folds:
        if isinstance(fold, FoldScores):
            datamodule = HiggsDataModule(
                table, batch_size, plan.seed, train_index=plan.train_index, val_index=plan.val_index
            )
            _, y_val, w_val = datamodule.val_tensors  # the labels and weights training scores with
            z_val, z_test = torch.from_numpy(fold.val_logits), fold.test_logits
            z_pretrain = None if before is None else torch.from_numpy(fold.pretrain_logits)
            loggers, score, extra = None, None, fold.metrics  # val/sigma_mu as it was
        else:
            x_val, y_val, w_val = fold.datamodule.val_tensors
            z_pretrain = None if before is None else predict_logit(fold.pretrained, x_val)
            z_val = predict_logit(fold.net, x_val)
            z_test = None
            if test is not None:
                z_test = predict_logit(fold.net, fold.datamodule.preprocess(test)).numpy()
            loggers, score, extra = fold.logger, fold.scorer(), fold.metrics
        if before is not None:
            before.add(plan, z_pretrain, y_val, w_val, None)
        metrics = after.add(plan, z_val, y_val, w_val, z_test, extra)
        if store is not None and not parallel and score is not None:
            store.save(plan, table, test, z_val, z_test, z_pretrain, extra)
        if on_fold is not None:
            report = FoldReport(
                plan.index, plan.stage, plan.repeat, metrics, plan.val_index, z_val.numpy(),
                y_val.numpy(), w_val.numpy(), totals, loggers, score,
            )  # fmt: skip
            on_fold(report)
    return after.result(None if before is None else before.result())


def summarise_cv(cv: CrossValidation, table: EventTable) -> dict[str, Any]:
    """The `cv` section of metrics.json: folds, their mean and std, and out-of-fold metrics."""
    # A metric some fold lacks (val/sigma_mu of a fold saved by an older amsaware and reloaded
    # on resume) has no fold mean.
    names = [
        name
        for name in cv.fold_metrics[0]
        if name not in ("fold", "repeat") and all(name in m for m in cv.fold_metrics)
    ]
    values = {name: np.array([m[name] for m in cv.fold_metrics]) for name in names}
    oof = evaluate(
        torch.from_numpy(cv.scores),
        torch.from_numpy(table.label.astype(np.int64)),
        torch.tensor(table.weight),  # a copy: a table read by pandas may hold read-only arrays
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


@dataclass(frozen=True)
class ScorerResult:
    """One scorer's (`final` or `folds`) test scores (probabilities), selection, `test/` or
    `test_folds/` metrics, and the logits that rank events."""

    scores: np.ndarray
    selected: np.ndarray
    metrics: dict[str, float] | None
    logits: np.ndarray | None = None
    #: The scorer's logits of raw test-like features (`RawScorer`): the final model through
    #: its preprocessing, or the fold ensemble (`ensemble_scorer`); None where not kept.
    score: RawScorer | None = None


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
    return ScorerResult(
        scores, selected, metrics, logits.numpy(), raw_scorer(module.net, datamodule)
    )


def score_with_folds(
    test: EventTable,
    cut: Cut,
    scores: np.ndarray,
    logits: np.ndarray | None = None,
    score: RawScorer | None = None,
) -> ScorerResult:
    """The fold ensemble's test selection (top `cut.fraction`) and `test_folds/...` metrics;
    `score` is the ensemble's `RawScorer` where the fold models are in memory."""
    selected = cut.select(scores, "folds", "fraction", logits)
    labelled = test.labelled
    metrics = test_metrics(test, scores, selected, "test_folds/") if labelled else None
    return ScorerResult(scores, selected, metrics, logits, score)


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
            log.info("%s: %s", section, format_metrics(result.metrics))
    return cut, sections


def format_metrics(metrics: dict[str, float]) -> str:
    """Metrics for a log line, four decimals, non-finite ones left out."""
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if math.isfinite(v))

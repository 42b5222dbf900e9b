"""A run from a composed config: `run_experiment(cfg)` builds the data, the module and trainer
factories, the loggers and the run folder from `cfg` and runs `amsaware.protocol` with them.

The protocol itself takes plain values; the config is read here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch import nn

from amsaware.checks import (
    check_finetune,
    check_fit_events,
    check_fit_reference_data,
    check_run,
    read_fit_reference,
)
from amsaware.cli import reported_by_the_tool
from amsaware.data.datamodule import HiggsDataModule, Needs, PriorDraws, ShiftedCopies
from amsaware.data.formats import check_trainable
from amsaware.data.schema import B_TOT, S_TOT, Dataset, EventTable
from amsaware.data.systematics import background_processes, check_norms
from amsaware.fit_stage import (
    BACKGROUND,
    FitReference,
    HeldOutScores,
    describe,
    no_systematics,
    run_fit,
)
from amsaware.inferno import InfernoLoss, SigmaMu, nuisance_options
from amsaware.loggers import (
    StageLoggers,
    choice,
    describe_run,
    log_fit,
    log_fold_figures,
    log_hparams,
    log_oof_figures,
)
from amsaware.model import SignificanceClassifier, is_parameterised
from amsaware.phase import (
    EarlyStops,
    FineTune,
    ModuleFactory,
    RawScorer,
    StageWriter,
    TrainerFactory,
    ensemble_scorer,
)
from amsaware.progress import (
    EpochLines,
    RunClock,
    StageProgressBar,
    quiet_libraries,
    show_bar,
    stage_label,
)
from amsaware.protocol import (
    CrossValidation,
    DivergedError,
    FoldHook,
    FoldReport,
    FoldStore,
    choose_cut_of,
    cross_validate,
    final_fit,
    format_metrics,
    score_with_folds,
    summarise_cv,
    write_test_results,
)
from amsaware.pruning import fold_hook
from amsaware.report import build_metrics, lookup_metric
from amsaware.run_folder import FINAL, Cut, RunFolder
from amsaware.search import load_for_trial
from amsaware.settings import FitSettings, Settings, loss_totals
from amsaware.stopping import EarlyStopping, median_epochs

log = logging.getLogger(__name__)


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
    quiet_libraries()  # MLflow's store notices
    # lightning 2.6 with torch 2.13 warns about its own use of a deprecated torch class.
    warnings.filterwarnings(
        "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
    )


def build_module(
    settings: Settings,
    section: DictConfig,
    net: nn.Module,
    phase: int | None,
    totals: tuple[float, float],
    processes: tuple[str, ...] = (BACKGROUND,),
) -> SignificanceClassifier:
    """A phase's module around `net`: `section`'s (the config's, or `finetune`'s) loss,
    optimizer and scheduler; `phase` 0 or 1 with a fine-tune, None without.

    An INFERNO loss takes its nuisances from the run's systematics and the data's background
    `processes`, and its batches then carry the shifted copies; any other loss trains on
    prior draws with `augment`. With a systematics group every module's validation rows carry
    their shifted copies too, for val/sigma_mu (`inferno.SigmaMu`)."""
    from hydra.utils import get_class, instantiate

    options = loss_totals(section.loss, *totals)
    is_inferno = get_class(section.loss._target_) is InfernoLoss
    if is_inferno and settings.systematics is not None:
        options |= nuisance_options(settings.systematics, processes)
    loss = instantiate(section.loss, **options)
    needs: Needs | None = None
    sigma_mu: SigmaMu | None = None
    if settings.systematics is not None:  # validation's shifted copies give val/sigma_mu
        copies = ShiftedCopies(settings.systematics, processes)
        train: ShiftedCopies | PriorDraws | None = copies if is_inferno else None
        if not is_inferno and settings.augment is not None:
            augment = settings.augment
            train = PriorDraws(
                settings.systematics, augment.grid, augment.norm, is_parameterised(net)
            )
        needs = Needs(train, copies)
        fit = settings.fit or FitSettings()  # binned as the run's fit bins
        norms = nuisance_options(settings.systematics, processes)["norms"]
        sigma_mu = SigmaMu(
            processes, norms, fit.bins, mc_stat=fit.mc_stat, s_tot=totals[0], b_tot=totals[1]
        )
    return SignificanceClassifier(
        net=net,
        loss=loss,
        needs=needs,
        sigma_mu=sigma_mu,
        optimizer=instantiate(section.optimizer),
        s_tot=totals[0],
        b_tot=totals[1],
        scheduler=instantiate(section.scheduler) if section.get("scheduler") else None,
        compile_mode=settings.compile,
        phase=phase,
    )


def _factories(
    cfg: DictConfig,
    run_dir: Path,
    n_features: int,
    totals: tuple[float, float] = (S_TOT, B_TOT),
    loggers: StageLoggers | None = None,
    early_stops: EarlyStops | None = None,
    settings: Settings | None = None,
    processes: tuple[str, ...] = (BACKGROUND,),
) -> tuple[ModuleFactory, TrainerFactory, StageWriter]:
    """The first phase's module and trainer factories and the stage writer.

    With a fine-tune the first phase writes no checkpoint or preprocessing: the stage's files
    are those of the model after the fine-tune (`_finetune`'s trainer writes them).
    """
    from hydra.utils import instantiate

    settings = settings or Settings.from_config(cfg)
    finetuning = settings.finetune is not None

    def make_module() -> SignificanceClassifier:
        net = instantiate(cfg.model, n_features=n_features)
        return build_module(settings, cfg, net, 0 if finetuning else None, totals, processes)

    def make_trainer(stages: str | list[str]) -> L.Trainer:
        phase = "pretrain" if finetuning else None
        return _trainer(
            cfg,
            settings,
            run_dir,
            stages,
            stage_files=not finetuning,
            phase=phase,
            loggers=loggers,
            early_stops=early_stops,
        )

    def save_stage(stage: str, net: nn.Module, datamodule: HiggsDataModule) -> None:
        run = RunFolder(run_dir)
        if settings.checkpoints:
            run.write_checkpoint(stage, net)
        if settings.preprocessing:
            run.write_preprocessing(stage, datamodule.fitted_preprocessing)

    return make_module, make_trainer, save_stage


def _trainer(
    cfg: DictConfig,
    settings: Settings,
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
    if loggers and together:  # one logger kind (checks.check_parallel)
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
    stopping = [c for c in callbacks if isinstance(c, EarlyStopping)]  # sequential only
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
    overrides: dict[str, Any] = {} if max_epochs is None else {"max_epochs": max_epochs}
    if not show_bar(settings.progress, cfg.trainer.get("enable_progress_bar")):  # a pipe, a file
        callbacks = [c for c in callbacks if not isinstance(c, StageProgressBar)]
        callbacks.append(EpochLines())
        overrides["enable_progress_bar"] = False
    for callback in callbacks:
        if isinstance(callback, StageProgressBar | EpochLines):
            callback.stage = stage_label(stages, settings.cv.n_models, phase)
    if not any(isinstance(callback, ModelCheckpoint) for callback in callbacks):
        # Else Lightning adds its own, writing epoch=...ckpt files nothing reads.
        overrides["enable_checkpointing"] = False
    if stages == "final":
        overrides["limit_val_batches"] = 0  # the final fit has no validation rows
    return instantiate(cfg.trainer, logger=logger, callbacks=callbacks, **overrides)


def _finetune(
    cfg: DictConfig,
    settings: Settings,
    run_dir: Path,
    totals: tuple[float, float],
    save_stage: StageWriter,
    loggers: StageLoggers | None = None,
    early_stops: EarlyStops | None = None,
    processes: tuple[str, ...] = (BACKGROUND,),
) -> FineTune | None:
    """The fine-tune phase of `cfg.finetune` (its loss, optimizer and scheduler) with the
    options of `settings.finetune`, or None without one."""
    if settings.finetune is None:
        return None
    ft = cfg.finetune

    def make_module(net: nn.Module) -> SignificanceClassifier:
        return build_module(settings, ft, net, 1, totals, processes)

    def make_trainer(stages: str | list[str], callbacks: list[L.Callback]) -> L.Trainer:
        phase = f"finetune={choice('finetune') or ft.loss._target_.rsplit('.', 1)[-1]}"
        epochs = settings.finetune.max_epochs
        return _trainer(
            cfg, settings, run_dir, stages, True, epochs, callbacks, phase, loggers, early_stops
        )

    options = dataclasses.asdict(settings.finetune)
    return FineTune(make_module, make_trainer, **options, save_stage=save_stage)


def _of(phase: str | None) -> str:
    return f" ({phase})" if phase else ""


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
        # In a search this is the trial's reason for failing, kept in its train.log; train.py
        # prints a single run's bad input itself, once (amsaware.cli).
        if type(error).__name__ == "TrialPruned":  # optuna's: the sweeper logs it, at INFO
            raise
        if not reported_by_the_tool(error):
            log.error("run failed: %s: %s", type(error).__name__, error)
        raise


def _run(cfg: DictConfig) -> float:
    settings = check_run(cfg)  # every config refusal, one run per folder, Ctrl-C (checks)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    log.info("run: %s", describe_run(cfg))
    started = time.perf_counter()
    dataset = load_dataset(cfg)
    check_trainable(dataset.train, settings.cv.folds)
    if settings.systematics is not None:
        check_norms(settings.systematics, dataset.train)
    check_fit_events(settings.fit, dataset.train)
    # fit.reference, read again (check_run read it before the folder was claimed) and its
    # events checked against this run's, before any training
    reference = read_fit_reference(settings)
    check_fit_reference_data(settings, dataset, _data_named(cfg))
    check_finetune(cfg.get("finetune"), (dataset.train.s_tot, dataset.train.b_tot))
    loggers = StageLoggers(cfg.get("logger"))
    try:
        metrics = _run_with(cfg, settings, dataset, loggers, reference)
        metrics["run"]["seconds"] = round(time.perf_counter() - started, 1)
        RunFolder(settings.output_dir).write_metrics(metrics)
        if loggers:
            log_hparams(cfg, metrics, loggers)
    finally:
        loggers.close()
    log.info("run folder: %s", settings.output_dir)
    value = lookup_metric(metrics, settings.optimized_metric)
    if not math.isfinite(value):
        raise DivergedError(f"optimized_metric {settings.optimized_metric} is {value}")
    return value


def _run_with(
    cfg: DictConfig,
    settings: Settings,
    dataset: Dataset,
    loggers: StageLoggers,
    reference: FitReference | None = None,
) -> dict[str, Any]:
    """The protocol: the fold models, the cut, the test scores, the fit (set against
    `reference`'s); returns metrics.json's dict."""
    train, run = dataset.train, RunFolder(settings.output_dir)
    totals = (train.s_tot, train.b_tot)
    early_stops: EarlyStops = {}
    processes = (BACKGROUND,) if train.process is None else background_processes(train)
    factories = _factories(
        cfg, settings.output_dir, len(train.feature_names), totals, loggers, early_stops, settings,
        processes,
    )  # fmt: skip
    make_module, make_trainer, save_stage = factories
    finetune = _finetune(
        cfg, settings, settings.output_dir, totals, save_stage, loggers, early_stops, processes
    )
    cut_options = {**settings.cut.options(), "s_tot": totals[0], "b_tot": totals[1]}
    clock = RunClock(settings.cv.n_models, settings.cv.folds, settings.scores_final)
    if settings.resume:
        log.info("resuming the run in %s: finished folds are reloaded, the rest trained", run)
        for stage in (FINAL, "oof", "summary"):  # after the folds: always trained again
            run.clear_stage(stage)
    # Each finished fold's scores are what a resumed run reloads beside its checkpoint; a run
    # that writes no checkpoints (a search trial) cannot be resumed, so it writes none either.
    keep = settings.checkpoints and not settings.cv.parallel
    scorers: list[RawScorer | None] = []
    held_out = None
    if settings.fit is not None:  # the shifted copies are made once, before the folds train
        held_out = HeldOutScores(train, settings.systematics or no_systematics())
    cv = cross_validate(
        train,
        settings.cv.folds,
        settings.batch_size,
        settings.seed,
        make_module,
        make_trainer,
        dataset.test if settings.scores_folds else None,
        parallel=settings.cv.parallel,
        save_stage=save_stage,
        repeats=settings.cv.repeats,
        finetune=finetune,
        on_fold=_fold_hooks(settings, scorers, held_out),
        clock=clock,
        store=FoldStore(run, settings.resume, _data_named(cfg)) if keep else None,
    )
    pretrain = (
        None if cv.pretrain is None else _write_pretrain(run, cv.pretrain, train, cut_options)
    )
    run.write_oof_predictions(
        train.event_id, cv.fold, train.label, train.weight, cv.scores, cv.logits
    )
    cut = choose_cut_of(cv, train, cut_options)
    summary = summarise_cv(cv, train)
    log.info("out-of-fold: %s", format_metrics(summary["oof"]))
    log.info("cut: top %.1f%% of events (out-of-fold AMS %.3f)", 100 * cut.fraction, cut.ams)
    source = choice("data") or str(cfg.data._target_).rsplit(".", 1)[-1]
    # figures/ too, in runs that keep their files (not search trials, which keep no checkpoints)
    figures_dir = settings.output_dir if settings.checkpoints else None
    log_oof_figures(cv.scores, train, cut, loggers, figures_dir, source)
    cut, tests = _score_test(settings, dataset, cv, cut, scorers, run, factories, finetune, clock)
    fitted = None if held_out is None else _fit(settings, held_out, run, loggers, reference)
    facts = {
        "seconds": None,  # set by the caller once the run is written
        "n_train": len(train),
        "n_test": 0 if dataset.test is None else len(dataset.test),
        "ensemble": settings.ensemble,
        "n_fold_models": len(cv.fold_metrics),
    }
    return build_metrics(
        summary, cut.to_dict(), totals, facts, pretrain, tests, early_stops, fitted
    )


def _fit(
    settings: Settings,
    held_out: HeldOutScores,
    run: RunFolder,
    loggers: StageLoggers,
    reference: FitReference | None = None,
) -> dict[str, Any]:
    """The fit stage (`amsaware.fit_stage`): metrics.json's `fit` section, the workspace and
    figures under `fit/`, the metrics and figures in every logger; with `fit.reference`, the
    line setting sigma_mu against the reference's and compare.py's command for the paired
    bootstrap."""
    assert settings.fit is not None
    started = time.perf_counter()
    drawn: dict[str, Any] = {}
    outcome = run_fit(
        held_out, settings.fit, settings.seed, run.writable(run.path / "fit"), drawn.update
    )
    if outcome.error is None:
        log.info("fit: %s (%.0f s)", describe(outcome.metrics), time.perf_counter() - started)
        if loggers:
            log_fit(loggers, outcome.metrics, drawn)
        if reference is not None:
            log.info("%s", reference.describe(outcome.metrics))
            log.info("paired bootstrap of sigma_mu: %s", reference.compare_command(run.path))
    elif reference is not None:
        log.warning("no comparison with fit.reference=%s: this run's fit failed", reference.path)
    return outcome.section(settings.fit, reference)


def _data_named(cfg: DictConfig) -> str:
    """The data files of `cfg.data` (`data.path=...`), for a refusal that names them."""
    paths = [f"data.{key}={value}" for key, value in cfg.data.items() if key.endswith("path")]
    return " and ".join(paths) or f"data ({cfg.data.get('_target_')})"


def _fold_hooks(
    settings: Settings, scorers: list[RawScorer | None], held_out: HeldOutScores | None = None
) -> FoldHook:
    """After each fold: a search trial's pruning report, the fold's figures, its raw-feature
    scorer kept for the fold ensemble (None for a fold reloaded on resume), and the fit's
    held-out events (nominal and shifted) scored by the fold's model."""
    prune = fold_hook(settings)

    def on_fold(report: FoldReport) -> None:
        if prune is not None:
            prune(report.index, report.metrics)
        log_fold_figures(report)
        if settings.scores_folds:
            scorers.append(report.score)
        if held_out is not None:
            score = report.score or _reloaded(settings, report.stage)
            held_out.add(report.val_index, score, takes_pulls=True)  # a plain net ignores them

    return on_fold


def _reloaded(settings: Settings, stage: str) -> RawScorer:
    """A fold reloaded on resume has no network in memory: its checkpoint's, for the fit."""
    from amsaware.inference import load_stage

    return load_stage(settings.output_dir, stage).logit


def _score_test(
    settings: Settings,
    dataset: Dataset,
    cv: CrossValidation,
    cut: Cut,
    scorers: list[RawScorer | None],
    run: RunFolder,
    factories: tuple[ModuleFactory, TrainerFactory, StageWriter],
    finetune: FineTune | None,
    clock: RunClock,
) -> tuple[Cut, dict[str, Any]]:
    """The final fit and/or the fold ensemble on the test events: their files, the cut with
    each scorer's threshold, and the `test`/`test_folds` sections."""
    if not settings.final_fit:
        return cut, {}
    make_module, make_trainer, _ = factories
    results = {}
    if settings.scores_final:
        results[FINAL] = final_fit(
            dataset, cut, settings.batch_size, settings.seed, make_module, make_trainer,
            finetune, clock,
        )  # fmt: skip
    if dataset.test is None:
        log.warning("%s has no test events to score: no submission written", dataset.train.source)
        return cut, {}
    if cv.test_scores is not None:
        score = ensemble_scorer(scorers) if all(scorers) else None
        results["folds"] = score_with_folds(
            dataset.test, cut, cv.test_scores, cv.test_logits, score
        )
    return write_test_results(run, dataset.test, results, cut)


def _write_pretrain(
    run: RunFolder, cv: CrossValidation, train: EventTable, cut_options: dict[str, Any]
) -> dict[str, Any]:
    """The first phase's out-of-fold results, before the fine-tune: `metrics.json`'s
    `pretrain` section, and `pretrain/` holding them as a run folder of their own
    (`oof_predictions.csv`, `metrics.json`), so `compare.py runs='[RUN/pretrain,RUN]'`
    bootstraps the fine-tune against its own starting point."""
    cut = choose_cut_of(cv, train, cut_options)
    section = {"cv": summarise_cv(cv, train), "cut": cut.to_dict()}
    log.info("before the fine-tune, out-of-fold: %s", format_metrics(section["cv"]["oof"]))
    pretrain = run.pretrain
    pretrain.write_oof_predictions(
        train.event_id, cv.fold, train.label, train.weight, cv.scores, cv.logits
    )
    totals = {"s_tot": cut_options["s_tot"], "b_tot": cut_options["b_tot"]}
    pretrain.write_metrics(section | {"data": totals})
    return section

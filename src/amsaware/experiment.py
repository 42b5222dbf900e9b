"""A run from a composed config: `run_experiment(cfg)` builds the data, the module and trainer
factories, the loggers and the run folder from `cfg` and runs `amsaware.protocol` with them.

The protocol itself takes plain values; the config is read here.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
from collections.abc import Sequence
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
from amsaware.data.datamodule import HiggsDataModule
from amsaware.data.formats import check_trainable
from amsaware.data.schema import B_TOT, S_TOT, Dataset, EventTable
from amsaware.loggers import StageLoggers
from amsaware.model import SignificanceClassifier
from amsaware.progress import RunClock, StageProgressBar, stage_label
from amsaware.protocol import (
    CrossValidation,
    DivergedError,
    EarlyStops,
    FineTune,
    FoldStore,
    ModuleFactory,
    StageWriter,
    TrainerFactory,
    check_cut_options,
    check_ensemble,
    check_folds,
    choose_cut_of,
    cross_validate,
    final_fit,
    format_metrics,
    lookup_metric,
    score_with_folds,
    summarise_cv,
    write_test_results,
)
from amsaware.pruning import fold_hook
from amsaware.run_folder import (
    FINAL,
    Cut,
    RunFolder,
)
from amsaware.search import check_optimized_metric, load_for_trial
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
    # Each finished fold's scores are what a resumed run reloads beside its checkpoint; a run
    # that writes no checkpoints (a search trial) cannot be resumed, so it writes none either.
    checkpoints = cfg.callbacks.get("model_checkpoint") is not None
    store = FoldStore(run, resuming(cfg)) if checkpoints and not parallel else None
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
    log.info("out-of-fold: %s", format_metrics(metrics["cv"]["oof"]))
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
    log.info("before the fine-tune, out-of-fold: %s", format_metrics(section["cv"]["oof"]))
    pretrain = run.pretrain
    pretrain.write_oof_predictions(
        train.event_id, cv.fold, train.label, train.weight, cv.scores, cv.logits
    )
    totals = {"s_tot": cut_options["s_tot"], "b_tot": cut_options["b_tot"]}
    pretrain.write_metrics(section | {"data": totals})
    return section

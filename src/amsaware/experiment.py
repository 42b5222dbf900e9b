"""The protocol: stratified CV -> out-of-fold predictions -> cut -> final fit -> test scores.

The protocol functions take plain values and callables, so they are testable without Hydra;
`run_experiment` is the one place that turns a composed config into those values.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from amsaware import artifacts
from amsaware.data.datamodule import HiggsDataModule, stratified_folds
from amsaware.data.formats import check_trainable
from amsaware.data.schema import Dataset, EventTable
from amsaware.metrics import ams_curve, ams_of_selection, evaluate, select_top_fraction
from amsaware.model import SignificanceClassifier, predict_proba

log = logging.getLogger(__name__)

ModuleFactory = Callable[[], SignificanceClassifier]
TrainerFactory = Callable[[str], L.Trainer]


@dataclass(frozen=True)
class Cut:
    """The selection applied to test events: the top `fraction` of scores.

    `threshold` is the out-of-fold score at that fraction (informative only: test events are cut
    by rank, as the challenge winners did, because the final model's scores are calibrated
    differently from the fold models'). `ams` is the raw out-of-fold AMS there and
    `ams_smoothed` the smoothed curve's value that chose it.
    """

    fraction: float
    threshold: float
    ams: float
    ams_smoothed: float


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
) -> Cut:
    """The selected fraction that maximises the smoothed out-of-fold AMS curve.

    The raw maximum is noisy at small selections, where a handful of heavy background events
    move the AMS a lot. So the curve is read on a grid of fractions (`step`), averaged over a
    moving window `smoothing` wide, and the argmax is taken within [min_fraction, max_fraction].
    The challenge winners read their cut (~15%) off such a cross-validated curve.
    """
    check_cut_options(min_fraction, max_fraction, smoothing)
    curve = ams_curve(torch.from_numpy(scores), torch.from_numpy(label), torch.from_numpy(weight))
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
class CrossValidation:
    """Per-fold validation metrics and the out-of-fold score of every training event."""

    fold_metrics: list[dict[str, float]]
    fold: np.ndarray
    scores: np.ndarray


def cross_validate(
    table: EventTable,
    n_folds: int,
    batch_size: int,
    seed: int,
    make_module: ModuleFactory,
    make_trainer: TrainerFactory,
) -> CrossValidation:
    """Train one model per stratified fold and score its held-out events."""
    fold_of = np.full(len(table), -1, dtype=np.int64)
    scores = np.full(len(table), np.nan, dtype=np.float64)
    fold_metrics = []
    for k, (train_index, val_index) in enumerate(stratified_folds(table.label, n_folds, seed)):
        log.info(
            "fold %d/%d: training on %d events, validating on %d",
            k + 1,
            n_folds,
            len(train_index),
            len(val_index),
        )
        datamodule = HiggsDataModule(
            table, batch_size, seed + k, train_index=train_index, val_index=val_index
        )
        module = fit(datamodule, make_module, make_trainer, f"fold{k}", seed + k)
        x_val, y_val, w_val = datamodule.val_tensors
        p_val = predict_proba(module.net, x_val)
        fold_metrics.append({"fold": k, **evaluate(p_val, y_val, w_val, "val/")})
        fold_of[val_index] = k
        scores[val_index] = p_val.numpy()
    return CrossValidation(fold_metrics, fold_of, scores)


def summarise_cv(cv: CrossValidation, table: EventTable) -> dict[str, Any]:
    """The `cv` section of metrics.json: folds, their mean and std, and out-of-fold metrics."""
    names = [name for name in cv.fold_metrics[0] if name != "fold"]
    values = {name: np.array([m[name] for m in cv.fold_metrics]) for name in names}
    oof = evaluate(
        torch.from_numpy(cv.scores),
        torch.from_numpy(table.label.astype(np.int64)),
        torch.from_numpy(table.weight),
        "oof/",
    )
    return {
        "folds": cv.fold_metrics,
        "mean": {name: float(v.mean()) for name, v in values.items()},
        "std": {name: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for name, v in values.items()},
        "oof": oof,
    }


def test_metrics(test: EventTable, scores: np.ndarray, selected: np.ndarray) -> dict[str, float]:
    """`test/...` metrics, `test/ams` at the chosen cut and the leaderboard splits' AMS.

    Public and private AMS follow the challenge: one global selection, scored on the 'b' and
    'v' events separately with weights rescaled within each split.
    """
    p = torch.from_numpy(scores)
    y = torch.from_numpy(test.label.astype(np.int64))
    w = torch.from_numpy(test.weight)
    chosen = torch.from_numpy(selected)
    result = evaluate(p, y, w, "test/")
    result["test/ams"] = float(ams_of_selection(chosen, y, w))
    if test.kaggle_set is not None:
        for name, letter in (("public", "b"), ("private", "v")):
            rows = torch.from_numpy(test.kaggle_set == letter)
            if rows.any():
                result[f"test/ams_{name}"] = float(ams_of_selection(chosen[rows], y[rows], w[rows]))
    return result


@dataclass(frozen=True)
class FinalFit:
    scores: np.ndarray
    selected: np.ndarray
    metrics: dict[str, float] | None


def final_fit(
    dataset: Dataset,
    cut: Cut,
    batch_size: int,
    seed: int,
    make_module: ModuleFactory,
    make_trainer: TrainerFactory,
) -> FinalFit | None:
    """Train on all training events and select the top `cut.fraction` of the test events."""
    datamodule = HiggsDataModule(dataset.train, batch_size, seed)
    log.info("final fit on all %d training events", len(dataset.train))
    module = fit(datamodule, make_module, make_trainer, "final", seed)
    if dataset.test is None:
        return None
    scores = predict_proba(module.net, datamodule.preprocess(dataset.test)).numpy()
    selected = select_top_fraction(torch.from_numpy(scores), cut.fraction).numpy()
    labelled = dataset.test.labelled
    return FinalFit(
        scores, selected, test_metrics(dataset.test, scores, selected) if labelled else None
    )


def lookup_metric(metrics: dict[str, Any], name: str) -> float:
    """A metric of metrics.json by its DESIGN.md name: `oof/`, `val/` (fold mean) or `test/`."""
    sections = {
        "oof": metrics["cv"]["oof"],
        "val": metrics["cv"]["mean"],
        "test": metrics.get("test", {}),
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


def _factories(
    cfg: DictConfig, run_dir: Path, n_features: int
) -> tuple[ModuleFactory, TrainerFactory]:
    from hydra.utils import instantiate

    def make_module() -> SignificanceClassifier:
        return SignificanceClassifier(
            net=instantiate(cfg.model, n_features=n_features),
            loss=instantiate(cfg.loss),
            optimizer=instantiate(cfg.optimizer),
            scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        )

    def make_trainer(stage: str) -> L.Trainer:
        logger = instantiate(cfg.logger, version=stage) if cfg.get("logger") else False
        callbacks = []
        for callback in (cfg.get("callbacks") or {}).values():
            extra = (
                {"dirpath": str(run_dir / "checkpoints" / stage)} if "dirpath" in callback else {}
            )
            callbacks.append(instantiate(callback, **extra))
        # The final fit has no validation rows.
        no_validation = {"limit_val_batches": 0} if stage == "final" else {}
        return instantiate(cfg.trainer, logger=logger, callbacks=callbacks, **no_validation)

    return make_module, make_trainer


def load_dataset(cfg: DictConfig) -> Dataset:
    """Instantiate the data source (`data._target_`); `data.batch_size` belongs to training."""
    from hydra.utils import instantiate

    source = OmegaConf.to_container(cfg.data, resolve=True)
    source.pop("batch_size", None)
    return instantiate(source)


def run_experiment(cfg: DictConfig) -> float:
    """Cross-validate, choose the cut, fit on everything, score the test events, write artifacts.

    Returns `cfg.optimized_metric` (default `oof/ams_max`) for Hydra's sweepers.
    """
    _quiet_lightning()
    check_cut_options(**cfg.cut)
    started = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    dataset = load_dataset(cfg)
    check_trainable(dataset.train, cfg.cv.folds)
    make_module, make_trainer = _factories(cfg, run_dir, len(dataset.train.feature_names))
    batch_size = int(cfg.data.batch_size)

    cv = cross_validate(
        dataset.train, cfg.cv.folds, batch_size, cfg.seed, make_module, make_trainer
    )
    train = dataset.train
    artifacts.write_oof_predictions(
        run_dir, train.event_id, cv.fold, train.label, train.weight, cv.scores
    )
    cut = choose_cut(cv.scores, train.label, train.weight, **cfg.cut)
    metrics: dict[str, Any] = {"cv": summarise_cv(cv, train), "cut": asdict(cut)}
    log.info("out-of-fold: %s", _format(metrics["cv"]["oof"]))
    log.info("cut: top %.1f%% of events (out-of-fold AMS %.3f)", 100 * cut.fraction, cut.ams)

    if cfg.final_fit:
        result = final_fit(dataset, cut, batch_size, cfg.seed, make_module, make_trainer)
        if result is None:
            log.warning("%s has no test events to score: no submission written", train.source)
        else:
            artifacts.write_test_predictions(run_dir, dataset.test.event_id, result.scores)
            artifacts.write_submission(
                run_dir, dataset.test.event_id, result.scores, result.selected
            )
            if result.metrics is not None:
                metrics["test"] = result.metrics
                log.info("test: %s", _format(result.metrics))
    metrics["run"] = {
        "seconds": round(time.perf_counter() - started, 1),
        "n_train": len(train),
        "n_test": 0 if dataset.test is None else len(dataset.test),
    }
    artifacts.write_json(metrics, run_dir / artifacts.METRICS)
    log.info("run folder: %s", run_dir)
    return lookup_metric(metrics, cfg.optimized_metric)


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if math.isfinite(v))

"""Compare finished runs: load their folders, check they scored the same events, bootstrap, report.

The report is `comparison.json`, a markdown table (`comparison.md`, also printed) and the
figures of `plots.py`, all written into one output folder. `run_comparison` is the only
Hydra-aware function (compare.py calls it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from amsaware import plots
from amsaware.atomic import atomic_path, write_json
from amsaware.run_folder import TENSORBOARD, Cut, RunFolder, RunFolderError, read_plain_config
from amsaware.stats import (
    STATISTICS,
    BootstrapSample,
    Difference,
    RunScores,
    bootstrap,
    differences,
)

log = logging.getLogger(__name__)

COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
FIGURES = (
    "training_history.png",
    "bootstrap_differences.png",
    "roc.png",
    "precision_recall.png",
    "ams_vs_fraction.png",
    "score_distributions.png",
)
HISTORY_TAGS = ("train/loss", "val/ams_max", "val/auroc")


@dataclass(frozen=True)
class Run:
    """A finished run folder: its out-of-fold predictions (EventId order), cut and totals."""

    name: str
    path: Path
    #: metrics.json as written (its cut checked).
    metrics: dict[str, Any]
    cut: Cut
    #: The (S_tot, B_tot) the run's AMS is rescaled to (`RunFolder.totals`).
    totals: tuple[float, float]
    oof: pd.DataFrame
    loss: str | None

    @property
    def cut_fraction(self) -> float:
        return self.cut.fraction

    @property
    def cut_threshold(self) -> float:
        return self.cut.threshold

    def ranking(self) -> RunScores:
        """The out-of-fold ranking key the bootstrap sorts by, with the cut on its scale: the
        logit where the run wrote one, since probabilities round to exactly 1 for a soft-AMS
        model's top events and cannot be ranked among themselves; else the score."""
        if "logit" in self.oof and self.cut.threshold_logit is not None:
            return RunScores(self.name, self.oof.logit.to_numpy(), self.cut.threshold_logit)
        return RunScores(self.name, self.oof.score.to_numpy(), self.cut.threshold)


def load_run(path: Path | str, name: str | None = None) -> Run:
    """Read a finished train.py run folder; a clear error for anything missing or malformed."""
    run = RunFolder(path)
    if not run.path.is_dir():
        raise RunFolderError(f"run folder {run.path} does not exist (or is not a folder)")
    return Run(
        name or run.path.name,
        run.path,
        run.metrics(),
        run.cut(),
        run.totals(),
        run.oof_predictions(),
        run.loss_name(),
    )


def _tagged_name(path: Path) -> str | None:
    """A run's `tags` joined by `+` (with its `task_name` where it is not `train`), from its
    config; None for a run without tags."""
    config_path = RunFolder(path).config_path
    if not config_path.is_file():
        return None
    config = read_plain_config(config_path)
    tags = config.get("tags")
    if not isinstance(tags, list) or not tags:
        return None
    task = config.get("task_name")
    name = "+".join(str(tag) for tag in tags)
    return f"{task}:{name}" if isinstance(task, str) and task != "train" else name


def _names(paths: Sequence[Path]) -> list[str]:
    """Short distinct labels: the runs' tags where every run has distinct ones (train.py
    tags='[bce]'), else the folder name, or more of the path where names collide."""
    tagged = [_tagged_name(p) for p in paths]
    if all(tagged) and len(set(tagged)) == len(tagged):
        return [str(name) for name in tagged]
    for depth in range(1, 1 + max(len(p.parts) for p in paths)):
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    raise RunFolderError(f"the same run folder is given twice: {[str(p) for p in paths]}")


def check_same_events(runs: Sequence[Run]) -> None:
    """Refuse runs whose out-of-fold predictions are not of the same events, folds and weights.

    A paired bootstrap is only meaningful when every run scored exactly the same events in the
    same folds (same data, `cv.folds` and `seed`).
    """
    reference = runs[0]
    for run in runs[1:]:
        where = f"runs {reference.name} ({reference.path}) and {run.name} ({run.path})"
        if not np.allclose(run.totals, reference.totals, rtol=1e-9, atol=0.0):
            raise RunFolderError(
                f"{where} rescale AMS to different totals (S_tot, B_tot) {reference.totals} "
                f"and {run.totals} (metrics.json 'data'): compare only runs made on the same data"
            )
        if len(run.oof) != len(reference.oof):
            raise RunFolderError(
                f"{where} have {len(reference.oof)} and {len(run.oof)} out-of-fold events: "
                "compare only runs made on the same data with the same cv.folds and seed"
            )
        for column in ("EventId", "fold", "label", "weight"):
            a, b = reference.oof[column].to_numpy(), run.oof[column].to_numpy()
            same = np.isclose(a, b, rtol=1e-9, atol=0.0) if column == "weight" else a == b
            if not same.all():
                first = int(np.flatnonzero(~same)[0])
                raise RunFolderError(
                    f"{where} differ in out-of-fold column {column!r} at {int((~same).sum())} "
                    f"events, the first at EventId {reference.oof.EventId[first]} "
                    f"({a[first]} vs {b[first]}): compare only runs made on the same data "
                    "with the same cv.folds and seed"
                )


def training_history(run_dir: Path, tags: Sequence[str] = HISTORY_TAGS) -> dict[str, dict]:
    """Per stage (fold0, ..., final): each tag's per-epoch values, read from TensorBoard files.

    Empty when the run logged no TensorBoard events (logger disabled).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # one INFO line per file

    history: dict[str, dict[str, list[float]]] = {}
    for stage_dir in sorted((Path(run_dir) / TENSORBOARD).glob("*")):
        if not stage_dir.is_dir() or not list(stage_dir.glob("events.out.tfevents.*")):
            continue
        events = EventAccumulator(str(stage_dir), size_guidance={"scalars": 0})
        events.Reload()
        available = set(events.Tags()["scalars"])
        series = {
            tag: [e.value for e in sorted(events.Scalars(tag), key=lambda e: e.step)]
            for tag in tags
            if tag in available
        }
        if series:  # the `oof` stage holds figures only
            history[stage_dir.name] = series
    return history


@dataclass(frozen=True)
class Comparison:
    runs: list[Run]
    sample: BootstrapSample
    differences: list[Difference]
    confidence: float

    @property
    def label(self) -> np.ndarray:
        return self.runs[0].oof.label.to_numpy()

    @property
    def weight(self) -> np.ndarray:
        return self.runs[0].oof.weight.to_numpy()

    @property
    def totals(self) -> tuple[float, float]:
        return self.runs[0].totals

    def scores(self) -> dict[str, np.ndarray]:
        return {run.name: run.oof.score.to_numpy() for run in self.runs}


def compare(
    paths: Sequence[Path | str],
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    device: str = "cpu",
) -> Comparison:
    """Load the runs (the first is the reference), check them, and bootstrap their differences."""
    if len(paths) < 2:
        raise RunFolderError(f"compare needs at least two run folders, got {list(paths)}")
    paths = [Path(p) for p in paths]
    runs = [load_run(p, name) for p, name in zip(paths, _names(paths), strict=True)]
    check_same_events(runs)
    sample = bootstrap(
        [run.ranking() for run in runs],
        runs[0].oof.label.to_numpy(),
        runs[0].oof.weight.to_numpy(),
        n_bootstrap,
        seed,
        device,
        runs[0].totals,
    )
    return Comparison(runs, sample, differences(sample, confidence), confidence)


def to_dict(comparison: Comparison) -> dict[str, Any]:
    """The JSON report: runs with their observed statistics, and every difference to the first."""
    sample = comparison.sample
    return {
        "reference": sample.runs[0],
        "n_resamples": sample.n_resamples,
        "seed": sample.seed,
        "confidence": comparison.confidence,
        "totals": {"s_tot": comparison.totals[0], "b_tot": comparison.totals[1]},
        "p_value": "one-sided, run better than the reference; ties count half (mid-p)",
        "runs": [
            {
                "name": run.name,
                "path": str(run.path),
                "loss": run.loss,
                "n_events": len(run.oof),
                "cut": {"fraction": run.cut_fraction, "threshold": run.cut_threshold},
                "observed": sample.observed[run.name],
            }
            for run in comparison.runs
        ],
        "differences": [
            {**asdict(d), "within_noise": d.within_noise, "verdict": d.verdict}
            for d in comparison.differences
        ],
    }


def _fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def to_markdown(comparison: Comparison) -> str:
    """Two tables: each run's statistics on the out-of-fold events, and the paired differences."""
    sample = comparison.sample
    n_events = len(comparison.runs[0].oof)
    lines = [
        f"# Comparison of {len(comparison.runs)} runs on {n_events} out-of-fold events",
        "",
        "| run | loss | cut (top fraction) | " + " | ".join(STATISTICS) + " |",
        "|---|---|---|" + "---|" * len(STATISTICS),
    ]
    for run in comparison.runs:
        values = " | ".join(_fmt(sample.observed[run.name][k]) for k in STATISTICS)
        lines.append(
            f"| {run.name} | {run.loss or '?'} | {100 * run.cut_fraction:.1f}% | {values} |"
        )
    ci = f"{comparison.confidence:.0%} CI"
    lines += [
        "",
        f"Paired bootstrap, {sample.n_resamples} resamples (seed {sample.seed}), each run minus "
        f"the reference {sample.runs[0]}. p: one-sided, that the run is better (mid-p).",
        "",
        f"| run | statistic | difference | mean of resamples | {ci} | p | run better in "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in comparison.differences:
        lines.append(
            f"| {d.run} | {d.statistic} | {d.observed:+.4f} | {d.mean:+.4f} | "
            f"[{d.ci_low:+.4f}, {d.ci_high:+.4f}] | {d.p_value:.3f} | "
            f"{100 * d.fraction_better:.1f}% | {d.verdict} |"
        )
    lines += [
        "",
        "ams@cut selects `score >= threshold` of the run's chosen cut (the top fraction in the "
        "first table). ams_max is the maximum of a noisy curve: on a resample it is biased up and "
        "its interval is wide, so prefer ams@cut. Intervals are not corrected for the number of "
        "comparisons.",
    ]
    return "\n".join(lines) + "\n"


def write_figures(comparison: Comparison, out_dir: Path) -> list[Path]:
    """Every figure of FIGURES into `out_dir`; the history figure only from runs that logged one."""
    out_dir = Path(out_dir)
    scores, label, weight = comparison.scores(), comparison.label, comparison.weight
    histories = {run.name: training_history(run.path) for run in comparison.runs}
    histories = {name: h for name, h in histories.items() if h}
    figures = {
        "bootstrap_differences.png": plots.bootstrap_differences(
            comparison.sample.resampled, comparison.differences, STATISTICS
        ),
        "roc.png": plots.roc_curves(scores, label),
        "precision_recall.png": plots.precision_recall_curves(
            scores, label, weight, comparison.totals
        ),
        "ams_vs_fraction.png": plots.ams_curves(
            scores,
            label,
            weight,
            {run.name: run.cut_fraction for run in comparison.runs},
            comparison.totals,
        ),
        "score_distributions.png": plots.score_distributions(
            scores, label, weight, totals=comparison.totals
        ),
    }
    if histories:
        losses = {run.name: run.loss or "loss" for run in comparison.runs}
        tunes = {run.name: fine_tune_of(run.path) for run in comparison.runs}
        tunes = {name: tune for name, tune in tunes.items() if tune is not None}
        figures["training_history.png"] = plots.training_history(histories, losses, tunes)
    else:
        log.warning("no run has TensorBoard event files: training_history.png not drawn")
    return [plots.save(figure, out_dir / name) for name, figure in figures.items()]


def fine_tune_of(run_dir: Path) -> tuple[int, str] | None:
    """A fine-tuned run's first-phase epochs (`trainer.max_epochs`: early stopping may end
    a fold's first phase sooner) and fine-tune loss, from its config; None for one phase."""
    path = RunFolder(run_dir).config_path
    if not path.is_file():
        return None
    config = read_plain_config(path)
    finetune = config.get("finetune") or {}
    target = (finetune.get("loss") or {}).get("_target_")
    epochs = (config.get("trainer") or {}).get("max_epochs")
    if not isinstance(target, str) or not isinstance(epochs, int):
        return None
    return epochs, target.rsplit(".", 1)[-1]


def write_report(comparison: Comparison, out_dir: Path) -> list[Path]:
    """comparison.json, comparison.md and the figures, written atomically into `out_dir`."""
    out_dir = Path(out_dir)
    write_json(to_dict(comparison), out_dir / COMPARISON_JSON)
    with atomic_path(out_dir / COMPARISON_MD) as tmp:
        tmp.write_text(to_markdown(comparison))
    return [out_dir / COMPARISON_JSON, out_dir / COMPARISON_MD, *write_figures(comparison, out_dir)]


def run_comparison(cfg: DictConfig) -> Comparison:
    """compare.py's body: compare `cfg.runs`, print the table, write the report."""
    if not isinstance(cfg.runs, Sequence) or isinstance(cfg.runs, str):
        raise RunFolderError(f"runs must be a list of run folders, runs='[A,B]'; got {cfg.runs!r}")
    runs = list(cfg.runs)
    options = cfg.compare
    comparison = compare(
        runs, options.n_bootstrap, options.seed, options.confidence, options.device
    )
    out_dir = Path(cfg.paths.output_dir)
    write_report(comparison, out_dir)
    print(to_markdown(comparison))
    for d in comparison.differences:
        if d.within_noise:
            log.info(
                "%s vs %s on %s: %+.4f is within noise (%.0f%% CI [%+.4f, %+.4f] contains 0)",
                d.run,
                d.reference,
                d.statistic,
                d.observed,
                100 * d.confidence,
                d.ci_low,
                d.ci_high,
            )
    log.info("comparison written to %s", out_dir)
    return comparison

"""Compare finished runs: load their folders, check they scored the same events, bootstrap, report.

The report is `comparison.json`, a markdown table (`comparison.md`, also printed) and the
figures of `plots.py`, all written into one output folder. `run_comparison` is the only
Hydra-aware function (compare.py calls it).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from amsaware import plots
from amsaware.atomic import atomic_path, write_json
from amsaware.report import FIT_METRICS, LOWER_IS_BETTER
from amsaware.run_folder import TENSORBOARD, Cut, RunFolder, RunFolderError, read_plain_config
from amsaware.stats import (
    STATISTICS,
    BootstrapSample,
    Difference,
    RunScores,
    bootstrap,
    differences,
    paired_difference,
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
    def fit(self) -> dict[str, float] | None:
        """The run's fit metrics (metrics.json's `fit`), None where it had no fit or the fit
        failed."""
        section = self.metrics.get("fit")
        if not isinstance(section, dict) or "error" in section:
            return None
        return {k: float(section[k]) for k in FIT_METRICS if k in section}

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


#: What the fit bootstrap refits per resample: the stat-only Hessian sigma_mu (one free
#: parameter, the cheap default) or every nuisance profiled (`full`, several times slower).
FIT_STATISTICS = {"stat": "fit/sigma_mu_stat", "full": "fit/sigma_mu"}


@dataclass(frozen=True)
class FitBootstrap:
    """Paired bootstrap of the runs' sigma_mu: per resample the same held-out events (drawn by
    EventId) of every run with a fit, binned, templated and refitted (`fit.refit_sigma_mu`).

    `observed` is each run's refit on all its events (the Hessian error, near but not equal to
    the MINOS `fit/...` of its metrics.json); resamples where any run's refit failed (a bin
    without background, say) are left out of every run and counted in `failed`.
    """

    runs: list[str]
    statistic: str
    observed: dict[str, float]
    resampled: dict[str, np.ndarray]
    failed: int
    seed: int
    seconds: float
    differences: list[Difference]


def fit_bootstrap(
    runs: Sequence[Run],
    n_resamples: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    statistic: str = "stat",
) -> FitBootstrap:
    """Refit `n_resamples` paired resamples of the fit's events of `runs` (the first is the
    reference); each run keeps its own fit settings (bins, mc_stat)."""
    from amsaware import fit

    if statistic not in FIT_STATISTICS:
        raise ValueError(
            f"compare.fit_statistic={statistic!r}: expected one of {sorted(FIT_STATISTICS)}"
        )
    if n_resamples < 1:
        raise ValueError(f"compare.fit_resamples={n_resamples}: expected at least 1")
    started = time.perf_counter()
    events, configs = {}, {}
    ids = None
    for run in runs:
        data, event_id = RunFolder(run.path).fit_events()
        order = np.argsort(event_id, kind="stable")
        if ids is None:
            ids = event_id[order]
        elif not np.array_equal(event_id[order], ids):
            raise RunFolderError(
                f"runs {runs[0].name} and {run.name} fitted different events "
                f"({RunFolder(run.path).path / 'fit'}): their fits cannot be paired"
            )
        events[run.name] = data.take(order)
        how = run.metrics["fit"].get("settings") or {}
        configs[run.name] = fit.FitConfig(
            bins=int(how.get("bins", 10)), mc_stat=bool(how.get("mc_stat", True))
        )
    assert ids is not None
    stat_only = statistic == "stat"

    def refit(name: str, index: np.ndarray | slice) -> float:
        try:
            return fit.refit_sigma_mu(events[name].take(index), configs[name], stat_only)
        except (fit.FitError, ValueError):
            return math.nan

    names = [run.name for run in runs]
    observed = {name: refit(name, slice(None)) for name in names}
    rng = np.random.default_rng(seed)
    n = len(ids)
    values = np.full((len(names), n_resamples), np.nan)
    for b in range(n_resamples):
        index = rng.integers(0, n, n)
        for i, name in enumerate(names):
            values[i, b] = refit(name, index)
    kept = np.isfinite(values).all(axis=0)
    if not kept.any():
        raise RunFolderError(f"every one of {n_resamples} refits of the runs' fits failed")
    resampled = {name: values[i, kept] for i, name in enumerate(names)}
    key = FIT_STATISTICS[statistic]
    reference, *others = names
    found = [
        paired_difference(
            name,
            reference,
            key,
            (observed[name], observed[reference]),
            (resampled[name], resampled[reference]),
            confidence,
            lower_is_better=key in LOWER_IS_BETTER,
        )
        for name in others
    ]
    seconds = time.perf_counter() - started
    log.info(
        "fit bootstrap: %d resamples x %d runs refitted (%s) in %.0f s, %d failed",
        n_resamples,
        len(names),
        key,
        seconds,
        int((~kept).sum()),
    )
    return FitBootstrap(names, key, observed, resampled, int((~kept).sum()), seed, seconds, found)


@dataclass(frozen=True)
class Comparison:
    runs: list[Run]
    sample: BootstrapSample
    differences: list[Difference]
    confidence: float
    #: The fit's bootstrap, over the runs with a fit, where the reference and another had one.
    fit: FitBootstrap | None = None

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
    fit_resamples: int = 200,
    fit_statistic: str = "stat",
) -> Comparison:
    """Load the runs (the first is the reference), check them, and bootstrap their differences.

    Where the reference and at least one other run have a fit, their sigma_mu is bootstrapped
    too (`fit_bootstrap`, `fit_resamples` refits of each; 0: none)."""
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
    fitted = [run for run in runs if run.fit is not None]
    refits = None
    if fit_resamples and runs[0].fit is not None and len(fitted) > 1:
        refits = fit_bootstrap(fitted, fit_resamples, seed, confidence, fit_statistic)
    elif fitted:
        log.info(
            "fit metrics shown, not bootstrapped: %s",
            "compare.fit_resamples=0"
            if not fit_resamples
            else "the bootstrap needs the reference and another run with a fit",
        )
    return Comparison(runs, sample, differences(sample, confidence), confidence, refits)


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
        "differences": [_difference(d) for d in comparison.differences],
        **({"fit": _fit_dict(comparison)} if _has_fit(comparison) else {}),
    }


def _difference(d: Difference) -> dict[str, Any]:
    return {**asdict(d), "within_noise": d.within_noise, "verdict": d.verdict}


def _has_fit(comparison: Comparison) -> bool:
    return any(run.fit is not None for run in comparison.runs)


def _fit_dict(comparison: Comparison) -> dict[str, Any]:
    """comparison.json's `fit`: each run's fit metrics (metrics.json's), and the bootstrap."""
    refits = comparison.fit
    out: dict[str, Any] = {"runs": {run.name: run.fit for run in comparison.runs}}
    if refits is not None:
        out["bootstrap"] = {
            "statistic": refits.statistic,
            "how": "Hessian error on mu of an Asimov fit refitted on each paired resample of "
            "the held-out events (binning and templates rebuilt)",
            "n_resamples": len(next(iter(refits.resampled.values()))),
            "failed": refits.failed,
            "seed": refits.seed,
            "seconds": round(refits.seconds, 1),
            "observed": refits.observed,
            "differences": [_difference(d) for d in refits.differences],
        }
    return out


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
    lines += _fit_markdown(comparison)
    lines += [
        "",
        "ams@cut selects `score >= threshold` of the run's chosen cut (the top fraction in the "
        "first table). ams_max is the maximum of a noisy curve: on a resample it is biased up and "
        "its interval is wide, so prefer ams@cut. Intervals are not corrected for the number of "
        "comparisons.",
    ]
    return "\n".join(lines) + "\n"


def _fit_markdown(comparison: Comparison) -> list[str]:
    """The runs' fit metrics side by side, and the bootstrap of sigma_mu where it ran."""
    if not _has_fit(comparison):
        return []
    shown = [k for k in FIT_METRICS if any(k in (run.fit or {}) for run in comparison.runs)]
    lines = [
        "",
        "Binned likelihood fit of the held-out scores (metrics.json; lower is better for "
        + ", ".join(k for k in shown if k in LOWER_IS_BETTER)
        + "):",
        "",
        "| run | " + " | ".join(shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    for run in comparison.runs:
        fitted = run.fit or {}
        values = " | ".join(_fmt(fitted[k]) if k in fitted else "-" for k in shown)
        lines.append(f"| {run.name} | {values} |")
    refits = comparison.fit
    if refits is None:
        return lines
    n = len(next(iter(refits.resampled.values())))
    lines += [
        "",
        f"Paired bootstrap of {refits.statistic} (Hessian, refitted): {n} resamples "
        f"({refits.failed} failed refits left out), each run minus {refits.runs[0]}; "
        "negative is better.",
        "",
        f"| run | refit | difference | {comparison.confidence:.0%} CI | p | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for d in refits.differences:
        lines.append(
            f"| {d.run} | {_fmt(refits.observed[d.run])} | {d.observed:+.4f} | "
            f"[{d.ci_low:+.4f}, {d.ci_high:+.4f}] | {d.p_value:.3f} | {d.verdict} |"
        )
    return lines


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
        runs,
        options.n_bootstrap,
        options.seed,
        options.confidence,
        options.device,
        int(options.get("fit_resamples", 200)),
        str(options.get("fit_statistic", "stat")),
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

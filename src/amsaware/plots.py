"""Figures of runs and comparisons (HEP style via mplhep): PNG files and TensorBoard images.

Every function takes plain arrays keyed by run name and returns a matplotlib `Figure` built
without pyplot, so it works the same in a training process, a Hydra job and a notebook.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import mplhep
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from amsaware.atomic import atomic_path
from amsaware.data.schema import B_TOT, S_TOT
from amsaware.data.weights import rescaled_weights
from amsaware.metrics import ams_curve

Scores = Mapping[str, np.ndarray]
#: The full-data signal and background totals that weights are rescaled to (S_tot, B_tot).
Totals = tuple[float, float]
TOTALS_DEFAULT: Totals = (S_TOT, B_TOT)
#: Per run, per stage (fold0, fold1, ...): metric name -> one value per epoch.
History = Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]]

STYLE = mplhep.style.ATLAS
PANEL = (7.0, 5.5)  # inches per panel
LINESTYLES = ("-", "--", ":", "-.")
SIGNAL, BACKGROUND = "#d62728", "#1f77b4"
UNDEFINED = "#777777"  # shap's colour for a feature value that is NaN (-999 in the files)


@contextmanager
def style() -> Iterator[None]:
    """The HEP style, active while a figure is built and while it is rendered."""
    with matplotlib.rc_context(STYLE):
        yield


def _figure(n_panels: int = 1, n_columns: int | None = None) -> tuple[Figure, list[Any]]:
    """A figure of `n_panels` axes, `n_columns` to a row (all in one row by default)."""
    columns = min(n_panels, n_columns or n_panels)
    rows = -(-n_panels // columns)
    figure = Figure(figsize=(PANEL[0] * columns, PANEL[1] * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for extra in axes[n_panels:]:
        extra.set_visible(False)
    return figure, list(axes[:n_panels])


def _colours(names: Sequence[str]) -> dict[str, str]:
    cycle = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def save(figure: Figure, path: Path, dpi: int = 120) -> Path:
    """Write `figure` atomically (temporary name, then rename), as PNG, or PDF for a `.pdf`."""
    kind = "pdf" if Path(path).suffix.lower() == ".pdf" else "png"
    with style(), atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format=kind, dpi=dpi)
    return Path(path)


#: Where a run's own figures go, as PNG (to look at) and PDF (for a paper): RUN/figures/.
def save_both(figures: Mapping[str, Figure], folder: Path, prefix: str = "") -> list[Path]:
    """Each figure as `<folder>/<prefix><name>.png` and `.pdf` (atomically, as `save`)."""
    written = []
    for name, figure in figures.items():
        for suffix in (".png", ".pdf"):
            written.append(save(figure, Path(folder) / f"{prefix}{name}{suffix}"))
    return written


def training_history(
    history: History,
    loss_names: Mapping[str, str] | None = None,
    fine_tunes: Mapping[str, tuple[int, str]] | None = None,
) -> Figure:
    """Per-epoch training loss (one panel per run: losses differ in units) and validation AMS.

    `loss_names` labels each run's loss axis (e.g. the loss class); folds are line styles.
    `fine_tunes` gives a fine-tuned run's first-phase epochs and its second loss: the phase
    change is drawn on both panels and the loss axis names both losses (a soft-AMS loss is
    negative, which a single BCE label would misname).
    """
    runs = list(history)
    colours = _colours(runs)
    fine_tunes = fine_tunes or {}
    with style():
        figure, axes = _figure(len(runs) + 1)
        for ax, run in zip(axes, runs, strict=False):
            for i, (stage, series) in enumerate(sorted(history[run].items())):
                values = series.get("train/loss", [])
                epochs = np.arange(1, len(values) + 1)
                ls = LINESTYLES[i % len(LINESTYLES)]
                ax.plot(epochs, values, ls, color=colours[run], marker="o", label=stage)
            loss = (loss_names or {}).get(run, "loss")
            if run in fine_tunes:
                first, second = fine_tunes[run]
                loss = f"{loss}, then {second}"
                _phase_line(ax, first, second)
            ax.set(xlabel="Epoch", ylabel=f"Training loss ({loss})", title=run)
            _legend_outside(ax, title=run, fontsize="small")
        ax = axes[-1]
        for run in runs:
            folds = [(s, v) for s, v in sorted(history[run].items()) if "val/ams_max" in v]
            for i, (stage, series) in enumerate(folds):
                values = series["val/ams_max"]
                ax.plot(
                    np.arange(1, len(values) + 1),
                    values,
                    LINESTYLES[i % len(LINESTYLES)],
                    color=colours[run],
                    marker="o",
                    label=f"{run} {stage}",
                )
        for run, (first, second) in fine_tunes.items():
            _phase_line(ax, first, f"{run}: {second}", colours.get(run, "grey"))
        ax.set(xlabel="Epoch", ylabel="Validation AMS (best cut)")
        _legend_outside(ax, fontsize="small")
    return figure


def _phase_line(ax: Any, first_epochs: int, what: str, colour: str = "grey") -> None:
    """A vertical line where the fine-tune phase starts (after `first_epochs`)."""
    ax.axvline(first_epochs + 0.5, color=colour, ls="--", lw=1, label=f"fine-tune ({what})")


def bootstrap_differences(
    resampled: Mapping[str, Mapping[str, np.ndarray]],
    differences: Sequence[Any],
    statistics: Sequence[str],
) -> Figure:
    """Histogram of each run's paired difference to the reference per statistic, CI marked.

    `resampled[run][statistic]` holds the per-resample values; `differences` the
    `stats.Difference` rows (run, reference, statistic, ci_low, ci_high, confidence).
    """
    colours = _colours(list(resampled))
    labels = {
        "ams@cut": "AMS at the run's cut",
        "ams_max": "AMS at the best cut",
        "auroc": "ROC AUC",
        "auroc_weighted": "ROC AUC (weighted)",
    }
    with style():
        figure, axes = _figure(len(statistics), n_columns=2)
        for ax, statistic in zip(axes, statistics, strict=True):
            for d in (d for d in differences if d.statistic == statistic):
                diff = resampled[d.run][statistic] - resampled[d.reference][statistic]
                colour = colours[d.run]
                ax.hist(diff, bins=40, histtype="step", color=colour, lw=2, label=f"{d.run}")
                for edge in (d.ci_low, d.ci_high):
                    ax.axvline(edge, color=colour, ls="--", lw=1.5)
                ax.axvspan(d.ci_low, d.ci_high, color=colour, alpha=0.12)
                ax.axvline(d.observed, color=colour, lw=2.5, label=f"{d.run}: {d.observed:+.4f}")
            ax.axvline(0.0, color="black", lw=1)
            ax.ticklabel_format(axis="x", useOffset=False, style="plain")
            reference = differences[0].reference if differences else ""
            ax.set(
                xlabel=f"Δ {labels.get(statistic, statistic)}",
                ylabel="Resamples / bin",
                title=f"run − {reference}",
            )
            ax.legend(
                title=f"observed (solid), {differences[0].confidence:.0%} CI (dashed)"
                if differences
                else None,
                fontsize="small",
                title_fontsize="small",
            )
    return figure


def experiment_label(ax: Any, source: str | None) -> None:
    """The figure's provenance in the HEP manner, top left above the axes: `amsaware` and the
    data (`HiggsML 2014 open data`, `synthetic`, ...) so that a figure out of its folder still
    says what it shows. `source` is the run's data source name (`data=...`); None: no label."""
    if source is None:
        return
    ax.set_title(
        f"amsaware, {DATA_LABELS.get(source, source)}", loc="left", fontsize="small", style="italic"
    )


#: How figures name each data source of `amsaware.data.sources` (others: their own name).
DATA_LABELS = {
    "opendata": "HiggsML 2014 open data",
    "kaggle": "HiggsML 2014 (Kaggle files)",
    "synthetic": "synthetic events",
    "samples": "user samples",
}


def _legend_outside(ax: Any, **options: Any) -> None:
    """The legend to the right of the axes, never over a curve."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **options)


def roc_curves(
    scores: Scores,
    label: np.ndarray,
    weight: np.ndarray | None = None,
    source: str | None = None,
) -> Figure:
    """ROC curves, the AUC in the legend: signal versus background efficiency, and beside it
    the HEP form, background rejection 1/eff_b (log axis) versus signal efficiency, where the
    tight selections that decide the AMS are visible.

    With `weight`, efficiencies are of event weights (physics yields), as in `auroc_weighted`.
    """
    colours = _colours(list(scores))
    kind = "weighted " if weight is not None else ""
    with style():
        figure, (ax, rejection) = _figure(2)
        for name, s in scores.items():
            fpr, tpr, _ = roc_curve(label, s, sample_weight=weight)
            auc = float(np.trapezoid(tpr, fpr))
            ax.plot(fpr, tpr, color=colours[name], lw=2, label=f"{name} (AUC {auc:.4f})")
            kept = fpr > 0
            rejection.plot(tpr[kept], 1.0 / fpr[kept], color=colours[name], lw=2, label=name)
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="random")
        grid = np.linspace(0.01, 1.0, 100)
        rejection.plot(grid, 1.0 / grid, color="grey", ls=":", lw=1, label="random")
        ax.set(
            xlabel=f"Background efficiency ({kind}false positive rate)",
            ylabel=f"Signal efficiency ({kind}true positive rate)",
            xlim=(0, 1),
            ylim=(0, 1.05),
        )
        rejection.set_yscale("log")
        rejection.set(
            xlabel=f"Signal efficiency ({kind}true positive rate)",
            ylabel=r"Background rejection $1/\varepsilon_b$",
            xlim=(0, 1),
        )
        ax.legend(loc="lower right")
        _legend_outside(rejection, fontsize="small")
        experiment_label(ax, source)
    return figure


def precision_recall_curves(
    scores: Scores,
    label: np.ndarray,
    weight: np.ndarray | None = None,
    totals: Totals = (S_TOT, B_TOT),
) -> Figure:
    """Precision-recall curves, average precision in the legend.

    With `weight`, both are of event weights rescaled per class to `totals` (as the AMS is):
    recall is the selected share of the signal yield and precision the signal purity s/(s+b)
    of the selection at full-data scale, on a log axis since it starts at S/(S+B) ~ 0.2%.
    Without, they count events.
    """
    colours = _colours(list(scores))
    label = np.asarray(label)
    w = None if weight is None else rescaled_weights(label, weight, *totals)
    with style():
        figure, (ax,) = _figure()
        for name, s in scores.items():
            precision, recall, _ = precision_recall_curve(label, s, sample_weight=w)
            ap = average_precision_score(label, s, sample_weight=w)
            ax.plot(recall, precision, color=colours[name], lw=2, label=f"{name} (AP {ap:.4f})")
        if w is None:
            base, purity = float(np.mean(label)), "unweighted purity"
            ax.set(ylim=(0, 1.05))
        else:
            base, purity = totals[0] / (totals[0] + totals[1]), "weighted purity s/(s+b)"
            ax.set_yscale("log")
            ax.set_ylim(base / 2, 1.05)
        ax.axhline(base, color="grey", ls=":", lw=1, label="signal fraction")
        kind = "weighted " if w is not None else ""
        ax.set(xlabel=f"Recall ({kind}signal efficiency)", ylabel=f"Precision ({purity})")
        ax.set(xlim=(0, 1))
        ax.legend(loc="upper right" if w is not None else "lower left")
    return figure


def weighted_pr_counts(
    scores: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray,
    num_thresholds: int = 127,
    totals: Totals = (S_TOT, B_TOT),
) -> dict[str, np.ndarray]:
    """TensorBoard's PR-curve data (`add_pr_curve_raw`) with event weights rescaled to
    `totals`: at thresholds i/(n-1) on the probability, the weighted true and false positives
    and negatives of `score >= threshold`, with precision and recall."""
    scores = np.asarray(scores, dtype=np.float64)
    signal = np.asarray(label).astype(bool)
    w = rescaled_weights(signal, weight, *totals)
    bucket = np.clip(np.floor(scores * (num_thresholds - 1)), 0, num_thresholds - 1).astype(int)
    # Weight at or above each threshold: a reversed cumulative sum of per-bucket weights.
    sig = np.bincount(bucket[signal], w[signal], minlength=num_thresholds)[::-1].cumsum()[::-1]
    bkg = np.bincount(bucket[~signal], w[~signal], minlength=num_thresholds)[::-1].cumsum()[::-1]
    tp, fp = sig, bkg
    fn, tn = sig[0] - sig, bkg[0] - bkg
    selected = tp + fp
    precision = np.divide(tp, selected, out=np.ones_like(tp), where=selected > 0)
    recall = np.divide(tp, sig[0], out=np.zeros_like(tp), where=sig[0] > 0)
    return {
        "true_positive_counts": tp,
        "false_positive_counts": fp,
        "true_negative_counts": tn,
        "false_negative_counts": fn,
        "precision": precision,
        "recall": recall,
    }


def ams_curves(
    scores: Scores,
    label: np.ndarray,
    weight: np.ndarray,
    cut_fractions: Mapping[str, float] | None = None,
    totals: Totals = (S_TOT, B_TOT),
) -> Figure:
    """AMS versus the selected fraction of events (weights at full-data scale), cuts marked."""
    colours = _colours(list(scores))
    target = torch.tensor(np.asarray(label, dtype=np.int64))
    w = torch.tensor(np.asarray(weight, dtype=np.float64))
    with style():
        figure, (ax,) = _figure()
        for name, s in scores.items():
            curve = ams_curve(torch.tensor(np.asarray(s, dtype=np.float64)), target, w, *totals)
            fraction, value = curve.fraction.numpy(), curve.ams.numpy()
            ax.plot(fraction, value, color=colours[name], lw=1.5, label=name)
            if cut_fractions and name in cut_fractions:
                cut = cut_fractions[name]
                at = min(np.searchsorted(fraction, cut - 1e-12), len(fraction) - 1)
                ax.plot(
                    fraction[at],
                    value[at],
                    marker="v",
                    ms=14,
                    color=colours[name],
                    mec="black",
                    ls="none",
                    label=f"{name} cut: top {100 * cut:.1f}%, AMS {value[at]:.3f}",
                )
        ax.set(xlabel="Selected fraction of events (top scores)", ylabel="AMS")
        ax.set_xscale("log")
        ax.set_xlim(left=1e-3, right=1.0)
        ax.set_ylim(bottom=0)
        _legend_outside(ax, fontsize="small")
    return figure


def score_distributions(
    scores: Scores,
    label: np.ndarray,
    weight: np.ndarray,
    bins: int = 50,
    totals: Totals = (S_TOT, B_TOT),
    cut_thresholds: Mapping[str, float] | None = None,
    source: str | None = None,
) -> Figure:
    """Weighted score histograms of signal and background (full-data yields), one panel a run.

    Error bars are each bin's statistical uncertainty from the simulated events,
    sqrt(sum of squared yields); `cut_thresholds` (score per run) draws the chosen cut.
    """
    yields = rescaled_weights(label, np.asarray(weight, np.float64), *totals)
    signal = np.asarray(label).astype(bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    with style():
        figure, axes = _figure(len(scores))
        for ax, (name, s) in zip(axes, scores.items(), strict=True):
            for mask, what, colour in (
                (~signal, "background", BACKGROUND),
                (signal, "signal", SIGNAL),
            ):
                counts, _ = np.histogram(s[mask], bins=edges, weights=yields[mask])
                squares, _ = np.histogram(s[mask], bins=edges, weights=yields[mask] ** 2)
                mplhep.histplot(
                    counts, edges, yerr=np.sqrt(squares), ax=ax, color=colour, lw=2, label=what
                )
            if cut_thresholds and name in cut_thresholds:
                cut = cut_thresholds[name]
                ax.axvline(cut, color="black", ls="--", lw=1.5, label=f"cut: score > {cut:.3g}")
            ax.set_yscale("log")
            ax.set(xlabel="Classifier score", ylabel="Expected events / bin (full data)")
            ax.set_xlim(0, 1)
            _legend_outside(ax, title=name)  # the run's name, as a title would
            experiment_label(ax, source)
    return figure


def feature_importance(ranking: Any, xlabel: str, title: str, max_display: int = 20) -> Figure:
    """Horizontal bars of each feature's mean |SHAP|, unweighted and event-weighted.

    `ranking` is a frame of `amsaware.explain.ranking` (most important first); the top
    `max_display` features are drawn, the most important at the top. Colours are neutral:
    red and blue mean signal and background in every other figure.
    """
    top = ranking.head(max_display).iloc[::-1]
    positions = np.arange(len(top))
    weighted = top["weighted_mean_abs_shap"].to_numpy(dtype=np.float64)
    has_weights = bool(np.isfinite(weighted).any())
    height = 0.4 if has_weights else 0.7
    shift = height / 2 if has_weights else 0.0
    with style():
        figure = Figure(figsize=(PANEL[0] + 2.5, 0.32 * len(top) + 1.8), layout="constrained")
        FigureCanvasAgg(figure)
        ax = figure.subplots()
        ax.barh(positions + shift, top["mean_abs_shap"], height, color="0.35", label="events")
        if has_weights:
            label = "weighted events (class weights scaled to the totals)"
            ax.barh(positions - shift, weighted, height, color="#ff7f0e", label=label)
            ax.legend(loc="lower right", fontsize="small")
        ax.set_yticks(positions, top["feature"].tolist())
        ax.tick_params(axis="y", which="both", left=False, right=False, labelsize="medium")
        ax.tick_params(axis="x", which="both", top=False)
        ax.set_ylim(-0.6, len(top) - 0.4)
        ax.set_xlim(0, None)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize="large")
    return figure


def shap_beeswarm(
    values: np.ndarray,
    features: np.ndarray,
    feature_names: Sequence[str],
    xlabel: str,
    title: str,
    max_display: int = 20,
    seed: int = 0,
) -> Figure:
    """shap's beeswarm (one dot per event, coloured by the feature's value; grey: undefined).

    shap jitters the dots with numpy's global random state; it is seeded here and restored,
    so the figure is reproducible and the caller's random state untouched.
    """
    import shap

    n_rows = min(max_display, len(feature_names))
    explanation = shap.Explanation(
        values=np.asarray(values), data=np.asarray(features), feature_names=list(feature_names)
    )
    with style():
        figure = Figure(figsize=(PANEL[0] + 3, 0.4 * n_rows + 2.2), layout="constrained")
        FigureCanvasAgg(figure)
        ax = figure.subplots()
        # shap draws its jitter from the legacy global generator; there is no other handle.
        state = np.random.get_state()  # noqa: NPY002
        np.random.seed(seed)  # noqa: NPY002
        try:
            shap.plots.beeswarm(
                explanation,
                max_display=max_display,
                ax=ax,
                show=False,
                plot_size=None,
            )
        finally:
            np.random.set_state(state)  # noqa: NPY002
        ax.tick_params(axis="y", which="both", left=False, right=False)
        ax.tick_params(axis="x", which="both", top=False)
        # shap draws the undefined (grey) dots of a row first and the coloured ones over them,
        # which hides them where they share a region (DER_mass_MMC, imputed near its mean).
        # The bottom row sums the features not shown when there are more than max_display:
        # its colours are those of one of them, so it is left as shap draws it.
        grey = matplotlib.colors.to_rgba(UNDEFINED)
        grouped = len(feature_names) > max_display
        for dots in ax.collections:
            colours, where = dots.get_facecolor(), dots.get_offsets()
            if dots.get_array() is not None or not len(colours) or not len(where):
                continue
            if np.allclose(colours[0], grey) and not (grouped and abs(where[0][1]) < 0.5):
                dots.set_zorder(4)
        for colour_bar in figure.axes[1:]:
            colour_bar.tick_params(which="both", left=False, right=False)
            colour_bar.set_ylabel("Feature value (grey: undefined)", labelpad=12)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize="large")
    return figure


#: The Lightning loggers that take figures (CSV takes numbers only).
FIGURE_LOGGERS = ("TensorBoardLogger", "MLFlowLogger", "WandbLogger")


def log_to_logger(
    logger: Any,
    prefix: str,
    scores: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray,
    step: int = 0,
    cut_fraction: float | None = None,
    totals: Totals = (S_TOT, B_TOT),
    figures: Mapping[str, Figure] | None = None,
) -> bool:
    """The ROC, AMS-vs-fraction and score-distribution figures into every Lightning logger
    given (one, or a list as a trainer's `loggers`) that takes figures: TensorBoard (with the
    weighted PR curve, `log_to_tensorboard`), MLflow (PNG artifacts `<prefix><name>.png`) and
    W&B (images). The figures are built once for all of them. False when none takes figures
    (`logger=null`, CSV). `figures`: the stage's figures where already built."""
    items = [item for item in (logger if isinstance(logger, list | tuple) else [logger]) if item]
    sinks = [item for item in items if type(item).__name__ in FIGURE_LOGGERS]
    if not sinks:
        return False
    if figures is None:
        figures = stage_figures(prefix, scores, label, weight, cut_fraction, totals)
    for item in sinks:
        if type(item).__name__ == "TensorBoardLogger":
            _to_tensorboard(item.experiment, prefix, figures, scores, label, weight, step, totals)
        else:
            figures_to_logger(item, prefix, figures, step)
    return True


def figures_to_logger(
    logger: Any, prefix: str, figures: Mapping[str, Figure], step: int = 0
) -> None:
    """Built figures into one figure-taking Lightning logger (`FIGURE_LOGGERS`): TensorBoard
    images, MLflow PNG artifacts `<prefix><name>.png`, W&B images. Others take none."""
    kind = type(logger).__name__
    with style():  # rendered in the style they were built in
        for tag, figure in figures.items():
            if kind == "TensorBoardLogger":
                logger.experiment.add_figure(
                    f"{prefix}{tag}", figure, global_step=step, close=False
                )
            elif kind == "MLFlowLogger":
                logger.experiment.log_figure(logger.run_id, figure, f"{prefix}{tag}.png")
            elif kind == "WandbLogger":
                logger.log_image(key=f"{prefix}{tag}", images=[figure])


def stage_figures(
    prefix: str,
    scores: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray,
    cut_fraction: float | None = None,
    totals: Totals = (S_TOT, B_TOT),
    cut_threshold: float | None = None,
    source: str | None = None,
) -> dict[str, Figure]:
    """A stage's figures by name: `roc`, `ams_vs_fraction` and `score_distribution` (the cut
    marked on each where given), the scores' run named after `prefix`."""
    name = prefix.rstrip("/") or "scores"
    runs = {name: np.asarray(scores, dtype=np.float64)}
    cuts = {name: cut_fraction} if cut_fraction is not None else None
    thresholds = {name: cut_threshold} if cut_threshold is not None else None
    with style():
        return {
            "roc": roc_curves(runs, label, source=source),
            "ams_vs_fraction": ams_curves(runs, label, weight, cuts, totals),
            "score_distribution": score_distributions(
                runs, label, weight, totals=totals, cut_thresholds=thresholds, source=source
            ),
        }


def log_to_tensorboard(
    writer: Any,
    prefix: str,
    scores: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray,
    step: int = 0,
    cut_fraction: float | None = None,
    totals: Totals = (S_TOT, B_TOT),
) -> None:
    """`stage_figures` plus a PR curve, into TensorBoard.

    The PR curve is weighted as the AMS is (`weighted_pr_counts`): TensorBoard's own
    `add_pr_curve` counts events, which says little when weights span six orders of magnitude.

    `writer` is a `SummaryWriter` (a Lightning TensorBoardLogger's `experiment`).
    """
    figures = stage_figures(prefix, scores, label, weight, cut_fraction, totals)
    _to_tensorboard(writer, prefix, figures, scores, label, weight, step, totals)


def _to_tensorboard(
    writer: Any,
    prefix: str,
    figures: Mapping[str, Figure],
    scores: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray,
    step: int,
    totals: Totals,
) -> None:
    """Built figures and the weighted PR curve into a TensorBoard writer."""
    with style():  # rendered in the style they were built in; kept open for other loggers
        for tag, figure in figures.items():
            writer.add_figure(f"{prefix}{tag}", figure, global_step=step, close=False)
    counts = weighted_pr_counts(np.asarray(scores, dtype=np.float64), label, weight, totals=totals)
    writer.add_pr_curve_raw(
        f"{prefix}pr_curve", **counts, global_step=step, num_thresholds=len(counts["recall"])
    )
    writer.flush()

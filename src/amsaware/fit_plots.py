"""Figures of the binned fit (amsaware.fit): score templates, pulls and impacts, likelihood scan.

Drawn with mplhep in the project's style and without pyplot (cabinetry's own figures go through
pyplot and write files), so each function returns a `Figure` the caller saves or logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cabinetry
import mplhep
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from amsaware.fit import POI, STATERROR, Scan, model_and_data
from amsaware.plots import PANEL, style


def _new(height: float = 1.0, **kwargs: Any) -> Figure:
    figure = Figure(figsize=(PANEL[0], PANEL[1] * height), layout="constrained", **kwargs)
    FigureCanvasAgg(figure)
    return figure


def distributions(spec: Mapping[str, Any], log: bool = True) -> Figure:
    """Stacked expected yield per process and bin, the Asimov data, the systematic band (all
    nuisances, pre-fit, from cabinetry's yield uncertainty), and the data/expectation ratio."""
    model, data = model_and_data(spec)
    prediction = cabinetry.model_utils.prediction(model)
    yields = np.asarray(prediction.model_yields[0], np.float64)  # samples x bins
    total = yields.sum(axis=0)
    band = np.asarray(prediction.total_stdev_model_bins[0][-1], np.float64)
    observed = np.asarray(data[: model.config.nmaindata], np.float64)
    edges = np.arange(len(total) + 1, dtype=np.float64)
    with style():
        figure = _new(1.3)
        top, ratio = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
        order = np.argsort(yields.sum(axis=1))  # the smallest processes on top of the stack
        mplhep.histplot(
            list(yields[order]),
            edges,
            stack=True,
            histtype="fill",
            label=[model.config.samples[i] for i in order],
            ax=top,
        )
        top.stairs(
            total + band,
            edges,
            baseline=total - band,
            fill=True,
            alpha=0.3,
            color="grey",
            hatch="///",
            label="Uncertainty",
        )
        centres = 0.5 * (edges[1:] + edges[:-1])
        top.errorbar(centres, observed, yerr=np.sqrt(observed), fmt="ko", label="Asimov data")
        if log:
            top.set_yscale("log")
        top.set_ylabel("Events / bin")
        top.legend(fontsize="small", ncols=2)
        relative = band / total
        ratio.stairs(
            1 + relative,
            edges,
            baseline=1 - relative,
            fill=True,
            alpha=0.3,
            color="grey",
            hatch="///",
        )
        ratio.errorbar(centres, observed / total, yerr=np.sqrt(observed) / total, fmt="ko")
        ratio.axhline(1, color="k", lw=1)
        ratio.set(xlabel="Bin (equal signal yield, increasing score)", ylabel="Data / exp.")
        ratio.set_xlim(edges[0], edges[-1])
    return figure


def pulls(bestfit: np.ndarray, uncertainty: np.ndarray, labels: list[str]) -> Figure:
    """Post-fit nuisance parameters in units of their prior (staterror gammas and mu left out)."""
    keep = [i for i, name in enumerate(labels) if name != POI and not name.startswith(STATERROR)]
    names = [labels[i] for i in keep]
    y = np.arange(len(keep))
    with style():
        figure = _new(max(0.5, 0.15 * len(keep) + 0.4))
        ax = figure.subplots()
        ax.axvspan(-2, 2, color="yellow", alpha=0.5)
        ax.axvspan(-1, 1, color="limegreen", alpha=0.6)
        ax.errorbar(np.asarray(bestfit)[keep], y, xerr=np.asarray(uncertainty)[keep], fmt="ko")
        ax.set_yticks(y, names)
        ax.set_xlim(-3, 3)
        ax.set_ylim(-0.5, len(keep) - 0.5)
        ax.set_xlabel(r"$(\hat{\theta} - \theta_0) / \Delta\theta$")
    return figure


def impacts(ranking: Any, max_display: int = 20) -> Figure:
    """Pre- and post-fit impact of each nuisance on mu (cabinetry's `RankingResults`), largest on
    top, with the post-fit pulls on a second axis."""
    post = np.maximum(np.abs(ranking.postfit_up), np.abs(ranking.postfit_down))
    order = np.argsort(post)[-max_display:]
    y = np.arange(len(order))
    with style():
        figure = _new(max(0.6, 0.08 * len(order) + 0.4))
        ax = figure.subplots()
        for values, colour, fill, label in (
            (ranking.prefit_up, "C0", False, r"Pre-fit $+1\sigma$"),
            (ranking.prefit_down, "C1", False, r"Pre-fit $-1\sigma$"),
            (ranking.postfit_up, "C0", True, r"Post-fit $+1\sigma$"),
            (ranking.postfit_down, "C1", True, r"Post-fit $-1\sigma$"),
        ):
            ax.barh(
                y,
                np.asarray(values)[order],
                height=0.7,
                fill=fill,
                edgecolor=colour,
                color=colour if fill else None,
                label=label,
            )
        ax.set_yticks(y, [ranking.labels[i] for i in order])
        ax.set_xlabel(r"$\Delta\mu$")
        ax.axvline(0, color="k", lw=0.8)
        ax.legend(fontsize="small", loc="lower right")
        reach = 1.15 * float(
            np.max(
                np.abs(
                    np.concatenate(
                        [
                            ranking.prefit_up,
                            ranking.prefit_down,
                            ranking.postfit_up,
                            ranking.postfit_down,
                        ]
                    )
                )
            )
        )
        ax.set_xlim(-reach, reach)  # symmetric, so that 0 lines up with the pulls' 0
        alphas = [i for i in order if not ranking.labels[i].startswith(STATERROR)]
        pull_ax = ax.twiny()
        pull_ax.errorbar(
            np.asarray(ranking.bestfit)[alphas],
            y[np.isin(order, alphas)],
            xerr=np.asarray(ranking.uncertainty)[alphas],
            fmt="ko",
            ms=4,
        )
        pull_ax.set_xlim(-2, 2)
        pull_ax.set_xlabel(r"Pull $(\hat{\theta} - \theta_0) / \Delta\theta$ (not for staterror)")
    return figure


def likelihood_scan(scan: Scan) -> Figure:
    """Delta(-2 ln L) against mu, all nuisances profiled and all fixed, on one axis."""
    with style():
        figure = _new()
        ax = figure.subplots()
        ax.plot(scan.mu, scan.full, "-", color="k", label="Stat. + syst.")
        ax.plot(scan.mu, scan.stat, "--", color="C0", label="Stat. only")
        for level in (1, 4):
            ax.axhline(level, color="grey", lw=0.8, ls=":")
        ax.set(xlabel=r"$\mu$", ylabel=r"$-2\Delta\ln L$")
        ax.set_ylim(0, max(5.0, 1.1 * float(np.max(scan.full))))
        ax.legend()
    return figure

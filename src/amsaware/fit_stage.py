"""A run's fit stage: its held-out events shifted by each nuisance, re-scored by the model that
held them out, binned and fitted as an analysis would (`amsaware.fit`).

- The events: every training event, scored by the fold model that did not train on it, as its
  out-of-fold score is (with `cv.repeats`, averaged over the repeats). The nominal events take
  the same pipeline as the shifted ones (`systematics.variations` at alpha = 1: DER_ features
  recomputed, the post-selection applied), so nominal and shifted templates differ only by the
  shift; the network sees them as it saw its training events (raw features, its own fitted
  preprocessing).
- The weights: rescaled per class to the data's totals over all training events before the
  post-selection, so the templates stand for the luminosity the totals mean and a cut that
  removes events removes yield. An event that fails the nominal selection weighs 0 in the
  nominal template but keeps its weight in a shifted one it passes (migrations).
- The processes: the signal (label 1) is one sample scaled by mu; the background keeps its
  process labels (`EventTable.process`), which the normalisation nuisances name.

What the stage writes: `fit/held_out.npz` (the fit's events, `fit.save_input`: what
compare.py refits bootstrap resamples of), `fit/workspace.json` (standard pyhf JSON), the figures
(`fit/distributions`, `fit/impacts`, `fit/scan`, PNG and PDF) and the `fit/...` metrics; with
`fit.reference`, the run's sigma_mu set against another run's (`FitReference`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amsaware import fit
from amsaware.data.schema import EventTable
from amsaware.data.systematics import Systematics, variations
from amsaware.data.weights import rescaled_weights
from amsaware.settings import FitSettings

log = logging.getLogger(__name__)

#: Raw features (n x the table's features, NaN where undefined) -> the model's logits.
Scorer = Callable[[np.ndarray], np.ndarray]
#: The same, also told the variation's nuisance inputs (K,) (`variation_inputs`); the scorer
#: of a plain network ignores them, a parameterised one (`NuisanceMLP`) takes them as inputs.
PullsScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]
SIGNAL = "signal"
#: The background's name where the data carry no process labels.
BACKGROUND = "background"
NOMINAL = "nominal"
#: `run_folder.FIT_EVENTS` within the stage's folder.
EVENTS_FILE = "held_out.npz"


def no_systematics() -> Systematics:
    """Settings without any nuisance: `fit.enabled=true` without a systematics group fits the
    data statistics (and the templates' own, with `fit.mc_stat`) alone."""
    return Systematics(tes=None, jes=None, les=None, soft_met=None, norm={})


def variation_inputs(shapes: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The nuisance inputs (K,) a parameterised network scores each variation with: 0 for
    the nominal; for `<name>_down`/`_up` -1/+1 at that nuisance and 0 elsewhere (soft MET's
    down is the nominal: 0), as `datamodule.nuisance_inputs` encodes the training draws."""
    found = {NOMINAL: np.zeros(len(shapes))}
    for k, name in enumerate(shapes):
        for side, value in (("down", 0.0 if name == "soft_met" else -1.0), ("up", 1.0)):
            found[f"{name}_{side}"] = np.where(np.arange(len(shapes)) == k, value, 0.0)
    return found


class HeldOutScores:
    """Each training event's held-out score, nominal and under every ±1σ shape shift.

    `add(index, scorer)` is called once per fold model with the rows it held out; the shifted
    feature matrices are built once, up front.
    """

    def __init__(self, table: EventTable, settings: Systematics) -> None:
        if not table.labelled:
            raise ValueError(f"{table.source}: the fit needs labelled, weighted events")
        self.table = table
        self.settings = settings
        self.variations = variations(table, settings)
        self.features = {NOMINAL: self.variations.nominal.features}
        for name, (down, up) in self.variations.shapes.items():
            self.features[f"{name}_down"] = down.features
            self.features[f"{name}_up"] = up.features
        self._sums = {key: np.zeros(len(table)) for key in self.features}
        self._counts = np.zeros(len(table), dtype=np.int64)

    def add(
        self, index: np.ndarray, score: Scorer | PullsScorer, takes_pulls: bool = False
    ) -> None:
        """Score the held-out rows `index` of every variation with one fold's model; with
        `takes_pulls`, `score(features, inputs)` is told each variation's nuisance inputs."""
        index = np.asarray(index)
        inputs = variation_inputs(tuple(self.variations.shapes))
        for key, features in self.features.items():
            extra = (inputs[key],) if takes_pulls else ()
            self._sums[key][index] += np.asarray(score(features[index], *extra), np.float64)
        self._counts[index] += 1

    def fit_input(self) -> fit.FitInput:
        """The fit's events: mean held-out scores, weights at the totals, process names."""
        missing = int((self._counts == 0).sum())
        if missing:
            raise ValueError(f"{missing} training events were never scored by a fold model")
        mean = {key: total / self._counts for key, total in self._sums.items()}
        table = self.table
        weight = rescaled_weights(table.label, table.weight, table.s_tot, table.b_tot)
        background = table.process if table.process is not None else BACKGROUND
        process = np.where(table.label == 1, SIGNAL, background).astype(str)
        nominal = self.variations.nominal.passed
        shapes = [
            fit.ShapeVariation(
                name,
                mean[f"{name}_down"],
                mean[f"{name}_up"],
                down_selected=down.passed,
                up_selected=up.passed,
                down_weight=weight,
                up_weight=weight,
            )
            for name, (down, up) in self.variations.shapes.items()
        ]
        return fit.FitInput(
            score=mean[NOMINAL],
            weight=np.where(nominal, weight, 0.0),
            process=process,
            signal=SIGNAL,
            shapes=shapes,
            norms=dict(self.settings.norm),
        )


@dataclass(frozen=True)
class FitReference:
    """A finished run's fit that this run's is set against (`fit.reference`): its folder, how
    it was trained (`loss=bce`, ...) and its sigma_mu, full and stat-only. Built by
    `checks.read_fit_reference`, which has checked before training that it fitted the same
    events with the same nuisances, bins and mc_stat, so the two numbers are comparable."""

    path: Path
    method: str
    sigma_mu: float
    sigma_mu_stat: float

    def section(self, metrics: dict[str, float]) -> dict[str, Any]:
        """metrics.json's `fit.reference`: the reference's values and, after a fit, this run's
        relative change (this / reference - 1). Plain keys, not `fit/` names, so a search or
        compare.py never takes them for this run's own metrics."""
        found: dict[str, Any] = {
            "run": str(self.path),
            "method": self.method,
            "sigma_mu": self.sigma_mu,
            "sigma_mu_stat": self.sigma_mu_stat,
        }
        if "fit/sigma_mu" in metrics:
            found["change"] = metrics["fit/sigma_mu"] / self.sigma_mu - 1.0
            found["change_stat"] = metrics["fit/sigma_mu_stat"] / self.sigma_mu_stat - 1.0
        return found

    def describe(self, metrics: dict[str, float]) -> str:
        """One line for the console: this run's sigma_mu against the reference's."""
        change = metrics["fit/sigma_mu"] / self.sigma_mu - 1.0
        return (
            f"fit/sigma_mu {metrics['fit/sigma_mu']:.3f} (stat only "
            f"{metrics['fit/sigma_mu_stat']:.3f}) against {self.sigma_mu:.3f} "
            f"({self.sigma_mu_stat:.3f}) of {self.path} ({self.method}): {change:+.0%}"
        )

    def compare_command(self, run: Path) -> str:
        """compare.py's paired bootstrap of the two runs' sigma_mu (refits of resamples)."""
        return f"python compare.py runs='[{self.path},{run}]'"


@dataclass(frozen=True)
class FitOutcome:
    """What the stage gives the run: metrics (empty when the fit failed) and the error."""

    metrics: dict[str, float]
    error: str | None = None
    report: fit.FitReport | None = None

    def section(
        self, settings: FitSettings, reference: FitReference | None = None
    ) -> dict[str, Any]:
        """metrics.json's `fit` section: the metrics, how they were made, or the error; with a
        reference, its values and this run's change against them (`reference`)."""
        how = settings_section(settings)
        found = {"error": self.error} if self.error is not None else dict(self.metrics)
        found["settings"] = how
        if reference is not None:
            found["reference"] = reference.section(self.metrics)
        return found


def settings_section(settings: FitSettings) -> dict[str, Any]:
    """How a fit was made, as metrics.json's `fit.settings` records it."""
    return {"mc_stat": settings.mc_stat, "bins": settings.bins, "toys": settings.toys}


def run_fit(
    held_out: HeldOutScores,
    settings: FitSettings,
    seed: int,
    out_dir: Path | None,
    figures_to: Callable[[dict[str, Any]], None] | None = None,
) -> FitOutcome:
    """Fit the held-out templates; write the workspace and figures under `out_dir` (`fit/`).

    A fit that does not converge is logged with the fitter's own message and returned as an
    error: the run keeps its other results. `figures_to` also receives the figures by name
    (e.g. for TensorBoard).
    """
    # cabinetry logs every fit's parameter table at INFO, and pyhf each failed minimisation
    # (which fit.py retries or reports) with its traceback at ERROR.
    logging.getLogger("cabinetry").setLevel(logging.WARNING)
    logging.getLogger("pyhf").setLevel(logging.WARNING)
    logging.getLogger("pyhf.optimize").setLevel(logging.CRITICAL)
    config = fit.FitConfig(bins=settings.bins, mc_stat=settings.mc_stat, toys=settings.toys)
    data = held_out.fit_input()
    if out_dir is not None:  # before the fit: kept also when it fails, for compare's refits
        out_dir.mkdir(parents=True, exist_ok=True)
        fit.save_input(data, out_dir / EVENTS_FILE, held_out.table.event_id)
    try:
        report = fit.analyse(data, config, np.random.default_rng(seed))
    except fit.FitError as error:
        log.error("fit failed: %s (the run's other results are kept)", error)
        return FitOutcome({}, str(error))
    if out_dir is not None:
        from amsaware import plots

        out_dir.mkdir(parents=True, exist_ok=True)
        fit.write_workspace(report.spec, out_dir / "workspace.json")
        drawn = fit_figures(report)
        plots.save_both(drawn, out_dir)
        if figures_to is not None:
            figures_to(drawn)
    return FitOutcome(report.metrics(), None, report)


def fit_figures(report: fit.FitReport) -> dict[str, Any]:
    """The stacked templates with their band, the impacts on mu and the likelihood scan."""
    from amsaware import fit_plots

    drawn = {"distributions": fit_plots.distributions(report.spec)}
    try:
        drawn["scan"] = fit_plots.likelihood_scan(fit.likelihood_scan(report.spec))
    except fit.FitError as error:
        log.warning("no likelihood scan: %s", error)
    try:
        drawn["impacts"] = fit_plots.impacts(fit.ranking(report.spec)[1])
    except fit.FitError as error:
        log.warning("no impacts figure: %s", error)
    return drawn


def describe(metrics: dict[str, float]) -> str:
    """One line for the console: σ_μ full and stat-only, Z, coverage."""
    parts = [
        f"sigma_mu {metrics['fit/sigma_mu']:.3f} (stat-only {metrics['fit/sigma_mu_stat']:.3f})",
        f"Z {metrics['fit/z_discovery']:.2f} (stat-only {metrics['fit/z_discovery_stat']:.2f})",
    ]
    if "fit/coverage" in metrics:
        parts.append(
            f"coverage {metrics['fit/coverage']:.3f}, width {metrics['fit/interval_width']:.3f}"
        )
    return "; ".join(parts)

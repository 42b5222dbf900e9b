"""Binned profile-likelihood fit of a classifier's score (HistFactory via pyhf and cabinetry).

The classifier is judged here the way an analysis uses it: its held-out scores are binned, each
process becomes a template, systematic shifts of the events become nuisance parameters, and the
signal strength mu is fitted to Asimov data at mu = 1. The outputs are the expected precision on
mu (with and without nuisances), the expected discovery significance, and the coverage of the
68% interval in pseudo-experiments (scored like the FAIR Universe HiggsML Uncertainty Challenge).

Everything takes plain arrays and returns plain values: the caller (a training run) rescales
weights to the luminosity the fit assumes and scores the shifted copies of its events. pyhf builds
and fits the model (numpy backend, MINUIT), cabinetry runs MINOS and the nuisance ranking; this
module writes by hand only the binning rule, the templates and the pseudo-experiment loop.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cabinetry
import numpy as np
import pyhf

log = logging.getLogger(__name__)

POI = "mu"
CHANNEL = "score"
STATERROR = "staterror_score"
ONE_SIGMA = 0.6827  # the probability content of a 68% interval, as the challenge writes it
#: Background Monte Carlo events (unweighted) every bin must hold: the staterror of a bin is then
#: at most about 1/sqrt(20) = 22% for equal weights, and no bin's background is an empty guess.
MIN_BACKGROUND = 20


class FitError(RuntimeError):
    """The fitter did not converge; the message carries the fitter's own."""


@dataclass(frozen=True)
class ShapeVariation:
    """One shape nuisance: the same events' scores shifted by -1 and +1 sigma.

    `down_selected`/`up_selected` mark the events that still pass the selection after the shift
    (None: all do); `down_weight`/`up_weight` replace the nominal weights where the systematic
    changes them (None: the nominal weights).
    """

    name: str
    down: np.ndarray
    up: np.ndarray
    down_selected: np.ndarray | None = None
    up_selected: np.ndarray | None = None
    down_weight: np.ndarray | None = None
    up_weight: np.ndarray | None = None


@dataclass(frozen=True)
class FitInput:
    """The held-out events of one run, weights already at the luminosity the fit assumes.

    `process` names each event's process; `signal` is the one whose yield mu scales.
    `norms` gives the relative normalisation uncertainty of background processes (0.1 = 10%).
    """

    score: np.ndarray
    weight: np.ndarray
    process: np.ndarray
    signal: str = "signal"
    shapes: Sequence[ShapeVariation] = ()
    norms: Mapping[str, float] = field(default_factory=dict)

    def take(self, index: np.ndarray) -> FitInput:
        """The events at `index` (with repeats: a bootstrap resample), every array alike."""

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else np.asarray(values)[index]

        shapes = [
            ShapeVariation(
                v.name,
                np.asarray(v.down)[index],
                np.asarray(v.up)[index],
                pick(v.down_selected),
                pick(v.up_selected),
                pick(v.down_weight),
                pick(v.up_weight),
            )
            for v in self.shapes
        ]
        return FitInput(
            np.asarray(self.score)[index],
            np.asarray(self.weight)[index],
            np.asarray(self.process)[index],
            self.signal,
            shapes,
            dict(self.norms),
        )


#: Per shape nuisance, the arrays `save_input` writes (`<name>.<part>`), None-able last four.
_SHAPE_PARTS = ("down", "up", "down_selected", "up_selected", "down_weight", "up_weight")


def save_input(data: FitInput, path: str | Path, event_id: np.ndarray) -> Path:
    """The fit's events as NumPy's .npz (no pickled objects), with each event's `event_id` so
    that two runs' events can be paired (compare's bootstrap refits resamples of them)."""
    from amsaware.atomic import atomic_path

    arrays: dict[str, np.ndarray] = {
        "event_id": np.asarray(event_id),
        "score": np.asarray(data.score, np.float64),
        "weight": np.asarray(data.weight, np.float64),
        "process": np.asarray(data.process).astype(str),
        "signal": np.asarray(data.signal),
        "norm_process": np.asarray(list(data.norms), dtype=str),
        "norm_size": np.asarray(list(data.norms.values()), np.float64),
        "shapes": np.asarray([v.name for v in data.shapes], dtype=str),
    }
    for v in data.shapes:
        for part in _SHAPE_PARTS:
            value = getattr(v, part)
            if value is not None:
                arrays[f"{v.name}.{part}"] = np.asarray(value)
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return Path(path)


def load_input(path: str | Path) -> tuple[FitInput, np.ndarray]:
    """What `save_input` wrote: the fit's events and their ids; a clear error if malformed."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a fit's events file (.npz): {error}") from None
    required = ("event_id", "score", "weight", "process", "signal", "norm_process", "norm_size")
    missing = [key for key in (*required, "shapes") if key not in arrays]
    if missing:
        raise ValueError(f"{path}: lacks {missing}; expected the file fit_stage writes")
    n = len(arrays["score"])
    shapes = []
    for name in arrays["shapes"].tolist():
        parts = {part: arrays.get(f"{name}.{part}") for part in _SHAPE_PARTS}
        if parts["down"] is None or parts["up"] is None:
            raise ValueError(f"{path}: shape {name!r} lacks its down or up scores")
        shapes.append(ShapeVariation(name, **parts))
    for key, values in arrays.items():
        if key not in ("signal", "norm_process", "norm_size", "shapes") and len(values) != n:
            raise ValueError(f"{path}: {key} has {len(values)} entries; expected {n}")
    norms = dict(zip(arrays["norm_process"].tolist(), arrays["norm_size"].tolist(), strict=True))
    data = FitInput(
        arrays["score"],
        arrays["weight"],
        arrays["process"],
        str(arrays["signal"]),
        shapes,
        norms,
    )
    return data, arrays["event_id"]


@dataclass(frozen=True)
class Binning:
    """Bin edges as thresholds on the score: bin i holds thresholds[i-1] <= score < thresholds[i].

    The outer bins are open, so shifted scores beyond the nominal range stay in the fit.
    """

    thresholds: np.ndarray
    requested: int
    min_background: int

    @property
    def n_bins(self) -> int:
        return len(self.thresholds) + 1

    def index(self, score: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.thresholds, np.asarray(score), side="right")


def choose_binning(
    score: np.ndarray,
    weight: np.ndarray,
    is_signal: np.ndarray,
    bins: int = 10,
    min_background: int = MIN_BACKGROUND,
) -> Binning:
    """Equal signal weight per bin, then merged until every bin holds `min_background` events.

    The edges sit at weighted quantiles of the signal's scores (values of real events, so any
    rank-preserving transform of the score, logit or probability, gives the same bins). Walking
    from the most signal-like bin down, a bin with fewer than `min_background` background Monte
    Carlo events (unweighted) is merged with its lower neighbour; a short remainder at the bottom
    joins the bin above it. The result may have fewer bins than requested, never more.
    """
    score, weight = np.asarray(score, np.float64), np.asarray(weight, np.float64)
    is_signal = np.asarray(is_signal, bool)
    if not len(score) == len(weight) == len(is_signal):
        raise ValueError(
            f"choose_binning: {len(score)} scores, {len(weight)} weights and {len(is_signal)} "
            "signal flags; expected one of each per event"
        )
    bad = int((~np.isfinite(score)).sum() + (~np.isfinite(weight)).sum())
    if bad:
        raise ValueError(f"choose_binning: {bad} scores or weights are NaN or infinite")
    if bins < 1:
        raise ValueError(f"fit.bins={bins}: expected a positive number of bins")
    n_signal, n_background = int(is_signal.sum()), int((~is_signal).sum())
    if n_signal < bins or n_background < bins * min_background:
        raise ValueError(
            f"fit.bins={bins}: too few events for {bins} bins: {n_signal} signal events (need "
            f">= {bins}) and {n_background} background events (need >= {bins} x "
            f"{min_background} = {bins * min_background}, fit.min_background={min_background})"
        )
    s_score, s_weight = score[is_signal], weight[is_signal]
    order = np.argsort(s_score, kind="stable")
    cumulative = np.cumsum(s_weight[order])
    if not cumulative[-1] > 0:
        raise ValueError(f"signal weights sum to {cumulative[-1]}: expected a positive total")
    targets = cumulative[-1] * np.arange(1, bins) / bins
    cuts = s_score[order][np.minimum(np.searchsorted(cumulative, targets), len(order) - 1)]
    cuts = np.unique(cuts)  # tied scores collapse edges
    counts = np.bincount(
        np.searchsorted(cuts, score[~is_signal], side="right"), minlength=len(cuts) + 1
    )
    kept: list[float] = []  # thresholds kept, from the top down
    held = 0
    for i in range(len(cuts), 0, -1):  # bin i sits above threshold cuts[i-1]
        held += counts[i]
        if held >= min_background:
            kept.append(float(cuts[i - 1]))
            held = 0
    if kept and held + counts[0] < min_background:
        kept.pop()  # the bottom remainder joins the bin above it
    return Binning(np.array(sorted(kept)), bins, min_background)


@dataclass(frozen=True)
class Templates:
    """Per process: the nominal histogram, its sum of squared weights, and shape variations."""

    binning: Binning
    signal: str
    nominal: dict[str, np.ndarray]
    sumw2: dict[str, np.ndarray]
    #: shape nuisance -> process -> (down, up) histograms
    shapes: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    norms: dict[str, float]

    @property
    def processes(self) -> list[str]:
        return list(self.nominal)


def build_templates(data: FitInput, binning: Binning) -> Templates:
    """Histogram every process (nominal, sum of squared weights, each shape's -1/+1 sigma)."""
    score, weight = np.asarray(data.score), np.asarray(data.weight, np.float64)
    process = np.asarray(data.process).astype(str)
    n = len(score)
    if len(weight) != n or len(process) != n:
        raise ValueError(
            f"FitInput: score ({n}), weight ({len(weight)}) and process ({len(process)}) "
            "must have one entry per event"
        )
    names = sorted(set(process.tolist()), key=lambda p: (p != data.signal, p))
    if data.signal not in names:
        raise ValueError(f"FitInput.signal={data.signal!r}: no event of it; processes: {names}")
    if len(names) < 2:
        raise ValueError(f"FitInput.process: only {names}; expected at least one background")
    unknown = set(data.norms) - set(names[1:])
    if unknown:
        raise ValueError(
            f"FitInput.norms: {sorted(unknown)} are not background processes ({names[1:]})"
        )
    for p, f in data.norms.items():
        if not 0 < f < 1:
            raise ValueError(f"FitInput.norms[{p!r}]={f}: expected a relative size in (0, 1)")
    nb = binning.n_bins

    def hist(s: np.ndarray, w: np.ndarray, keep: np.ndarray) -> np.ndarray:
        return np.bincount(binning.index(s[keep]), weights=w[keep], minlength=nb)

    everyone = np.ones(n, bool)
    nominal = {p: hist(score, weight, process == p) for p in names}
    sumw2 = {p: hist(score, weight**2, process == p) for p in names}
    total = sum(nominal.values())
    if np.any(total <= 0):
        raise ValueError(
            f"bins {np.flatnonzero(total <= 0).tolist()} expect no events (sum of weights "
            f"{total.round(3).tolist()}): expected positive yields in every bin"
        )
    shapes: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for v in data.shapes:
        if v.name in shapes or v.name in (POI, STATERROR) or v.name.startswith("norm_"):
            raise ValueError(f"ShapeVariation.name={v.name!r}: duplicate or reserved name")
        shifted = []
        for side, s, sel, w in (
            ("down", v.down, v.down_selected, v.down_weight),
            ("up", v.up, v.up_selected, v.up_weight),
        ):
            s = np.asarray(s)
            sel = everyone if sel is None else np.asarray(sel, bool)
            w = weight if w is None else np.asarray(w, np.float64)
            if not len(s) == len(sel) == len(w) == n:
                raise ValueError(
                    f"shape {v.name!r} ({side}): {len(s)} scores, {len(sel)} selection flags, "
                    f"{len(w)} weights; expected {n}, one per nominal event"
                )
            if not np.all(np.isfinite(s[sel])):
                raise ValueError(f"shape {v.name!r} ({side}): selected events with NaN scores")
            shifted.append({p: hist(s, w, sel & (process == p)) for p in names})
        shapes[v.name] = {p: (shifted[0][p], shifted[1][p]) for p in names}
    return Templates(binning, data.signal, nominal, sumw2, shapes, dict(data.norms))


def workspace(templates: Templates, mc_stat: bool = True) -> dict[str, Any]:
    """A HistFactory workspace (pyhf JSON): mu on the signal, normsys, histosys, staterror.

    Observations are the Asimov data at mu = 1 with every nuisance at its nominal value.
    `mc_stat=False` treats the templates as exact (no staterror). A histosys whose variations
    equal the nominal for a process is left out for that process (it would be a flat direction).
    """
    samples = []
    for p in templates.processes:
        nominal = templates.nominal[p]
        modifiers: list[dict[str, Any]] = []
        if p == templates.signal:
            modifiers.append({"name": POI, "type": "normfactor", "data": None})
        if p in templates.norms:
            f = templates.norms[p]
            modifiers.append(
                {"name": f"norm_{p}", "type": "normsys", "data": {"hi": 1 + f, "lo": 1 - f}}
            )
        for name, per_process in templates.shapes.items():
            down, up = per_process[p]
            if np.allclose(down, nominal) and np.allclose(up, nominal):
                continue
            modifiers.append(
                {
                    "name": name,
                    "type": "histosys",
                    "data": {"hi_data": up.tolist(), "lo_data": down.tolist()},
                }
            )
        if mc_stat:
            modifiers.append(
                {
                    "name": STATERROR,
                    "type": "staterror",
                    "data": np.sqrt(templates.sumw2[p]).tolist(),
                }
            )
        samples.append({"name": p, "data": nominal.tolist(), "modifiers": modifiers})
    asimov = sum(templates.nominal.values())
    spec = {
        "channels": [{"name": CHANNEL, "samples": samples}],
        "observations": [{"name": CHANNEL, "data": asimov.tolist()}],
        "measurements": [
            {"name": "asimov", "config": {"poi": POI, "parameters": [_poi_bounds(templates)]}}
        ],
        "version": "1.0.0",
    }
    pyhf.Workspace(spec)  # validates against the HistFactory schema
    return spec


def _poi_bounds(templates: Templates) -> dict[str, Any]:
    """mu may go negative (q0, and toys at small mu, need it) while every bin stays positive:
    down to 80% of the way to the mu at which the purest bin would expect nothing."""
    s = templates.nominal[templates.signal]
    b = sum(v for p, v in templates.nominal.items() if p != templates.signal)
    with np.errstate(divide="ignore"):
        lowest = np.max(np.where(s > 0, -b / np.where(s > 0, s, 1), -np.inf))
    low = float(max(-10.0, 0.8 * lowest))  # a margin for nuisances that lower the background
    return {"name": POI, "bounds": [[low, 20.0]], "inits": [1.0]}


def write_workspace(spec: Mapping[str, Any], path: str | Path) -> Path:
    """The workspace as JSON, atomically (pyhf and cabinetry read it back)."""
    # Imported here: run_folder pulls in Lightning, which the toy worker processes need not load.
    from amsaware.atomic import atomic_path

    pyhf.Workspace(dict(spec))
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(spec, indent=2) + "\n")
    return Path(path)


def read_workspace(path: str | Path) -> dict[str, Any]:
    """A workspace written by `write_workspace` (or any pyhf JSON), validated."""
    spec = cabinetry.workspace.load(Path(path))
    pyhf.Workspace(spec)
    return spec


def model_and_data(spec: Mapping[str, Any]) -> tuple[pyhf.pdf.Model, list[float]]:
    """The pyhf model and its observations with auxiliary data (cabinetry's convention)."""
    with _numpy():
        return cabinetry.model_utils.model_and_data(dict(spec))


@contextmanager
def _numpy(strategy: int | None = None) -> Iterator[None]:
    """pyhf's numpy backend with MINUIT while the block runs; the caller's backend after."""
    backend, optimizer = pyhf.get_backend()
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(verbose=0, strategy=strategy))
    try:
        with _minuit_quiet():
            yield
    finally:
        pyhf.set_backend(backend, optimizer)


@contextmanager
def _minuit_quiet() -> Iterator[None]:
    """MINUIT's C++ warnings ("W VariableMetricBuilder ...", dozens per ranking), which it
    writes to the process's standard output, go to a scratch file while the block fits.

    Its print level cannot hold them back: cabinetry sets a verbose optimizer for its own fits.
    A fit that fails is reported through pyhf's result instead (`FitError`), so nothing is
    lost; Python's buffered output is flushed first, and the block runs only fits (cabinetry's
    and pyhf's own log messages are left to the caller's logging levels).
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with tempfile.TemporaryFile() as scratch:
            os.dup2(scratch.fileno(), 1)
            try:
                yield
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def _nuisances_fixed(model: pyhf.pdf.Model) -> list[bool]:
    """Every parameter but mu fixed (at its initial, nominal value): the stat-only fit."""
    return [name != POI for name in _labels(model)]


def _labels(model: pyhf.pdf.Model) -> list[str]:
    return list(model.config.par_names)


def _failed(what: str, error: Exception) -> FitError:
    return FitError(f"{what} did not converge: {type(error).__name__}: {error}")


@dataclass(frozen=True)
class FitResult:
    """The Asimov fit at mu = 1: precision on mu and expected discovery significance.

    `sigma_mu` is the MINOS half-width ((up - down) / 2) with every nuisance profiled,
    `sigma_mu_stat` the same with every nuisance fixed at its nominal value; `*_hesse` are the
    Hessian (symmetric) errors. `z_discovery` comes from q0 on the Asimov data (asymptotic).
    """

    sigma_mu: float
    sigma_mu_stat: float
    sigma_mu_hesse: float
    sigma_mu_stat_hesse: float
    mu_interval: tuple[float, float]
    z_discovery: float
    z_discovery_stat: float
    n_bins: int
    bestfit: np.ndarray
    uncertainty: np.ndarray
    labels: tuple[str, ...]

    def as_metrics(self) -> dict[str, float]:
        return {
            "fit/sigma_mu": self.sigma_mu,
            "fit/sigma_mu_stat": self.sigma_mu_stat,
            "fit/z_discovery": self.z_discovery,
            "fit/z_discovery_stat": self.z_discovery_stat,
        }


def asimov_fit(spec: Mapping[str, Any]) -> FitResult:
    """Fit the workspace's Asimov data: sigma_mu (MINOS) and Z, with and without nuisances."""
    model, data = model_and_data(spec)
    fixed = _nuisances_fixed(model)
    with _numpy():
        try:
            full = cabinetry.fit.fit(model, data, minos=[POI])
            stat = cabinetry.fit.fit(model, data, minos=[POI], fix_pars=fixed)
            z_stat = _z_stat(model, data, stat.best_twice_nll)
            z_full = (
                _z_profiled(model, data)
                if model.config.npars > 1
                else z_stat  # no nuisance: nothing to profile at mu = 0
            )
        except pyhf.exceptions.FailedMinimization as error:
            raise _failed("the Asimov fit", error) from error
    i = model.config.poi_index

    def half_width(result: Any) -> float:
        down, up = result.minos_uncertainty[POI]
        return (up - down) / 2

    down, up = full.minos_uncertainty[POI]
    return FitResult(
        sigma_mu=float(half_width(full)),
        sigma_mu_stat=float(half_width(stat)),
        sigma_mu_hesse=float(full.uncertainty[i]),
        sigma_mu_stat_hesse=float(stat.uncertainty[i]),
        mu_interval=(float(full.bestfit[i] + down), float(full.bestfit[i] + up)),
        z_discovery=float(z_full),
        z_discovery_stat=z_stat,
        n_bins=int(model.config.nmaindata),
        bestfit=np.asarray(full.bestfit),
        uncertainty=np.asarray(full.uncertainty),
        labels=tuple(full.labels),
    )


def _z_profiled(model: pyhf.pdf.Model, data: list[float]) -> float:
    """sqrt(q0) with every nuisance profiled (cabinetry's `significance`), with MIGRAD's
    default strategy, else its most careful one (2): at mu = 0 the shape nuisances may all
    but absorb a signal spread evenly over the bins, a flat valley where the default stops
    short (a fine-tuned smoke run's fit failed there, Z 0.18 with strategy 2)."""
    try:
        return float(cabinetry.fit.significance(model, data).observed_significance)
    except pyhf.exceptions.FailedMinimization:
        return float(cabinetry.fit.significance(model, data, strategy=2).observed_significance)


def _twice_nll_at(model: pyhf.pdf.Model, data: list[float], mu: float) -> float:
    """-2 ln L at `mu` with every nuisance at its nominal value: with mu fixed too nothing is
    free, which MINUIT (through pyhf's fixed-POI fit and hypotest) cannot handle."""
    pars = np.asarray(model.config.suggested_init(), np.float64)
    pars[model.config.poi_index] = mu
    return float(-2 * model.logpdf(pars, data)[0])


def _z_stat(model: pyhf.pdf.Model, data: list[float], best_twice_nll: float) -> float:
    """sqrt(q0) of the stat-only model (the asymptotic Z of Asimov data)."""
    return float(np.sqrt(max(_twice_nll_at(model, data, 0.0) - best_twice_nll, 0.0)))


@dataclass(frozen=True)
class Scan:
    """Delta(-2 ln L) against mu, every nuisance profiled (`full`) and fixed (`stat`)."""

    mu: np.ndarray
    full: np.ndarray
    stat: np.ndarray


def likelihood_scan(
    spec: Mapping[str, Any], mu: Sequence[float] | np.ndarray | None = None, steps: int = 21
) -> Scan:
    """Profile -2 ln L over a grid of mu (default: `steps` points over mu = 1 +- 2.5 sigma_mu).

    Each fit tries MIGRAD's fast strategy, then its careful one; a grid point where neither
    converges (far out, where a bin's expected yield nears zero) is NaN, not a failed scan.
    """
    model, data = model_and_data(spec)
    fixed = _nuisances_fixed(model)
    i = model.config.poi_index
    best = _minimum(lambda: pyhf.infer.mle.fit(
        data, model, return_uncertainties=True, return_fitted_val=True
    ))  # fmt: skip
    stat_best = _minimum(lambda: pyhf.infer.mle.fit(
        data, model, fixed_params=fixed, return_fitted_val=True
    ))  # fmt: skip
    if best is None or stat_best is None:
        raise FitError("the likelihood scan did not converge at its best fit")
    if mu is None:
        sigma = best[0][i, 1]
        mu = np.linspace(1 - 2.5 * sigma, 1 + 2.5 * sigma, steps)
    low, high = model.config.suggested_bounds()[i]
    mu = np.clip(np.asarray(mu, np.float64), low, high)
    full = []
    for m in mu:
        point = _minimum(lambda m=m: pyhf.infer.mle.fixed_poi_fit(
            m, data, model, return_fitted_val=True
        ))  # fmt: skip
        full.append(np.nan if point is None else float(point[1]))
    with _numpy():
        stat = [_twice_nll_at(model, data, m) for m in mu]  # nothing left to fit
    return Scan(mu, np.asarray(full) - float(best[1]), np.asarray(stat) - float(stat_best[1]))


def _minimum(fit_once: Any) -> Any:
    """`fit_once()` with MINUIT's fast strategy, else its careful one; None if neither
    converges (only the minimum is read, no errors)."""
    for strategy in (0, 1):
        with _numpy(strategy=strategy):
            try:
                return fit_once()
            except pyhf.exceptions.FailedMinimization:
                continue
    return None


def ranking(
    spec: Mapping[str, Any],
) -> tuple[cabinetry.fit.FitResults, cabinetry.fit.RankingResults]:
    """The fit with every nuisance's pull, and each one's pre- and post-fit impact on mu."""
    model, data = model_and_data(spec)
    with _numpy():
        try:
            result = cabinetry.fit.fit(model, data)
        except pyhf.exceptions.FailedMinimization as error:
            raise _failed("the ranking fits", error) from error
        # strategy 0 first: an impact is a shift of mu_hat, which needs no second-derivative
        # check; MIGRAD's careful strategy where the fast one stops short of its tolerance.
        for strategy in (0, 1):
            try:
                ranked = cabinetry.fit.ranking(model, data, fit_results=result, strategy=strategy)
                return result, ranked
            except pyhf.exceptions.FailedMinimization as error:
                failure = error
    log.warning(
        "the ranking's refits did not converge (%s); impacts from the fit's covariance instead "
        "(the linear approximation)",
        failure,
    )
    return result, covariance_impacts(result, model)


def covariance_impacts(
    result: cabinetry.fit.FitResults, model: pyhf.pdf.Model
) -> cabinetry.fit.RankingResults:
    """Each nuisance's impact on mu from the fit's correlation matrix, in cabinetry's layout.

    Shifting a nuisance by its post-fit error moves mu_hat by rho sigma_mu (exact for a
    Gaussian likelihood: the first order of the refits cabinetry's ranking does); by its prior
    width (pre-fit: 1 for a normsys or histosys, the bin's relative MC error for a staterror),
    by rho sigma_mu x prior / post-fit error. Used where those refits do not converge (a small
    model with steep templates): by hand, no library computes it from a FitResults.
    """
    poi_index = model.config.poi_index
    keep = [k for k in range(len(result.labels)) if k != poi_index]
    rho = np.asarray(result.corr_mat)[poi_index, keep]
    sigma_mu = float(result.uncertainty[poi_index])
    sigma = np.asarray(result.uncertainty)[keep]
    prior = np.asarray(cabinetry.model_utils.prefit_uncertainties(model), np.float64)[keep]
    post = rho * sigma_mu
    pre = np.where(sigma > 0, post * prior / np.where(sigma > 0, sigma, 1.0), 0.0)
    order = np.argsort(-np.abs(pre))  # largest pre-fit impact first, as cabinetry ranks them
    return cabinetry.fit.RankingResults(
        bestfit=np.asarray(result.bestfit)[keep][order],
        uncertainty=sigma[order],
        labels=[result.labels[k] for k in np.asarray(keep)[order]],
        prefit_up=pre[order],
        prefit_down=-pre[order],
        postfit_up=post[order],
        postfit_down=-post[order],
    )


def fair_score(coverage: float, width: float, n_toys: int, eps: float = 1e-3) -> float:
    """The FAIR Universe HiggsML Uncertainty Challenge score, -ln((w + eps) f(c)).

    f(c) = 1 inside 0.6827 +- 2 sigma_c with sigma_c = sqrt(0.6827 x 0.3173 / N); below the band
    1 + |(c - low) / sigma_c|^4, above it 1 + |(c - high) / sigma_c|^3 (the challenge's scoring
    program punishes under-coverage harder than over-coverage).
    """
    sigma = np.sqrt(ONE_SIGMA * (1 - ONE_SIGMA) / n_toys)
    low, high = ONE_SIGMA - 2 * sigma, ONE_SIGMA + 2 * sigma
    if coverage < low:
        f = 1 + abs((coverage - low) / sigma) ** 4
    elif coverage > high:
        f = 1 + abs((coverage - high) / sigma) ** 3
    else:
        f = 1.0
    return float(-np.log((width + eps) * f))


@dataclass(frozen=True)
class Coverage:
    """Pseudo-experiments: per toy the true mu and the fitted 68% interval (Hessian)."""

    mu_true: np.ndarray
    low: np.ndarray
    high: np.ndarray
    failed: int

    @property
    def covered(self) -> np.ndarray:
        return (self.low <= self.mu_true) & (self.mu_true <= self.high)

    @property
    def coverage(self) -> float:
        return float(self.covered.mean())

    @property
    def interval_width(self) -> float:
        return float(np.mean(self.high - self.low))

    @property
    def score(self) -> float:
        return fair_score(self.coverage, self.interval_width, len(self.mu_true))

    def as_metrics(self) -> dict[str, float]:
        return {
            "fit/coverage": self.coverage,
            "fit/interval_width": self.interval_width,
            "fit/score": self.score,
            "fit/toys_failed": float(self.failed),
        }


def pseudo_experiments(
    spec: Mapping[str, Any],
    toys: int,
    rng: np.random.Generator,
    mu_range: tuple[float, float] = (0.1, 3.0),
    workers: int = 1,
) -> Coverage:
    """Fit `toys` pseudo-datasets; record whether each one's 68% interval holds the true mu.

    Per toy: mu_true ~ U(mu_range); every constrained nuisance drawn from its prior (normsys and
    histosys alpha ~ N(0, 1), staterror gamma ~ N(1, delta), kept positive), the templates
    interpolated there by pyhf; the observed counts Poisson-drawn around those expected yields,
    the auxiliary measurements left at nominal (the analyst's constraints do not know the truth).
    The interval is the Hessian one, mu_hat +- sigma_hat at the toy's maximum-likelihood point:
    each toy is fitted from the nominal parameters and from its own true ones, and the lower
    minimum is kept (MIGRAD, strategy 0, then HESSE; strategy 1 where that fails). From the
    nominal start alone MIGRAD stops in a second minimum where a shape nuisance's +-1 sigma
    templates move a bin the same way (measured on the 12,000-event sample: up to a fifth of
    the toys, and a coverage 0.05-0.12 low). Toys whose fits fail even so are counted in
    `failed` and left out of the coverage.

    All pseudo-data are drawn here from `rng` before any fit, so `workers` (processes that share
    the fits) changes the wall time and nothing else.
    """
    if toys < 1:
        raise ValueError(f"fit.toys={toys}: expected a positive number of pseudo-experiments")
    model, _ = model_and_data(spec)
    with _numpy():
        centre = np.asarray(cabinetry.model_utils.asimov_parameters(model), np.float64)
        width = np.asarray(cabinetry.model_utils.prefit_uncertainties(model), np.float64)
        aux = np.asarray(model.config.auxdata, np.float64)
        mu_true = rng.uniform(*mu_range, size=toys)
        truth = centre + width * rng.standard_normal((toys, len(centre)))
        if STATERROR in model.config.par_order:
            gammas = model.config.par_slice(STATERROR)
            truth[:, gammas] = np.maximum(truth[:, gammas], 1e-3)
        truth[:, model.config.poi_index] = mu_true
        expected = np.stack([np.asarray(model.expected_actualdata(p), np.float64) for p in truth])
    observed = rng.poisson(np.maximum(expected, 0)).astype(np.float64)
    data = np.concatenate([observed, np.broadcast_to(aux, (toys, len(aux)))], axis=1)
    low, high = np.asarray(model.config.suggested_bounds(), np.float64).T
    starts = np.clip(truth, low, high)
    if workers > 1:
        chunks = np.array_split(data, workers)
        begin = np.array_split(starts, workers)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = pool.map(_fit_toys, [dict(spec)] * workers, chunks, begin)
            intervals = np.concatenate(list(parts))
    else:
        intervals = _fit_toys(spec, data, starts)
    kept = np.isfinite(intervals[:, 0])
    if not kept.any():
        raise FitError(f"all {toys} pseudo-experiment fits failed")
    return Coverage(mu_true[kept], intervals[kept, 0], intervals[kept, 1], int((~kept).sum()))


def _fit_toys(spec: Mapping[str, Any], data: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(low, high) of mu_hat +- sigma_hat per row of `data`; NaN where every fit failed.

    Each row is fitted from the nominal parameters and from `starts` (its true parameters);
    the fit with the lower -2 ln L gives the interval. Per start, MIGRAD's fast strategy 0
    first, strategy 1 (which checks the numerical derivatives) where it fails.
    """
    model, _ = model_and_data(spec)
    i = model.config.poi_index
    out = np.full((len(data), 2), np.nan)
    for k, row in enumerate(data):
        best = None
        for init in (None, starts[k]):
            fitted = _toy_fit(model, row, init)
            if fitted is not None and (best is None or fitted[1] < best[1]):
                best = fitted
        if best is not None:
            mu_hat, sigma = best[0][i]
            out[k] = mu_hat - sigma, mu_hat + sigma
    return out


def _toy_fit(model: pyhf.pdf.Model, row: np.ndarray, init: np.ndarray | None) -> Any:
    """(parameters with errors, -2 ln L) of one toy from `init` (None: nominal), or None."""
    options = {} if init is None else {"init_pars": [float(v) for v in init]}
    for strategy in (0, 1):
        with _numpy(strategy=strategy):
            try:
                return pyhf.infer.mle.fit(
                    row, model, return_uncertainties=True, return_fitted_val=True, **options
                )
            except pyhf.exceptions.FailedMinimization:
                continue
    return None


def sigma_mu_hesse(spec: Mapping[str, Any], stat_only: bool = True) -> float:
    """The Hessian error on mu of one Asimov fit: the cheap sigma_mu a bootstrap refits.

    `stat_only` fixes every nuisance at its nominal value (one free parameter, one MIGRAD fit
    per call); otherwise every nuisance is profiled. No MINOS and no q0: on Asimov data the
    stat-only likelihood is close to parabolic, so this is near `FitResult.sigma_mu_stat`.
    """
    model, data = model_and_data(spec)
    fixed = _nuisances_fixed(model) if stat_only else None
    fitted = _minimum(lambda: pyhf.infer.mle.fit(
        data, model, fixed_params=fixed, return_uncertainties=True
    ))  # fmt: skip
    if fitted is None:
        raise FitError("the Asimov fit (Hessian sigma_mu) did not converge")
    return float(fitted[model.config.poi_index, 1])


def refit_sigma_mu(data: FitInput, config: FitConfig, stat_only: bool = True) -> float:
    """Binning, templates and `sigma_mu_hesse` of `data` (a bootstrap resample, say)."""
    is_signal = np.asarray(data.process).astype(str) == data.signal
    binning = choose_binning(data.score, data.weight, is_signal, config.bins, config.min_background)
    spec = workspace(build_templates(data, binning), mc_stat=config.mc_stat)
    return sigma_mu_hesse(spec, stat_only)


@dataclass(frozen=True)
class FitConfig:
    """The run's `fit` settings (bins, min_background, mc_stat, toys, workers)."""

    bins: int = 10
    min_background: int = MIN_BACKGROUND
    mc_stat: bool = True
    toys: int = 0
    #: processes sharing the pseudo-experiment fits (the results do not depend on it)
    workers: int = 1


@dataclass(frozen=True)
class FitReport:
    """Everything one run's fit produces; `metrics()` is what the run logs."""

    spec: dict[str, Any]
    result: FitResult
    coverage: Coverage | None

    def metrics(self) -> dict[str, float]:
        out = self.result.as_metrics()
        if self.coverage is not None:
            out |= self.coverage.as_metrics()
        return out


def analyse(data: FitInput, config: FitConfig, rng: np.random.Generator) -> FitReport:
    """Binning, templates, workspace, Asimov fit and (if `config.toys`) pseudo-experiments."""
    is_signal = np.asarray(data.process).astype(str) == data.signal
    binning = choose_binning(data.score, data.weight, is_signal, config.bins, config.min_background)
    spec = workspace(build_templates(data, binning), mc_stat=config.mc_stat)
    result = asimov_fit(spec)
    toys = (
        pseudo_experiments(spec, config.toys, rng, workers=config.workers) if config.toys else None
    )
    return FitReport(spec, result, toys)


__all__ = [
    "Binning",
    "Coverage",
    "FitConfig",
    "FitError",
    "FitInput",
    "FitReport",
    "FitResult",
    "Scan",
    "ShapeVariation",
    "Templates",
    "analyse",
    "asimov_fit",
    "build_templates",
    "choose_binning",
    "fair_score",
    "likelihood_scan",
    "load_input",
    "model_and_data",
    "pseudo_experiments",
    "ranking",
    "read_workspace",
    "refit_sigma_mu",
    "save_input",
    "sigma_mu_hesse",
    "workspace",
    "write_workspace",
]

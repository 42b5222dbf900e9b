"""metrics.json: its sections assembled in one place, and the metric names it holds.

`build_metrics` is the one builder of the dict `RunFolder.write_metrics` writes
(docs/run-folder.md); `metric_names` lists what `optimized_metric` may name and
`lookup_metric` reads one back, both from the same `SECTIONS`. Metric names are derived by
running `amsaware.metrics.evaluate`, never listed by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from amsaware.stopping import EarlyStopping, median_epochs

#: The prefixes of the metrics `optimized_metric` may name, and where each lies in
#: metrics.json: `val/` is the folds' mean, `cut/` the chosen cut's values.
SECTIONS = {
    "oof": ("cv", "oof"),
    "val": ("cv", "mean"),
    "test": ("test",),
    "test_folds": ("test_folds",),
    "fit": ("fit",),
}
#: The fit stage's metrics (`amsaware.fit_stage`): precision on mu and discovery significance
#: on Asimov data, coverage of the 68.27% interval in pseudo-experiments and the FAIR score.
FIT_METRICS = (
    "fit/sigma_mu",
    "fit/sigma_mu_stat",
    "fit/z_discovery",
    "fit/z_discovery_stat",
    "fit/coverage",
    "fit/interval_width",
    "fit/score",
)
#: The validation fold's counterparts of fit/sigma_mu and fit/sigma_mu_stat
#: (`amsaware.inferno.SigmaMu`), logged at every validation of a run with a systematics group
#: and in its fold records: what a search for fit/sigma_mu prunes on.
VAL_FIT_METRICS = ("val/sigma_mu", "val/sigma_mu_stat")
#: Metrics a search minimises (all others are maximised).
LOWER_IS_BETTER = (
    "fit/sigma_mu",
    "fit/sigma_mu_stat",
    "fit/interval_width",
    "val/loss",
    "oof/loss",
    *VAL_FIT_METRICS,
)


def build_metrics(
    cv: dict[str, Any],
    cut: dict[str, Any],
    totals: tuple[float, float],
    run: dict[str, Any] | None = None,
    pretrain: dict[str, Any] | None = None,
    tests: Mapping[str, dict[str, float]] | None = None,
    early_stops: Mapping[tuple[str, str | None], EarlyStopping] | None = None,
    fit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """metrics.json's sections, in the contract's order: `cv`, `cut`, `pretrain` (with a
    fine-tune), `test`/`test_folds` (per scorer), `fit` (the likelihood fit), `run`,
    `early_stopping`, `data` (the totals every AMS of the run is rescaled to; compare.py reads
    them back)."""
    metrics: dict[str, Any] = {"cv": cv, "cut": cut}
    if pretrain is not None:
        metrics["pretrain"] = pretrain
    metrics |= dict(tests or {})
    if fit is not None:
        metrics["fit"] = fit
    if run is not None:
        metrics["run"] = run
    if early_stops:
        metrics["early_stopping"] = early_stopping_section(early_stops)
    metrics["data"] = {"s_tot": totals[0], "b_tot": totals[1]}
    return metrics


def early_stopping_section(
    early_stops: Mapping[tuple[str, str | None], EarlyStopping],
) -> dict[str, Any]:
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


@cache
def base_metric_names() -> tuple[str, ...]:
    """The names `amsaware.metrics.evaluate` gives its metrics (without a prefix)."""
    import torch

    from amsaware.metrics import evaluate

    scores = torch.tensor([0.2, 0.9, 0.4, 0.7], dtype=torch.float64)
    label = torch.tensor([0, 1, 0, 1])
    weight = torch.ones(4, dtype=torch.float64)
    return tuple(evaluate(scores, label, weight, ""))


def metric_names(final_fit: bool = True, ensemble: str = "final", fit: bool = False) -> list[str]:
    """Every metric name of metrics.json that `optimized_metric` may name, for a run with
    these settings: `oof/...`, `val/...` (fold mean), `cut/...`, `test/...` (final model)
    or `test_folds/...` (fold ensemble) when the run scores the test events, and `fit/...`
    when it fits the held-out scores."""
    base = base_metric_names()
    names = [f"{prefix}/{name}" for prefix in ("oof", "val") for name in base]
    names += ["cut/ams", "cut/ams_smoothed", "cut/fraction", "cut/threshold"]
    if final_fit:
        scorers = {"final": ["test"], "folds": ["test_folds"], "both": ["test", "test_folds"]}
        for prefix in scorers.get(ensemble, ["test"]):
            names += [f"{prefix}/{name}" for name in base]
            names += [f"{prefix}/ams", f"{prefix}/ams_public", f"{prefix}/ams_private"]
            scorer = "final" if prefix == "test" else "folds"
            names.append(f"cut/threshold_{scorer}")
    if fit:
        names += list(FIT_METRICS)
    return names


def lookup_metric(metrics: dict[str, Any], name: str) -> float:
    """A metric of metrics.json by name (docs/run-folder.md): `oof/`, `val/` (fold mean), `test/`,
    or `cut/ams`, `cut/ams_smoothed`, `cut/fraction` of the chosen cut.

    `cut/ams_smoothed` is the steadier search objective on small samples: `oof/ams_max` is
    often reached at a selection of a few dozen events, where it mostly measures noise.
    """
    sections: dict[str, dict[str, Any]] = {}
    for prefix, path in SECTIONS.items():
        section: Any = metrics
        for key in path:
            section = section.get(key, {}) if isinstance(section, dict) else {}
        sections[prefix] = section
    sections["cut"] = {f"cut/{key}": value for key, value in metrics.get("cut", {}).items()}
    section = sections.get(name.split("/", 1)[0], {})
    if name not in section:
        known = sorted(key for values in sections.values() for key in values)
        raise KeyError(f"optimized_metric {name!r} is not among this run's metrics: {known}")
    return float(section[name])

"""SHAP attributions of a finished run's scorer: which physics features drive its scores.

What is explained is the scorer as the run applies it (raw features in, the stage's fitted
imputation and scaling, the network, the score out), so every attribution belongs to a physics
feature, for all events and for those the run's cut selects. Guide, options and outputs:
docs/explain.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from amsaware import plots
from amsaware.data.schema import EventTable
from amsaware.data.weights import rescaled_weights
from amsaware.inference import (
    ApplyRequest,
    Scorer,
    StageModel,
    check_features,
    load_scorer,
    read_input,
    threshold_or_fallback,
    training_events,
)
from amsaware.run_folder import (
    RunFolder,
    write_frame,
    write_json,
)

log = logging.getLogger(__name__)

EXPLAINERS = ("deep", "permutation")
SPACES = ("logit", "probability")
REGIONS = ("all", "selected")
SHAP_VALUES = "shap_values.csv"
RANKING = "ranking.csv"
SUMMARY = "explain.json"
BEESWARM = "shap_beeswarm.png"
BAR = "shap_bar.png"
#: Relative to the largest |output|: float32 networks, sums over 30 features.
ADDITIVITY_TOLERANCE = 1e-4
SPACE_LABELS = {"logit": "logit of the signal probability", "probability": "signal probability"}


def require_shap() -> ModuleType:
    """The shap module, or an error saying which extra installs it."""
    try:
        import shap
    except ImportError:
        raise ImportError(
            "explain.py needs the shap library, an optional dependency: "
            "pip install 'amsaware[explain]' (or pip install 'shap>=0.46,<1')"
        ) from None
    return shap


def region_file(name: str, region: str) -> str:
    """`shap_bar.png` for all events, `shap_bar_selected.png` for the selected region."""
    if region == "all":
        return name
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}_{region}{dot}{suffix}"


# --- the events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Events:
    """The events to explain, their run score and which of them pass the run's cut."""

    table: EventTable
    score: np.ndarray
    selected: np.ndarray
    selection: str  # how `selected` was decided, for the log and explain.json
    cut_name: str  # the cut in a figure title
    score_column: str = "score"  # oof_score for the run's events: not the explained model's

    def title(self, region: str) -> str:
        return "all events" if region == "all" else f"selected events ({self.cut_name})"


def run_events(run_dir: str | Path) -> Events:
    """The run's training events with their out-of-fold scores and out-of-fold selection
    (`inference.training_events`)."""
    run = RunFolder(run_dir)
    cut = run.cut()
    table, oof = training_events(run_dir)
    threshold = cut.threshold
    score = oof.score.to_numpy(dtype=np.float64)
    return Events(
        table,
        score,
        score >= threshold,
        f"the run's out-of-fold selection: out-of-fold score >= cut.threshold = {threshold:.6g}",
        f"out-of-fold score ≥ {threshold:.3f}",
        "oof_score",
    )


def file_events(scorer: Scorer, table: EventTable, cut_by: str = "threshold") -> Events:
    """Events of a file, scored and cut by the scorer as predict.py does."""
    check_features(table, scorer.feature_names)
    score = scorer.score(table)
    selected = scorer.select(score, cut_by)
    if cut_by == "threshold":
        rule = f"score >= {scorer.threshold:.6g} (the run's cut on the {scorer.name} model's scale)"
        short = f"score ≥ {scorer.threshold:.3f}"
    else:
        rule = f"the top {scorer.fraction:.2%} of the file's events by score"
        short = f"top {scorer.fraction:.1%}"
    return Events(table, score, selected, rule, short)


def sample_rows(candidates: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """`n` of `candidates` drawn without replacement, in their original order (all if None)."""
    if n is None or n >= len(candidates):
        return np.asarray(candidates)
    return np.sort(rng.choice(candidates, size=n, replace=False))


# --- the attributions -------------------------------------------------------------------------


class StageOutput(nn.Module):
    """One stage's network as explained: its logit, or its probability, as an (n, 1) output.

    The sigmoid is a module so that DeepExplainer applies its rescale rule to it.
    """

    def __init__(self, net: nn.Module, space: str) -> None:
        super().__init__()
        self.net = net
        self.sigmoid = nn.Sigmoid() if space == "probability" else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.sigmoid(self.net(x).reshape(-1, 1))


@dataclass(frozen=True)
class Attributions:
    """Per event and feature, the share of `output - base_value` (additive by construction)."""

    feature_names: tuple[str, ...]
    values: np.ndarray  # (n, n_features)
    base_value: float
    output: np.ndarray  # (n,), the explained function at the events
    space: str

    def additivity_error(self) -> float:
        """Largest |sum of attributions + base value - output| over the events."""
        if not len(self.output):
            return 0.0
        return float(np.abs(self.values.sum(axis=1) + self.base_value - self.output).max())


def scorer_output(scorer: Scorer, features: np.ndarray, space: str) -> np.ndarray:
    """The explained function at raw features: the stages' mean logit or mean probability."""
    outputs = []
    for model in scorer.models:
        module = StageOutput(model.net, space).eval()
        with torch.no_grad():
            x = torch.from_numpy(model.preprocessing.transform(features))
            outputs.append(module(x).double().numpy().ravel())
    return np.mean(outputs, axis=0)


def _deep_stage(
    model: StageModel, features: np.ndarray, background: np.ndarray, space: str
) -> tuple[np.ndarray, float]:
    shap = require_shap()
    module = StageOutput(model.net, space).eval()
    x = torch.from_numpy(model.preprocessing.transform(features))
    reference = torch.from_numpy(model.preprocessing.transform(background))
    explainer = shap.DeepExplainer(module, reference)
    # Additivity is checked on the scorer's output below, with a tolerance of our own.
    values = explainer.shap_values(x, check_additivity=False)
    return np.asarray(values, dtype=np.float64).reshape(len(x), -1), float(
        np.ravel(explainer.expected_value)[0]
    )


def _permutation(
    scorer: Scorer,
    features: np.ndarray,
    background: np.ndarray,
    space: str,
    seed: int,
    max_evals: int,
) -> tuple[np.ndarray, float]:
    shap = require_shap()

    def model(x: np.ndarray) -> np.ndarray:
        return scorer_output(scorer, np.asarray(x, dtype=np.float32), space)

    masker = shap.maskers.Independent(background, max_samples=len(background))
    explainer = shap.PermutationExplainer(model, masker, seed=seed)
    explanation = explainer(features.astype(np.float64), max_evals=max_evals, silent=True)
    base = np.atleast_1d(explanation.base_values)
    return np.asarray(explanation.values, dtype=np.float64), float(base[0])


def explain_features(
    scorer: Scorer,
    features: np.ndarray,
    background: np.ndarray,
    explainer: str = "deep",
    space: str = "logit",
    seed: int = 0,
    max_evals: int = 500,
) -> Attributions:
    """Attributions of the scorer's output at `features` against `background` (raw, NaN ok).

    With several stages (the fold ensemble) each is explained on its own preprocessing and the
    attributions, base values and outputs are averaged.
    """
    check_options(explainer, space)
    features = np.asarray(features, dtype=np.float32)
    background = np.asarray(background, dtype=np.float32)
    if explainer == "deep":
        parts = [_deep_stage(model, features, background, space) for model in scorer.models]
        values = np.mean([p[0] for p in parts], axis=0)
        base = float(np.mean([p[1] for p in parts]))
    else:
        values, base = _permutation(scorer, features, background, space, seed, max_evals)
    output = scorer_output(scorer, features, space)
    return Attributions(scorer.feature_names, values, base, output, space)


def check_options(explainer: str, space: str) -> None:
    if explainer not in EXPLAINERS:
        raise ValueError(f"explainer must be one of {EXPLAINERS}, got {explainer!r}")
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")


# --- rankings ---------------------------------------------------------------------------------


def _weighted_mean(values: np.ndarray, weight: np.ndarray) -> np.ndarray:
    total = weight.sum()
    return (weight @ values) / total if total > 0 else np.full(values.shape[1], np.nan)


def ranking(
    attributions: Attributions,
    label: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    class_totals: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """Mean |SHAP| per feature, unweighted and weighted, ranked (1 = most important).

    The weighted mean rescales each class's weights to `class_totals` (signal, background; the
    region's totals over all its events, not just the sample), so a sample stands for the
    weighted events it was drawn from, as AMS counts them. Without labels and weights the
    weighted and per-class columns are NaN.
    """
    magnitude = np.abs(attributions.values)
    n_features = magnitude.shape[1]
    frame = pd.DataFrame(
        {
            "feature": list(attributions.feature_names),
            "mean_abs_shap": magnitude.mean(axis=0),
            "mean_shap": attributions.values.mean(axis=0),
        }
    )
    nan = np.full(n_features, np.nan)
    weighted, signal_mean, background_mean = nan, nan, nan
    if label is not None and weight is not None:
        signal = np.asarray(label) == 1
        w = np.asarray(weight, dtype=np.float64).copy()
        if class_totals is not None:
            w = rescaled_weights(signal, w, *class_totals)
        weighted = _weighted_mean(magnitude, w)
        signal_mean = magnitude[signal].mean(axis=0) if signal.any() else nan
        background_mean = magnitude[~signal].mean(axis=0) if (~signal).any() else nan
    frame["weighted_mean_abs_shap"] = weighted
    frame["signal_mean_abs_shap"] = signal_mean
    frame["background_mean_abs_shap"] = background_mean
    frame["rank"] = frame.mean_abs_shap.rank(ascending=False, method="first").astype(int)
    frame["weighted_rank"] = frame.weighted_mean_abs_shap.rank(ascending=False, method="first")
    frame = frame.sort_values("rank").reset_index(drop=True)
    columns = [
        "rank",
        "feature",
        "mean_abs_shap",
        "weighted_mean_abs_shap",
        "weighted_rank",
        "mean_shap",
        "signal_mean_abs_shap",
        "background_mean_abs_shap",
    ]
    return frame[columns].astype({"weighted_rank": "Int64"})


def class_totals(table: EventTable, mask: np.ndarray) -> tuple[float, float] | None:
    """Signal and background weight totals of the events in `mask` (None if unlabelled)."""
    if not table.labelled:
        return None
    signal = table.label == 1
    return float(table.weight[mask & signal].sum()), float(table.weight[mask & ~signal].sum())


# --- the whole job ----------------------------------------------------------------------------


def values_frame(events: Events, rows: np.ndarray, attributions: Attributions) -> pd.DataFrame:
    """Per event: EventId, label, weight, the score the cut applies to (`oof_score` for the run's
    own events), the cut, the explained output, the base value, then one attribution column
    per feature (named by the feature)."""
    table = events.table
    frame = pd.DataFrame({"EventId": table.event_id[rows]})
    if table.labelled:
        frame["label"] = table.label[rows]
        frame["weight"] = table.weight[rows]
    frame[events.score_column] = events.score[rows]
    frame["selected"] = events.selected[rows].astype(np.int8)
    frame[f"output_{attributions.space}"] = attributions.output
    frame["base_value"] = attributions.base_value
    values = pd.DataFrame(attributions.values, columns=list(attributions.feature_names))
    return pd.concat([frame, values], axis=1)


def _check_sizes(n_events: int | None, n_background: int, n_available: int, what: str) -> None:
    if n_events is not None and not 1 <= n_events <= n_available:
        raise ValueError(
            f"n_events={n_events}, but {what} holds {n_available} events: ask for 1 to "
            f"{n_available} (or n_events=null for all of them)"
        )
    if not 1 <= n_background <= n_available:
        raise ValueError(
            f"n_background={n_background}, but {what} holds {n_available} events: ask for 1 to "
            f"{n_available}"
        )


def explain(
    request: ApplyRequest,
    output_dir: str | Path,
    explainer: str = "deep",
    space: str = "logit",
    n_events: int | None = 2000,
    n_background: int = 100,
    seed: int = 0,
    max_display: int = 20,
    max_evals: int = 500,
) -> dict[str, Any]:
    """Explain the run's scorer on its own events (or `request.input`'s) and write the outputs.

    Writes into `output_dir`, atomically: `shap_values.csv`, `ranking.csv`, `shap_beeswarm.png`,
    `shap_bar.png`, the `_selected` variants of the three per-region files, and `explain.json`
    (what was explained, how, and the additivity check). Returns that summary.
    """
    require_shap()
    check_options(explainer, space)
    started = time.perf_counter()
    run_dir = request.run
    scorer = load_scorer(run_dir, request.scorer)
    if request.input is None:
        events = run_events(run_dir)
        check_features(events.table, scorer.feature_names)
        source = f"the run's {len(events.table)} training events"
    else:
        config = RunFolder(run_dir).config()
        table = read_input(config, request.input, scorer.feature_names, request.tree)
        scorer, cut_by = threshold_or_fallback(request, scorer)
        events = file_events(scorer, table, cut_by)
        source = str(request.input)
    table = events.table
    _check_sizes(n_events, n_background, len(table), source)
    rng = np.random.default_rng(seed)
    everything = np.arange(len(table))
    background = table.features[sample_rows(everything, n_background, rng)]
    samples = {
        "all": sample_rows(everything, n_events, rng),
        "selected": sample_rows(np.flatnonzero(events.selected), n_events, rng),
    }
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_name = f"{Path(run_dir).name} ({scorer.name} model)"
    options = {"explainer": explainer, "space": space, "seed": seed, "max_evals": max_evals}
    rankings, regions = [], {}
    for region, rows in samples.items():
        if not len(rows):
            log.warning("no event passes the cut (%s): no outputs for the region", events.selection)
            continue
        attributions = explain_features(scorer, table.features[rows], background, **options)
        frame, regions[region] = _write_region(
            model_name, events, region, rows, attributions, max_display, out
        )
        rankings.append(frame.assign(region=region))
    both = pd.concat(rankings, ignore_index=True)
    write_frame(both[["region", *both.columns[:-1]]], out / RANKING)
    summary = {
        "run": str(run_dir),
        "scorer": scorer.name,
        "events": source,
        "selection": events.selection,
        "explainer": explainer,
        "space": space,
        "n_background": n_background,
        "seed": seed,
        "regions": regions,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(summary, out / SUMMARY)
    log.info("explanations of %s written to %s (%.0f s)", run_dir, out, summary["seconds"])
    return summary


def _write_region(
    model_name: str,
    events: Events,
    region: str,
    rows: np.ndarray,
    attributions: Attributions,
    max_display: int,
    out: Path,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Check additivity, then write one region's values, figures; its ranking and summary."""
    error = attributions.additivity_error()
    if error > ADDITIVITY_TOLERANCE * max(1.0, float(np.abs(attributions.output).max())):
        raise RuntimeError(
            f"the attributions are not additive: their sum plus the base value differs from the "
            f"explained output by up to {error:.3g} on the {region} events"
        )
    table = events.table
    mask = events.selected if region == "selected" else np.ones(len(table), dtype=bool)
    label = table.label[rows] if table.labelled else None
    weight = table.weight[rows] if table.labelled else None
    frame = ranking(attributions, label, weight, class_totals(table, mask))
    write_frame(values_frame(events, rows, attributions), out / region_file(SHAP_VALUES, region))
    title = f"{model_name}\n{events.title(region)}: {len(rows)} events"
    _write_figures(attributions, table.features[rows], frame, title, max_display, out, region)
    log.info(
        "%s events: %d explained (of %d); top features by mean |SHAP|: %s",
        region,
        len(rows),
        int(mask.sum()),
        ", ".join(frame.feature.head(5)),
    )
    summary = {
        "n_events": len(rows),
        "n_available": int(mask.sum()),
        "base_value": attributions.base_value,
        "additivity_max_error": error,
        "top_features": frame.feature.head(10).tolist(),
    }
    return frame, summary


def _write_figures(
    attributions: Attributions,
    features: np.ndarray,
    frame: pd.DataFrame,
    title: str,
    max_display: int,
    out: Path,
    region: str,
) -> None:
    xlabel = f"SHAP value (impact on the {SPACE_LABELS[attributions.space]})"
    figures: dict[str, Callable[[], Any]] = {
        BEESWARM: lambda: plots.shap_beeswarm(
            attributions.values, features, attributions.feature_names, xlabel, title, max_display
        ),
        BAR: lambda: plots.feature_importance(
            frame, f"mean |SHAP value| ({SPACE_LABELS[attributions.space]})", title, max_display
        ),
    }
    for name, make in figures.items():
        plots.save(make(), out / region_file(name, region))


def run_explain(cfg: DictConfig) -> dict[str, Any]:
    """explain.py's body: apply the config's options and write into Hydra's output folder."""
    options = cfg.explain
    if options.get("threads"):
        torch.set_num_threads(int(options.threads))
    return explain(
        ApplyRequest.from_config(cfg),
        cfg.paths.output_dir,
        explainer=options.explainer,
        space=options.space,
        n_events=options.n_events,
        n_background=options.n_background,
        seed=options.seed,
        max_display=options.max_display,
        max_evals=options.max_evals,
    )

"""Evaluate a finished run on a labelled file: `python eval.py run=RUN input=FILE`.

The run's model(s), preprocessing and cut score the file as predict.py does, and every `test/`
metric of training is computed on it (AUC, weighted AUC, accuracy, the AMS family, the AMS at
the run's cut as `test/ams`, and for the CERN file `test/ams_public`/`test/ams_private` on its
KaggleSet 'b' and 'v' events). Weights are rescaled to the run's totals, as in training.

A run that had the fit stage (metrics.json's `fit` section) is fitted on the file too: its
events shifted by the run's nuisances (`.hydra/config.yaml`'s `systematics`, read as data),
nominal and shifted scored by the run's scorer, weights at the run's totals, binned and fitted
with the run's fit settings (`fit_stage`); the report gains a `fit` section (the `fit/`
metrics, or the fit's error, the file's other metrics kept) and `fit/` beside the scores holds
the workspace, the fit's events and the figures.

The scores and `eval_metrics.json` go into the run folder, `RUN/eval/<input name>/`, unless
`output=` names the scores file (eval_metrics.json then goes beside it). A metric that is not
defined on the file (the AUCs of a file holding one class; any NaN) is left out and named
under `undefined`, with a warning: the JSON holds no NaN. Events the run trained on (by
EventId, and by their feature values where the run's training events can be reloaded) are
counted in a warning: metrics on them are not test metrics.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from amsaware.data.schema import EventTable
from amsaware.inference import (
    ApplyRequest,
    Scorer,
    default_output,
    open_input,
    training_events,
    write_scores,
)
from amsaware.metrics import logit_of_mean, test_metrics
from amsaware.run_folder import EVAL_METRICS, FIT, RunFolder, RunFolderError, write_json

log = logging.getLogger(__name__)

EVAL_DIR = "eval"


def eval_output(request: ApplyRequest) -> Path:
    """`RUN/eval/<input name>/<input name>.scores.csv`, or the request's `output`."""
    if request.output is not None:
        return request.output
    assert request.input is not None
    name = default_output(request.input)
    return request.run / EVAL_DIR / name.name.removesuffix(".scores.csv") / name


def _row_hashes(features: np.ndarray) -> np.ndarray:
    """One 64-bit hash per event of its feature values (pandas' hashing; NaN hashes alike)."""
    return pd.util.hash_pandas_object(pd.DataFrame(features), index=False).to_numpy()


def training_overlap(run_dir: Path, table: EventTable) -> dict[str, int | None]:
    """How many of the file's events the run trained on: by EventId (oof_predictions.csv) and
    by feature values (None where the run's training events cannot be reloaded)."""
    try:
        oof = RunFolder(run_dir).oof_predictions()
    except RunFolderError as error:
        log.warning("the file's events not compared with the run's training events: %s", error)
        return {"by_event_id": None, "by_features": None}
    by_id = int(np.isin(table.event_id, oof.EventId.to_numpy()).sum())
    try:
        train, _ = training_events(run_dir)
    except RunFolderError as error:
        log.info("feature values not compared with the run's training events: %s", error)
        return {"by_event_id": by_id, "by_features": None}
    by_features = int(np.isin(_row_hashes(table.features), _row_hashes(train.features)).sum())
    return {"by_event_id": by_id, "by_features": by_features}


def evaluate_file(request: ApplyRequest) -> dict[str, Any]:
    """Score a labelled file, write the scores (as predict.py) and `eval_metrics.json` beside
    them; returns the report."""
    job = open_input(request, eval_output(request))
    table, scorer, cut_by = job.table, job.scorer, job.cut_by
    if not table.labelled:
        raise ValueError(
            f"input {request.input}: has no labels and weights (Label and Weight, or KaggleWeight "
            "in the CERN file); eval needs a labelled file, predict.py scores unlabelled ones"
        )
    overlap = training_overlap(request.run, table)
    seen = max(overlap["by_event_id"] or 0, overlap["by_features"] or 0)
    if seen:
        log.warning(
            "%s: %d of its %d events are the run's training events (%s by EventId, %s by "
            "feature values): their metrics are not test metrics",
            request.input,
            seen,
            len(table),
            *("?" if overlap[key] is None else overlap[key] for key in overlap),
        )
    s_tot, b_tot = job.run.totals()
    table = replace(table, s_tot=s_tot, b_tot=b_tot)
    scores, logits = scorer.score_and_logit(table)
    selected = scorer.select(scores, cut_by, logits)
    one_class = bool(len(table)) and bool((table.label == table.label[0]).all())
    with warnings.catch_warnings():
        # torchmetrics returns 0 (not NaN) for the AUC of one class, with a warning: the AUCs
        # are left out below instead.
        warnings.filterwarnings("ignore", message=r"No (positive|negative) samples in targets")
        computed = test_metrics(table, scores, selected)
    metrics = {
        name: value
        for name, value in computed.items()
        if math.isfinite(value) and not (one_class and "auroc" in name)
    }
    undefined = sorted(set(computed) - set(metrics))
    if undefined:
        classes = "signal" if one_class and table.label[0] == 1 else "background"
        log.warning(
            "%s: %s not defined on this file%s; left out of %s",
            request.input,
            ", ".join(undefined),
            f" (it holds {classes} events only)" if one_class else "",
            EVAL_METRICS,
        )
    frame = pd.DataFrame(
        {"EventId": table.event_id, "score": scores, "selected": selected.astype("int8")}
    )
    report = {
        "run": str(request.run),
        "input": str(request.input),
        "scorer": scorer.name,
        "cut_by": cut_by,
        "n_events": len(table),
        "n_selected": int(selected.sum()),
        "training_events": overlap,
        "metrics": metrics,
        "undefined": undefined,
    }
    fitted = fit_file(job.run, table, scorer, job.output.parent / FIT)
    if fitted is not None:
        report["fit"] = fitted
    write_scores(frame, job.output)
    write_json(report, job.output.parent / EVAL_METRICS)
    log.info("%s: %s", job.output.parent / EVAL_METRICS, _format(metrics))
    return report


def fit_file(
    run: RunFolder, table: EventTable, scorer: Scorer, out_dir: Path
) -> dict[str, Any] | None:
    """The run's fit on the file's events (module docstring): the report's `fit` section, or
    None for a run without a fit. `table` carries the run's totals."""
    from amsaware import fit_stage
    from amsaware.data.systematics import Systematics, check_norms
    from amsaware.settings import FitSettings

    section = run.metrics().get("fit")
    if not isinstance(section, dict):
        return None
    how = section.get("settings") or {}
    settings = FitSettings(
        enabled=True,
        bins=int(how.get("bins", 10)),
        mc_stat=bool(how.get("mc_stat", True)),
        toys=int(how.get("toys", 0)),
    )
    raw = run.config().raw
    try:
        nuisances = (
            Systematics.from_config(raw["systematics"], "systematics")
            if raw.get("systematics")
            else fit_stage.no_systematics()
        )
        check_norms(nuisances, table)
        held_out = fit_stage.HeldOutScores(table, nuisances)
        held_out.add(np.arange(len(table)), _raw_logit(scorer))
        outcome = fit_stage.run_fit(held_out, settings, int(raw.get("seed", 0)), out_dir)
    except (ValueError, KeyError) as error:  # the file cannot be fitted: its metrics are kept
        log.warning("%s: no fit on this file: %s", table.source, error)
        return {"error": str(error), "settings": fit_stage.settings_section(settings)}
    if outcome.error is None:
        log.info("fit on %s: %s", table.source, fit_stage.describe(outcome.metrics))
    return outcome.section(settings)


def _raw_logit(scorer: Scorer) -> Callable[[np.ndarray], np.ndarray]:
    """Raw features -> the scorer's ranking key (its models' `logit_of_mean`)."""

    def logit(features: np.ndarray) -> np.ndarray:
        return logit_of_mean(np.stack([model.logit(features) for model in scorer.models]))

    return logit


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name}={value:.4f}" for name, value in metrics.items())

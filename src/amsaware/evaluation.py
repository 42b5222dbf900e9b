"""Evaluate a finished run on a labelled file: `python eval.py run=RUN input=FILE`.

The run's model(s), preprocessing and cut score the file as predict.py does, and every `test/`
metric of training is computed on it (AUC, weighted AUC, accuracy, the AMS family, the AMS at
the run's cut as `test/ams`, and for the CERN file `test/ams_public`/`test/ams_private` on its
KaggleSet 'b' and 'v' events). Weights are rescaled to the run's totals, as in training.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pandas as pd

from amsaware.inference import ApplyRequest, open_input, write_scores
from amsaware.metrics import test_metrics
from amsaware.run_folder import EVAL_METRICS, write_json

log = logging.getLogger(__name__)


def evaluate_file(request: ApplyRequest) -> dict[str, Any]:
    """Score a labelled file, write the scores (as predict.py) and `eval_metrics.json` beside
    them; returns the metrics."""
    job = open_input(request)
    table, scorer, cut_by = job.table, job.scorer, job.cut_by
    if not table.labelled:
        raise ValueError(
            f"input {request.input}: has no labels and weights (Label and Weight, or KaggleWeight "
            "in the CERN file); eval needs a labelled file, predict.py scores unlabelled ones"
        )
    s_tot, b_tot = job.run.totals()
    table = replace(table, s_tot=s_tot, b_tot=b_tot)
    scores, logits = scorer.score_and_logit(table)
    selected = scorer.select(scores, cut_by, logits)
    metrics = test_metrics(table, scores, selected)
    frame = pd.DataFrame(
        {"EventId": table.event_id, "score": scores, "selected": selected.astype("int8")}
    )
    write_scores(frame, job.output)
    report = {
        "run": str(request.run),
        "input": str(request.input),
        "scorer": scorer.name,
        "cut_by": cut_by,
        "n_events": len(table),
        "n_selected": int(selected.sum()),
        "metrics": metrics,
    }
    write_json(report, job.output.parent / EVAL_METRICS)
    log.info("%s: %s", job.output.parent / EVAL_METRICS, _format(metrics))
    return report


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name}={value:.4f}" for name, value in metrics.items())

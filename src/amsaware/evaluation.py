"""Evaluate a finished run on a labelled file: `python eval.py run=RUN input=FILE`.

The run's model(s), preprocessing and cut score the file as predict.py does, and every `test/`
metric of training is computed on it (AUC, weighted AUC, accuracy, the AMS family, the AMS at
the run's cut as `test/ams`, and for the CERN file `test/ams_public`/`test/ams_private` on its
KaggleSet 'b' and 'v' events). Weights are rescaled to the run's totals, as in training.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from amsaware import artifacts
from amsaware.experiment import test_metrics
from amsaware.inference import (
    CUTS,
    check_output,
    default_output,
    load_config,
    load_metrics,
    load_scorer,
    read_input,
)

log = logging.getLogger(__name__)

EVAL_METRICS = "eval_metrics.json"


def evaluate_file(
    run_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path | None = None,
    ensemble: str | None = None,
    cut: str = "threshold",
    tree: str | None = None,
) -> dict[str, Any]:
    """Score a labelled file, write the scores (as predict.py) and `eval_metrics.json` beside
    them; returns the metrics."""
    if cut not in CUTS:
        raise ValueError(f"cut must be one of {CUTS}, got {cut!r}")
    output = default_output(input_path) if output_path is None else Path(output_path)
    check_output(output, input_path)
    scorer = load_scorer(run_dir, ensemble)
    table = read_input(load_config(run_dir), input_path, scorer.feature_names, tree)
    if not table.labelled:
        raise ValueError(
            f"input {input_path}: has no labels and weights (Label and Weight, or KaggleWeight "
            "in the CERN file); eval needs a labelled file, predict.py scores unlabelled ones"
        )
    totals = load_metrics(run_dir).get("data") or {}
    if totals:
        table = replace(table, s_tot=float(totals["s_tot"]), b_tot=float(totals["b_tot"]))
    scores, logits = scorer.score_and_logit(table)
    selected = scorer.select(scores, cut, logits)
    metrics = test_metrics(table, scores, selected)
    frame = pd.DataFrame(
        {"EventId": table.event_id, "score": scores, "selected": selected.astype("int8")}
    )
    with artifacts.atomic_path(output) as tmp:
        frame.to_csv(tmp, index=False, compression="gzip" if output.suffix == ".gz" else None)
    report = {
        "run": str(run_dir),
        "input": str(input_path),
        "ensemble": scorer.name,
        "cut": cut,
        "n_events": len(table),
        "n_selected": int(selected.sum()),
        "metrics": metrics,
    }
    artifacts.write_json(report, output.parent / EVAL_METRICS)
    log.info("%s: %s", output.parent / EVAL_METRICS, _format(metrics))
    return report


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name}={value:.4f}" for name, value in metrics.items())

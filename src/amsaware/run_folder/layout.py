"""The run folder's layout: every file and folder name a run writes, and its vocabulary.

A *stage* is one trained model, `fold<k>` or `final`; a *scorer* is what scores test events,
`final` (the final fit) or `folds` (the mean of the fold models); the config's `ensemble`
(final|folds|both) says which scorers a run uses. Everything else names files through these
constants, never through literal strings.
"""

from __future__ import annotations

from typing import Any


class RunFolderError(ValueError):
    """A run folder that is missing, unfinished, damaged, already used, or that cannot be
    applied as asked; the message names the file (or key) and what was expected."""


# --- files -------------------------------------------------------------------------------------

#: Hydra's folder of the run's composed config (and its overrides), written before the run.
HYDRA = ".hydra"
CONFIG = f"{HYDRA}/config.yaml"
#: Held (flock) by the process writing into the folder, for the run's lifetime.
LOCK_FILE = ".run.lock"
METRICS = "metrics.json"
OOF_PREDICTIONS = "oof_predictions.csv"
TEST_PREDICTIONS = "test_predictions.csv"
SUBMISSION = "submission.csv"
#: With ensemble=both, the fold ensemble's files beside the final model's.
TEST_PREDICTIONS_FOLDS = "test_predictions_folds.csv"
SUBMISSION_FOLDS = "submission_folds.csv"
CHECKPOINTS = "checkpoints"
CHECKPOINT = "last.ckpt"
#: Beside each stage's checkpoint: checkpoints/<stage>/preprocessing.json.
PREPROCESSING = "preprocessing.json"
#: With finetune=...: the first phase's out-of-fold results, a run folder of their own.
PRETRAIN = "pretrain"
#: Written by eval.py beside the scores it writes (not into the run folder).
EVAL_METRICS = "eval_metrics.json"
#: metrics.json's record of each stage's files (paths relative to the folder, and sha256).
STAGE_FILES = "stages"
#: Beside a finished fold's checkpoint, written after it: the fold's validation and test logits,
#: what a resumed run reloads instead of training the fold again.
FOLD_SCORES = "fold_scores.npz"

#: The fit stage's folder (`amsaware.fit_stage`), its workspace, and its events: each held-out
#: event's nominal and shifted scores, weights and process, from which compare.py refits
#: bootstrap resamples (metrics.json's `fit.files` records it with its sha256).
FIT = "fit"
FIT_WORKSPACE = f"{FIT}/workspace.json"
FIT_EVENTS = f"{FIT}/held_out.npz"
#: The run's own figures as PNG and PDF files (the out-of-fold ROC, AMS and score figures).
FIGURES = "figures"

# The loggers' files (conf/logger/*.yaml): TensorBoard's and CSVLogger's per-stage folders
# (`<logger>/<stage>/`), W&B's folder, MLflow's store and artifacts.
TENSORBOARD = "tensorboard"
CSV_LOGS = "csv"
WANDB = "wandb"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
#: The loggers' per-stage folders, cleared when a stage restarts.
LOGGER_FOLDERS = (TENSORBOARD, CSV_LOGS)

# --- stages and scorers ------------------------------------------------------------------------

FINAL = "final"
SCORERS = ("final", "folds")
ENSEMBLES = ("final", "folds", "both")
#: How predict.py applies the cut to new events (`Cut.select`).
CUTS = ("threshold", "fraction")
OOF_COLUMNS = ["EventId", "fold", "label", "weight", "score"]


def fold_stage(index: int) -> str:
    """The stage name of fold model `index` (over all repeats): `fold0`, `fold1`, ..."""
    return f"fold{index}"


def scorers_of(ensemble: str) -> tuple[str, ...]:
    """The scorers a run with `ensemble` scores its test events with, the contract's first."""
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    return SCORERS if ensemble == "both" else (ensemble,)


def is_number(value: Any) -> bool:
    """A JSON or YAML number (a bool is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool)

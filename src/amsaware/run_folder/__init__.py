"""A finished (or running) train.py run: every file of its folder, and the folder's life.

The contract is docs/run-folder.md. The package has one module per concern:

- `layout`: every file and folder name, the stages and scorers, and `RunFolderError`;
- `cut`: `Cut`, the run's selection with its threshold on each scorer's scale;
- `config`: the run's `.hydra/config.yaml` read safely as plain values (`read_config`,
  `RunConfig`, `ModelSpec`): nothing is instantiated, no resolver runs;
- `folder`: `RunFolder(path)`, the one place that writes each file (atomically, never through
  a symbolic link) and reads it back validated, naming the file for anything missing, damaged
  or out of range;
- `claim`: one run per folder (the lock, what marks a used folder, `overwrite`, planted links);
- `resume`: what a finished fold keeps so that a resumed run need not train it again.

Every public name is importable from `amsaware.run_folder` itself. The atomic writers live in
`amsaware.atomic`, below this package, so that figures and reports need no run folder.
"""

from amsaware.atomic import atomic_path, write_frame, write_json
from amsaware.run_folder.claim import (
    KEPT,
    RUN_FILES,
    RUN_FOLDERS,
    claim_run_folder,
    lock_run_folder,
    planted_links,
    previous_run,
)
from amsaware.run_folder.config import ModelSpec, RunConfig, read_config, read_plain_config
from amsaware.run_folder.cut import Cut
from amsaware.run_folder.folder import RunFolder, SavePreprocessing, read_json, submission_frame
from amsaware.run_folder.layout import (
    CHECKPOINT,
    CHECKPOINTS,
    CONFIG,
    CSV_LOGS,
    CUTS,
    ENSEMBLES,
    EVAL_METRICS,
    FIGURES,
    FINAL,
    FIT,
    FIT_EVENTS,
    FIT_WORKSPACE,
    FOLD_SCORES,
    HYDRA,
    LOCK_FILE,
    LOGGER_FOLDERS,
    METRICS,
    MLFLOW_ARTIFACTS,
    MLFLOW_DB,
    OOF_COLUMNS,
    OOF_PREDICTIONS,
    PREPROCESSING,
    PRETRAIN,
    SCORERS,
    STAGE_FILES,
    SUBMISSION,
    SUBMISSION_FOLDS,
    TENSORBOARD,
    TEST_PREDICTIONS,
    TEST_PREDICTIONS_FOLDS,
    WANDB,
    RunFolderError,
    fold_stage,
    scorers_of,
)
from amsaware.run_folder.resume import FoldScores, events_digest

__all__ = [
    "CHECKPOINT",
    "CHECKPOINTS",
    "CONFIG",
    "CSV_LOGS",
    "CUTS",
    "ENSEMBLES",
    "EVAL_METRICS",
    "FIGURES",
    "FINAL",
    "FIT",
    "FIT_EVENTS",
    "FIT_WORKSPACE",
    "FOLD_SCORES",
    "HYDRA",
    "KEPT",
    "LOCK_FILE",
    "LOGGER_FOLDERS",
    "METRICS",
    "MLFLOW_ARTIFACTS",
    "MLFLOW_DB",
    "OOF_COLUMNS",
    "OOF_PREDICTIONS",
    "PREPROCESSING",
    "PRETRAIN",
    "RUN_FILES",
    "RUN_FOLDERS",
    "SCORERS",
    "STAGE_FILES",
    "SUBMISSION",
    "SUBMISSION_FOLDS",
    "TENSORBOARD",
    "TEST_PREDICTIONS",
    "TEST_PREDICTIONS_FOLDS",
    "WANDB",
    "Cut",
    "FoldScores",
    "ModelSpec",
    "RunConfig",
    "RunFolder",
    "RunFolderError",
    "SavePreprocessing",
    "atomic_path",
    "claim_run_folder",
    "events_digest",
    "fold_stage",
    "lock_run_folder",
    "planted_links",
    "previous_run",
    "read_config",
    "read_json",
    "read_plain_config",
    "scorers_of",
    "submission_frame",
    "write_frame",
    "write_json",
]

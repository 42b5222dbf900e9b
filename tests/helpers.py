"""Runners the tests share: an entry point as a user runs it, the same run in-process, one quiet
Lightning trainer, and the challenge's CSV layout of a table.

Why two runners: a subprocess of train.py pays torch's, Lightning's and Hydra's imports (seconds)
before it trains, so each entry point keeps one subprocess test and everything else composes the
real config (conf/) and calls the library as the entry point does.
"""

import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from amsaware.data.schema import FEATURES, MISSING, EventTable

REPO = Path(__file__).resolve().parents[1]

#: Every metric name of the run folder's contract, as val/, oof/ and test/ (docs/run-folder.md).
METRIC_NAMES = [
    "auroc",
    "auroc_weighted",
    "accuracy",
    "ams@0.5",
    "ams@15%",
    "ams_max",
    "ams_max_threshold",
]
N_TRAIN, N_TEST = 1500, 1100
#: A run of seconds with every stage: 3 folds and the final fit, 2 epochs each.
TINY = [
    "experiment=smoke",
    f"data.n_train={N_TRAIN}",
    f"data.n_test={N_TEST}",
    "trainer.log_every_n_steps=1",
]
#: What an in-process run adds: one thread (the tests share the cores) and no progress bar.
QUIET = [
    "threads=1",
    "callbacks.progress_bar=null",
    "+trainer.enable_progress_bar=false",
]


def entry_point(script: str, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python <script> overrides...` from the repository root, as the README runs it."""
    command = [sys.executable, str(REPO / script), *overrides]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def train(run_dir: Path, *overrides: str, tiny: bool = True) -> subprocess.CompletedProcess:
    """train.py into run_dir (TINY sizes unless tiny=False); fails the test if the run fails."""
    sizes = TINY if tiny else []
    done = entry_point("train.py", f"hydra.run.dir={run_dir}", *sizes, *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def compose_config(name: str, *overrides: str, hydra_config: bool = False) -> DictConfig:
    """The entry point `name`'s config (conf/<name>.yaml) with overrides, as Hydra composes it."""
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra_config)


def compose_run(run_dir: Path, *overrides: str, tiny: bool = True) -> DictConfig:
    """train.py's config for a run into run_dir, in-process (TINY and QUIET unless tiny=False)."""
    sizes = [*TINY, *QUIET] if tiny else QUIET
    cfg = compose_config("train", *sizes, *overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.root_dir = str(REPO)  # where Hydra's ${hydra:runtime...} puts it for train.py
    return cfg


def run(run_dir: Path, *overrides: str, tiny: bool = True) -> dict[str, Any]:
    """What `train.py overrides...` does, in this process; returns the run's metrics.json.

    Keeps the composed config where Hydra keeps it (.hydra/config.yaml), which predict, compare,
    explain and eval read back.
    """
    from amsaware.experiment import run_experiment

    run_dir = Path(run_dir)
    cfg = compose_run(run_dir, *overrides, tiny=tiny)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        run_experiment(cfg)
    return json.loads((run_dir / "metrics.json").read_text())


def quiet_trainer(epochs: int = 1, callbacks: Any = (), **options: Any) -> L.Trainer:
    """A CPU trainer that writes and prints nothing: no logger, checkpoints, bar or summary."""
    settings = {
        "max_epochs": epochs,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "callbacks": list(callbacks),
    }
    return L.Trainer(**(settings | options))


def kaggle_frame(table: EventTable, with_labels: bool = False) -> pd.DataFrame:
    """A table as the challenge's CSV columns, -999 for undefined values."""
    features = pd.DataFrame(table.features, columns=list(FEATURES)).fillna(MISSING)
    features["PRI_jet_num"] = features["PRI_jet_num"].astype(int)
    frame = pd.concat([pd.DataFrame({"EventId": table.event_id}), features], axis=1)
    if with_labels:
        frame["Weight"] = table.weight
        frame["Label"] = np.where(table.label == 1, "s", "b")
    return frame


def multirun(task: Any, overrides: list[str]) -> None:
    """`train.py -m OVERRIDES` in this process with `task` as the run function: the real
    sweeper, Hydra's basic launcher and the run folders it makes."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    version.setbase("1.3")
    handlers, level = logging.root.handlers[:], logging.root.level
    GlobalHydra.instance().clear()
    try:
        app = Hydra.create_main_hydra2("train", create_config_search_path(str(REPO / "conf")))
        app.multirun("train", task, overrides, False)
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)

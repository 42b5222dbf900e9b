"""The Optuna search through the real `train.py -m hparams_search=optuna`, on tiny trials."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import OmegaConf
from optuna.distributions import (
    CategoricalDistribution,
    IntUniformDistribution,
    LogUniformDistribution,
    UniformDistribution,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from amsaware.search import best_run_command, sqlite_path
from tests.conftest import REPO

TINY_TRIAL = [
    "experiment=smoke",
    "data.n_train=1500",
    "data.n_test=300",
    "trainer.max_epochs=1",
    "cv.folds=2",
]
COMPLETE = optuna.trial.TrialState.COMPLETE
FAIL = optuna.trial.TrialState.FAIL


def search(logs: Path, sweep_dir: Path, *overrides: str, check: bool = True):
    command = [
        sys.executable,
        "train.py",
        "-m",
        "hparams_search=optuna",
        *TINY_TRIAL,
        f"paths.log_dir={logs}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def study(logs: Path, name: str) -> optuna.Study:
    storage = f"sqlite:///{logs}/optuna/studies.db"
    return optuna.load_study(study_name=name, storage=storage)


def test_search_space_is_the_papers():
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert fixed == {}
    assert space == {
        "model.n_layers": IntUniformDistribution(2, 5),
        "model.hidden_size": IntUniformDistribution(64, 512, step=64),
        "model.dropout": UniformDistribution(0.1, 0.5),
        "optimizer.lr": LogUniformDistribution(1e-4, 1e-2),
        "data.batch_size": CategoricalDistribution([64, 128, 256]),
    }
    assert sweeper.n_trials == 50
    assert sweeper.direction == "maximize"
    assert sweeper.sampler.seed == cfg.seed
    assert "TPESampler" in sweeper.sampler._target_
    assert cfg.optimized_metric == "oof/ams_max"
    assert cfg.final_fit is False


def test_best_run_command_keeps_the_task_and_replaces_the_searched_keys():
    command = best_run_command(
        [
            "hparams_search=optuna",
            "loss=ams",
            "hydra/launcher=joblib",
            "hydra.sweeper.n_trials=3",
            "model.n_layers=range(2,5)",
            "data.path=/data/my file.csv",
        ],
        {"model.n_layers": 3, "optimizer.lr": 0.000123},
    )
    assert command == (
        "python train.py loss=ams 'data.path=/data/my file.csv' model.n_layers=3 "
        "optimizer.lr=0.000123"
    )


def test_sqlite_path():
    assert sqlite_path("sqlite:///logs/optuna/studies.db") == Path("logs/optuna/studies.db")
    assert sqlite_path("sqlite:////abs/s.db") == Path("/abs/s.db")
    assert sqlite_path("postgresql://host/db") is None
    assert sqlite_path(None) is None


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    logs = root / "logs"
    first = root / "first"
    search(logs, first, "hydra.sweeper.n_trials=3")
    return logs, first


def test_search_writes_results_and_a_best_run_file(finished_search):
    logs, sweep_dir = finished_search
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert set(results.best_params) == {
        "model.n_layers",
        "model.hidden_size",
        "model.dropout",
        "optimizer.lr",
        "data.batch_size",
    }
    trials = study(logs, "bce-synthetic").trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == COMPLETE for t in trials)
    assert results.best_value == max(t.value for t in trials)
    for k in range(3):
        metrics = json.loads((sweep_dir / str(k) / "metrics.json").read_text())
        assert "test" not in metrics, "trials must skip the final fit"
        assert not (sweep_dir / str(k) / "checkpoints").exists()
    best_run = (sweep_dir / "best_run.sh").read_text()
    assert f"oof/ams_max = {results.best_value:.6g}" in best_run
    for key, value in results.best_params.items():
        assert f"{key}={value!r}" in best_run
    assert "hparams_search" not in best_run.splitlines()[-1]


def test_best_run_file_reruns_the_best_trial_with_the_final_fit(finished_search, tmp_path):
    _, sweep_dir = finished_search
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["sh", str(sweep_dir / "best_run.sh"), f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "test/ams" in metrics["test"]
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    rerun = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")
    assert rerun.model.n_layers == best.best_params["model.n_layers"]
    assert rerun.optimizer.lr == best.best_params["optimizer.lr"]
    assert math.isclose(metrics["cv"]["oof"]["oof/ams_max"], best.best_value, rel_tol=1e-6)


def test_every_trial_is_in_tensorboards_hparams_view(finished_search):
    _, sweep_dir = finished_search
    accumulator = EventAccumulator(str(sweep_dir / "0" / "tensorboard" / "summary"))
    accumulator.Reload()
    assert "oof/ams_max" in accumulator.Tags()["scalars"]
    start = plugin_data_pb2.HParamsPluginData.FromString(
        accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info
    config = OmegaConf.load(sweep_dir / "0" / ".hydra" / "config.yaml")
    assert start.hparams["model.n_layers"].number_value == config.model.n_layers
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(config.optimizer.lr)
    assert start.hparams["loss"].string_value == "bce"


def test_running_again_continues_the_study_with_new_points(finished_search, tmp_path):
    logs, _ = finished_search
    search(logs, tmp_path / "second", "hydra.sweeper.n_trials=2")
    trials = study(logs, "bce-synthetic").trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    points = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(points)) == 5, "a resumed study must not propose its first points again"


def test_a_diverging_trial_fails_and_the_search_goes_on(tmp_path):
    # An infinite step size makes the weights NaN; the seeded sampler draws both values.
    done = search(
        tmp_path / "logs",
        tmp_path / "sweep",
        "hydra.sweeper.n_trials=4",
        "optimizer.lr=choice(0.001,inf)",
    )
    states = [t.state for t in study(tmp_path / "logs", "bce-synthetic").trials]
    assert FAIL in states and COMPLETE in states, states
    failed = states.index(FAIL)
    assert "diverged" in (tmp_path / "sweep" / str(failed) / "train.log").read_text()
    assert "Failed experiment" in done.stdout + done.stderr
    assert (tmp_path / "sweep" / "best_run.sh").exists()


def test_a_search_where_every_trial_fails_ends_with_a_clear_error(tmp_path):
    done = search(
        tmp_path / "logs",
        tmp_path / "sweep",
        "hydra.sweeper.n_trials=2",
        "optimizer.lr=inf",
        check=False,
    )
    assert done.returncode != 0
    assert "every trial of study 'bce-synthetic'" in done.stderr
    assert "train.log" in done.stderr


def test_joblib_launcher_runs_two_trials_at_once(tmp_path):
    done = search(
        tmp_path / "logs",
        tmp_path / "sweep",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "threads=1",
    )
    assert "is launching 2 jobs" in done.stdout + done.stderr
    trials = study(tmp_path / "logs", "bce-synthetic").trials
    assert [t.state for t in trials] == [COMPLETE, COMPLETE]
    assert (tmp_path / "sweep" / "optimization_results.yaml").exists()

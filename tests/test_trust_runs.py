"""One run per folder: a used folder is refused or emptied, a busy one fails at once, Ctrl-C
says where it stopped."""

import fcntl
import hashlib
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from amsaware import run_folder
from amsaware.data.synthetic import make_dataset
from amsaware.experiment import run_experiment
from amsaware.inference import load_scorer, predict_table
from amsaware.run_folder import LOCK_FILE, RunFolderError, claim_run_folder, previous_run
from tests.conftest import DEFAULT_GENERATOR, REPO
from tests.helpers import compose_run

SMALL = [
    "experiment=smoke",
    "data.n_train=600",
    "data.n_test=400",
    "cv.folds=2",
    "trainer.max_epochs=1",
    "callbacks.progress_bar=null",
]


def train_py(run_dir, *overrides, timeout=300):
    command = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *SMALL, *overrides]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def digest(folder):
    """Every file of the folder (but the log and the lock) and its content hash."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".log" and p.name != LOCK_FILE
    }


@pytest.mark.slow  # three train.py runs; test_claim_run_folder_lists_what_is_there is the unit
def test_a_used_folder_is_refused_intact_and_overwrite_replaces_its_run(tmp_path):
    run_dir = tmp_path / "run"
    first = train_py(run_dir, "loss=bce")
    assert first.returncode == 0, first.stderr[-3000:]
    before = digest(run_dir)

    again = train_py(run_dir, "loss=ams", "seed=7")
    assert again.returncode == 1
    assert f"{run_dir} already holds a run: metrics.json" in again.stderr
    assert "checkpoints/ (checkpoints/final/last.ckpt" in again.stderr
    assert "tensorboard/ (" in again.stderr and "overwrite=true" in again.stderr
    assert digest(run_dir) == before  # not even .hydra/config.yaml was rewritten

    replaced = train_py(run_dir, "loss=ams", "seed=7", "overwrite=true")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert "deleting the earlier run" in replaced.stderr + replaced.stdout
    assert not list(run_dir.rglob("last-v*.ckpt"))
    # TensorBoard files of one process only (events.out.tfevents.<time>.<host>.<pid>.<n>)
    events = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert len({path.name.split(".")[-2] for path in events}) == 1
    # predict applies exactly this run's model: its own test scores, its own selection
    test = make_dataset(600, 400, DEFAULT_GENERATOR, 7).test
    scorer = load_scorer(run_dir, "final")
    frame = predict_table(scorer, test)
    own = pd.read_csv(run_dir / run_folder.TEST_PREDICTIONS)
    submission = pd.read_csv(run_dir / run_folder.SUBMISSION)
    np.testing.assert_allclose(frame.score, own.score, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(frame.selected, (submission.Class == "s").astype(int))


def test_a_second_run_into_a_busy_folder_fails_at_once(tmp_path):
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    with (run_dir / LOCK_FILE).open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running train.py holds it
        started = time.perf_counter()
        # What train.py runs, in-process: flock refuses a second open file of this process too.
        with pytest.raises(RunFolderError, match="another run is writing into this folder now"):
            run_experiment(compose_run(run_dir, *SMALL, tiny=False))
    assert time.perf_counter() - started < 120  # no training: only the start-up
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]


def test_claim_run_folder_lists_what_is_there(tmp_path):
    claim_run_folder(tmp_path)  # a fresh folder
    (tmp_path / "tensorboard" / "fold0").mkdir(parents=True)
    assert previous_run(tmp_path) == []  # an empty folder is no run
    (tmp_path / "tensorboard" / "fold0" / "events.out.tfevents.1").write_text("x")
    (tmp_path / "metrics.json").write_text("{}")
    assert previous_run(tmp_path) == [
        "metrics.json",
        "tensorboard/ (tensorboard/fold0/events.out.tfevents.1)",
    ]
    with pytest.raises(RunFolderError, match=r"already holds a run: metrics\.json; tensorboard/"):
        claim_run_folder(tmp_path)
    (tmp_path / ".hydra").mkdir()
    claim_run_folder(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hydra", LOCK_FILE]


@pytest.mark.slow
def test_ctrl_c_logs_the_stage_and_exits_130(tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "train.py",
        f"hydra.run.dir={run_dir}",
        "experiment=smoke",
        "trainer.max_epochs=200",
        "callbacks.progress_bar=null",
        "+trainer.enable_progress_bar=false",  # nothing fills the unread pipes
    ]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log = run_dir / "train.log"
    deadline = time.monotonic() + 240
    while not (log.exists() and "fold0 [1/3]" in log.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.2)
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "interrupted (Ctrl-C) in stage fold0" in log.read_text()
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "metrics.json").exists()


def test_the_folder_check_resolves_paths_that_need_hydras_config(tmp_path):
    """The default run folder lies under paths.root_dir, a ${hydra:...} interpolation, which
    resolves only once Hydra's config is published: the callback runs before that."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from amsaware.checks import RunFolderCallback

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        config = compose(
            "train",
            overrides=["hydra.run.dir=" + str(tmp_path) + "/${paths.root_dir}/run"],
            return_hydra_config=True,
        )
    HydraConfig.instance().cfg = None  # as at a fresh train.py's on_run_start
    RunFolderCallback().on_run_start(config)
    assert len(list(tmp_path.rglob(LOCK_FILE))) == 1  # the folder was claimed

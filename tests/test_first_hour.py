"""A new user's first commands as they type them: piped output that reads as a log, errors in
one line, the documented commands working as written, and the conventions they expect
(tags, task_name, debug=)."""

import re

import pytest

from tests.helpers import REPO, entry_point, train

#: Lines a smoke run may print besides its epoch lines: the run's description, a line per
#: stage (start and end), the out-of-fold and test metrics, the cut and the run folder.
OTHER_LINES = 16


def epoch_lines(text: str) -> list[str]:
    return re.findall(r"^.*\bepoch \d+/\d+: .*$", text, flags=re.MULTILINE)


def test_piped_train_py_prints_a_readable_log(tmp_path):
    """stdout is a pipe here, as in `python train.py experiment=smoke > out.txt`."""
    run_dir = tmp_path / "run"
    done = train(run_dir, "threads=1")
    output = done.stdout + done.stderr
    assert "\r" not in output
    lines = epoch_lines(output)
    assert len(lines) == 4 * 2  # 3 folds and the final fit, 2 epochs each
    assert len(output.splitlines()) <= len(lines) + OTHER_LINES, output
    assert epoch_lines((run_dir / "train.log").read_text()) == [
        line for line in output.splitlines() if line in lines
    ]


def test_lightnings_own_progress_switch_means_progress_false(tmp_path):
    """`+trainer.enable_progress_bar=false` with the bar asked for: epoch lines, no crash."""
    done = train(
        tmp_path / "run", "threads=1", "progress=true", "+trainer.enable_progress_bar=false"
    )
    assert len(epoch_lines(done.stdout + done.stderr)) == 8


@pytest.mark.slow
def test_every_logger_at_once_stays_quiet(tmp_path):
    """W&B (about 25 lines per stage run) and MLflow (store notices, a warning per metric
    name with `@` or `%`) print nothing of their own unless asked."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    done = train(tmp_path / "run", "threads=1", "cv.folds=2", "logger=many")
    output = done.stdout + done.stderr
    assert "wandb:" not in output and "mlflow" not in output.lower(), output
    assert len(output.splitlines()) <= len(epoch_lines(output)) + OTHER_LINES, output


# ---------------------------------------------------------------------------------------------
# train.py's errors: the message, in one line, exit status 1


def error_lines(done) -> list[str]:
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return [line for line in done.stderr.splitlines() if line.startswith("train.py: error: ")]


def test_a_config_error_is_one_line(tmp_path):
    done = entry_point("train.py", f"hydra.run.dir={tmp_path / 'run'}", "cut.min_fraction=0.9")
    (line,) = error_lines(done)
    assert "cut.min_fraction" in line


def test_an_optimized_metric_typo_is_one_line(tmp_path):
    done = entry_point(
        "train.py", f"hydra.run.dir={tmp_path / 'run'}", "optimized_metric=oof/ams_mx"
    )
    (line,) = error_lines(done)
    assert "optimized_metric 'oof/ams_mx' is not a metric" in line


def test_a_missing_data_file_is_one_line_naming_it(tmp_path):
    done = entry_point(
        "train.py",
        f"hydra.run.dir={tmp_path / 'run'}",
        "data=kaggle",
        f"data.train_path={tmp_path}/nope.csv",
    )
    (line,) = error_lines(done)
    assert "nope.csv: file not found" in line
    assert not (tmp_path / "run").exists(), "a failed run leaves no folder behind"


def test_debugging_shows_the_traceback(tmp_path):
    import os
    import subprocess
    import sys

    command = [sys.executable, "train.py", f"hydra.run.dir={tmp_path}/run", "cut.min_fraction=0.9"]
    env = os.environ | {"AMSAWARE_DEBUG": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" in done.stderr


def test_gpu_trainer_without_a_gpu_is_refused_before_the_data(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = entry_point(
        "train.py",
        f"hydra.run.dir={tmp_path / 'run'}",
        "trainer=gpu",
        "data=kaggle",
        f"data.train_path={tmp_path}/nope.csv",  # refused before this file is looked for
    )
    (line,) = error_lines(done)
    assert "trainer.accelerator=gpu" in line and "trainer=default" in line


@pytest.mark.slow
def test_ctrl_c_prints_the_command_that_continues_the_run(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "run"
    overrides = ["experiment=smoke", "trainer.max_epochs=200", "threads=1", "seed=7"]
    command = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *overrides]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log = run_dir / "train.log"
    deadline = time.monotonic() + 240
    while not (log.exists() and "fold0 [1/3] epoch 1/" in log.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)
    assert process.returncode == 130
    (line,) = [line for line in log.read_text().splitlines() if "continue it with: " in line]
    resume = line.split("continue it with: ", 1)[1]
    assert resume == " ".join(["python", "train.py", f"ckpt_path={run_dir}", *overrides])

"""A new user's first commands as they type them: piped output that reads as a log, errors in
one line, the documented commands working as written, and the conventions they expect
(tags, task_name, debug=)."""

import re

import pytest

from tests.helpers import train

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

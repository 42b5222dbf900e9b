"""A new user's first commands as they type them: piped output that reads as a log, errors in
one line, the documented commands working as written, and the conventions they expect
(tags, task_name, debug=)."""

import re

import numpy as np
import pytest

from tests.helpers import N_TRAIN, REPO, TINY, entry_point, kaggle_frame, run, train

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


# ---------------------------------------------------------------------------------------------
# Documented commands, as written


def test_smoke_runs_with_kaggle_files(tmp_path):
    """`experiment=smoke data=kaggle`: the smoke sizes keep each file's first events."""
    from tests.test_train import write_kaggle_files

    write_kaggle_files(tmp_path, n_train=1800, n_test=1300)
    metrics = run(
        tmp_path / "run",
        "data=kaggle",
        f"data.train_path={tmp_path}/training.csv.gz",
        f"data.test_path={tmp_path}/test.csv",
        "~logger",
    )
    assert metrics["run"]["n_train"] == N_TRAIN  # helpers.TINY's data.n_train


def test_smoke_runs_with_an_opendata_file_and_a_limit(tmp_path):
    """`experiment=smoke data=opendata data.limit=N`, as docs/training.md writes it."""
    from amsaware.data.synthetic import make_dataset

    dataset = make_dataset(2400, 0, seed=5)
    frame = kaggle_frame(dataset.train, with_labels=True)
    frame["KaggleSet"] = ["t"] * 1800 + ["b", "v"] * 300
    frame["KaggleWeight"] = frame["Weight"]
    path = tmp_path / "cern.csv.gz"
    frame.to_csv(path, index=False)
    metrics = run(
        tmp_path / "run",
        "data=opendata",
        f"data.path={path}",
        "data.download=false",
        "data.limit=2000",  # 1800 t rows, then 200 test rows
        "~logger",
    )
    assert metrics["run"]["n_train"] == N_TRAIN
    assert "test" in metrics


def test_sizes_a_file_source_cannot_meet_are_refused():
    from amsaware.data.formats import DataFormatError
    from amsaware.data.sources import first_events
    from amsaware.data.synthetic import make_dataset

    table = make_dataset(10, 0, seed=1).train
    assert len(first_events(table, 4, "n_train")) == 4
    assert first_events(table, 40, "n_train") is table
    with pytest.raises(DataFormatError, match=r"data\.n_train is 0"):
        first_events(table, 0, "n_train")


def test_an_offline_download_says_how_to_get_the_file_once(tmp_path):
    done = entry_point(
        "train.py",
        f"hydra.run.dir={tmp_path / 'run'}",
        "data=opendata",
        f"data.path={tmp_path}/absent.csv.gz",
        "+data.url=http://127.0.0.1:9/absent.csv.gz",  # nothing listens on port 9
    )
    error_lines(done)
    output = done.stdout + done.stderr
    assert output.count("Get it by hand") == 1
    assert "\\n" not in output  # real line breaks, not a repr's


def test_a_group_set_to_null_is_dropped_as_the_docs_say(tmp_path):
    """`logger=null`, `finetune=null`: Hydra alone refuses a null choice."""
    done = entry_point("train.py", "logger=null", "finetune=ams", "finetune=null", "--cfg", "job")
    assert done.returncode == 0, done.stderr[-2000:]
    keys = [line.split(":")[0] for line in done.stdout.splitlines() if not line.startswith(" ")]
    assert "logger" not in keys and "finetune" not in keys and "model" in keys


def execute_notebook(folder, runs=None):
    """notebooks/analysis.ipynb executed in `folder` (its relative paths start there), as
    shipped or with RUNS set; returns its outputs as text."""
    import json
    import os

    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    if runs is not None:
        parameters.source += f"\nRUNS = {[str(p) for p in runs]!r}"
    parameters.source += "\nN_BOOTSTRAP = 20"
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    os.environ["PYTHONPATH"] = path
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": folder}}
    )
    client.execute()
    return json.dumps([c.get("outputs", []) for c in notebook.cells])


@pytest.mark.slow  # two runs and two Jupyter kernels
def test_notebook_as_shipped_compares_the_two_runs_it_names(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "")
    runs = tmp_path / "logs" / "train" / "runs"
    (tmp_path / "notebooks").mkdir()
    # The two commands of its first cell (in-process, helpers.TINY sizes, TensorBoard kept).
    run(runs / "2026-12-07_10-00-00", "cv.folds=2")
    run(runs / "2026-12-07_10-05-00", "cv.folds=2", "loss=ams")
    shown = execute_notebook(tmp_path / "notebooks")
    assert "ams@cut" in shown and "image/png" in shown and "10-00-00" in shown
    out = tmp_path / "notebooks" / "analysis_output"
    assert (out / "comparison.json").is_file() and (out / "training_history.png").is_file()
    # A single run: its figures, no comparison.
    single = execute_notebook(tmp_path / "notebooks", [runs / "2026-12-07_10-05-00"])
    assert "no comparison" in single and "image/png" in single


# ---------------------------------------------------------------------------------------------
# Conventions: tags, task_name, debug=, callbacks=lr_monitor


def test_tags_name_the_run_folder(tmp_path):
    done = entry_point(
        "train.py",
        f"paths.log_dir={tmp_path}",
        *TINY,
        "threads=1",
        "trainer.max_epochs=1",
        "~logger",
        "tags=[bce,first try]",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = (tmp_path / "train" / "runs").iterdir()
    assert folder.name.endswith("_bce_first-try")
    assert (folder / "metrics.json").is_file()


def test_a_debug_run_goes_to_logs_debug(tmp_path):
    done = entry_point(
        "train.py", f"paths.log_dir={tmp_path}", *TINY, "threads=1", "~logger", "debug=fdr"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "train").exists()
    (folder,) = (tmp_path / "debug" / "runs").iterdir()
    assert (folder / "metrics.json").is_file()


@pytest.mark.parametrize("switch", ["+trainer.fast_dev_run=true", "+trainer.overfit_batches=3"])
def test_lightnings_debug_switches_are_refused_outside_debug(switch, tmp_path):
    from amsaware.checks import ConfigError, check_config
    from tests.helpers import compose_run

    with pytest.raises(ConfigError, match=r"debug="):
        check_config(compose_run(tmp_path, switch))
    check_config(compose_run(tmp_path, switch, "task_name=debug"))


@pytest.mark.parametrize("name", ["default", "fdr", "limit", "overfit", "profiler"])
def test_each_debug_config_composes_into_a_debug_run(name, tmp_path):
    from amsaware.checks import check_config
    from tests.helpers import compose_run

    cfg = compose_run(tmp_path, f"debug={name}")
    assert cfg.task_name == "debug"
    check_config(cfg)


def test_lr_monitor_logs_the_learning_rate(tmp_path):
    import pandas as pd

    run(tmp_path / "run", "cv.folds=2", "logger=csv", "callbacks=lr_monitor")
    table = pd.read_csv(tmp_path / "run" / "csv" / "fold0" / "metrics.csv")
    assert any(column.startswith("lr-") for column in table.columns), list(table.columns)


def test_the_sweeps_summary_is_also_in_search_log(tmp_path, caplog):
    import logging

    from tests.test_search import run_sweeper

    caplog.set_level(logging.INFO)  # as Hydra's logging sets it
    run_sweeper(tmp_path, "hydra.sweeper.n_trials=4")
    text = (tmp_path / "sweep" / "search.log").read_text()
    assert "this search:" in text and "best trial of the study" in text


def test_the_sweep_folder_is_printed_without_dot_dot():
    from omegaconf import OmegaConf

    from amsaware.cli import register_resolvers

    register_resolvers()
    node = OmegaConf.create(
        {"root": "/repo/conf/..", "dir": "${amsaware.normpath:${root}/multirun}"}
    )
    assert node.dir == "/repo/multirun"


@pytest.mark.parametrize(
    ("name", "logged"),
    [
        ("val/ams@15%", "val/ams_at_15pct"),
        ("oof/ams@0.5", "oof/ams_at_0.5"),
        ("test/ams_max_threshold", "test/ams_max_threshold"),
        ("fit/sigma_mu", "fit/sigma_mu"),
    ],
)
def test_mlflow_metric_names_map_both_ways(name, logged):
    from amsaware.loggers import metric_name, mlflow_name

    assert mlflow_name(name) == logged
    assert metric_name(logged) == name


# ---------------------------------------------------------------------------------------------
# Figures


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 2000)
    score = np.clip(rng.normal(0.4 + 0.2 * label, 0.15), 0, 1)
    weight = np.where(label == 1, 0.01, 1.0)
    return score, label, weight


def test_the_roc_figure_has_the_rejection_panel_and_the_data_label(scored):
    from amsaware import plots

    score, label, _ = scored
    figure = plots.roc_curves({"run": score}, label, source="opendata")
    efficiency, rejection = figure.axes
    assert rejection.get_yscale() == "log" and "rejection" in rejection.get_ylabel()
    assert "Signal efficiency" in rejection.get_xlabel()
    assert efficiency.get_title(loc="left") == "amsaware, HiggsML 2014 open data"


def test_the_score_figure_has_the_cut_and_error_bars_and_an_outside_legend(scored):
    from amsaware import plots

    score, label, weight = scored
    figure = plots.score_distributions(
        {"run": score}, label, weight, cut_thresholds={"run": 0.55}, source="synthetic"
    )
    (ax,) = figure.axes
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "cut: score > 0.55" in texts
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1  # outside
    assert any(len(c.get_segments()) for c in ax.collections), "no error bars"
    assert ax.get_title(loc="left") == "amsaware, synthetic events"


def test_a_run_writes_its_figures_as_png_and_pdf(tmp_path):
    run(tmp_path / "run", "cv.folds=2", "~logger")
    names = {p.name for p in (tmp_path / "run" / "figures").iterdir()}
    for figure in ("roc", "ams_vs_fraction", "score_distribution"):
        assert {f"oof_{figure}.png", f"oof_{figure}.pdf"} <= names


def test_the_history_figure_marks_the_fine_tune_and_names_both_losses():
    from amsaware import plots

    history = {
        "run": {"fold0": {"train/loss": [0.6, 0.5, -1.1, -1.2], "val/ams_max": [1, 2, 3, 3]}}
    }
    figure = plots.training_history(history, {"run": "BCELoss"}, {"run": (2, "SoftAMSLoss")})
    loss, ams = figure.axes
    assert loss.get_ylabel() == "Training loss (BCELoss, then SoftAMSLoss)"
    for ax in (loss, ams):
        (line,) = [t for t in ax.get_legend().get_texts() if "fine-tune" in t.get_text()]
        assert "SoftAMSLoss" in line.get_text()


def test_compare_reads_a_fine_tuned_runs_phases(tmp_path):
    from amsaware.comparison import fine_tune_of

    run(tmp_path / "run", "cv.folds=2", "finetune=ams", "finetune.max_epochs=1", "~logger")
    assert fine_tune_of(tmp_path / "run") == (2, "SoftAMSLoss")
    run(tmp_path / "plain", "cv.folds=2", "~logger")
    assert fine_tune_of(tmp_path / "plain") is None


def test_compare_names_runs_by_their_tags(tmp_path):
    from amsaware.comparison import compare

    run(tmp_path / "a", "cv.folds=2", "~logger", "tags=[bce]")
    run(tmp_path / "b", "cv.folds=2", "~logger", "tags=[bce,again]")
    result = compare([tmp_path / "a", tmp_path / "b"], n_bootstrap=10)
    assert [r.name for r in result.runs] == ["bce", "bce+again"]


@pytest.mark.slow
def test_mlflow_shared_keeps_every_run_in_one_store(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    for name in ("a", "b"):
        run(tmp_path / name, "cv.folds=2", "logger=mlflow_shared", f"paths.log_dir={tmp_path}")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("amsaware")
    runs = client.search_runs([experiment.experiment_id])
    assert {r.data.tags["run_dir"] for r in runs} == {str(tmp_path / "a"), str(tmp_path / "b")}
    assert "val/ams_at_15pct" in next(r for r in runs if r.info.run_name == "fold0").data.metrics
    assert not (tmp_path / "a" / "mlflow.db").exists()

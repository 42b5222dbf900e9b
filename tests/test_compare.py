"""compare.py, TensorBoard and the analysis notebook on two tiny finished runs (the session's
bce_run and ams_run: the same events and folds)."""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest
from omegaconf import open_dict

from amsaware import comparison
from amsaware.comparison import FIGURES, RunFolderError, compare, run_comparison, training_history
from tests.conftest import REPO
from tests.helpers import METRIC_NAMES, compose_config, entry_point

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def tiny_runs(bce_run, ams_run):
    """Two tiny runs of the same events and folds: BCE (the reference) and soft AMS, which
    alone logged to TensorBoard."""
    return bce_run, ams_run


def run_compare(*overrides):
    return entry_point("compare.py", *overrides)


def compare_in_process(out, *overrides):
    """What compare.py does, in this process: its composed config, run_comparison."""
    cfg = compose_config("compare", *overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return run_comparison(cfg)


def test_compare_writes_json_table_and_every_figure(tiny_runs, tmp_path):
    bce, ams = tiny_runs
    out = tmp_path / "out"
    done = run_compare(f"runs=[{bce},{ams}]", f"hydra.run.dir={out}", "compare.n_bootstrap=60")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "comparison.json").read_text())
    assert report["reference"] == "bce" and report["n_resamples"] == 60
    assert [r["loss"] for r in report["runs"]] == ["BCELoss", "SoftAMSLoss"]
    rows = report["differences"]
    assert [d["statistic"] for d in rows] == ["ams@cut", "ams_max", "auroc", "auroc_weighted"]
    for d in rows:
        assert d["run"] == "ams" and d["n_resamples"] == 60
        assert d["ci_low"] <= d["mean"] <= d["ci_high"] and 0.0 <= d["p_value"] <= 1.0
        assert d["within_noise"] == (d["ci_low"] <= 0.0 <= d["ci_high"])
    metrics = json.loads((bce / "metrics.json").read_text())
    observed = report["runs"][0]["observed"]
    assert observed["auroc"] == pytest.approx(metrics["cv"]["oof"]["oof/auroc"], abs=1e-6)
    assert observed["ams@cut"] == pytest.approx(metrics["cut"]["ams"], rel=1e-9)
    table = (out / "comparison.md").read_text()
    assert "| ams | auroc |" in table and table.splitlines()[2] in done.stdout
    for name in FIGURES:
        assert (out / name).read_bytes().startswith(PNG_MAGIC), name
        assert (out / name).stat().st_size > 10_000, name


def test_three_runs_and_a_difference_within_noise(tiny_runs, tmp_path, capsys, caplog):
    bce, ams = tiny_runs
    twin = tmp_path / "twin"
    shutil.copytree(bce, twin)
    out = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="amsaware.comparison")
    compare_in_process(out, f"runs=[{bce},{twin},{ams}]", "compare.seed=3")
    assert "twin vs bce on auroc: +0.0000 is within noise" in caplog.text
    printed = capsys.readouterr().out
    assert "| twin | auroc | +0.0000 | +0.0000 | [+0.0000, +0.0000] | 0.500 |" in printed
    report = json.loads((out / "comparison.json").read_text())
    assert [d["run"] for d in report["differences"]] == ["twin"] * 4 + ["ams"] * 4
    assert report["seed"] == 3 and report["n_resamples"] == 1000


def test_training_history_is_read_from_tensorboard(tiny_runs):
    history = training_history(tiny_runs[1])
    assert set(history) == {"fold0", "fold1", "fold2", "final"}
    assert len(history["fold0"]["train/loss"]) == 2  # experiment=smoke: 2 epochs
    assert len(history["fold2"]["val/ams_max"]) == 2
    assert "val/ams_max" not in history["final"]


def test_training_logs_figures_per_fold_and_out_of_fold(tiny_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    names = ("roc", "ams_vs_fraction", "score_distribution")
    for stage, prefix in (("fold0", "val/"), ("fold2", "val/"), ("oof", "oof/")):
        events = EventAccumulator(str(tiny_runs[1] / "tensorboard" / stage))
        events.Reload()
        assert {prefix + name for name in names} <= set(events.Tags()["images"]), stage
        assert prefix + "pr_curve" in events.Tags()["tensors"], stage


def copy_run(run_dir, to):
    to.mkdir()
    for name in ("metrics.json", "oof_predictions.csv"):
        shutil.copy(run_dir / name, to / name)
    return to


def edit_oof(run_dir, edit):
    oof = pd.read_csv(run_dir / "oof_predictions.csv")
    edit(oof)
    oof.to_csv(run_dir / "oof_predictions.csv", index=False)


def test_missing_run_folder_is_named(tiny_runs, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(RunFolderError, match=f"run folder {missing} does not exist"):
        compare_in_process(tmp_path / "o", f"runs=[{tiny_runs[0]},{missing}]")
    with pytest.raises(RunFolderError, match="runs must be a list of run folders"):
        compare_in_process(tmp_path / "o", f"runs={tiny_runs[0]}")


def test_missing_files_are_named(tiny_runs, tmp_path):
    for name in ("metrics.json", "oof_predictions.csv"):
        run = copy_run(tiny_runs[1], tmp_path / name.split(".")[0])
        (run / name).unlink()
        with pytest.raises(RunFolderError, match=f"{run / name} is missing"):
            compare([tiny_runs[0], run], n_bootstrap=5)


def shift_fold(oof):
    oof.loc[3, "fold"] = (oof.loc[3, "fold"] + 1) % 3


def flip_label(oof):
    oof.loc[7, "label"] = 1 - oof.loc[7, "label"]


def scale_weights(oof):
    oof["weight"] *= 1.01


def shift_ids(oof):
    oof["EventId"] += 1


@pytest.mark.parametrize(
    ("column", "edit"),
    [
        ("fold", shift_fold),
        ("label", flip_label),
        ("weight", scale_weights),
        ("EventId", shift_ids),
    ],
)
def test_runs_of_different_events_are_refused(tiny_runs, tmp_path, column, edit):
    run = copy_run(tiny_runs[1], tmp_path / "other")
    edit_oof(run, edit)
    with pytest.raises(RunFolderError, match=f"differ in out-of-fold column '{column}'"):
        compare([tiny_runs[0], run], n_bootstrap=5)


def test_runs_of_different_sizes_are_refused(tiny_runs, tmp_path):
    run = copy_run(tiny_runs[1], tmp_path / "smaller")
    oof = pd.read_csv(run / "oof_predictions.csv")
    oof.iloc[:-1].to_csv(run / "oof_predictions.csv", index=False)
    with pytest.raises(RunFolderError, match="1500 and 1499 out-of-fold events"):
        compare([tiny_runs[0], run], n_bootstrap=5)
    with pytest.raises(RunFolderError, match="at least two"):
        compare([tiny_runs[0]])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_tensorboard_serves_the_design_metric_names(tiny_runs):
    port = free_port()
    command = [
        sys.executable, "-m", "tensorboard.main", "--logdir", str(tiny_runs[1]),
        "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false",
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/data/plugin"
    wanted = {"train/loss", *(f"val/{name}" for name in METRIC_NAMES)}
    try:
        tags, images, deadline = {}, {}, time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                tags = get_json(f"{base}/scalars/tags")
                images = get_json(f"{base}/images/tags")
            except OSError:
                pass
            if "tensorboard/fold0" in tags and "tensorboard/oof" in images:
                break
            time.sleep(1)
        assert wanted <= set(tags["tensorboard/fold0"]), tags
        assert "val/roc" in images["tensorboard/fold0"] and "oof/roc" in images["tensorboard/oof"]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow  # a Jupyter kernel's start; compare.py's test covers the calls it makes
def test_notebook_runs_headless(tiny_runs, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    out = tmp_path / "out"
    parameters.source = (
        f"RUNS = {[str(p) for p in tiny_runs]!r}\nN_BOOTSTRAP = 30\nSEED = 0\nOUTPUT = {str(out)!r}"
    )
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    shown = json.dumps([c.get("outputs", []) for c in notebook.cells])
    assert "ams@cut" in shown and "image/png" in shown
    for name in (*FIGURES, comparison.COMPARISON_JSON, comparison.COMPARISON_MD):
        assert (out / name).stat().st_size > 0, name


def test_the_bootstrap_ranks_by_the_logit_where_probabilities_tie(tiny_runs, tmp_path):
    # Round every probability above the median to exactly 1, as a soft-AMS model's saturate:
    # ranked by probability the cut could no longer tell those events apart; by logit it can.
    saturated = copy_run(tiny_runs[1], tmp_path / "saturated")

    def saturate(oof):
        oof.loc[oof.score > oof.score.median(), "score"] = 1.0

    edit_oof(saturated, saturate)
    result = compare([tiny_runs[1], saturated], n_bootstrap=20)
    original, tied = (result.sample.observed[run.name] for run in result.runs)
    for name in ("ams@cut", "ams_max", "auroc"):
        assert tied[name] == pytest.approx(original[name], rel=1e-12), name

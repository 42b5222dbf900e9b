"""The apply tools on bad input and thin runs: one-line errors, the threshold fallback, and
eval's output folder, training-event warning and one-class files."""

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from omegaconf.errors import MissingMandatoryValue

from amsaware import cli
from amsaware.data.synthetic import make_dataset
from amsaware.evaluation import EVAL_DIR, evaluate_file
from amsaware.inference import ApplyRequest, load_scorer, predict_file
from amsaware.run_folder import EVAL_METRICS, RunFolder, RunFolderError
from tests.conftest import DEFAULT_GENERATOR
from tests.helpers import N_TEST, N_TRAIN, entry_point, kaggle_frame

SEED = 42  # train.yaml's seed, which the synthetic source also uses


def dataset():
    return make_dataset(N_TRAIN, N_TEST, DEFAULT_GENERATOR, SEED)


# --- the mechanism, in this process -----------------------------------------------------------


def failing(error: BaseException):
    @cli.reports_errors
    def task(cfg):
        raise error

    return task


def test_a_project_error_ends_with_one_line_and_status_1(capsys, monkeypatch):
    for name in cli.DEBUG_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as done:
        failing(RunFolderError("runs/a: no such run folder"))(None)
    assert done.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("error: runs/a: no such run folder")
    assert lines[1] == "(AMSAWARE_DEBUG=1 shows the traceback)" and len(lines) == 2


def test_a_missing_mandatory_key_is_named():
    error = MissingMandatoryValue("Missing mandatory value: run")
    error.full_key = "run"
    assert cli.message_of(error) == "run is required (it is ??? in the config): pass run=..."


@pytest.mark.parametrize("variable", cli.DEBUG_VARIABLES)
def test_the_debug_variables_show_the_traceback(monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    with pytest.raises(RunFolderError, match="no such run folder"):
        failing(RunFolderError("runs/a: no such run folder"))(None)


def test_a_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.delenv("AMSAWARE_DEBUG", raising=False)
    with pytest.raises(TypeError):
        failing(TypeError("a bug"))(None)


def test_a_run_folder_holding_only_what_hydra_wrote_is_removed(tmp_path):
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    for name in cli.HYDRA_FILES:
        (folder / ".hydra" / name).write_text("x")
    (folder / "compare.log").write_text("")
    assert cli.remove_if_only_hydra(folder) and not folder.exists()
    kept = tmp_path / "kept"
    (kept / ".hydra").mkdir(parents=True)
    (kept / "figure.png").write_bytes(b"")
    assert not cli.remove_if_only_hydra(kept) and kept.exists()


# --- each entry point, once -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "overrides"),
    [
        ("predict.py", ["run={missing}", "input=x.csv"]),
        ("compare.py", ["runs=[{missing},{missing}]", "hydra.run.dir={folder}"]),
        # ~10 s each on a loaded machine; the mechanism is tested in-process above.
        pytest.param("eval.py", ["run={missing}", "input=x.csv"], marks=pytest.mark.slow),
        pytest.param("export.py", ["run={missing}"], marks=pytest.mark.slow),
        pytest.param(
            "explain.py", ["run={missing}", "hydra.run.dir={folder}"], marks=pytest.mark.slow
        ),
    ],
)
def test_each_entry_point_names_the_missing_run_in_one_line(tmp_path, script, overrides):
    missing, folder = tmp_path / "no-run", tmp_path / "tool-run"
    args = [o.format(missing=missing, folder=folder) for o in overrides]
    done = entry_point(script, *args, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and str(missing) in errors[0], done.stderr[-2000:]
    assert not folder.exists()  # a failed compare or explain leaves no run folder


# --- a final model without a threshold ---------------------------------------------------------


@pytest.fixture
def thin_run(both_run, tmp_path):
    """both_run whose metrics.json lost the final model's thresholds (as a run whose final fit
    scored no test events), copied: eval writes into it."""
    copy = tmp_path / "run"
    shutil.copytree(both_run, copy)
    path = copy / "metrics.json"
    metrics = json.loads(path.read_text())
    for key in ("threshold_final", "threshold_logit_final"):
        metrics["cut"].pop(key, None)
    path.write_text(json.dumps(metrics))
    assert RunFolder(copy).cut().threshold_final is None
    return copy


def test_no_final_threshold_falls_back_to_the_folds_or_the_fraction(thin_run, tmp_path, caplog):
    kaggle_frame(dataset().test).to_csv(tmp_path / "test.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="amsaware.inference"):
        out = predict_file(ApplyRequest(thin_run, tmp_path / "test.csv", tmp_path / "a.csv"))
    assert "scoring with the fold ensemble's threshold instead (scorer=folds)" in caplog.text
    folds = pd.read_csv(thin_run / "submission_folds.csv")
    np.testing.assert_array_equal(pd.read_csv(out).selected, folds.Class == "s")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="amsaware.inference"):
        request = ApplyRequest(thin_run, tmp_path / "test.csv", tmp_path / "b.csv", "final")
        out = predict_file(request)
    assert len(caplog.records) == 1 and "instead (cut_by=fraction)" in caplog.text
    fraction = RunFolder(thin_run).cut().fraction
    assert pd.read_csv(out).selected.mean() == pytest.approx(fraction, abs=2 / N_TEST)


# --- eval ----------------------------------------------------------------------------------------


def test_eval_writes_into_the_run_and_warns_about_training_events(thin_run, tmp_path, caplog):
    data = dataset()
    seen = kaggle_frame(data.train.subset(np.arange(120)), with_labels=True)
    new = kaggle_frame(data.test.subset(np.arange(300)), with_labels=True)
    pd.concat([seen, new]).to_csv(tmp_path / "mixed.csv.gz", index=False)
    with caplog.at_level(logging.WARNING, logger="amsaware.evaluation"):
        report = evaluate_file(ApplyRequest(thin_run, tmp_path / "mixed.csv.gz", scorer="folds"))
    folder = thin_run / EVAL_DIR / "mixed"
    assert json.loads((folder / EVAL_METRICS).read_text()) == report
    assert (folder / "mixed.scores.csv").is_file() and not list(tmp_path.glob("*.scores.csv"))
    assert report["training_events"] == {"by_event_id": 120, "by_features": 120}
    assert "120 of its 420 events are the run's training events" in caplog.text


def test_eval_of_one_class_reports_only_what_is_defined(both_run, tmp_path, caplog):
    test = dataset().test
    signal = kaggle_frame(test.subset(np.flatnonzero(test.label == 1)), with_labels=True)
    signal.to_csv(tmp_path / "signal.csv", index=False)
    request = ApplyRequest(both_run, tmp_path / "signal.csv", tmp_path / "out" / "s.csv")
    with caplog.at_level(logging.WARNING, logger="amsaware.evaluation"):
        report = evaluate_file(request)
    assert report["undefined"] == ["test/auroc", "test/auroc_weighted"]
    assert "it holds signal events only" in caplog.text
    text = (tmp_path / "out" / EVAL_METRICS).read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in eval_metrics.json"))
    assert "test/ams" in report["metrics"] and "test/auroc" not in report["metrics"]
    assert load_scorer(both_run).name == report["scorer"]

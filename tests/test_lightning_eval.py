"""eval.py: a finished run's test/ metrics on a labelled file, in eval_metrics.json."""

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from amsaware.evaluation import evaluate_file
from amsaware.experiment import load_dataset
from amsaware.inference import ApplyRequest
from tests.helpers import entry_point, kaggle_frame


@pytest.fixture(scope="module")
def evaluated_run(ams_run, tmp_path_factory):
    """The session's ams_run (read only) and a folder with its test events as a CERN file."""
    folder = tmp_path_factory.mktemp("eval")
    metrics = json.loads((ams_run / "metrics.json").read_text())
    # The run's own test events (the synthetic source regenerates them from the seed), as the
    # CERN file: labels, KaggleWeight and alternating public ('b') and private ('v') sets.
    test = load_dataset(OmegaConf.load(ams_run / ".hydra" / "config.yaml")).test
    frame = kaggle_frame(test, with_labels=True)
    frame["KaggleWeight"] = frame["Weight"]
    frame["KaggleSet"] = np.where(np.arange(len(frame)) % 2 == 0, "b", "v")
    frame.to_csv(folder / "cern.csv.gz", index=False)
    return folder, metrics, ams_run


def test_eval_reproduces_the_runs_test_metrics_on_its_test_events(evaluated_run):
    folder, trained, run = evaluated_run
    report = evaluate_file(ApplyRequest(run, folder / "cern.csv.gz", folder / "out" / "s.csv"))
    metrics = report["metrics"]
    for name in ("test/ams", "test/auroc", "test/auroc_weighted", "test/ams_max"):
        assert metrics[name] == pytest.approx(trained["test"][name], rel=1e-9), name
    assert {"test/ams_public", "test/ams_private"} <= set(metrics)
    written = json.loads((folder / "out" / "eval_metrics.json").read_text())
    assert written["metrics"] == pytest.approx(metrics)
    assert written["n_selected"] == round(trained["cut"]["fraction"] * report["n_events"])


def test_eval_refuses_an_unlabelled_file(evaluated_run, tmp_path):
    import pandas as pd

    folder, _, run = evaluated_run
    frame = pd.read_csv(folder / "cern.csv.gz")
    unlabelled = frame.drop(columns=["KaggleWeight", "KaggleSet", "Weight", "Label"])
    unlabelled.to_csv(tmp_path / "test.csv", index=False)  # the Kaggle test file's columns
    with pytest.raises(ValueError, match="no labels and weights"):
        evaluate_file(ApplyRequest(run, tmp_path / "test.csv", tmp_path / "s.csv"))


def test_eval_py_writes_eval_metrics_json(evaluated_run, tmp_path):
    folder, _, run = evaluated_run
    done = entry_point(
        "eval.py",
        f"run={run}",
        f"input={folder / 'cern.csv.gz'}",
        f"output={tmp_path / 'scores.csv'}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test/ams_private" in json.loads((tmp_path / "eval_metrics.json").read_text())["metrics"]

"""A run folder is data: tampered, damaged or doubly used folders are refused, never run."""

import json
import os
import pickle
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from amsaware import run_folder
from amsaware.data.schema import MISSING
from amsaware.data.synthetic import make_dataset
from amsaware.inference import ApplyRequest, load_scorer, predict_file
from amsaware.run_folder import RunFolder, RunFolderError
from tests import helpers
from tests.conftest import DEFAULT_GENERATOR
from tests.helpers import entry_point, kaggle_frame

SEED = 42
N_TEST = 400
SMALL = [
    "experiment=smoke",
    "data.n_train=600",
    f"data.n_test={N_TEST}",
    "cv.folds=2",
    "trainer.max_epochs=1",
    "~logger",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "small"
    helpers.run(run_dir, *SMALL, tiny=False)
    return run_dir


@pytest.fixture
def copy(run, tmp_path):
    """A copy of the run, to damage."""
    target = tmp_path / "copy"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("*.onnx"))
    return target


def events_file(folder):
    """The run's own test events as a Kaggle test.csv."""
    path = folder / "events.csv"
    kaggle_frame(make_dataset(600, N_TEST, DEFAULT_GENERATOR, SEED).test).to_csv(path, index=False)
    return path


class Payload:
    """A pickle that creates a folder when loaded: proof that a loader ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def plant(run_dir, tmp_path, where):
    """Put a `pandas.read_pickle` of a Payload into the run's config; returns the marker path."""
    marker = tmp_path / f"payload-ran-{where.replace('.', '-')}"
    pickled = tmp_path / "payload.pkl"
    pickled.write_bytes(pickle.dumps(Payload(marker)))
    loader = {"_target_": "pandas.read_pickle", "filepath_or_buffer": str(pickled)}
    path = run_dir / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(path)
    OmegaConf.update(cfg, where, loader, force_add=True, merge=False)
    OmegaConf.save(cfg, path)
    return marker


PLANTS = {
    "model option": ("model.n_layers", r"model\.n_layers is \{'_target_'"),
    "model": ("model", r"model\._target_ 'pandas\.read_pickle' is not a known architecture"),
    "data option": ("data.n_train", r"data\.n_train is \{'_target_'.*expected an integer"),
    "data": ("data", r"data\._target_ is 'pandas\.read_pickle'.*the project's sources"),
}
TOOLS = ("predict", "export", "explain")


def use(tool, run_dir, tmp_path):
    if tool == "predict":
        return predict_file(ApplyRequest(run_dir, events_file(tmp_path), tmp_path / "scores.csv"))
    if tool == "export":
        pytest.importorskip("onnxscript")
        from amsaware.export import export

        return export(run_dir, "onnx", tmp_path / "model.onnx")
    pytest.importorskip("shap")
    from amsaware.explain import explain

    return explain(ApplyRequest(run_dir), tmp_path / "explain", n_events=20, n_background=10)


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("where, message", PLANTS.values(), ids=PLANTS.keys())
def test_a_planted_target_is_refused_and_never_runs(copy, tmp_path, tool, where, message):
    marker = plant(copy, tmp_path, where)
    with pytest.raises(RunFolderError, match=r"\.hydra/config\.yaml: " + message):
        use(tool, copy, tmp_path)
    assert not marker.exists()


@pytest.mark.slow  # predict.py's start; the planted targets above go through its library call
def test_predict_py_refuses_a_tampered_folder(copy, tmp_path):
    marker = plant(copy, tmp_path, "model.dropout")
    events, output = events_file(tmp_path), tmp_path / "scores.csv"
    done = entry_point("predict.py", f"run={copy}", f"input={events}", f"output={output}")
    assert done.returncode == 1
    assert "model.dropout is {'_target_': 'pandas.read_pickle'" in done.stderr
    assert not marker.exists() and not output.exists()


def test_resolvers_in_a_run_config_are_not_evaluated(copy, monkeypatch):
    path = copy / ".hydra" / "config.yaml"
    monkeypatch.setenv("AMSAWARE_TEST_SECRET", "2")
    text = re.sub(r"n_layers: \d+", "n_layers: ${oc.env:AMSAWARE_TEST_SECRET}", path.read_text())
    path.write_text(text)
    assert "oc.env" in text
    with pytest.raises(RunFolderError, match=r"model\.n_layers: \$\{oc\.env:.*not a reference"):
        RunFolder(copy).config()


def test_plain_references_are_substituted(run):
    cfg = RunFolder(run).config()
    assert cfg.data_source == "amsaware.data.sources.synthetic"
    assert cfg.data == {
        "n_train": 600,
        "n_test": N_TEST,
        "generator": DEFAULT_GENERATOR,
        "seed": SEED,
    }
    assert cfg.model.architecture == "amsaware.model.MLP" and cfg.folds == 2


# --- damaged files ---------------------------------------------------------------------------


def test_corrupt_metrics_json_is_named(copy):
    (copy / "metrics.json").write_text('{"cut": {"fraction": 0.1,')
    with pytest.raises(RunFolderError, match=r"copy/metrics\.json: corrupt, not valid JSON"):
        load_scorer(copy)


@pytest.mark.parametrize(
    "key, value", [("threshold_final", float("nan")), ("fraction", 1.5), ("threshold", "high")]
)
def test_a_cut_out_of_range_in_metrics_json_is_refused(copy, key, value):
    metrics = RunFolder(copy).metrics()
    metrics["cut"][key] = value
    (copy / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(RunFolderError, match=rf"metrics\.json: cut\.{key} is .*expected"):
        load_scorer(copy, "final")


def test_preprocessing_beyond_float32_is_refused(copy):
    path = copy / "checkpoints" / "final" / run_folder.PREPROCESSING
    stats = json.loads(path.read_text())
    stats["features"][3]["mean"] = 1e39  # finite in float64, infinite in the model's float32
    path.write_text(json.dumps(stats))
    with pytest.raises(ValueError, match=r"final/preprocessing\.json: feature .*invalid mean"):
        load_scorer(copy, "final")


def test_a_corrupt_checkpoint_is_named_without_torchs_advice(copy):
    (copy / "checkpoints" / "final" / "last.ckpt").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(
        RunFolderError, match=r"final/last\.ckpt: corrupt or not a checkpoint"
    ) as caught:
        load_scorer(copy, "final")
    assert "weights_only" not in str(caught.value)


def test_a_versioned_checkpoint_beside_last_is_refused(copy):
    final = copy / "checkpoints" / "final"
    shutil.copy(final / "last.ckpt", final / "last-v1.ckpt")
    with pytest.raises(RunFolderError, match=r"holds \['last-v1\.ckpt'\] beside last\.ckpt"):
        load_scorer(copy, "final")


def test_output_naming_a_directory_is_refused_before_scoring(run, tmp_path):
    events = events_file(tmp_path)
    with pytest.raises(ValueError, match=rf"output={tmp_path} is a directory"):
        predict_file(ApplyRequest(run, events, tmp_path))


# --- ONNX ------------------------------------------------------------------------------------


def test_the_onnx_file_is_self_contained(run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from amsaware.export import export

    written, moved = tmp_path / "written", tmp_path / "elsewhere"
    written.mkdir()
    moved.mkdir()
    export(run, "onnx", written / "model.onnx")
    export(run, "onnx", written / "model.onnx")  # a re-export leaves nothing either
    shutil.move(written / "model.onnx", moved / "model.onnx")
    assert os.listdir(written) == []
    assert os.listdir(moved) == ["model.onnx"]
    table = make_dataset(600, N_TEST, DEFAULT_GENERATOR, SEED).test
    raw = np.where(np.isnan(table.features), MISSING, table.features)
    session = ort.InferenceSession(str(moved / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"features": raw})[0]
    np.testing.assert_allclose(got, load_scorer(run, "final").score(table), rtol=0, atol=1e-5)
    assert not list(run.glob(".*.data"))


def test_predict_scores_match_the_runs_own(run, tmp_path):
    scores = pd.read_csv(predict_file(ApplyRequest(run, events_file(tmp_path), tmp_path / "s.csv")))
    own = pd.read_csv(run / run_folder.TEST_PREDICTIONS)
    np.testing.assert_allclose(scores.score, own.score, rtol=0, atol=1e-6)


def test_absurd_sizes_in_a_run_config_allocate_nothing(copy):
    """A hidden_size of 10^9 (4 GB a layer) is compared with the checkpoint before building."""
    path = copy / ".hydra" / "config.yaml"
    path.write_text(re.sub(r"hidden_size: \d+", "hidden_size: 1000000000", path.read_text()))
    with pytest.raises(RunFolderError, match=r"weights do not fit the model .*1000000000"):
        load_scorer(copy, "final")

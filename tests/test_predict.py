"""A finished run applied to new events: saved preprocessing, predict.py, fold ensembles, ONNX."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from amsaware import run_folder
from amsaware.data.datamodule import stratified_folds
from amsaware.data.formats import DataFormatError, read_events
from amsaware.data.preprocessing import FittedPreprocessing, fit_preprocessing, transform
from amsaware.data.schema import FEATURES, MISSING
from amsaware.data.synthetic import make_dataset
from amsaware.experiment import run_experiment
from amsaware.inference import (
    ApplyRequest,
    load_scorer,
    load_stage,
    predict_file,
    predict_table,
)
from amsaware.run_folder import RunFolder, RunFolderError
from tests.conftest import DEFAULT_GENERATOR, REPO
from tests.helpers import METRIC_NAMES, compose_run, entry_point, kaggle_frame, run

SEED = 42  # train.yaml's seed, which the synthetic source also uses
N_TRAIN, N_TEST = 1500, 1100  # helpers.TINY's sizes, those of the session's both_run
SMALLER = [
    "experiment=smoke",
    "data.n_train=600",
    f"data.n_test={N_TEST}",
    "cv.folds=2",
    "trainer.max_epochs=1",
    "~logger",
]


def dataset():
    return make_dataset(N_TRAIN, N_TEST, DEFAULT_GENERATOR, SEED)


@pytest.fixture(scope="module")
def folds_run(tmp_path_factory):
    """ensemble=folds: no final model is trained; the fold ensemble makes the submission."""
    run_dir = tmp_path_factory.mktemp("runs") / "folds"
    run(run_dir, *SMALLER, "ensemble=folds", tiny=False)
    return run_dir


@pytest.fixture(scope="module")
def trial_run(tmp_path_factory):
    """Like a search trial: cross-validation only."""
    run_dir = tmp_path_factory.mktemp("runs") / "trial"
    run(run_dir, *SMALLER, "final_fit=false", tiny=False)
    return run_dir


# --- preprocessing that travels with the run ---------------------------------------------------


def test_fitted_statistics_reproduce_the_pipeline_bit_for_bit(small_table):
    features = small_table.features.copy()
    features[:, 4] = np.nan  # a feature undefined in every training row: filled with 0
    pipeline = fit_preprocessing(features)
    fitted = FittedPreprocessing.from_pipeline(pipeline, small_table.feature_names)
    assert fitted.fill[4] == 0.0 and fitted.scale[4] == 1.0
    again = FittedPreprocessing.from_dict(json.loads(json.dumps(fitted.to_dict())))
    new = make_dataset(10, 500, seed=8).test.features
    for stats in (fitted, again):
        np.testing.assert_array_equal(stats.transform(new), transform(pipeline, new))


def test_broken_statistics_are_named(tmp_path):
    path = RunFolder(tmp_path).preprocessing_path("final")
    path.parent.mkdir(parents=True)
    data = FittedPreprocessing(("a", "b"), np.zeros(2), np.zeros(2), np.ones(2)).to_dict()
    data["features"][1]["scale"] = 0.0
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"preprocessing.json: feature 'b': invalid scale 0"):
        RunFolder(tmp_path).preprocessing("final")
    path.write_text(json.dumps({"format": "pickle"}))
    with pytest.raises(ValueError, match="expected preprocessing format"):
        RunFolder(tmp_path).preprocessing("final")


def test_each_stage_saves_the_statistics_of_its_own_training_rows(both_run):
    train_table = dataset().train
    folds = stratified_folds(train_table.label, 3, SEED)
    rows = {f"fold{k}": train_index for k, (train_index, _) in enumerate(folds)}
    rows["final"] = np.arange(N_TRAIN)
    for stage, index in rows.items():
        saved = RunFolder(both_run).preprocessing(stage)
        expected = FittedPreprocessing.from_pipeline(
            fit_preprocessing(train_table.features[index]), train_table.feature_names
        )
        assert saved.feature_names == FEATURES
        for name in ("fill", "mean", "scale"):
            np.testing.assert_array_equal(getattr(saved, name), getattr(expected, name))


# --- fold ensembles ----------------------------------------------------------------------------


def test_ensemble_both_reports_each_scorer_under_its_own_names(both_run):
    metrics = RunFolder(both_run).metrics()
    assert metrics["run"]["ensemble"] == "both"
    for prefix in ("test", "test_folds"):
        for name in [*METRIC_NAMES, "ams", "ams_public", "ams_private"]:
            assert f"{prefix}/{name}" in metrics[prefix], (prefix, name)
    final = pd.read_csv(both_run / run_folder.TEST_PREDICTIONS)
    folds = pd.read_csv(both_run / run_folder.TEST_PREDICTIONS_FOLDS)
    submission = pd.read_csv(both_run / run_folder.SUBMISSION_FOLDS)
    assert len(final) == len(folds) == len(submission) == N_TEST
    # The ensemble is the mean of the fold models, each loaded back from its checkpoint.
    test = dataset().test
    stages = [load_stage(both_run, f"fold{k}") for k in range(3)]
    mean = np.mean([stage.score(test.features) for stage in stages], axis=0)
    # float32 networks scored in two passes (the run's test batches, one pass here): a CPU's
    # kernels may round a batch's sums differently, so equal to float32 precision, not bit for bit.
    np.testing.assert_allclose(folds.score, mean, rtol=0, atol=1e-6)
    assert not np.allclose(final.score, folds.score)
    lowest = folds.score[submission.Class == "s"].min()
    assert metrics["cut"]["threshold_folds"] == lowest


def test_ensemble_folds_trains_no_final_model(folds_run):
    metrics = RunFolder(folds_run).metrics()
    assert "test" not in metrics and "test_folds/auroc" in metrics["test_folds"]
    assert not (folds_run / "checkpoints" / "final").exists()
    assert (folds_run / run_folder.SUBMISSION).exists()
    assert not (folds_run / run_folder.SUBMISSION_FOLDS).exists()
    assert load_scorer(folds_run).name == "folds"  # what the run used


def test_unknown_ensemble_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="ensemble must be one of"):
        run_experiment(compose_run(tmp_path, *SMALLER, "ensemble=bag", tiny=False))


# --- predict.py --------------------------------------------------------------------------------


def test_predict_reproduces_the_runs_test_scores_and_cut(both_run, tmp_path):
    kaggle_frame(dataset().test).to_csv(tmp_path / "test.csv", index=False)
    output = tmp_path / "scores.csv.gz"
    done = entry_point(
        "predict.py", f"run={both_run}", f"input={tmp_path / 'test.csv'}", f"output={output}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    scores = pd.read_csv(output)
    assert list(scores.columns) == ["EventId", "score", "selected"]
    reference = pd.read_csv(both_run / run_folder.TEST_PREDICTIONS)
    submission = pd.read_csv(both_run / run_folder.SUBMISSION)
    np.testing.assert_array_equal(scores.EventId, reference.EventId)
    # No refit: the same network on the same events. Not bit for bit: the run scored them in this
    # process with threads=1, predict.py with torch's default threads, and float32 sums may round
    # differently; a refit would move scores by orders of magnitude more than 1e-6.
    np.testing.assert_allclose(scores.score, reference.score, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(scores.selected, submission.Class == "s")
    assert not list(tmp_path.glob("*.tmp")) and not (REPO / ".hydra").exists()


def test_both_cuts_and_both_scorers_select_as_the_run_did(both_run):
    test = dataset().test
    for scorer_name, name in (("final", "submission.csv"), ("folds", "submission_folds.csv")):
        scorer = load_scorer(both_run, scorer_name)
        chosen = pd.read_csv(both_run / name).Class == "s"
        for cut in ("threshold", "fraction"):
            frame = predict_table(scorer, test, cut)
            np.testing.assert_array_equal(frame.selected, chosen, err_msg=f"{scorer_name} {cut}")
    # A file mixed differently: a threshold keeps each event's verdict, a fraction does not.
    scorer = load_scorer(both_run, "final")
    signal_only = test.subset(test.label == 1)
    by_threshold = predict_table(scorer, signal_only, "threshold").selected
    whole = predict_table(scorer, test, "threshold").set_index("EventId").selected
    np.testing.assert_array_equal(by_threshold, whole.loc[signal_only.event_id])
    fraction = RunFolder(both_run).metrics()["cut"]["fraction"]
    by_fraction = predict_table(scorer, signal_only, "fraction").selected
    assert by_fraction.mean() == pytest.approx(fraction, abs=2 / len(signal_only))


def test_every_challenge_format_gives_the_same_scores(both_run, tmp_path):
    events = dataset().train.subset(np.arange(300))
    frame = kaggle_frame(events, with_labels=True)
    frame.to_csv(tmp_path / "training.csv", index=False)
    cern = frame.assign(KaggleSet="t", KaggleWeight=frame.Weight)
    cern.to_csv(tmp_path / "cern.csv.gz", index=False)
    frame.drop(columns=["Weight", "Label"]).to_csv(tmp_path / "test.csv", index=False)
    outputs = [
        pd.read_csv(
            predict_file(ApplyRequest(both_run, tmp_path / name, tmp_path / f"{name}.out.csv"))
        )
        for name in ("test.csv", "training.csv", "cern.csv.gz")
    ]
    assert len(outputs[0]) == 300
    for other in outputs[1:]:
        pd.testing.assert_frame_equal(other, outputs[0])


def test_run_without_a_final_model_says_to_use_the_fold_models(trial_run, folds_run):
    with pytest.raises(RunFolderError, match=r"final_fit=false.*scorer=folds"):
        load_scorer(trial_run, "final")
    with pytest.raises(RunFolderError, match=r"scorer=folds"):
        load_scorer(folds_run, "final")
    # Its fold models still score: with the out-of-fold threshold, as no test events were cut.
    scorer = load_scorer(trial_run, "folds")
    assert scorer.threshold == RunFolder(trial_run).metrics()["cut"]["threshold"]
    assert len(predict_table(scorer, dataset().test)) == N_TEST


def test_bad_inputs_get_clear_errors(both_run, tmp_path):
    with pytest.raises(DataFormatError, match=r"nope\.csv: file not found"):
        predict_file(ApplyRequest(both_run, tmp_path / "nope.csv"))
    short = kaggle_frame(dataset().test.subset(np.arange(5))).drop(columns="DER_pt_h")
    short.to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DataFormatError, match=r"missing columns \['DER_pt_h'\]"):
        read_events(tmp_path / "short.csv")
    table = dataset().test
    narrow = replace(table, features=table.features[:, 1:], feature_names=FEATURES[1:])
    with pytest.raises(
        RunFolderError, match=r"29 features.*trained on 30: missing \['DER_mass_MMC'\]"
    ):
        load_scorer(both_run, "final").score(narrow)
    with pytest.raises(RunFolderError, match="no such run folder"):
        load_scorer(tmp_path / "no-run")
    with pytest.raises(ValueError, match="cut must be one of"):
        predict_table(load_scorer(both_run), table, "median")


def test_damaged_run_folders_are_named(both_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(both_run, broken)
    (broken / "checkpoints" / "fold1" / "last.ckpt").unlink()
    with pytest.raises(
        RunFolderError, match=r"missing checkpoints/fold<k>/last.ckpt for k in \[1\]"
    ):
        load_scorer(broken, "folds")
    (broken / "checkpoints" / "final" / run_folder.PREPROCESSING).unlink()
    with pytest.raises(RunFolderError, match=r"no checkpoints/final/preprocessing\.json"):
        load_scorer(broken, "final")
    config = broken / ".hydra" / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("hidden_size: 384", "hidden_size: 100"))
    with pytest.raises(RunFolderError, match="weights do not fit the model"):
        load_stage(broken, "fold0")
    config.write_text(config.read_text().replace("amsaware.model.MLP", "os.system"))
    with pytest.raises(
        RunFolderError, match=r"model._target_ .os\.system. is not a known architecture"
    ):
        load_stage(broken, "fold0")
    config.write_text(original)
    (broken / "metrics.json").unlink()
    with pytest.raises(RunFolderError, match=r"no metrics\.json; the run did not finish"):
        load_scorer(broken)


# --- ONNX export -------------------------------------------------------------------------------


def test_onnx_graph_scores_raw_features_like_pytorch(both_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from amsaware.export import export

    copy = tmp_path / "run"  # export.py writes model.onnx into the run folder it reads
    shutil.copytree(both_run, copy)
    done = entry_point("export.py", f"run={copy}", "format=onnx")
    assert done.returncode == 0, done.stderr[-3000:]
    paths = {"final": copy / "model.onnx"}
    paths["folds"] = export(both_run, "onnx", tmp_path / "folds.onnx", scorer="folds")
    test = dataset().test
    raw = test.features.copy()
    raw[::2] = np.where(np.isnan(raw[::2]), MISSING, raw[::2])  # both placeholders
    assert np.isnan(raw).any() and (raw == MISSING).any()
    for name, path in paths.items():
        expected = load_scorer(both_run, name).score(test)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"features": raw})[0]
        assert got.shape == (N_TEST,)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=name)
        one = session.run(None, {"features": raw[:1]})[0]  # any batch size
        np.testing.assert_allclose(one, expected[:1], rtol=0, atol=1e-5)

"""explain.py: SHAP attributions of a finished run's scorer, on its own events or a file."""

import shutil
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from amsaware import run_folder
from amsaware.data.formats import DataFormatError
from amsaware.data.preprocessing import FittedPreprocessing
from amsaware.data.schema import FEATURES
from amsaware.data.synthetic import make_dataset
from amsaware.inference import ApplyRequest, Scorer, StageModel, load_scorer
from amsaware.run_folder import Cut, RunFolder, RunFolderError
from tests import helpers
from tests.helpers import entry_point, kaggle_frame

pytest.importorskip("shap")

from amsaware import explain as ex

SEED = 42  # train.yaml's seed, which the synthetic source also uses
N_TRAIN, N_TEST = 600, 300
#: Pinned, not train.py's default: the region sizes below (a cut selecting fewer events than
#: explain.n_events) hold for these events.
GENERATOR = "copula"
TINY_RUN = [
    "experiment=smoke",
    f"data.generator={GENERATOR}",
    f"data.n_train={N_TRAIN}",
    f"data.n_test={N_TEST}",
    "cv.folds=2",
    "trainer.max_epochs=1",
    "model.n_layers=2",
    "model.hidden_size=16",
    "~logger",
    "ensemble=both",
]
FEATURE_COUNT = len(FEATURES)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run with a final model and a fold ensemble, both with thresholds (seconds)."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    helpers.run(run_dir, *TINY_RUN, tiny=False)
    return run_dir


def test_explain_py_writes_every_output_for_the_runs_own_events(run, tmp_path):
    out = tmp_path / "explain"
    done = entry_point(
        "explain.py",
        f"run={run}",
        "explain.n_events=80",
        "explain.n_background=20",
        "explain.threads=1",
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for region in ex.REGIONS:
        for name in (ex.SHAP_VALUES, ex.BEESWARM, ex.BAR):
            path = out / ex.region_file(name, region)
            assert path.stat().st_size > 0, path
    assert (out / ex.RANKING).stat().st_size > 0 and (out / ex.SUMMARY).exists()
    assert not list(out.glob("*.tmp"))

    ranking = pd.read_csv(out / ex.RANKING)
    for region in ex.REGIONS:
        rows = ranking[ranking.region == region]
        assert sorted(rows.feature) == sorted(FEATURES)  # every feature exactly once
        assert list(rows["rank"]) == list(range(1, FEATURE_COUNT + 1))
        assert rows.mean_abs_shap.is_monotonic_decreasing
        assert rows.weighted_mean_abs_shap.notna().all()

    metrics = RunFolder(run).metrics()
    oof = RunFolder(run).oof_predictions().set_index("EventId")
    chosen = oof.score >= metrics["cut"]["threshold"]
    assert chosen.mean() == pytest.approx(metrics["cut"]["fraction"], abs=2 / N_TRAIN)
    every = pd.read_csv(out / ex.SHAP_VALUES)
    selected = pd.read_csv(out / ex.region_file(ex.SHAP_VALUES, "selected"))
    assert len(every) == 80 and every.EventId.is_unique
    # The selected region holds only (and, being smaller than n_events, all) selected events.
    assert set(selected.EventId) == set(chosen.index[chosen])
    assert (selected.selected == 1).all()
    for frame in (every, selected):
        np.testing.assert_array_equal(frame.oof_score, oof.score.loc[frame.EventId])
        np.testing.assert_array_equal(frame.label, oof.label.loc[frame.EventId])
        total = frame[list(FEATURES)].sum(axis=1) + frame.base_value
        np.testing.assert_allclose(total, frame.output_logit, rtol=0, atol=1e-4)
    # The explained output is the final model's logit (the run's scorer), event by event.
    scorer = load_scorer(run, "final")
    train_events = make_dataset(N_TRAIN, N_TEST, GENERATOR, SEED).train
    rows = pd.Index(train_events.event_id).get_indexer(every.EventId)
    logit = ex.scorer_output(scorer, train_events.features[rows], "logit")
    np.testing.assert_allclose(every.output_logit, logit, rtol=0, atol=1e-5)
    probability = scorer.score(train_events.subset(rows))
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), probability, rtol=0, atol=1e-6)


@pytest.mark.parametrize("ensemble", ["final", "folds"])
@pytest.mark.parametrize("space", ex.SPACES)
def test_attributions_are_additive(run, ensemble, space):
    scorer = load_scorer(run, ensemble)
    features = make_dataset(N_TRAIN, N_TEST, GENERATOR, SEED).test.features
    assert np.isnan(features[:40]).any()  # undefined values go through the imputers
    found = ex.explain_features(scorer, features[:40], features[100:130], "deep", space)
    assert np.isfinite(found.values).all()
    assert found.additivity_error() < 1e-5
    if space == "probability":  # the run's own score, the mean of the fold models' for folds
        table = make_dataset(N_TRAIN, N_TEST, GENERATOR, SEED).test.subset(np.arange(40))
        np.testing.assert_allclose(found.output, scorer.score(table), rtol=0, atol=1e-6)


def linear_scorer(weights, fill, mean, scale):
    """A scorer whose 'network' is one linear layer: Shapley values are known exactly."""
    layer = nn.Linear(len(weights), 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weights], dtype=torch.float32))
        layer.bias.fill_(0.3)
    names = tuple(f"f{j}" for j in range(len(weights)))
    stats = FittedPreprocessing(names, np.array(fill), np.array(mean), np.array(scale))
    net = nn.Sequential(layer).eval()
    return Scorer(
        "final", (StageModel("final", net, stats),), Cut(0.2, 0.5, 0, 0, threshold_final=0.5)
    )


@pytest.mark.parametrize("explainer", ex.EXPLAINERS)
def test_a_linear_scorers_attributions_are_exact_and_zero_where_it_has_no_weight(explainer):
    weights = [1.5, 0.0, -2.0, 0.5]
    fill, mean, scale = [1.0, 2.0, 3.0, -1.0], [0.5, 1.0, 2.0, 0.0], [2.0, 1.0, 4.0, 0.5]
    scorer = linear_scorer(weights, fill, mean, scale)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(25, 4)).astype(np.float32)
    background = rng.normal(size=(15, 4)).astype(np.float32)
    features[::3, 0] = np.nan  # imputed with fill[0]: attributed as that value
    background[::4, 2] = np.nan
    found = ex.explain_features(scorer, features, background, explainer, "logit", max_evals=200)
    # Interventional Shapley values of a linear function: w_j (z_j - mean of background z_j).
    z = scorer.models[0].preprocessing.transform(features)
    z_background = scorer.models[0].preprocessing.transform(background)
    expected = np.array(weights) * (z - z_background.mean(axis=0))
    np.testing.assert_allclose(found.values, expected, rtol=0, atol=1e-5)
    # A zero weight contributes nothing; the tolerance is float32 rounding of the output, which
    # the explainers difference over batches that CPUs' kernels may sum in another order.
    np.testing.assert_allclose(found.values[:, 1], 0.0, rtol=0, atol=1e-6)
    assert found.additivity_error() < 1e-5


@pytest.mark.parametrize("explainer", ex.EXPLAINERS)
def test_a_feature_the_network_cannot_see_gets_zero_attribution(run, explainer):
    scorer = load_scorer(run, "final")
    net = scorer.models[0].net
    unseen = FEATURES.index("PRI_tau_phi")
    with torch.no_grad():
        net[0].weight[:, unseen] = 0.0  # the first layer ignores the feature
    features = make_dataset(N_TRAIN, N_TEST, GENERATOR, SEED).test.features
    found = ex.explain_features(
        scorer, features[:10], features[200:215], explainer, "logit", max_evals=2 * 31 + 2
    )
    # Zero up to float32 rounding of the network's output (a logit of order 1, eps 1.2e-7): the
    # explainers difference outputs of batches of masked inputs, whose sums CPUs' kernels may
    # round differently per batch (2.5e-10 on an AMD EPYC where Intel gave 0).
    np.testing.assert_allclose(found.values[:, unseen], 0.0, rtol=0, atol=1e-6)
    assert np.abs(found.values[:, FEATURES.index("PRI_tau_pt")]).sum() > 1e-5  # the others count
    assert found.additivity_error() < 1e-4


def test_weighted_ranking_rescales_each_class_to_its_total():
    values = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    found = ex.Attributions(("a", "b"), values, 0.0, values.sum(axis=1), "logit")
    label, weight = np.array([1, 0, 0]), np.array([1.0, 1.0, 3.0])
    frame = ex.ranking(found, label, weight, class_totals=(2.0, 8.0)).set_index("feature")
    assert frame.loc["b", "rank"] == 1 and frame.loc["a", "rank"] == 2
    np.testing.assert_allclose(frame.mean_abs_shap, [2.0, 1 / 3])
    # weights 2, 2, 6 after scaling: a = 2*1/10, b = (2*2 + 6*4)/10
    np.testing.assert_allclose(frame.loc[["a", "b"], "weighted_mean_abs_shap"], [0.2, 2.8])
    np.testing.assert_allclose(frame.loc[["a", "b"], "signal_mean_abs_shap"], [1.0, 0.0])
    unweighted = ex.ranking(found)
    assert unweighted.weighted_mean_abs_shap.isna().all()
    assert unweighted.weighted_rank.isna().all()


def test_a_file_is_explained_with_the_runs_cut(run, tmp_path):
    test = make_dataset(N_TRAIN, N_TEST, GENERATOR, SEED).test
    kaggle_frame(test).to_csv(tmp_path / "test.csv", index=False)  # unlabelled
    out = tmp_path / "out"
    request = ApplyRequest(run, tmp_path / "test.csv", scorer="folds")
    summary = ex.explain(request, out, n_events=50, n_background=10, space="probability")
    assert summary["scorer"] == "folds" and "score >=" in summary["selection"]
    submission = pd.read_csv(run / run_folder.SUBMISSION_FOLDS)
    chosen = set(submission.EventId[submission.Class == "s"])
    selected = pd.read_csv(out / ex.region_file(ex.SHAP_VALUES, "selected"))
    assert set(selected.EventId) <= chosen and len(selected) == min(50, len(chosen))
    assert "label" not in selected and "output_probability" in selected
    ranking = pd.read_csv(out / ex.RANKING)
    assert ranking.weighted_mean_abs_shap.isna().all()  # no weights in a test file


def test_a_file_predict_reads_is_explained_too(run, tmp_path):
    """explain input=FILE reads a file as predict.py does: here Parquet, not only CSV."""
    pytest.importorskip("pyarrow")
    from amsaware.inference import predict_file

    test = make_dataset(N_TRAIN, N_TEST, GENERATOR, SEED).test.subset(np.arange(100))
    path = tmp_path / "events.parquet"
    kaggle_frame(test).to_parquet(path, index=False)
    predicted = pd.read_csv(predict_file(ApplyRequest(run, path, tmp_path / "scores.csv", "folds")))
    summary = ex.explain(
        ApplyRequest(run, path, scorer="folds"), tmp_path / "out", n_events=20, n_background=10
    )
    assert summary["events"] == str(path)
    values = pd.read_csv(tmp_path / "out" / ex.SHAP_VALUES).set_index("EventId")
    expected = predicted.set_index("EventId").loc[values.index]
    # The same models on the same float32 features: the same scores, to float64 rounding.
    np.testing.assert_allclose(values.score, expected.score, rtol=1e-12)
    assert (values.selected == expected.selected).all()


def test_bad_requests_get_clear_errors(run, tmp_path, monkeypatch):
    broken = tmp_path / "no-checkpoints"
    shutil.copytree(run, broken)
    shutil.rmtree(broken / "checkpoints")
    with pytest.raises(RunFolderError, match=r"has no final model"):
        ex.explain(ApplyRequest(broken), tmp_path / "a", n_events=5, n_background=5)
    with pytest.raises(RunFolderError, match=r"missing checkpoints/fold<k>/last.ckpt"):
        ex.explain(ApplyRequest(broken, scorer="folds"), tmp_path / "a", n_events=5, n_background=5)
    with pytest.raises(ValueError, match="scorer must be one of"):
        ex.explain(ApplyRequest(run, scorer="bag"), tmp_path / "a", n_events=5, n_background=5)
    with pytest.raises(ValueError, match=rf"n_events=601, but the run's {N_TRAIN} training"):
        ex.explain(ApplyRequest(run), tmp_path / "a", n_events=N_TRAIN + 1)
    with pytest.raises(ValueError, match="explainer must be one of"):
        ex.explain(ApplyRequest(run), tmp_path / "a", explainer="lime")
    assert not (tmp_path / "a").exists()

    test = make_dataset(N_TRAIN, N_TEST, GENERATOR, SEED).test.subset(np.arange(20))
    kaggle_frame(test).drop(columns="DER_pt_h").to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DataFormatError, match=r"missing columns \['DER_pt_h'\]"):
        request = ApplyRequest(run, tmp_path / "short.csv")
        ex.explain(request, tmp_path / "a", n_events=5, n_background=5)
    narrow = replace(test, features=test.features[:, 1:], feature_names=FEATURES[1:])
    with pytest.raises(RunFolderError, match=r"trained on 30: missing \['DER_mass_MMC'\]"):
        ex.file_events(load_scorer(run), narrow)

    moved = tmp_path / "moved"  # a run whose data config no longer gives its events
    shutil.copytree(run, moved)
    config = moved / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace(f"n_train: {N_TRAIN}", "n_train: 500"))
    with pytest.raises(RunFolderError, match="the data changed since the run"):
        ex.run_events(moved)

    monkeypatch.setitem(sys.modules, "shap", None)
    with pytest.raises(ImportError, match=r"pip install 'amsaware\[explain\]'"):
        ex.explain(ApplyRequest(run), tmp_path / "a")

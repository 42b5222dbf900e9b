"""Scores that never tie: events are ranked by the logit, the probability stays the score."""

import numpy as np
import pandas as pd
import pytest

from amsaware.comparison import load_run
from amsaware.metrics import add_to_logit_sums, logit_of_mean
from amsaware.protocol import CrossValidation, choose_cut_of
from tests.helpers import run


@pytest.fixture(scope="module")
def raw_soft_ams(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ties") / "run"
    # The seed paper's soft AMS on raw weights (loss=ams), the loss whose scores saturate.
    run(folder, "loss=ams", "loss.normalisation=raw", "optimizer.lr=0.01", "~logger")
    return folder


def test_the_raw_soft_ams_models_top_20_percent_has_no_ties(raw_soft_ams):
    oof = pd.read_csv(raw_soft_ams / "oof_predictions.csv")
    assert list(oof.columns) == ["EventId", "fold", "label", "weight", "score", "logit"]
    top = oof.nlargest(int(0.2 * len(oof)), "logit")
    assert top.logit.is_unique
    np.testing.assert_allclose(1 / (1 + np.exp(-oof.logit)), oof.score, rtol=1e-12, atol=0)


def test_test_predictions_and_submission_follow_the_logit(raw_soft_ams):
    test = pd.read_csv(raw_soft_ams / "test_predictions.csv")
    assert list(test.columns) == ["EventId", "score", "logit"]
    submission = pd.read_csv(raw_soft_ams / "submission.csv").merge(test, on="EventId")
    by_rank = submission.sort_values("RankOrder")
    assert by_rank.logit.is_monotonic_increasing
    assert load_run(raw_soft_ams).oof.shape[1] == 6


def test_an_older_run_folder_without_logits_still_loads(raw_soft_ams, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(raw_soft_ams, old)
    oof = pd.read_csv(old / "oof_predictions.csv").drop(columns="logit")
    oof.to_csv(old / "oof_predictions.csv", index=False)
    assert list(load_run(old).oof.columns) == ["EventId", "fold", "label", "weight", "score"]


def test_logit_of_mean_ranks_saturated_events_apart():
    logits = np.array([[40.0, 45.0, 50.0, 0.3], [38.0, 60.0, 50.0, -0.2]])
    probabilities = 1 / (1 + np.exp(-logits))
    assert len(set(probabilities.mean(axis=0)[:3])) == 1  # all exactly 1.0 in float64
    key = logit_of_mean(logits)
    assert np.all(np.isfinite(key)) and len(set(key[:3])) == 3
    mean = probabilities[:, 3].mean()
    assert key[3] == pytest.approx(np.log(mean / (1 - mean)), rel=1e-12)
    log_p, log_q = np.full((2, 4), -np.inf)
    for row in logits:
        log_p, log_q = add_to_logit_sums(log_p, log_q, row)
    np.testing.assert_allclose(log_p - log_q, key, rtol=1e-12)
    assert np.array_equal(logit_of_mean(logits[:1]), logits[0])  # one model: its own logits


def test_the_cut_splits_a_run_of_probabilities_that_round_to_one():
    rng = np.random.default_rng(1)
    n = 4000
    label = (rng.random(n) < 0.3).astype(np.int64)
    logits = rng.normal(4.0 * label - 2.0, 2.0) + np.where(label == 1, 40.0, 0.0) * (
        rng.random(n) < 0.9
    )
    scores = 1 / (1 + np.exp(-logits))
    assert (scores == 1.0).mean() > 0.2
    cv = CrossValidation([], np.zeros(n, dtype=np.int64), scores, logits=logits)
    options = {"min_fraction": 0.05, "max_fraction": 0.15, "smoothing": 0.02}
    options |= {"s_tot": 100.0, "b_tot": 1000.0}
    cut = choose_cut_of(cv, _table(label), options)
    assert cut.fraction <= 0.151  # a tie of probabilities could only be cut at > 20%
    assert 0.0 < cut.threshold <= 1.0  # reported as a probability
    chosen = logits >= cut.threshold_logit
    assert chosen.mean() == pytest.approx(cut.fraction)


def _table(label):
    from types import SimpleNamespace

    return SimpleNamespace(label=label, weight=np.ones(len(label)))


def test_predict_selects_by_the_logit_where_probabilities_tie():
    from amsaware.inference import Scorer
    from amsaware.run_folder import Cut

    logits = np.array([38.0, 41.0, 45.0, 50.0, 60.0, 1.0, 0.0, -3.0, 39.0, 44.0])
    scores = 1 / (1 + np.exp(-logits))
    scorer = Scorer(
        "final", (), Cut(0.2, 1.0, 0, 0, threshold_final=1.0, threshold_logit_final=44.5)
    )
    top = scorer.select(scores, "fraction", logits)
    assert set(np.flatnonzero(top)) == {3, 4}  # the two largest logits, not a coin flip
    assert set(np.flatnonzero(scorer.select(scores, "threshold", logits))) == {2, 3, 4}
    assert scorer.select(scores, "threshold").sum() == 7  # without logits: the whole tie

"""The paired bootstrap on constructed predictions whose answer is known."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from amsaware.metrics import ams_curve, ams_of_selection
from amsaware.protocol import choose_cut
from amsaware.stats import (
    STATISTICS,
    RunScores,
    bootstrap,
    counts_of,
    differences,
    resample_indices,
)


@pytest.fixture(scope="module")
def events():
    rng = np.random.default_rng(11)
    n = 3000
    label = (rng.random(n) < 0.35).astype(np.int64)
    weight = np.where(label == 1, rng.uniform(1e-3, 5e-3, n), rng.uniform(0.5, 3.0, n))
    good = 1 / (1 + np.exp(-rng.normal(2.0 * label - 1.0, 1.0)))
    worse = 1 / (1 + np.exp(-rng.normal(1.2 * label - 0.6, 1.0)))
    return label, weight, good, worse


def test_identical_runs_differ_by_exactly_zero(events):
    label, weight, good, _ = events
    runs = [RunScores("a", good, 0.7), RunScores("b", good.copy(), 0.7)]
    for d in differences(bootstrap(runs, label, weight, n_resamples=200, seed=1)):
        assert d.observed == 0.0 and d.mean == 0.0
        assert d.ci_low <= 0.0 <= d.ci_high and d.within_noise
        assert d.p_value == pytest.approx(0.5) and d.fraction_better == 0.0
        assert d.verdict == "within noise"


def test_perfect_run_beats_a_random_one_in_every_resample(events):
    label, weight, _, _ = events
    rng = np.random.default_rng(2)
    perfect = np.where(label == 1, 0.9, 0.1) + rng.uniform(-0.05, 0.05, len(label))
    random = rng.random(len(label))
    runs = [RunScores("random", random, 0.85), RunScores("perfect", perfect, 0.5)]
    result = differences(bootstrap(runs, label, weight, n_resamples=200, seed=3))
    assert {d.statistic for d in result} == set(STATISTICS)
    for d in result:
        assert d.p_value == 0.0 and d.fraction_better == 1.0
        assert d.ci_low > 0.0 and not d.within_noise and d.verdict == "perfect better"
    auc = next(d for d in result if d.statistic == "auroc")
    assert auc.observed == pytest.approx(1.0 - roc_auc_score(label, random))


def test_every_run_is_scored_on_the_same_resamples(events):
    """Each resample's values equal the metrics of the indexed events, for both runs."""
    label, weight, good, worse = events
    runs = [RunScores("good", good, 0.6), RunScores("worse", worse, 0.55)]
    sample = bootstrap(runs, label, weight, n_resamples=4, seed=5)
    indices = next(resample_indices(len(label), 4, seed=5))
    y, w = torch.from_numpy(label), torch.from_numpy(weight)
    for run in runs:
        for r, idx in enumerate(indices):
            s, yi, wi = torch.from_numpy(run.scores[idx]), y[idx], w[idx]
            expected = {
                "ams@cut": float(ams_of_selection(s >= run.threshold, yi, wi)),
                "ams_max": float(ams_curve(s, yi, wi).ams.max()),
                "auroc": roc_auc_score(yi, s),
                "auroc_weighted": roc_auc_score(yi, s, sample_weight=wi),
            }
            for k, value in expected.items():
                assert sample.resampled[run.name][k][r] == pytest.approx(value, rel=1e-9), k


def test_counts_are_the_resampled_indices():
    indices = np.array([[0, 0, 3, 1], [2, 2, 2, 2]])
    assert counts_of(indices, 4).tolist() == [[2, 1, 0, 1], [0, 0, 4, 0]]


def test_observed_ams_at_cut_is_the_cut_chosen_by_the_run(events):
    label, weight, good, _ = events
    cut = choose_cut(good, label, weight)
    sample = bootstrap([RunScores("a", good, cut.threshold)], label, weight, 2, 0)
    assert sample.observed["a"]["ams@cut"] == pytest.approx(cut.ams, rel=1e-12)


def test_swapping_the_reference_mirrors_the_result(events):
    label, weight, good, worse = events
    forward = differences(
        bootstrap([RunScores("g", good, 0.6), RunScores("w", worse, 0.55)], label, weight, 300)
    )
    backward = differences(
        bootstrap([RunScores("w", worse, 0.55), RunScores("g", good, 0.6)], label, weight, 300)
    )
    for f, b in zip(forward, backward, strict=True):
        assert f.statistic == b.statistic
        assert f.mean == pytest.approx(-b.mean)
        assert f.p_value == pytest.approx(1.0 - b.p_value)
        assert f.ci_low == pytest.approx(-b.ci_high)


def test_seeded_resamples_repeat_and_differ_across_seeds(events):
    label, weight, good, worse = events
    runs = [RunScores("g", good, 0.6), RunScores("w", worse, 0.55)]
    first = bootstrap(runs, label, weight, 50, seed=9).resampled["w"]["auroc"]
    again = bootstrap(runs, label, weight, 50, seed=9).resampled["w"]["auroc"]
    other = bootstrap(runs, label, weight, 50, seed=10).resampled["w"]["auroc"]
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_bad_inputs_are_refused(events):
    label, weight, good, _ = events
    with pytest.raises(ValueError, match="distinct"):
        bootstrap([RunScores("a", good, 0.5), RunScores("a", good, 0.5)], label, weight, 5)
    with pytest.raises(ValueError, match="run b"):
        bootstrap([RunScores("a", good, 0.5), RunScores("b", good[:10], 0.5)], label, weight, 5)
    sample = bootstrap([RunScores("a", good, 0.5), RunScores("b", good, 0.5)], label, weight, 5)
    with pytest.raises(ValueError, match="confidence"):
        differences(sample, confidence=1.5)

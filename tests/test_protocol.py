"""The cut choice and the submission format."""

import numpy as np
import pytest
import torch

from amsaware.metrics import ams_at_fraction
from amsaware.protocol import choose_cut
from amsaware.report import lookup_metric
from amsaware.run_folder import submission_frame


def scored_events(n=40_000, seed=0):
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.34).astype(np.int8)
    score = np.where(label == 1, rng.beta(5, 2, n), rng.beta(2, 5, n)).astype(np.float32)
    weight = np.where(label == 1, 0.008, 2.5) * rng.uniform(0.5, 1.5, n)
    return score, label, weight


def test_cut_maximises_the_ams_within_its_bounds():
    score, label, weight = scored_events()
    cut = choose_cut(score, label, weight, min_fraction=0.05, max_fraction=0.5, smoothing=0.0)
    assert 0.05 <= cut.fraction <= 0.5
    grid = np.arange(0.05, 0.5005, 0.001)
    values = [
        float(ams_at_fraction(*map(torch.from_numpy, (score, label, weight)), f)) for f in grid
    ]
    assert cut.ams == pytest.approx(max(values), rel=1e-9)
    # The threshold is the score of the last selected event.
    assert (score >= cut.threshold).mean() == pytest.approx(cut.fraction, abs=2e-4)


def test_cut_respects_the_configured_bounds():
    score, label, weight = scored_events()
    cut = choose_cut(score, label, weight, min_fraction=0.3, max_fraction=0.4)
    assert 0.3 <= cut.fraction <= 0.4
    with pytest.raises(ValueError, match=r"cut\.min_fraction"):
        choose_cut(score, label, weight, min_fraction=0.5, max_fraction=0.2)


def test_smoothing_prefers_a_broad_plateau_to_a_narrow_spike():
    score, label, weight = scored_events()
    # One heavy signal event just inside the top 6% makes a narrow spike in the raw curve.
    order = np.argsort(-score)
    spike = order[int(0.06 * len(score))]
    label, weight = label.copy(), weight.copy()
    label[spike], weight[spike] = 1, 40.0
    raw = choose_cut(score, label, weight, min_fraction=0.01, smoothing=0.0)
    smooth = choose_cut(score, label, weight, min_fraction=0.01, smoothing=0.04)
    assert raw.fraction == pytest.approx(0.061, abs=0.002)
    assert smooth.fraction > 0.08


def test_submission_ranks_every_selected_event_above_the_rest():
    score = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    selected = np.array([False, True, False, True, False])
    frame = submission_frame(np.arange(5) + 350_000, score, selected)
    assert list(frame.columns) == ["EventId", "RankOrder", "Class"]
    assert sorted(frame.RankOrder) == [1, 2, 3, 4, 5]
    assert (
        frame.loc[frame.Class == "s", "RankOrder"].min()
        > frame.loc[frame.Class == "b", "RankOrder"].max()
    )
    assert frame.RankOrder[2] == 3 and frame.RankOrder[4] == 1


def test_lookup_metric_names_the_known_metrics():
    metrics = {
        "cv": {"oof": {"oof/ams_max": 3.1}, "mean": {"val/auroc": 0.9}},
        "cut": {"fraction": 0.15, "ams_smoothed": 2.8},
        "test": {},
    }
    assert lookup_metric(metrics, "oof/ams_max") == 3.1
    assert lookup_metric(metrics, "val/auroc") == 0.9
    assert lookup_metric(metrics, "cut/ams_smoothed") == 2.8
    with pytest.raises(KeyError, match="oof/ams_max"):
        lookup_metric(metrics, "oof/nope")


def test_cut_inside_a_block_of_tied_scores_reports_the_selectable_fraction():
    score, label, weight = scored_events()
    score = score.astype(np.float64)
    score[np.argsort(-score)[: len(score) // 5]] = 1.0  # the top 20% saturate
    cut = choose_cut(score, label, weight, min_fraction=0.05, max_fraction=0.5)
    assert cut.fraction >= 0.2 - 1e-9

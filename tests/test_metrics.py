"""The weighted AMS and AUC metrics against hand-computed values and scikit-learn."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from amsaware.data.schema import B_TOT, S_TOT
from amsaware.metrics import (
    WeightedAMS,
    ams,
    ams_at_fraction,
    ams_curve,
    ams_of_selection,
    classification_metrics,
    evaluate,
    rescaled_weights,
    select_top_fraction,
    weighted_roc_auc,
)


def hand_ams(s: float, b: float, b_reg: float = 10.0) -> float:
    return math.sqrt(2 * ((s + b + b_reg) * math.log(1 + s / (b + b_reg)) - s))


def test_ams_formula_matches_hand_computation():
    assert float(ams(10.0, 100.0)) == pytest.approx(hand_ams(10.0, 100.0), rel=1e-12)
    # Full-data scale: 2 (10410 ln(1 + 400/10010) - 400) = 15.775, sqrt = 3.97181.
    assert float(ams(400.0, 10_000.0)) == pytest.approx(3.97181, abs=1e-5)
    assert float(ams(0.0, 50.0)) == 0.0


def test_ams_tends_to_s_over_sqrt_b_for_small_s():
    s, b = 1.0, 1e6
    assert float(ams(s, b)) == pytest.approx(s / math.sqrt(b + 10.0), rel=1e-3)


@pytest.fixture
def small_batch():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    target = torch.tensor([1, 1, 0, 1, 0, 0, 1, 0])
    weight = torch.tensor([1.0, 2.0, 50.0, 1.0, 100.0, 25.0, 4.0, 25.0], dtype=torch.float64)
    return scores, target, weight


def test_weights_rescaled_per_class_to_the_totals(small_batch):
    _, target, weight = small_batch
    w = rescaled_weights(target, weight)
    assert float(w[target == 1].sum()) == pytest.approx(S_TOT)
    assert float(w[target == 0].sum()) == pytest.approx(B_TOT)


def test_ams_metric_matches_hand_computation(small_batch):
    scores, target, weight = small_batch
    ws, wb = S_TOT / 8.0, B_TOT / 200.0  # signal weights sum to 8, background to 200
    metric = WeightedAMS()
    metric.update(scores, target, weight)
    result = metric.compute()
    # score >= 0.5 keeps the first four events: signal 1+2+1, background 50.
    assert float(result["ams@0.5"]) == pytest.approx(hand_ams(4 * ws, 50 * wb), rel=1e-9)
    # ceil(0.15 * 8) = 2 events: signal 1+2, no background.
    assert float(result["ams@15%"]) == pytest.approx(hand_ams(3 * ws, 0.0), rel=1e-9)
    # Every cut by hand; the maximum and its threshold.
    by_hand = []
    s = b = 0.0
    for p, t, w in zip(scores.tolist(), target.tolist(), weight.tolist(), strict=True):
        s, b = (s + w * ws, b) if t else (s, b + w * wb)
        by_hand.append((hand_ams(s, b), p))
    best_ams, best_threshold = max(by_hand)
    assert float(result["ams_max"]) == pytest.approx(best_ams, rel=1e-9)
    assert float(result["ams_max_threshold"]) == pytest.approx(best_threshold)


def test_ams_curve_does_not_split_tied_scores():
    scores = torch.tensor([0.9, 0.5, 0.5, 0.1])
    target = torch.tensor([1, 1, 0, 0])
    weight = torch.ones(4, dtype=torch.float64)
    curve = ams_curve(scores, target, weight)
    assert curve.n_selected.tolist() == [1, 3, 4]
    assert curve.thresholds.tolist() == pytest.approx([0.9, 0.5, 0.1])


def test_ams_is_on_the_full_data_scale_for_any_subset():
    rng = np.random.default_rng(0)
    n = 30_000
    target = torch.from_numpy(rng.random(n) < 0.3)
    scores = torch.from_numpy(np.where(target, rng.beta(4, 2, n), rng.beta(2, 4, n)))
    weight = torch.from_numpy(np.where(target, 0.002, 2.0) * rng.uniform(0.5, 1.5, n))
    full = float(ams_at_fraction(scores, target, weight, 0.15))
    third = float(ams_at_fraction(scores[: n // 3], target[: n // 3], weight[: n // 3], 0.15))
    assert third == pytest.approx(full, rel=0.1)  # not sqrt(1/3) of it


def test_select_top_fraction_counts_exactly():
    scores = torch.arange(100, dtype=torch.float32)
    selected = select_top_fraction(scores, 0.15)
    assert int(selected.sum()) == 15
    assert selected[85:].all()
    with pytest.raises(ValueError, match="fraction"):
        select_top_fraction(scores, 1.5)


def test_weighted_auroc_matches_scikit_learn():
    rng = np.random.default_rng(1)
    n = 5_000
    target = rng.random(n) < 0.35
    scores = np.round(np.where(target, rng.normal(1, 1, n), rng.normal(0, 1, n)), 1)  # ties
    weight = rng.lognormal(0, 1.5, n)
    expected = roc_auc_score(target, scores, sample_weight=weight)
    got = weighted_roc_auc(
        torch.from_numpy(scores), torch.from_numpy(target), torch.from_numpy(weight)
    )
    assert float(got) == pytest.approx(expected, abs=1e-10)


def test_collection_reports_every_design_metric_name(small_batch):
    scores, target, weight = small_batch
    metrics = classification_metrics("val/")
    metrics.update(preds=scores, target=target, weight=weight)
    names = set(metrics.compute())
    assert names == {
        "val/auroc",
        "val/auroc_weighted",
        "val/accuracy",
        "val/ams@0.5",
        "val/ams@15%",
        "val/ams_max",
        "val/ams_max_threshold",
    }


def test_metric_accumulates_batches_like_one_update(small_batch):
    scores, target, weight = small_batch
    whole = evaluate(scores, target, weight, "x/")
    metrics = classification_metrics("x/")
    for part in range(0, 8, 3):
        sl = slice(part, part + 3)
        metrics.update(preds=scores[sl], target=target[sl], weight=weight[sl])
    batched = {k: float(v) for k, v in metrics.compute().items()}
    assert batched == pytest.approx(whole)


def test_ties_at_the_cut_are_not_broken_by_position():
    """Saturated scores: the first rows must not be preferred (they are the public set)."""
    scores = torch.ones(10_000, dtype=torch.float64)
    selected = select_top_fraction(scores, 0.2)
    assert int(selected.sum()) == 2_000
    assert 0.1 < float(selected[:5_000].double().mean()) < 0.3
    assert torch.equal(selected, select_top_fraction(scores, 0.2))  # seeded


def test_batches_of_weight_vectors_give_each_rows_value():
    """Rows of weights (bootstrap counts x weights) give what each row alone gives."""
    gen = torch.Generator().manual_seed(4)
    scores = torch.rand(500, generator=gen, dtype=torch.float64).round(decimals=2)  # ties
    target = (torch.rand(500, generator=gen) < 0.4).long()
    weights = torch.rand(3, 500, generator=gen, dtype=torch.float64)
    weights[1, :50] = 0.0
    batch_curve = ams_curve(scores, target, weights)
    batch_auc = weighted_roc_auc(scores, target, weights)
    selected = scores >= 0.7
    batch_selection = ams_of_selection(selected, target, weights)
    for row in range(3):
        curve = ams_curve(scores, target, weights[row])
        torch.testing.assert_close(batch_curve.ams[row], curve.ams)
        torch.testing.assert_close(batch_auc[row], weighted_roc_auc(scores, target, weights[row]))
        torch.testing.assert_close(
            batch_selection[row], ams_of_selection(selected, target, weights[row])
        )

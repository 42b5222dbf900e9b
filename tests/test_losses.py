"""Losses: hand-computed values, finite values and gradients in the awkward batches."""

import math

import pytest
import torch

from amsaware.data.schema import B_TOT, S_TOT
from amsaware.losses import BCELoss, SoftAMSLoss, soft_counts


@pytest.fixture
def batch():
    logits = torch.tensor([2.0, -1.0, 0.5, -2.0, 0.0])
    target = torch.tensor([1, 1, 0, 0, 0])
    weight = torch.tensor([0.002, 0.004, 1.5, 3.0, 0.5], dtype=torch.float64)
    return logits, target, weight


def hand_ams(s: float, b: float, b_reg: float = 10.0) -> float:
    return math.sqrt(2 * ((s + b + b_reg) * math.log(1 + s / (b + b_reg)) - s))


def test_soft_ams_raw_matches_hand_computation(batch):
    logits, target, weight = batch
    p = torch.sigmoid(logits).double().tolist()
    s = 0.002 * p[0] + 0.004 * p[1]
    b = 1.5 * p[2] + 3.0 * p[3] + 0.5 * p[4]
    loss = SoftAMSLoss(normalisation="raw")(logits, target, weight)
    assert float(loss) == pytest.approx(-hand_ams(s, b), rel=1e-6)


def test_soft_ams_batch_normalisation_rescales_each_class_to_the_totals(batch):
    logits, target, weight = batch
    p = torch.sigmoid(logits).double().tolist()
    s = S_TOT * (0.002 * p[0] + 0.004 * p[1]) / 0.006
    b = B_TOT * (1.5 * p[2] + 3.0 * p[3] + 0.5 * p[4]) / 5.0
    got_s, got_b = soft_counts(logits, target, weight, "batch")
    assert (float(got_s), float(got_b)) == pytest.approx((s, b), rel=1e-9)
    loss = SoftAMSLoss(normalisation="batch")(logits, target, weight)
    assert float(loss) == pytest.approx(-hand_ams(s, b), rel=1e-6)


def test_bce_unweighted_and_weighted(batch):
    logits, target, weight = batch
    y = target.float()
    expected = -(y * torch.log(torch.sigmoid(logits)) + (1 - y) * torch.log(torch.sigmoid(-logits)))
    assert float(BCELoss()(logits, target, weight)) == pytest.approx(
        float(expected.mean()), rel=1e-6
    )
    w = (weight / weight.mean()).float()
    weighted = BCELoss(weighted=True)(logits, target, weight)
    assert float(weighted) == pytest.approx(float((w * expected).mean()), rel=1e-5)


LOSSES = [
    BCELoss(),
    BCELoss(weighted=True),
    SoftAMSLoss(normalisation="raw"),
    SoftAMSLoss(normalisation="batch"),
]
AWKWARD = {
    "no signal": ([0.3, -0.2, 1.0], [0, 0, 0]),
    "all signal": ([0.3, -0.2, 1.0], [1, 1, 1]),
    "p -> 0": ([-40.0, -40.0, -40.0], [1, 0, 0]),
    "p -> 1": ([40.0, 40.0, 40.0], [1, 0, 0]),
}


@pytest.mark.parametrize("loss", LOSSES, ids=["bce", "bce-weighted", "ams-raw", "ams-batch"])
@pytest.mark.parametrize("case", AWKWARD, ids=str)
def test_finite_value_and_gradient_in_awkward_batches(loss, case):
    raw, labels = AWKWARD[case]
    logits = torch.tensor(raw, requires_grad=True)
    target = torch.tensor(labels)
    weight = torch.tensor([0.003, 2.0, 0.7], dtype=torch.float64)
    value = loss(logits, target, weight)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()


def test_soft_ams_gradient_pushes_signal_up_and_background_down(batch):
    logits, target, weight = batch
    logits = logits.clone().requires_grad_(True)
    SoftAMSLoss(normalisation="batch")(logits, target, weight).backward()
    assert (logits.grad[target == 1] < 0).all()
    assert (logits.grad[target == 0] > 0).all()


def test_soft_ams_rejects_unknown_normalisation():
    with pytest.raises(ValueError, match="normalisation"):
        SoftAMSLoss(normalisation="full")

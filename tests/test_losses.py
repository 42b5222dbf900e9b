"""Losses: hand-computed values, finite values and gradients in the awkward batches."""

import itertools
import math
from functools import partial

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from amsaware.data.schema import B_TOT, S_TOT
from amsaware.data.weights import rescaled_weights
from amsaware.losses import (
    AsimovLoss,
    BCELoss,
    DeltaZBarLoss,
    SoftAMSLoss,
    delta_z,
    delta_z_lovasz,
    soft_counts,
)
from amsaware.model import MLP, SignificanceClassifier
from tests.helpers import quiet_trainer


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
    p = torch.sigmoid(logits.double()).tolist()  # the sigmoid is taken in float64
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


# --------------------------------------------------------------------------------------------
# Soft AMS options


def test_soft_ams_temperature_and_squared_match_hand_computation(batch):
    logits, target, weight = batch
    p = torch.sigmoid(logits.double() / 4.0).tolist()
    s = 0.002 * p[0] + 0.004 * p[1]
    b = 1.5 * p[2] + 3.0 * p[3] + 0.5 * p[4]
    loss = SoftAMSLoss(temperature=4.0)(logits, target, weight)
    assert float(loss) == pytest.approx(-hand_ams(s, b), rel=1e-6)
    squared = SoftAMSLoss(temperature=4.0, squared=True)(logits, target, weight)
    assert float(squared) == pytest.approx(-(hand_ams(s, b) ** 2), rel=1e-5)


@pytest.mark.parametrize("loss_class", [SoftAMSLoss, AsimovLoss])
def test_batch_normalised_soft_count_losses_skip_batches_without_enough_of_a_class(loss_class):
    logits = torch.tensor([1.0, -1.0, 0.5], requires_grad=True)
    weight = torch.tensor([0.01, 2.0, 1.0], dtype=torch.float64)
    one_signal = torch.tensor([1, 0, 0])
    loss = loss_class(normalisation="batch", min_class_events=2)(logits, one_signal, weight)
    loss.backward()
    assert float(loss.detach()) == 0.0 and (logits.grad == 0).all()
    kept = loss_class(normalisation="batch", min_class_events=1)(logits, one_signal, weight)
    assert float(kept.detach()) < 0.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: SoftAMSLoss(temperature=0.0),
        lambda: SoftAMSLoss(b_reg=-1.0),
        lambda: AsimovLoss(sys_uncertainty=-0.1),
        lambda: AsimovLoss(objective="z"),
        lambda: AsimovLoss(normalisation="full"),
        lambda: AsimovLoss(temperature=-1.0),
        lambda: AsimovLoss(b_reg=-1.0),
        lambda: DeltaZBarLoss(eps=0.0),
    ],
)
def test_bad_options_name_their_config_key(make):
    with pytest.raises(ValueError, match="loss\\."):
        make()


# --------------------------------------------------------------------------------------------
# Asimov


def hand_asimov_z2(s: float, b: float, f: float) -> float:
    """REFERENCE.md's Z_A^2 written out with sigma_b = f b, term by term."""
    sb2 = (f * b) ** 2
    first = (s + b) * math.log((s + b) * (b + sb2) / (b**2 + (s + b) * sb2))
    second = b**2 / sb2 * math.log(1 + sb2 * s / (b * (b + sb2)))
    return 2 * (first - second)


@pytest.mark.parametrize("f", [0.1, 0.3])
def test_asimov_matches_hand_computation(batch, f):
    logits, target, weight = batch
    s, b = (float(v) for v in soft_counts(logits, target, weight, "batch"))
    z2 = hand_asimov_z2(s, b + 10.0, f)
    loss = AsimovLoss(sys_uncertainty=f)(logits, target, weight)
    assert float(loss) == pytest.approx(-z2, rel=1e-5)
    inverse = AsimovLoss(sys_uncertainty=f, objective="inv_z2")(logits, target, weight)
    assert float(inverse) == pytest.approx(1 / z2, rel=1e-5)


@pytest.mark.parametrize("normalisation", ["raw", "batch"])
def test_asimov_tends_to_the_ams_without_regularisation_as_f_goes_to_zero(batch, normalisation):
    logits, target, weight = (t.double() for t in batch)
    ams2 = SoftAMSLoss(b_reg=0.0, normalisation=normalisation, squared=True)
    expected = float(ams2(logits, target, weight))
    for f in (0.0, 1e-8, 1e-6):
        asimov = AsimovLoss(sys_uncertainty=f, b_reg=0.0, normalisation=normalisation)
        assert float(asimov(logits, target, weight)) == pytest.approx(expected, rel=1e-6)
    gap = [
        abs(float(AsimovLoss(f, b_reg=0.0, normalisation=normalisation)(logits, target, weight)))
        for f in (0.3, 0.1, 0.01)
    ]
    assert gap[0] < gap[1] < gap[2] <= abs(expected) * (1 + 1e-9)  # systematics cost significance


def test_asimov_is_finite_when_almost_no_background_is_selected():
    logits = torch.tensor([5.0, -60.0, -60.0], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 0, 0])
    weight = torch.tensor([0.01, 2.0, 1.0], dtype=torch.float64)
    for objective in ("neg_z2", "inv_z2"):
        loss = AsimovLoss(0.1, objective=objective, b_reg=0.0)(logits, target, weight)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


# --------------------------------------------------------------------------------------------
# Delta-Z-bar


def _random_problem(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 2, (n,), generator=g)
    target[0], target[1] = 1, 0
    weight = torch.rand(n, generator=g, dtype=torch.float64) * 3 + 0.01
    return target, rescaled_weights(target, weight)


def test_delta_z_matches_hand_computation():
    target = torch.tensor([1, 1, 0, 0])
    w = rescaled_weights(target, torch.tensor([1.0, 3.0, 2.0, 2.0], dtype=torch.float64))
    errors = torch.tensor([0, 1, 1, 0])  # second signal lost, first background accepted
    x, y = 0.75 * S_TOT, 0.5 * B_TOT
    expected = S_TOT / math.sqrt(S_TOT) - (S_TOT - x) / math.sqrt(S_TOT + y)
    assert float(delta_z(errors, target, w, S_TOT, S_TOT)) == pytest.approx(expected, rel=1e-12)
    assert float(delta_z(torch.zeros(4), target, w, S_TOT, S_TOT)) == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_delta_z_is_submodular_and_monotone(seed):
    n = 6
    target, w = _random_problem(n, seed)
    masks = torch.tensor(list(itertools.product([0, 1], repeat=n)), dtype=torch.float64)
    value = {tuple(m.int().tolist()): float(delta_z(m, target, w, S_TOT, 50.0)) for m in masks}
    for a in value:
        for b in value:
            if any(x > y for x, y in zip(a, b, strict=True)):
                continue  # need A subset of B
            for e in range(n):
                if b[e]:
                    continue
                a_e = tuple(1 if i == e else x for i, x in enumerate(a))
                b_e = tuple(1 if i == e else x for i, x in enumerate(b))
                gain_a, gain_b = value[a_e] - value[a], value[b_e] - value[b]
                assert gain_a >= gain_b - 1e-9
                assert gain_b >= -1e-12


@pytest.mark.parametrize("seed", range(3))
def test_lovasz_extension_equals_delta_z_on_binary_vectors(seed):
    n = 8
    target, w = _random_problem(n, seed)
    for mask in itertools.product([0.0, 1.0], repeat=n):
        m = torch.tensor(mask, dtype=torch.float64)
        got = float(delta_z_lovasz(m, target, w, S_TOT, S_TOT))
        assert got == pytest.approx(float(delta_z(m, target, w, S_TOT, S_TOT)), abs=1e-9)


def test_lovasz_extension_is_convex():
    target, w = _random_problem(10, 3)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        u, v = torch.rand(2, 10, generator=g, dtype=torch.float64) * 2
        t = float(torch.rand(1, generator=g))
        mid = delta_z_lovasz(t * u + (1 - t) * v, target, w, S_TOT, S_TOT)
        ends = t * delta_z_lovasz(u, target, w, S_TOT, S_TOT)
        ends = ends + (1 - t) * delta_z_lovasz(v, target, w, S_TOT, S_TOT)
        assert float(mid) <= float(ends) + 1e-9


def test_delta_z_bar_loss_is_the_extension_at_the_hinge_errors(batch):
    logits, target, weight = batch
    # y = +1, +1, -1, -1, -1: hinge max(1 - F y, 0) = 0, 2, 1.5, 0, 1.
    hinge = torch.tensor([0.0, 2.0, 1.5, 0.0, 1.0], dtype=torch.float64)
    w = rescaled_weights(target, weight)
    # Sorted: event 1 (signal, 2.0), event 2 (bkg, 1.5), event 4 (bkg, 1.0), then the zeros.
    z = [
        float(delta_z(torch.tensor(m), target, w, S_TOT, S_TOT))
        for m in ([0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 0, 1])
    ]
    expected = 2.0 * (z[1] - z[0]) + 1.5 * (z[2] - z[1]) + 1.0 * (z[3] - z[2])
    loss = DeltaZBarLoss()(logits, target, weight)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(delta_z_lovasz(hinge, target, w, S_TOT, S_TOT)) == pytest.approx(expected)


# --------------------------------------------------------------------------------------------
# Every loss: finite in awkward batches, exact gradients where smooth

SIGNIFICANCE_LOSSES = {
    "ams-raw-T5": SoftAMSLoss(normalisation="raw", temperature=5.0),
    "ams-batch-squared": SoftAMSLoss(normalisation="batch", squared=True),
    "asimov-0.1": AsimovLoss(0.1),
    "asimov-0.3-inv": AsimovLoss(0.3, objective="inv_z2"),
    "asimov-raw-breg0": AsimovLoss(0.1, b_reg=0.0, normalisation="raw"),
    "deltaz": DeltaZBarLoss(),
}


@pytest.mark.parametrize("loss", SIGNIFICANCE_LOSSES.values(), ids=SIGNIFICANCE_LOSSES.keys())
@pytest.mark.parametrize("case", AWKWARD, ids=str)
def test_new_losses_are_finite_in_awkward_batches(loss, case):
    test_finite_value_and_gradient_in_awkward_batches(loss, case)


@pytest.mark.parametrize("loss", SIGNIFICANCE_LOSSES.values(), ids=SIGNIFICANCE_LOSSES.keys())
def test_gradcheck_in_float64(loss):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 0] * 6)
    weight = torch.rand(12, generator=g, dtype=torch.float64) + 0.05
    # Delta-Z-bar is piecewise linear: generic random logits sit away from its kinks.
    assert torch.autograd.gradcheck(lambda z: loss(z, target, weight), (logits,))


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_a_configured_scheduler_drops_the_learning_rate_per_epoch():
    x = torch.randn(32, 4)
    loader = DataLoader(TensorDataset(x, (x[:, 0] > 0).long(), torch.ones(32)), batch_size=16)
    drop = partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[2], gamma=0.1)
    module = SignificanceClassifier(
        MLP(4, 1, 8, 0.0), BCELoss(), partial(torch.optim.SGD, lr=0.5), scheduler=drop
    )
    trainer = quiet_trainer(3)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05)

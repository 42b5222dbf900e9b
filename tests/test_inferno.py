"""INFERNO: soft histograms, the Asimov variance of mu against closed forms, gradients, guards."""

import math

import numpy as np
import pytest
import torch

from amsaware.inferno import InfernoLoss, asimov_variance, soft_assignment, soft_histogram

SHAPES = ("tes", "jes")
PROCESSES = ("ztautau", "ttbar", "wjets")
NORMS = {"ztautau": 0.05, "ttbar": 0.1, "wjets": 0.2}


def systematics_batch(n: int = 24, seed: int = 0):
    """A batch with 5 logit rows (nominal, tes -/+, jes -/+), weights and processes."""
    g = torch.Generator().manual_seed(seed)
    target = torch.tensor([1, 0, 0, 0] * (n // 4))
    nominal = torch.randn(n, generator=g, dtype=torch.float64) + 1.5 * target
    shifts = 0.3 * torch.randn(4, n, generator=g, dtype=torch.float64)
    logits = torch.cat([nominal.unsqueeze(0), nominal + shifts])
    weight = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    process = torch.randint(0, 3, (n,), generator=g)
    return logits, target, weight, process


def full_loss(**options) -> InfernoLoss:
    return InfernoLoss(
        bins=4, temperature=0.5, shapes=SHAPES, processes=PROCESSES, norms=NORMS, **options
    )


# --------------------------------------------------------------------------------------------
# Soft histogram


def test_soft_histogram_keeps_the_total_weight_and_tends_to_the_hard_histogram():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(200, generator=g) * 2
    weight = torch.rand(200, generator=g) + 0.5
    for temperature in (1.0, 0.1):
        hist = soft_histogram(logits, weight, 5, temperature)
        assert hist.dtype == torch.float64 and hist.shape == (5,)
        assert float(hist.sum()) == pytest.approx(float(weight.double().sum()), rel=1e-12)
    hard, _ = np.histogram(
        torch.sigmoid(logits.double()).numpy(), bins=5, range=(0, 1), weights=weight.numpy()
    )
    soft = soft_histogram(logits, weight, 5, 1e-4).numpy()
    np.testing.assert_allclose(soft, hard, rtol=1e-6)


def test_neighbouring_bins_share_an_event_by_a_logistic_of_its_distance_to_their_edge():
    # p = sigmoid(logit) just above the edge 0.5 of 2 bins (width 1/2): the share of bin 1 is
    # sigmoid((p - 0.5) / (tau w / 2)) exactly, the soft cut the docstring promises.
    p = torch.tensor([0.52], dtype=torch.float64)
    tau = 0.3
    share = soft_assignment(torch.logit(p), 2, tau)[0]
    expected = torch.sigmoid((p - 0.5) / (tau * 0.5 / 2))
    assert float(share[1]) == pytest.approx(float(expected), rel=1e-12)


# --------------------------------------------------------------------------------------------
# Closed forms (one bin: the soft histogram is the total weight whatever the temperature)


def one_bin(s: float, b: float):
    return torch.tensor([[s]], dtype=torch.float64), torch.tensor([[[b]]], dtype=torch.float64)


def test_one_bin_stat_only_gives_sqrt_s_plus_b_over_s():
    s, b = 50.0, 1000.0
    variance = asimov_variance(*one_bin(s, b), count_floor=0.0)
    assert math.sqrt(float(variance)) == pytest.approx(math.sqrt(s + b) / s, rel=1e-12)
    floored = asimov_variance(*one_bin(s, b), count_floor=2.0)
    assert float(floored) == pytest.approx((s + b + 2.0) / s**2, rel=1e-12)


@pytest.mark.parametrize("method", ["fisher", "hessian"])
def test_one_bin_with_a_normalisation_nuisance_gives_the_closed_form(method):
    # J = (s, kappa b), I = J J^T / n + diag(0, 1): (I^-1)_mumu = (n + (kappa b)^2) / s^2
    # exactly, kappa = atanh(f) (the symmetric normsys slope).
    s, b, f = 50.0, 1000.0, 0.1
    variance = asimov_variance(*one_bin(s, b), norm_sizes=[f], count_floor=0.0, method=method)
    kappa = math.atanh(f)
    assert float(variance) == pytest.approx((s + b + (kappa * b) ** 2) / s**2, rel=1e-10)
    # to first order in f this is the textbook (s + b + (f b)^2) / s^2
    assert kappa == pytest.approx(f, rel=f**2)


def test_a_free_shape_nuisance_has_no_constraint_term():
    # A free (unconstrained) shape scaling the only background by 1 +- 0.1: with two bins of
    # different s/b, I = J J^T / n with J = (s, 0.1 b), no constraint term.
    s = torch.tensor([[10.0, 40.0]] * 3, dtype=torch.float64)
    b = torch.tensor([100.0, 50.0], dtype=torch.float64)
    backgrounds = torch.stack([b, 0.9 * b, 1.1 * b]).unsqueeze(1)
    variance = asimov_variance(s, backgrounds, free=[True], count_floor=0.0)
    n = s[0] + b
    jac = torch.stack([s[0], 0.1 * b])
    info = (jac / n) @ jac.T
    assert float(variance) == pytest.approx(float(torch.linalg.inv(info)[0, 0]), rel=1e-10)
    constrained = asimov_variance(s, backgrounds, free=[False], count_floor=0.0)
    stat_only = asimov_variance(s[:1], backgrounds[:1], count_floor=0.0)
    assert float(stat_only) < float(constrained) < float(variance)


# --------------------------------------------------------------------------------------------
# Fisher = Hessian at the Asimov point; gradients


def test_fisher_and_autograd_hessian_agree_in_value_and_gradient():
    logits, target, weight, process = systematics_batch()
    grads = []
    values = []
    for method in ("fisher", "hessian"):
        z = logits.clone().requires_grad_(True)
        loss = full_loss(method=method, free=("jes",))(z, target, weight, process)
        values.append(float(loss.detach()))
        grads.append(torch.autograd.grad(loss, z)[0])
    assert values[0] == pytest.approx(values[1], rel=1e-9)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("method", ["fisher", "hessian"])
@pytest.mark.parametrize("normalisation", ["raw", "batch"])
def test_gradcheck_in_float64(method, normalisation):
    logits, target, weight, process = systematics_batch(n=12, seed=1)
    loss = full_loss(method=method, normalisation=normalisation)
    z = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: loss(v, target, weight, process), (z,))


def test_gradcheck_of_the_plain_call_with_one_background():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(12, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 0] * 6)
    weight = torch.rand(12, generator=g, dtype=torch.float64) + 0.05
    loss = InfernoLoss(bins=3, temperature=0.5, norms={"background": 0.1})
    assert torch.autograd.gradcheck(lambda z: loss(z, target, weight), (logits,))


# --------------------------------------------------------------------------------------------
# Behaviour


def test_better_separation_lowers_the_loss():
    g = torch.Generator().manual_seed(4)
    target = torch.tensor([1] * 100 + [0] * 400)
    noise = torch.randn(500, generator=g, dtype=torch.float64)
    weight = torch.ones(500, dtype=torch.float64)
    loss = InfernoLoss(bins=10, temperature=0.1, norms={"background": 0.1}, s_tot=50, b_tot=1000)
    values = [float(loss(noise + gap * (2 * target - 1), target, weight)) for gap in (0, 1, 3)]
    assert values[0] > values[1] > values[2]


def test_a_shape_nuisance_that_moves_nothing_adds_nothing():
    logits, target, weight, process = systematics_batch()
    still = logits.clone()
    still[3:] = logits[0]  # jes down/up identical to the nominal
    without_jes = InfernoLoss(
        bins=4, temperature=0.5, shapes=("tes",), processes=PROCESSES, norms=NORMS
    )
    got = full_loss()(still, target, weight, process)
    expected = without_jes(still[:3], target, weight, process)
    assert float(got) == pytest.approx(float(expected), rel=1e-10)
    assert float(full_loss()(logits, target, weight, process)) > float(expected)


def test_systematics_cost_precision():
    logits, target, weight, process = systematics_batch()
    stat = InfernoLoss(bins=4, temperature=0.5, processes=PROCESSES)
    norms = InfernoLoss(bins=4, temperature=0.5, processes=PROCESSES, norms=NORMS)
    v_stat = float(stat(logits[0], target, weight, process))
    v_norms = float(norms(logits[0], target, weight, process))
    v_all = float(full_loss()(logits, target, weight, process))
    assert v_stat < v_norms < v_all


def test_batch_normalisation_counts_expected_events_per_class():
    logits, target, weight, process = systematics_batch()
    loss = full_loss(s_tot=50.0, b_tot=1000.0)
    signal, backgrounds = loss.histograms(logits, target, weight, process)
    assert signal.sum(-1).tolist() == pytest.approx([50.0] * 5, rel=1e-12)
    assert backgrounds.sum((-1, -2)).tolist() == pytest.approx([1000.0] * 5, rel=1e-12)
    # the processes keep their shares of the batch's background weight
    share = float(weight[(target == 0) & (process == 1)].sum() / weight[target == 0].sum())
    assert float(backgrounds[0, 1].sum()) == pytest.approx(1000.0 * share, rel=1e-12)


def test_per_row_weights_let_a_shift_remove_events():
    logits, target, weight, process = systematics_batch()
    rows = weight.expand(5, -1).clone()
    rows[2, target == 0] *= 0.5  # tes up loses half the background
    loss = full_loss(normalisation="raw")
    _, backgrounds = loss.histograms(logits, target, rows, process)
    assert float(backgrounds[2].sum()) == pytest.approx(0.5 * float(weight[target == 0].sum()))
    assert float(loss(logits, target, rows, process)) > float(loss(logits, target, weight, process))


@pytest.mark.parametrize("normalisation", ["raw", "batch"])
def test_a_batch_without_signal_gives_zero_loss_and_zero_gradient(normalisation):
    logits, _, weight, process = systematics_batch()
    z = logits.clone().requires_grad_(True)
    loss = full_loss(normalisation=normalisation)(
        z, torch.zeros(24, dtype=torch.long), weight, process
    )
    (grad,) = torch.autograd.grad(loss, z)
    assert float(loss.detach()) == 0.0 and (grad == 0).all()


def test_extreme_logits_give_finite_values_and_gradients():
    target = torch.tensor([1, 0, 0])
    weight = torch.tensor([0.01, 2.0, 1.0], dtype=torch.float64)
    for value in (-60.0, 60.0):
        z = torch.full((3,), value, dtype=torch.float64, requires_grad=True)
        loss = InfernoLoss(norms={"background": 0.1})(z, target, weight)
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


# --------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    "options",
    [
        {"bins": 0},
        {"temperature": 0.0},
        {"normalisation": "full"},
        {"count_floor": -1.0},
        {"method": "newton"},
        {"norms": {"qcd": 0.1}},
        {"norms": {"background": 1.0}},
        {"free": ("tes",)},
        {"processes": ()},
    ],
)
def test_bad_options_name_their_config_key(options):
    with pytest.raises(ValueError, match="loss\\."):
        InfernoLoss(**options)


def test_bad_inputs_are_refused_with_what_was_expected():
    logits, target, weight, process = systematics_batch()
    with pytest.raises(ValueError, match="1 \\+ 2 x 2 logit rows"):
        full_loss()(logits[:3], target, weight, process)
    with pytest.raises(ValueError, match="needs each event's process"):
        full_loss()(logits, target, weight)
    bad = process.clone()
    bad[1] = 7  # a background event
    with pytest.raises(ValueError, match="process index"):
        full_loss()(logits, target, weight, bad)


# --------------------------------------------------------------------------------------------
# The INFERNO paper's 3-D toy (benchmark 2), small


@pytest.mark.slow
def test_inferno_beats_bce_on_the_papers_toy_with_free_nuisances():
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    from inferno_toy import QUICK, run

    torch.set_num_threads(1)
    result = run(**QUICK, seed=0)
    # measured at these sizes (seed 0): BCE ~24.5, INFERNO ~21 (the paper, full size: 23.9, 17.0)
    assert result.inferno["benchmark 2"] < 0.93 * result.bce["benchmark 2"]
    # ... while BCE keeps the better stat-only uncertainty: INFERNO traded it for robustness
    assert result.bce["benchmark 0"] < result.inferno["benchmark 0"]

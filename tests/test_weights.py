"""Per-class rescaling to the totals: the one function metrics, losses, data and plots share."""

import numpy as np
import pytest
import torch

from amsaware.data.schema import B_TOT, S_TOT
from amsaware.data.weights import class_scales, rescaled_weights

TARGET = [1, 0, 1, 0, 0]
WEIGHT = [1.0, 2.0, 3.0, 4.0, 14.0]  # signal sums to 4, background to 20


def test_each_class_sums_to_its_total_and_keeps_its_proportions():
    w = rescaled_weights(torch.tensor(TARGET), torch.tensor(WEIGHT))
    assert w.dtype == torch.float64
    expected = [S_TOT / 4, 2 * B_TOT / 20, 3 * S_TOT / 4, 4 * B_TOT / 20, 14 * B_TOT / 20]
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-15)


def test_numpy_in_numpy_out_equal_to_the_tensor_path():
    label = np.array(TARGET, dtype=np.int8)
    weight = np.array(WEIGHT, dtype=np.float32)
    weight.flags.writeable = False  # as pandas' copy-on-write hands columns out
    w = rescaled_weights(label, weight, 2.0, 5.0)
    assert isinstance(w, np.ndarray) and w.dtype == np.float64
    by_tensor = rescaled_weights(torch.tensor(TARGET), torch.tensor(WEIGHT), 2.0, 5.0)
    np.testing.assert_array_equal(w, by_tensor.numpy())  # float32 -> float64 is exact here
    assert w[label == 1].sum() == pytest.approx(2.0) and w[label == 0].sum() == pytest.approx(5.0)


def test_each_row_of_weights_is_rescaled_on_its_own():
    weight = torch.tensor([WEIGHT, [2.0 * x for x in WEIGHT], [0.0, 1.0, 5.0, 1.0, 0.0]])
    w = rescaled_weights(torch.tensor(TARGET), weight, 1.0, 10.0)
    assert w.shape == (3, 5)
    signal = torch.tensor(TARGET).bool()
    np.testing.assert_allclose(w[:, signal].sum(-1).numpy(), 1.0, rtol=1e-15)
    np.testing.assert_allclose(w[:, ~signal].sum(-1).numpy(), 10.0, rtol=1e-15)
    torch.testing.assert_close(w[0], w[1], rtol=1e-15, atol=0.0)


@pytest.mark.parametrize(
    "target",
    [[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]],
    ids=["signal-weighs-nothing", "no-signal"],
)
def test_a_class_without_weight_gets_factor_zero_and_finite_gradients(target):
    target = torch.tensor(target)
    weight = torch.tensor([0.0, 2.0, 0.0, 4.0, 14.0], dtype=torch.float64, requires_grad=True)
    scale_signal, scale_background = class_scales(target, weight)
    assert float(scale_signal.detach()) == 0.0
    assert float(scale_background.detach()) == pytest.approx(B_TOT / 20)
    rescaled = rescaled_weights(target, weight)
    assert float(rescaled[~target.bool()].sum().detach()) == pytest.approx(B_TOT)
    rescaled.sum().backward()
    assert torch.isfinite(weight.grad).all()

"""Event weights on the full-data scale: each class rescaled to its total, S_tot or B_tot.

The AMS counts expected events of the whole data set, so any subset (a batch, a fold, a
bootstrap resample, a leaderboard split, a SHAP sample) is put on that scale before it is
counted: its signal weights are multiplied by S_tot / (their sum), its background weights by
B_tot / (theirs). Metrics, losses, the synthetic generator, plots and explanations all do it
with `rescaled_weights` (or, to scale sums already taken, `class_scales`), so "rescaled to the
totals" means one thing everywhere (docs/formulas.md). A class with no weight in the subset
(absent, or all weights 0) gets the factor 0, never a division by zero: its events then count
nothing, and the gradient of a loss through the factor stays finite.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from amsaware.data.schema import B_TOT, S_TOT


def class_scales(
    target: Tensor, weight: Tensor, s_tot: float = S_TOT, b_tot: float = B_TOT
) -> tuple[Tensor, Tensor]:
    """The factors (signal, background) that rescale `weight` per class to `s_tot`/`b_tot`.

    float64, one per row of `weight` (shape `(..., 1)`, so they broadcast over the events): a
    `weight` of shape `(..., n)` holds one weight vector per row (say bootstrap counts x event
    weights), each rescaled on its own. 0 for a class without weight in its row.
    """
    w = weight.to(torch.float64)
    signal = target.bool()
    signal_sum = torch.where(signal, w, 0.0).sum(-1, keepdim=True)
    background_sum = torch.where(signal, 0.0, w).sum(-1, keepdim=True)
    return scale_to(s_tot, signal_sum), scale_to(b_tot, background_sum)


def scale_to(total: float, class_sum: Tensor) -> Tensor:
    """`total / class_sum`, or 0 where `class_sum` is not positive (a class without weight)."""
    has_weight = class_sum > 0
    safe = torch.where(has_weight, class_sum, torch.ones_like(class_sum))
    return torch.where(has_weight, total / safe, torch.zeros_like(class_sum))


@overload
def rescaled_weights(
    target: ArrayLike, weight: np.ndarray, s_tot: float = ..., b_tot: float = ...
) -> np.ndarray: ...
@overload
def rescaled_weights(
    target: ArrayLike | Tensor, weight: Tensor, s_tot: float = ..., b_tot: float = ...
) -> Tensor: ...
def rescaled_weights(
    target: ArrayLike | Tensor,
    weight: Tensor | np.ndarray,
    s_tot: float = S_TOT,
    b_tot: float = B_TOT,
) -> Tensor | np.ndarray:
    """Weights (float64) rescaled per class so signal sums to `s_tot`, background to `b_tot`.

    `target` is the label (1 signal, 0 background). A tensor `weight` gives a tensor on its
    device, a NumPy one a NumPy array. `weight` may be `(..., n)`: each row is rescaled on
    its own (see `class_scales`).
    """
    as_numpy = isinstance(weight, np.ndarray)
    # NumPy inputs are copied: torch refuses to share a read-only array (pandas' copy-on-write).
    w = torch.from_numpy(np.array(weight, np.float64)) if as_numpy else weight.to(torch.float64)
    if isinstance(target, Tensor):
        signal = target.to(w.device).bool()
    else:
        signal = torch.from_numpy(np.array(target, dtype=bool)).to(w.device)
    scale_signal, scale_background = class_scales(signal, w, s_tot, b_tot)
    rescaled = w * torch.where(signal, scale_signal, scale_background)
    return rescaled.numpy() if as_numpy else rescaled

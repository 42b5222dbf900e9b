"""Training losses, all with one interface: `loss(logits, target, weight) -> scalar`.

The LightningModule never knows which loss it holds. BCE comes from PyTorch; the significance
losses are written here because no maintained library provides them (formulas: REFERENCE.md).
Significance sums are accumulated in float64: event weights span six orders of magnitude.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amsaware.data.schema import B_TOT, S_TOT
from amsaware.metrics import B_REG

Normalisation = Literal["raw", "batch"]

#: Floor for a radicand before its square root: sqrt has an infinite gradient at 0.
_RADICAND_FLOOR = 1e-12


class BCELoss(nn.Module):
    """Binary cross-entropy on logits; unweighted as in the seed paper, or event-weighted.

    With `weighted=True` the batch's event weights are divided by their mean, so the loss scale
    does not depend on the weights' units.
    """

    def __init__(self, weighted: bool = False) -> None:
        super().__init__()
        self.weighted = weighted

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        w = weight / weight.mean() if self.weighted else None
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), weight=w)


def soft_counts(
    logits: Tensor,
    target: Tensor,
    weight: Tensor,
    normalisation: Normalisation,
    s_tot: float = S_TOT,
    b_tot: float = B_TOT,
) -> tuple[Tensor, Tensor]:
    """Differentiable selected signal and background, s = sum_sig w p and b = sum_bkg w p.

    `raw` uses the weights as given. `batch` rescales each class of the batch to the full-data
    totals (s = S_tot * sum_sig(w p) / sum_sig(w)), so s and b are on the scale the AMS metric
    uses; a class absent from the batch counts 0 instead of dividing by zero.
    """
    if normalisation not in ("raw", "batch"):
        raise ValueError(f"loss.normalisation must be 'raw' or 'batch', got {normalisation!r}")
    p = torch.sigmoid(logits).to(torch.float64)
    w = weight.to(torch.float64)
    signal = target.to(torch.float64)
    background = 1.0 - signal
    s = (w * p * signal).sum()
    b = (w * p * background).sum()
    if normalisation == "batch":
        s = s * _scale_to(s_tot, (w * signal).sum())
        b = b * _scale_to(b_tot, (w * background).sum())
    return s, b


def _scale_to(total: float, batch_sum: Tensor) -> Tensor:
    """total / batch_sum, or 0 for a class absent from the batch (its sum is then 0 too)."""
    return torch.where(batch_sum > 0, total / batch_sum, torch.zeros_like(batch_sum))


class SoftAMSLoss(nn.Module):
    """The seed paper's soft AMS: -AMS(s, b) with s, b the probability-weighted sums."""

    def __init__(
        self,
        b_reg: float = B_REG,
        normalisation: Normalisation = "raw",
        s_tot: float = S_TOT,
        b_tot: float = B_TOT,
    ) -> None:
        super().__init__()
        if normalisation not in ("raw", "batch"):
            raise ValueError(f"loss.normalisation must be 'raw' or 'batch', got {normalisation!r}")
        self.b_reg, self.normalisation = b_reg, normalisation
        self.s_tot, self.b_tot = s_tot, b_tot

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        s, b = soft_counts(logits, target, weight, self.normalisation, self.s_tot, self.b_tot)
        radicand = 2.0 * ((s + b + self.b_reg) * torch.log1p(s / (b + self.b_reg)) - s)
        return -torch.sqrt(radicand.clamp_min(_RADICAND_FLOOR)).to(logits.dtype)

"""Training losses, all with one interface: `loss(logits, target, weight) -> scalar`.

The LightningModule never knows which loss it holds. BCE comes from PyTorch; the significance
losses are written here because no maintained library provides them (formulas: docs/formulas.md).
Significance sums are accumulated in float64: event weights span six orders of magnitude.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amsaware.data.schema import B_TOT, S_TOT
from amsaware.data.weights import class_scales, rescaled_weights
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
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Differentiable selected signal and background, s = sum_sig w p and b = sum_bkg w p.

    p = sigmoid(logits / temperature): a temperature above 1 keeps p away from 0 and 1 for
    longer, so the gradient does not vanish once the logits grow (they reach the hundreds).
    `raw` uses the weights as given. `batch` rescales each class of the batch to the full-data
    totals (s = S_tot * sum_sig(w p) / sum_sig(w)), so s and b are on the scale the AMS metric
    uses; a class absent from the batch counts 0 instead of dividing by zero.
    """
    _check_normalisation(normalisation)
    p = torch.sigmoid(logits.to(torch.float64) / temperature)
    w = weight.to(torch.float64)
    signal = target.to(torch.float64)
    background = 1.0 - signal
    s = (w * p * signal).sum()
    b = (w * p * background).sum()
    if normalisation == "batch":
        # The sums times the classes' factors: the same as summing rescaled weights, one
        # multiplication per class instead of one per event.
        scale_s, scale_b = class_scales(target, w, s_tot, b_tot)
        s, b = s * scale_s.squeeze(-1), b * scale_b.squeeze(-1)
    return s, b


def _check_normalisation(normalisation: str) -> None:
    if normalisation not in ("raw", "batch"):
        raise ValueError(f"loss.normalisation must be 'raw' or 'batch', got {normalisation!r}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"loss.{name} must be > 0, got {value}")


def _has_both_classes(target: Tensor, min_events: int) -> Tensor:
    """True when the batch holds at least `min_events` events of each class (no host sync)."""
    n_signal = target.sum()
    return (n_signal >= min_events) & (len(target) - n_signal >= min_events)


class _SoftCountLoss(nn.Module, ABC):
    """A significance of the batch's soft counts (s, b): the options and checks they share.

    `soft_counts` gives s and b (`normalisation`, `temperature`, totals `s_tot`/`b_tot`),
    `b_reg` >= 0 is added to b, and a subclass turns (s, b + b_reg) into the loss. With
    `normalisation="batch"` a batch holding fewer than `min_class_events` events of either
    class would rescale a handful of events to the full totals; such a batch contributes a
    zero loss with zero gradient instead. Subclasses keep every option as a constructor
    argument of the same name: the checkpoint (`model.describe_loss`) and Hydra read them so.
    """

    def __init__(
        self,
        b_reg: float,
        normalisation: Normalisation,
        temperature: float,
        min_class_events: int,
        s_tot: float,
        b_tot: float,
    ) -> None:
        super().__init__()
        _check_normalisation(normalisation)
        _check_positive("temperature", temperature)
        if b_reg < 0:
            raise ValueError(f"loss.b_reg must be >= 0, got {b_reg}")
        self.b_reg, self.normalisation, self.temperature = b_reg, normalisation, temperature
        self.min_class_events = min_class_events
        self.s_tot, self.b_tot = s_tot, b_tot

    @abstractmethod
    def significance_loss(self, s: Tensor, b: Tensor) -> Tensor:
        """The loss of selected signal `s` and background `b` (b_reg included), float64."""

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        s, b = soft_counts(
            logits, target, weight, self.normalisation, self.s_tot, self.b_tot, self.temperature
        )
        loss = self.significance_loss(s, b + self.b_reg)
        if self.normalisation == "batch":
            loss = torch.where(_has_both_classes(target, self.min_class_events), loss, 0.0 * loss)
        return loss.to(logits.dtype)


class SoftAMSLoss(_SoftCountLoss):
    """The seed paper's soft AMS: -AMS(s, b) with s, b the probability-weighted sums.

    `squared=True` optimises -AMS^2 (the radicand itself): same optimum, no square root whose
    gradient is infinite at 0. The other options are `_SoftCountLoss`'s.
    """

    def __init__(
        self,
        b_reg: float = B_REG,
        normalisation: Normalisation = "raw",
        temperature: float = 1.0,
        squared: bool = False,
        min_class_events: int = 1,
        s_tot: float = S_TOT,
        b_tot: float = B_TOT,
    ) -> None:
        super().__init__(b_reg, normalisation, temperature, min_class_events, s_tot, b_tot)
        self.squared = squared

    def significance_loss(self, s: Tensor, b: Tensor) -> Tensor:
        # s / b with b = 0 (b_reg = 0, no background selected) is guarded by the floor.
        radicand = 2.0 * ((s + b) * torch.log1p(s / b.clamp_min(_B_FLOOR)) - s)
        value = radicand if self.squared else torch.sqrt(radicand.clamp_min(_RADICAND_FLOOR))
        return -value


#: Floor for the selected background in a significance: s / b is unbounded as b -> 0.
_B_FLOOR = 1e-9


def _bennett(x: Tensor) -> Tensor:
    """Bennett's function h(x) = (1 + x) ln(1 + x) - x for x >= 0, accurate also for small x
    (where it is ~x^2 / 2). 2 b h(s / b) is the squared significance of s events over b.

    Written as x^2 + (1 + x) (ln(1 + x) - x), with ln(1 + x) - x from its series for x < 0.01:
    the direct formula loses digits to cancellation exactly where significances live.
    """
    small = x < 1e-2
    xs = torch.where(small, x, torch.zeros_like(x))
    series = xs * xs * (-1 / 2 + xs * (1 / 3 + xs * (-1 / 4 + xs * (1 / 5 + xs * (-1 / 6)))))
    log1p_minus_x = torch.where(small, series, torch.log1p(x) - x)
    return x * x + (1.0 + x) * log1p_minus_x


def asimov_z2(s: Tensor, b: Tensor, sys_uncertainty: float) -> Tensor:
    """Z_A^2, the Asimov discovery significance squared with background uncertainty f * b.

    With sigma_b = f b (Elwood & Kruecker, arXiv:1806.00322, eq. 9) and u = s / b, k = f^2 b,
    t = f^2 s / (1 + f^2 b), the formula of docs/formulas.md is exactly
        Z_A^2 = 2 b [ h(u) - h(t) - h(t) / k ],   h(x) = (1 + x) ln(1 + x) - x (`_bennett`).
    (Expand ln((s+b)(b+sigma^2) / (b^2+(s+b)sigma^2)) = ln(1 + u) - ln(1 + t) and use
    1 + u + 1/k = (1 + 1/k)(1 + t).) The textbook form subtracts two terms of order s that
    agree to ~10 digits when b is on the full-data scale; this form loses only ~log10(1 + k).
    As f -> 0, t -> 0 and h(t) / k -> 0: Z_A^2 -> 2 b h(u) = 2 [(s + b) ln(1 + s/b) - s],
    the squared AMS with b_reg = 0 (f = 0 uses that limit).
    """
    s = s.to(torch.float64)
    b = b.to(torch.float64).clamp_min(_B_FLOOR)
    u = s / b
    if sys_uncertainty == 0:
        return 2.0 * b * _bennett(u)
    f2 = sys_uncertainty**2
    k = f2 * b
    t = f2 * s / (1.0 + k)
    h_t = _bennett(t)
    return 2.0 * b * (_bennett(u) - h_t - h_t / k)


class AsimovLoss(_SoftCountLoss):
    """Asimov significance with a relative background uncertainty `sys_uncertainty` (f).

    `objective="neg_z2"` minimises -Z_A^2, `"inv_z2"` minimises 1/Z_A^2 (Elwood & Kruecker's
    choice; Z_A^2 is floored so an empty selection gives a large finite loss). f multiplies b,
    so b must be in events: `normalisation="batch"` (the default) puts s and b on the full-data
    scale. `b_reg` is added to b as in the AMS, which keeps the loss finite for small b; with
    `b_reg=0` and f -> 0 the loss tends to -AMS(b_reg=0)^2. The other options are
    `_SoftCountLoss`'s.
    """

    def __init__(
        self,
        sys_uncertainty: float = 0.1,
        objective: Literal["neg_z2", "inv_z2"] = "neg_z2",
        b_reg: float = B_REG,
        normalisation: Normalisation = "batch",
        temperature: float = 1.0,
        min_class_events: int = 1,
        s_tot: float = S_TOT,
        b_tot: float = B_TOT,
    ) -> None:
        super().__init__(b_reg, normalisation, temperature, min_class_events, s_tot, b_tot)
        if sys_uncertainty < 0:
            raise ValueError(f"loss.sys_uncertainty must be >= 0, got {sys_uncertainty}")
        if objective not in ("neg_z2", "inv_z2"):
            raise ValueError(f"loss.objective must be 'neg_z2' or 'inv_z2', got {objective!r}")
        self.sys_uncertainty, self.objective = sys_uncertainty, objective

    def significance_loss(self, s: Tensor, b: Tensor) -> Tensor:
        z2 = asimov_z2(s, b, self.sys_uncertainty)
        return -z2 if self.objective == "neg_z2" else 1.0 / z2.clamp_min(_Z2_FLOOR)


#: Floor for Z_A^2 under 1/Z_A^2: an empty selection costs 1e6, not infinity.
_Z2_FLOOR = 1e-6


def delta_z(
    errors: Tensor, target: Tensor, norm_weight: Tensor, s_tot: float, eps: float
) -> Tensor:
    """The set function Delta-Z of a set of mistakes (a 0/1 `errors` mask), float64.

    Delta-Z(E) = S / sqrt(eps) - (S - x(E)) / sqrt(eps + y(E)), with x(E) the normalised weight
    of the signal events in E (false negatives), y(E) that of the background events in E (false
    positives) and S = s_tot: the loss of significance s / sqrt(eps + b) caused by E. For a
    batch with signal, x(all signal) = S, so the selected signal S - x(E) is >= 0.
    """
    e = errors.to(torch.float64)
    signal = target.bool()
    x = (e * norm_weight * signal).sum(-1)
    y = (e * norm_weight * ~signal).sum(-1)
    return s_tot / math.sqrt(eps) - (s_tot - x) / torch.sqrt(eps + y)


def delta_z_lovasz(
    errors: Tensor, target: Tensor, norm_weight: Tensor, s_tot: float, eps: float
) -> Tensor:
    """The Lovasz extension of `delta_z` at a vector of non-negative errors.

    Sort the errors decreasingly, m_(1) >= ... >= m_(n), let E_k be the first k events in that
    order; the extension is sum_k m_(k) (Delta-Z(E_k) - Delta-Z(E_{k-1})) (Lovasz 1983; the
    algorithm of Berman et al.'s Lovasz hinge, arXiv:1705.08790, with Delta-Z for Jaccard).
    Gradients flow through the errors only; the order and the increments are constants.
    """
    m = errors.to(torch.float64)
    order = torch.argsort(m, descending=True)
    m_sorted = m[order]
    signal = target.bool()[order]
    w = norm_weight[order]
    x = torch.cumsum(torch.where(signal, w, 0.0), 0)
    y = torch.cumsum(torch.where(signal, 0.0, w), 0)
    prefix = s_tot / math.sqrt(eps) - (s_tot - x) / torch.sqrt(eps + y)
    increments = torch.diff(prefix, prepend=prefix.new_zeros(1))
    return torch.dot(torch.relu(m_sorted), increments)


class DeltaZBarLoss(nn.Module):
    r"""Delta-Z-bar (Bardhan, Neeraj, Mitra, Mandal, arXiv:2412.09500), written from the paper.

    The authors released no code, so here is the derivation this implements.

    Set function. A classifier's mistakes on a batch form a set E: signal events it rejects
    (false negatives) and background events it accepts (false positives). With event weights
    normalised per class to the expected yields S = s_tot and B = b_tot, the lost signal is
    x(E) = sum_{E, sig} w and the accepted background y(E) = sum_{E, bkg} w, both modular and
    >= 0. The significance of the selection is Z(E) = (S - x) / sqrt(eps + y), the ideal one
    Z(empty) = S / sqrt(eps), and the loss of significance Delta-Z(E) = Z(empty) - Z(E) (the
    paper's eq. with counts n/nu and p/nu replaced by normalised weights). Delta-Z(empty) = 0.

    Submodularity. Delta-Z = g(x(E), y(E)) with g(x, y) = S/sqrt(eps) - (S - x)(eps + y)^(-1/2).
    On the feasible region (0 <= x <= S, y >= 0): d2g/dx2 = 0, d2g/dy2 = -3/4 (S - x)(eps+y)^(-5/2)
    <= 0 and d2g/dxdy = -1/2 (eps + y)^(-3/2) <= 0. Adding an element raises (x, y) by (a, b) >= 0;
    its gain g(x + a, y + b) - g(x, y) has derivatives in x and y that are integrals of these
    second derivatives, so it is <= 0 in both: the gain shrinks as the set grows, which is
    submodularity. g is also increasing in x and y, so Delta-Z is monotone.

    Extension. For a submodular set function with f(empty) = 0 the Lovasz extension is convex
    and piecewise linear and equals the set function on 0/1 vectors (`delta_z_lovasz`). It is
    evaluated at the hinge errors m_i = max(1 - F_i y_i, 0), y_i in {-1, +1}, F_i the logit: an
    event counts as (partly) mistaken when it is on the wrong side of the margin.

    eps regularises the significance of an empty background; the paper takes the expected signal
    yield, so `eps=None` uses s_tot. A batch without signal has x = 0 always: it can only
    penalise accepted background.
    """

    def __init__(
        self, eps: float | None = None, s_tot: float = S_TOT, b_tot: float = B_TOT
    ) -> None:
        super().__init__()
        self.eps = s_tot if eps is None else eps
        _check_positive("eps", self.eps)
        self.s_tot, self.b_tot = s_tot, b_tot

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        sign = 2.0 * target.to(torch.float64) - 1.0
        hinge = torch.relu(1.0 - logits.to(torch.float64) * sign)
        w = rescaled_weights(target, weight, self.s_tot, self.b_tot)
        return delta_z_lovasz(hinge, target, w, self.s_tot, self.eps).to(logits.dtype)


#: The registry of losses a config may train with, by class name: `model.describe_loss` saves
#: only these into a checkpoint and `SignificanceClassifier.load_from_checkpoint` rebuilds them
#: from it (a checkpoint names a class of this table, never one to import). A new loss is
#: added here (`register`) and in conf/loss/ (and conf/finetune/ if it can fine-tune).
LOSSES: dict[str, type[nn.Module]] = {}
#: The registered losses a fine-tune phase may use (`finetune.loss._target_`).
FINETUNE: list[str] = []


def register(cls: type[nn.Module], finetune: bool = True) -> type[nn.Module]:
    """Add a loss class to `LOSSES` (and, with `finetune`, to `FINETUNE`); returns it."""
    LOSSES[cls.__name__] = cls
    if finetune and cls.__name__ not in FINETUNE:
        FINETUNE.append(cls.__name__)
    return cls


for _loss in (SoftAMSLoss, AsimovLoss, DeltaZBarLoss, BCELoss):
    register(_loss)

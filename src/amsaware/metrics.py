"""Weighted significance and ranking metrics as torchmetrics `Metric`s.

Written by hand because no maintained library has them: the challenge's AMS with per-class weight
rescaling (`amsaware.data.weights`), and a weighted ROC AUC (torchmetrics' AUROC takes no sample
weights). Unweighted AUROC and accuracy come from torchmetrics itself.

Every metric keeps its inputs as concatenated states (`dist_reduce_fx="cat"`), so under DDP each
process gathers all events before computing and the value is the same as in one process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC
from torchmetrics.utilities import dim_zero_cat

from amsaware.data.schema import B_TOT, S_TOT, EventTable
from amsaware.data.weights import rescaled_weights, scale_to

#: Regularisation term of the challenge's AMS.
B_REG = 10.0


def ams(s: Tensor | float, b: Tensor | float, b_reg: float = B_REG) -> Tensor:
    """The challenge's approximate median significance, elementwise; 0 where s = 0.

    AMS = sqrt(2 ((s + b + b_reg) ln(1 + s / (b + b_reg)) - s)); the radicand is clamped at 0
    because rounding can make it slightly negative for tiny s.
    """
    s = torch.as_tensor(s, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    radicand = 2.0 * ((s + b + b_reg) * torch.log1p(s / (b + b_reg)) - s)
    return torch.sqrt(torch.clamp(radicand, min=0.0))


def _last_of_ties(sorted_scores: Tensor) -> Tensor:
    """Mask of the last position of each run of equal scores in a sorted vector."""
    last = torch.ones(len(sorted_scores), dtype=torch.bool, device=sorted_scores.device)
    last[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    return last


@dataclass(frozen=True)
class Cumulative:
    """Weights of signal (`tp`) and background (`fp`) events scoring >= each distinct score.

    One point per distinct score, from the tightest cut to the loosest: selecting
    `score >= thresholds[i]` keeps the `n_selected[i]` highest-scored events. `tp` and `fp` get
    the leading dimensions of the weights (one row per weight vector).
    """

    thresholds: Tensor
    n_selected: Tensor
    tp: Tensor
    fp: Tensor


def cumulative_by_score(scores: Tensor, target: Tensor, weight: Tensor) -> Cumulative:
    """The common core of the AMS curve and the ROC curve: one sort, two cumulative sums.

    `weight` may be `(..., n)`: every row is accumulated in the order of the one `scores`
    vector, so a batch of weight vectors (say bootstrap counts x event weights) costs one sort.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores = scores[order]
    w = weight.to(torch.float64).index_select(-1, order)
    signal = target[order].bool()
    tp = torch.cumsum(torch.where(signal, w, 0.0), -1)
    fp = torch.cumsum(w, -1).sub_(tp)  # one pass fewer than a second masked sum
    # A cut cannot split events with equal scores: keep the last position of each run of ties.
    last = _last_of_ties(sorted_scores)
    if bool(last.all()):  # no ties: every position is a cut (and no copy is needed)
        keep = torch.arange(len(scores), device=scores.device)
        return Cumulative(sorted_scores, keep + 1, tp, fp)
    keep = torch.nonzero(last).squeeze(1)
    return Cumulative(
        sorted_scores[keep], keep + 1, tp.index_select(-1, keep), fp.index_select(-1, keep)
    )


@dataclass(frozen=True)
class AMSCurve:
    """AMS as a function of a cut on the score, one point per distinct score.

    Selecting `score >= thresholds[i]` keeps the `n_selected[i]` highest-scored events and gives
    significance `ams[i]`; points run from the tightest cut to the loosest.
    """

    thresholds: Tensor
    n_selected: Tensor
    s: Tensor
    b: Tensor
    ams: Tensor
    n_events: int

    @property
    def fraction(self) -> Tensor:
        return self.n_selected.to(torch.float64) / self.n_events


def _to_total(cumulative: Tensor, total: float) -> Tensor:
    """Rescale cumulative weights so the loosest cut holds `total` (0 for an absent class)."""
    return cumulative * scale_to(total, cumulative[..., -1:])


def ams_curve(
    scores: Tensor,
    target: Tensor,
    weight: Tensor,
    s_tot: float = S_TOT,
    b_tot: float = B_TOT,
    b_reg: float = B_REG,
) -> AMSCurve:
    """AMS at every possible cut, with weights rescaled to the full-data totals (float64).

    `weight` may be `(..., n)`: one curve per row of weights (`s`, `b`, `ams` get the leading
    dimensions), all sharing the thresholds of `scores`.
    """
    return ams_curve_of(
        cumulative_by_score(scores, target, weight), len(scores), s_tot, b_tot, b_reg
    )


def ams_curve_of(
    cumulative: Cumulative,
    n_events: int,
    s_tot: float = S_TOT,
    b_tot: float = B_TOT,
    b_reg: float = B_REG,
) -> AMSCurve:
    """The AMS curve of cumulative weights already computed (reuses their sort)."""
    s = _to_total(cumulative.tp, s_tot)
    b = _to_total(cumulative.fp, b_tot)
    return AMSCurve(
        thresholds=cumulative.thresholds,
        n_selected=cumulative.n_selected,
        s=s,
        b=b,
        ams=ams(s, b, b_reg),
        n_events=n_events,
    )


def ams_at_threshold(
    scores: Tensor,
    target: Tensor,
    weight: Tensor,
    threshold: float,
    s_tot: float = S_TOT,
    b_tot: float = B_TOT,
) -> Tensor:
    """AMS of the selection `score >= threshold`, weights rescaled to the totals."""
    return ams_of_selection(scores >= threshold, target, weight, s_tot, b_tot)


def ams_at_fraction(
    scores: Tensor,
    target: Tensor,
    weight: Tensor,
    fraction: float,
    s_tot: float = S_TOT,
    b_tot: float = B_TOT,
) -> Tensor:
    """AMS of selecting the top `fraction` of events by score (the winners' kind of cut)."""
    return ams_of_selection(select_top_fraction(scores, fraction), target, weight, s_tot, b_tot)


def ams_of_selection(
    selected: Tensor,
    target: Tensor,
    weight: Tensor,
    s_tot: float = S_TOT,
    b_tot: float = B_TOT,
) -> Tensor:
    """AMS of an arbitrary selection mask, weights rescaled to the totals (per row of `weight`)."""
    w = rescaled_weights(target, weight, s_tot, b_tot)
    signal = target.bool()
    s = torch.where(selected & signal, w, 0.0).sum(-1)
    b = torch.where(selected & ~signal, w, 0.0).sum(-1)
    return ams(s, b)


def select_top_fraction(scores: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Mask of the ceil(fraction * n) highest scores.

    Ties that straddle the cut (saturated scores) are broken in a seeded random order, not by
    position, so no block of events (say, the public leaderboard rows listed first) is favoured.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    # The small tolerance keeps 0.15 * 100 from rounding up to 16 events.
    n_selected = math.ceil(fraction * len(scores) - 1e-9)
    shuffle = torch.randperm(len(scores), generator=torch.Generator().manual_seed(seed))
    shuffle = shuffle.to(scores.device)
    order = shuffle[torch.argsort(scores[shuffle], descending=True, stable=True)]
    selected = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    selected[order[:n_selected]] = True
    return selected


def logit_of_mean(logits: np.ndarray) -> np.ndarray:
    """logit(mean_i sigmoid(z_i)) over the models of axis 0, without rounding to +-inf.

    The ranking key of a score averaged over several models (repeats, a fold ensemble): it
    orders events as the mean probability does, and keeps apart events whose mean probability
    rounds to exactly 1. log(sum p) - log(sum (1 - p)) with log p = -softplus(-z).
    """
    z = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    if len(z) == 1:  # one model: its own logits, exactly
        return z[0].copy()
    log_p, log_q = np.full((2, z.shape[1]), -np.inf)
    for row in z:
        log_p, log_q = add_to_logit_sums(log_p, log_q, row)
    return log_p - log_q


def add_to_logit_sums(
    log_p: np.ndarray, log_q: np.ndarray, logits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The running log sums of p and 1 - p with one more model's logits; `log_p - log_q` is
    `logit_of_mean` of the models so far (training and predict.py add them the same way, so
    their ranking keys agree to the last bit)."""
    z = np.asarray(logits, dtype=np.float64)
    return np.logaddexp(log_p, -np.logaddexp(0.0, -z)), np.logaddexp(log_q, -np.logaddexp(0.0, z))


class _EventMetric(Metric):
    """Base for metrics that need every event's score, label and weight at compute time."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("weight", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, weight: Tensor) -> None:
        self.scores.append(preds.detach().reshape(-1))
        self.target.append(target.detach().reshape(-1))
        self.weight.append(weight.detach().reshape(-1).to(torch.float64))

    def _events(self) -> tuple[Tensor, Tensor, Tensor]:
        return dim_zero_cat(self.scores), dim_zero_cat(self.target), dim_zero_cat(self.weight)


class ValidationEvents(_EventMetric):
    """Every event's logit, label and weight (gathered from all processes under DDP), so a
    loss can be computed once on a whole validation fold: a significance loss is a function
    of the fold's totals, not a mean of per-batch values."""

    def update(self, preds: Tensor, target: Tensor, weight: Tensor) -> None:
        self.scores.append(preds.detach().reshape(-1))
        self.target.append(target.detach().reshape(-1))
        self.weight.append(weight.detach().reshape(-1))

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(self.scores, list) and not self.scores:  # no validation rows
            return torch.empty(0), torch.empty(0), torch.empty(0)
        return self._events()


class WeightedAMS(_EventMetric):
    """AMS at the paper's cut (score >= 0.5), at the top 15%, and at its maximum over all cuts.

    `compute` returns `ams@0.5`, `ams@15%`, `ams_max` and `ams_max_threshold` (the score cut
    that reaches the maximum). Weights are rescaled per class to `s_tot`/`b_tot` first.
    """

    higher_is_better = True

    def __init__(
        self,
        s_tot: float = S_TOT,
        b_tot: float = B_TOT,
        threshold: float = 0.5,
        fraction: float = 0.15,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.s_tot, self.b_tot = s_tot, b_tot
        self.threshold, self.fraction = threshold, fraction

    def compute(self) -> dict[str, Tensor]:
        scores, target, weight = self._events()
        curve = ams_curve(scores, target, weight, self.s_tot, self.b_tot)
        best = torch.argmax(curve.ams)
        totals = (self.s_tot, self.b_tot)
        return {
            f"ams@{self.threshold:g}": ams_at_threshold(
                scores, target, weight, self.threshold, *totals
            ),
            f"ams@{self.fraction:.0%}": ams_at_fraction(
                scores, target, weight, self.fraction, *totals
            ),
            "ams_max": curve.ams[best],
            "ams_max_threshold": curve.thresholds[best].to(torch.float64),
        }


def roc_auc(cumulative: Cumulative) -> Tensor:
    """Area under the ROC curve of cumulative weights (per row); tied scores form one trapezoid."""
    tp, fp = cumulative.tp, cumulative.fp
    zero = torch.zeros((*tp.shape[:-1], 1), dtype=torch.float64, device=tp.device)
    tpr = torch.cat([zero, tp / tp[..., -1:]], -1)
    fpr = torch.cat([zero, fp / fp[..., -1:]], -1)
    return torch.trapezoid(tpr, fpr, dim=-1)


def weighted_roc_auc(scores: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Area under the ROC curve with event weights; tied scores form one trapezoid.

    `weight` may be `(..., n)`: one AUC per row of weights (with event counts as weights, the
    AUC of a bootstrap resample).
    """
    return roc_auc(cumulative_by_score(scores, target, weight))


class WeightedAUROC(_EventMetric):
    """ROC AUC with event weights (equal to scikit-learn's `roc_auc_score(sample_weight=...)`)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        return weighted_roc_auc(*self._events())


def classification_metrics(
    prefix: str, s_tot: float = S_TOT, b_tot: float = B_TOT
) -> MetricCollection:
    """The project's metric set (docs/run-folder.md names) under `prefix`, e.g. `val/` or `oof/`.

    Update it with keyword arguments: `metrics.update(preds=probabilities, target=labels,
    weight=weights)`; each metric takes the arguments it needs.
    """
    return MetricCollection(
        {
            "auroc": BinaryAUROC(),
            "auroc_weighted": WeightedAUROC(),
            "accuracy": BinaryAccuracy(),
            "ams": WeightedAMS(s_tot=s_tot, b_tot=b_tot),
        },
        prefix=prefix,
        compute_groups=False,
    )


def evaluate(
    scores: Tensor,
    target: Tensor,
    weight: Tensor,
    prefix: str,
    s_tot: float = S_TOT,
    b_tot: float = B_TOT,
) -> dict[str, float]:
    """All metrics of `classification_metrics` on one set of predictions, as plain floats."""
    metrics = classification_metrics(prefix, s_tot, b_tot).to(scores.device)
    metrics.update(preds=scores, target=target.long(), weight=weight)
    return {name: float(value) for name, value in metrics.compute().items()}


def test_metrics(
    test: EventTable, scores: np.ndarray, selected: np.ndarray, prefix: str = "test/"
) -> dict[str, float]:
    """`test/...` (or `prefix`) metrics, `ams` at the chosen cut and the leaderboard splits'.

    Public and private AMS follow the challenge: one global selection, scored on the 'b' and
    'v' events separately with weights rescaled within each split.
    """
    # Copies: arrays read from a file can be read-only (pandas' copy-on-write), which
    # torch.from_numpy warns about.
    p = torch.tensor(scores)
    y = torch.tensor(test.label, dtype=torch.int64)
    w = torch.tensor(test.weight)
    chosen = torch.tensor(selected)
    totals = (test.s_tot, test.b_tot)
    result = evaluate(p, y, w, prefix, *totals)
    result[f"{prefix}ams"] = float(ams_of_selection(chosen, y, w, *totals))
    if test.kaggle_set is not None:
        for name, letter in (("public", "b"), ("private", "v")):
            rows = torch.from_numpy(test.kaggle_set == letter)
            if rows.any():
                ams = ams_of_selection(chosen[rows], y[rows], w[rows], *totals)
                result[f"{prefix}ams_{name}"] = float(ams)
    return result

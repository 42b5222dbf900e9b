"""Paired bootstrap comparison of runs scored on the same events (the seed paper's evidence).

Every run is evaluated on the same resamples of event indices, so a difference between runs is
measured resample by resample and the noise common to both (which events happen to be drawn)
cancels. A resample is represented by how many times each event was drawn: weighting an event
by its count gives exactly the metrics of the resampled events, so the resamples go through
`amsaware.metrics` as batches of weight vectors (one sort per run and batch, no loop over
resamples) and there is no second AMS or AUC implementation here.

Hand-written because no maintained library does this paired, weighted, many-statistic bootstrap
(`scipy.stats.bootstrap` resamples each statistic on its own and recomputes ranks every time).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from amsaware.data.schema import B_TOT, S_TOT
from amsaware.metrics import Cumulative, ams_curve_of, cumulative_by_score, roc_auc

#: The compared statistics: AMS at the run's own cut, AMS at its best cut, ROC AUC plain and
#: weighted. Names follow docs/run-folder.md's metric names.
STATISTICS = ("ams@cut", "ams_max", "auroc", "auroc_weighted")

#: Elements (resamples x events) per batch of resamples: bounds memory at a few hundred MB.
BATCH_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class RunScores:
    """One run's out-of-fold scores and its chosen cut (`score >= threshold` selects)."""

    name: str
    scores: np.ndarray
    threshold: float


def resample_indices(n_events: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Batches of bootstrap resamples, `(batch, n_events)` event indices drawn with replacement.

    Seeded and independent of anything else: every run compared is given the same batches.
    """
    if n_events < 1 or n_resamples < 1:
        raise ValueError(f"need events and resamples, got {n_events} and {n_resamples}")
    rng = np.random.default_rng(seed)
    batch = max(1, BATCH_ELEMENTS // n_events)
    for start in range(0, n_resamples, batch):
        yield rng.integers(0, n_events, size=(min(batch, n_resamples - start), n_events))


def counts_of(indices: np.ndarray, n_events: int) -> np.ndarray:
    """How often each event occurs in each resample: `(batch, n_events)` from indices."""
    rows = indices.shape[0]
    offsets = (np.arange(rows) * n_events)[:, None]
    return np.bincount((indices + offsets).ravel(), minlength=rows * n_events).reshape(
        rows, n_events
    )


def _statistics(
    scores: torch.Tensor,
    target: torch.Tensor,
    counts: torch.Tensor,
    weight: torch.Tensor,
    threshold: float,
    totals: tuple[float, float] = (S_TOT, B_TOT),
) -> dict[str, np.ndarray]:
    """STATISTICS for rows of event counts `(batch, n)`: the value on each resample.

    The AMS at the cut is read off the AMS curve at the run's threshold: the curve's point
    there is exactly the selection `score >= threshold`.
    """
    # One sort for both weightings: [counts x event weights, counts].
    both = cumulative_by_score(scores, target, torch.stack([counts * weight, counts]))
    weighted = Cumulative(both.thresholds, both.n_selected, both.tp[0], both.fp[0])
    plain = Cumulative(both.thresholds, both.n_selected, both.tp[1], both.fp[1])
    curve = ams_curve_of(weighted, len(scores), *totals)
    at_cut = int((curve.thresholds >= threshold).sum()) - 1
    nothing = torch.zeros(counts.shape[0], dtype=torch.float64, device=counts.device)
    values = {
        "ams@cut": curve.ams[..., at_cut] if at_cut >= 0 else nothing,
        "ams_max": curve.ams.max(-1).values,
        "auroc": roc_auc(plain),
        "auroc_weighted": roc_auc(weighted),
    }
    return {name: value.cpu().numpy() for name, value in values.items()}


@dataclass(frozen=True)
class BootstrapSample:
    """Each run's STATISTICS on the original events (`observed`) and on every resample."""

    runs: list[str]
    observed: dict[str, dict[str, float]]
    resampled: dict[str, dict[str, np.ndarray]]
    n_resamples: int
    seed: int


def bootstrap(
    runs: Sequence[RunScores],
    label: np.ndarray,
    weight: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    totals: tuple[float, float] = (S_TOT, B_TOT),
) -> BootstrapSample:
    """Every run's STATISTICS on the same `n_resamples` paired resamples of the events.

    `device` runs the batched metrics there (a GPU makes 1000 resamples of 250k events take
    seconds); the resamples themselves are drawn on the host, so results do not depend on it.
    AMS is on the scale of `totals` (S_tot, B_tot), the runs' data's.
    """
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be distinct, got {names}")
    n = len(label)
    for run in runs:
        if run.scores.shape != (n,):
            raise ValueError(f"run {run.name}: {run.scores.shape} scores for {n} events")

    def tensor(values: np.ndarray, dtype: np.dtype) -> torch.Tensor:
        return torch.tensor(np.asarray(values, dtype=dtype), device=device)  # a copy

    target = tensor(label, np.int64)
    w = tensor(weight, np.float64)
    scores = {run.name: tensor(run.scores, np.float64) for run in runs}
    one = torch.ones((1, n), dtype=torch.float64, device=device)
    observed = {
        run.name: {
            k: float(v[0])
            for k, v in _statistics(scores[run.name], target, one, w, run.threshold, totals).items()
        }
        for run in runs
    }
    parts: dict[str, dict[str, list[np.ndarray]]] = {
        name: {k: [] for k in STATISTICS} for name in names
    }
    for indices in resample_indices(n, n_resamples, seed):
        counts = tensor(counts_of(indices, n), np.float64)
        for run in runs:
            values = _statistics(scores[run.name], target, counts, w, run.threshold, totals)
            for k in STATISTICS:
                parts[run.name][k].append(values[k])
    resampled = {
        name: {k: np.concatenate(chunks) for k, chunks in stats.items()}
        for name, stats in parts.items()
    }
    return BootstrapSample(names, observed, resampled, n_resamples, seed)


@dataclass(frozen=True)
class Difference:
    """One run minus the reference on one statistic, over the paired resamples.

    `p_value` is one-sided for "the run is better than the reference": the fraction of resamples
    where it is worse, counting ties half (mid-p), so identical runs give 0.5 rather than 1.
    """

    run: str
    reference: str
    statistic: str
    observed: float
    mean: float
    ci_low: float
    ci_high: float
    p_value: float
    fraction_better: float
    n_resamples: int
    confidence: float
    #: The statistic is better when lower (`fit/sigma_mu`): "better" is a negative difference.
    lower_is_better: bool = False

    @property
    def within_noise(self) -> bool:
        """True when the confidence interval of the difference contains zero."""
        return self.ci_low <= 0.0 <= self.ci_high

    @property
    def verdict(self) -> str:
        if self.within_noise:
            return "within noise"
        run_better = (self.ci_high < 0) if self.lower_is_better else (self.ci_low > 0)
        return f"{self.run} better" if run_better else f"{self.reference} better"


def paired_difference(
    run: str,
    reference: str,
    statistic: str,
    observed: tuple[float, float],
    resampled: tuple[np.ndarray, np.ndarray],
    confidence: float = 0.95,
    lower_is_better: bool = False,
) -> Difference:
    """`run` minus `reference` on one statistic: `observed` and `resampled` hold (run,
    reference) values, the resamples paired (the same events drawn for both)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    diff = np.asarray(resampled[0], np.float64) - np.asarray(resampled[1], np.float64)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(diff, [tail, 100.0 - tail])
    better = -diff if lower_is_better else diff
    return Difference(
        run=run,
        reference=reference,
        statistic=statistic,
        observed=observed[0] - observed[1],
        mean=float(diff.mean()),
        ci_low=float(low),
        ci_high=float(high),
        p_value=float(np.mean(better < 0) + 0.5 * np.mean(better == 0)),
        fraction_better=float(np.mean(better > 0)),
        n_resamples=len(diff),
        confidence=confidence,
        lower_is_better=lower_is_better,
    )


def differences(sample: BootstrapSample, confidence: float = 0.95) -> list[Difference]:
    """Every run against the first (the reference), for every statistic."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    reference, *others = sample.runs
    return [
        paired_difference(
            run,
            reference,
            k,
            (sample.observed[run][k], sample.observed[reference][k]),
            (sample.resampled[run][k], sample.resampled[reference][k]),
            confidence,
        )
        for run in others
        for k in STATISTICS
    ]

"""INFERNO: the expected variance of mu from a binned likelihood built inside the batch.

de Castro & Dorigo, "INFERNO: Inference-Aware Neural Optimisation" (arXiv:1806.04743): the loss
is (I^-1)_mumu, the variance of the signal strength that a binned Poisson fit of the network's
score would have, with the nuisance parameters profiled. Written here because no maintained
library builds that likelihood from a batch of scores (pyhf builds it from fixed histograms and
is the instrument the trained score is judged by, `amsaware.fit`). Formulas and choices:
docs/inferno.md.

The network keeps ONE logit per event (the project ranks, cuts, bins, predicts and exports one
score). Its histogram is soft: the score p = sigmoid(logit) is shared among `bins` uniform bins
on (0, 1) by a softmax of squared distances to the bin centres, so the counts are
differentiable. Sums are float64, as in `amsaware.losses`.

Shape nuisances enter as soft histograms of the same events shifted by -1 and +1 sigma: the
caller evaluates the network on each shifted copy and hands over the logits, one row per
variation, in the order

    row 0: nominal, row 2k + 1: shape nuisance k at -1 sigma, row 2k + 2: at +1 sigma.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from amsaware.data.schema import B_TOT, S_TOT
from amsaware.data.systematics import Systematics
from amsaware.data.weights import class_scales
from amsaware.losses import Normalisation, _check_normalisation, _check_positive, register

Method = Literal["fisher", "hessian"]

#: Expected events added to every bin: a Poisson bin with no expected events carries infinite
#: information on any parameter that populates it (d n / d theta)^2 / n, which the network
#: would learn to exploit. The floor is a constant background no parameter moves.
COUNT_FLOOR = 1e-3


def soft_assignment(logits: Tensor, bins: int, temperature: float) -> Tensor:
    """Each event's share of `bins` uniform bins of p = sigmoid(logit) on (0, 1), float64.

    Shape `logits.shape + (bins,)`, rows summing to 1: softmax_j(-((p - c_j) / w)^2 / tau) with
    c_j the bin centres and w the bin width. With squared distances the share between two
    neighbouring bins is exactly a logistic function of the distance to their common edge,
    with width tau * w / 2 (the exponents differ by a term linear in p): a soft cut at every
    edge, while bins further away fall off as a Gaussian. (With |p - c_j| far bins would only
    fall off exponentially and leak more.) tau -> 0 gives the hard histogram. The probability
    scale, not the logit, is binned because it is bounded: a fixed number of bins covers every
    logit, and the end bins take the events whose logits run off to +-100.
    """
    p = torch.sigmoid(logits.to(torch.float64)).unsqueeze(-1)
    centres = (torch.arange(bins, dtype=torch.float64, device=p.device) + 0.5) / bins
    return torch.softmax(-(((p - centres) * bins) ** 2) / temperature, dim=-1)


def soft_histogram(logits: Tensor, weight: Tensor, bins: int, temperature: float) -> Tensor:
    """The weighted soft histogram of sigmoid(logits) (`soft_assignment`), shape (bins,), float64.

    Its total is the total weight, whatever the temperature.
    """
    share = soft_assignment(logits, bins, temperature)
    return (weight.to(torch.float64).unsqueeze(-1) * share).sum(-2)


def asimov_variance(
    signal: Tensor,
    backgrounds: Tensor,
    norm_sizes: Sequence[float] | Tensor = (),
    free: Sequence[bool] | None = None,
    count_floor: float = COUNT_FLOOR,
    method: Method = "fisher",
    stat_errors: Tensor | None = None,
) -> Tensor:
    """(I^-1)_mumu of a binned Poisson likelihood with Asimov data at mu = 1, theta = 0.

    `signal` (V, B) and `backgrounds` (V, P, B) are histograms (expected events per bin) of the
    signal and of P background processes, rows in the module's order (nominal, then down/up
    per shape nuisance: V = 1 + 2K). The expected count of bin j is

        n_j = mu h_sig,j(theta) + sum_p exp(kappa_p nu_p) h_p,j(theta) + floor,

    h(theta) = h0 + sum_k [theta_k (h_k+ - h_k-) / 2 + theta_k^2 (h_k+ + h_k- - 2 h0) / 2] per
    process (quadratic interpolation through the three histograms, pyhf's code 2 inside
    +-1 sigma), kappa_p = atanh(f_p) with f_p = `norm_sizes[p]` (0: no such nuisance), and a
    N(0, 1) constraint on every nuisance except the shape nuisances marked `free`.

    For Asimov data the Hessian of -ln L at the expectation equals the Fisher information
    I_ab = sum_j (d n_j / d a)(d n_j / d b) / n_j + constraints, which needs only the
    derivatives at theta = 0: (h_k+ - h_k-) / 2 for a shape (the symmetric slope; pyhf's
    piecewise-linear code 0 has a kink there) and kappa_p h_p for a normalisation. The fit
    (`amsaware.fit`: normsys hi = 1 + f, lo = 1 - f, pyhf's exponential code 1) has slope
    ln(1 + f) above 0 and -ln(1 - f) below; atanh(f) = ln((1 + f) / (1 - f)) / 2 lies between
    them and is the slope of pyhf's smooth code 4 at 0. Only first derivatives matter at the
    Asimov point, so the interpolations away from 0 do not change the result.
    `method="fisher"` computes that directly; `"hessian"` differentiates the NLL twice with
    `torch.autograd.functional.hessian` (slower; kept as the check that the two agree).

    `stat_errors` (B,), the templates' relative Monte Carlo uncertainty per bin, adds pyhf's
    staterror (`fit.mc_stat`): one gamma_j per bin scaling every process, N(1, delta_j), so
    d n_j / d gamma_j = sum of the processes in bin j and the constraint's curvature is
    1 / delta_j^2 (a bin with delta_j = 0 gets no gamma: its counts are exact).
    """
    signal = signal.to(torch.float64)
    backgrounds = backgrounds.to(torch.float64)
    if signal.dim() != 2 or backgrounds.dim() != 3 or backgrounds.shape[0] != signal.shape[0]:
        raise ValueError(
            "asimov_variance needs signal (V, bins) and backgrounds (V, processes, bins) with the "
            f"same V; got {tuple(signal.shape)} and {tuple(backgrounds.shape)}"
        )
    n_rows, n_processes = signal.shape[0], backgrounds.shape[1]
    if n_rows % 2 != 1:
        raise ValueError(
            f"expected 1 + 2K histogram rows (nominal, down/up per shape), got {n_rows}"
        )
    n_shapes = n_rows // 2
    sizes = torch.as_tensor(norm_sizes, dtype=torch.float64, device=signal.device)
    if sizes.numel() == 0:
        sizes = signal.new_zeros(n_processes)
    if sizes.shape != (n_processes,):
        raise ValueError(f"norm_sizes needs one size per background process ({n_processes})")
    kappa = torch.atanh(sizes)
    is_free = [False] * n_shapes if free is None else list(free)
    if len(is_free) != n_shapes:
        raise ValueError(f"free needs one flag per shape nuisance ({n_shapes}), got {len(is_free)}")
    # Constraint curvature per parameter (mu, shapes, norms): 0 for mu and free shapes.
    constraint = signal.new_tensor(
        [0.0] + [0.0 if f else 1.0 for f in is_free] + [1.0] * n_processes
    )
    hists = torch.cat([signal.unsqueeze(1), backgrounds], dim=1)  # (V, 1 + P, B)
    gammas = None
    if stat_errors is not None:
        delta = torch.as_tensor(stat_errors, dtype=torch.float64, device=signal.device)
        if delta.shape != signal.shape[1:]:
            raise ValueError(f"stat_errors needs one relative size per bin ({signal.shape[1]})")
        gammas = delta > 0
        curvature = 1.0 / delta[gammas] ** 2
        constraint = torch.cat([constraint, curvature])
    if method == "fisher":
        information = _fisher(hists, kappa, count_floor, gammas) + torch.diag(constraint)
    elif method == "hessian":
        information = _hessian(hists, kappa, constraint, count_floor, gammas)
    else:
        raise ValueError(f"loss.method must be 'fisher' or 'hessian', got {method!r}")
    unit = torch.zeros_like(constraint)
    unit[0] = 1.0
    return torch.linalg.solve(information, unit)[0]


def _fisher(
    hists: Tensor, kappa: Tensor, count_floor: float, gammas: Tensor | None = None
) -> Tensor:
    """sum_j J_aj J_bj / n_j with J the derivatives of n at (mu = 1, theta = 0, gamma = 1);
    `gammas` (B,) marks the bins with a staterror gamma."""
    nominal = hists[0]
    slopes = (hists[2::2] - hists[1::2]).sum(1) / 2.0  # (K, B): every process, mu = 1
    parts = [nominal[:1], slopes, kappa.unsqueeze(-1) * nominal[1:]]
    if gammas is not None:  # gamma_j scales every process of bin j
        parts.append(torch.diag(nominal.sum(0))[gammas])
    jacobian = torch.cat(parts)
    expected = nominal.sum(0) + count_floor
    return (jacobian / expected) @ jacobian.T


def _hessian(
    hists: Tensor,
    kappa: Tensor,
    constraint: Tensor,
    count_floor: float,
    gammas: Tensor | None = None,
) -> Tensor:
    """The Hessian of the Asimov NLL at (1, 0, ...), by automatic differentiation (staterror
    gammas parameterised as gamma - 1, so every constraint is centred on 0)."""
    nominal, down, up = hists[0], hists[1::2], hists[2::2]
    slope, curvature = (up - down) / 2.0, (up + down - 2.0 * nominal) / 2.0
    n_shapes, n_norms = slope.shape[0], kappa.shape[0]

    def expected(params: Tensor) -> Tensor:
        theta = params[1 : 1 + n_shapes]
        nu = params[1 + n_shapes : 1 + n_shapes + n_norms]
        t = theta.view(-1, 1, 1)
        h = nominal + (t * slope + t**2 * curvature).sum(0)
        scale = torch.cat([params[:1], torch.exp(kappa * nu)])
        n = (scale.unsqueeze(-1) * h).sum(0)
        if gammas is not None:
            shift = torch.zeros_like(n).masked_scatter(gammas, params[1 + n_shapes + n_norms :])
            n = n * (1.0 + shift)
        return n + count_floor

    start = constraint.new_zeros(constraint.shape)
    start[0] = 1.0
    asimov = expected(start)

    def nll(params: Tensor) -> Tensor:
        n = expected(params)
        return (n - asimov * torch.log(n)).sum() + 0.5 * (constraint * params**2).sum()

    # create_graph keeps the Hessian differentiable with respect to the histograms.
    return torch.autograd.functional.hessian(nll, start, create_graph=hists.requires_grad)


class InfernoLoss(nn.Module):
    """INFERNO's loss, the Asimov variance of mu (`asimov_variance`), on a batch of scores.

    `forward(logits, target, weight, process=None)`: `logits` (V, n) holds the network's logit
    for every event of the batch nominal (row 0) and shifted to each shape nuisance's -1/+1
    sigma (rows 2k + 1, 2k + 2, k in the order of `shapes`); a 1-D `logits` is the nominal
    row alone (no shapes). `weight` is (n,), or (V, n) when a shift changes weights (an event
    the shifted selection drops weighs 0 in that row). `process` (n,) holds each event's index
    into `processes` (read for background events only); without it every background event is
    `processes[0]`, which then must be the only process. So the plain `(logits, target,
    weight)` call of the other losses works: stat only, or with a normalisation nuisance on
    the one background.

    `norms` maps a background process to the relative size f of its normalisation nuisance;
    `free` names shape nuisances without a Gaussian constraint (the INFERNO paper's benchmarks
    1-2). `normalisation="batch"` rescales each class of the batch to `s_tot`/`b_tot` from the
    nominal weights (`amsaware.losses.soft_counts`' convention: the processes keep their
    shares of the batch), so the histograms count expected events; a batch with fewer than
    `min_class_events` events of a class (or, with `raw`, without signal weight, where I is
    singular) contributes a zero loss with zero gradient.
    """

    def __init__(
        self,
        bins: int = 10,
        temperature: float = 0.1,
        shapes: Sequence[str] = (),
        processes: Sequence[str] = ("background",),
        norms: Mapping[str, float] | None = None,
        free: Sequence[str] = (),
        normalisation: Normalisation = "batch",
        min_class_events: int = 1,
        count_floor: float = COUNT_FLOOR,
        method: Method = "fisher",
        s_tot: float = S_TOT,
        b_tot: float = B_TOT,
    ) -> None:
        super().__init__()
        _check_normalisation(normalisation)
        _check_positive("temperature", temperature)
        if not (isinstance(bins, int) and bins >= 1):
            raise ValueError(f"loss.bins must be an integer >= 1, got {bins!r}")
        if count_floor < 0:
            raise ValueError(f"loss.count_floor must be >= 0, got {count_floor}")
        if method not in ("fisher", "hessian"):
            raise ValueError(f"loss.method must be 'fisher' or 'hessian', got {method!r}")
        if not processes:
            raise ValueError("loss.processes needs at least one background process")
        norms = dict(norms or {})
        for name, size in norms.items():
            if name not in processes:
                raise ValueError(
                    f"loss.norms.{name}: not a background process of {list(processes)}"
                )
            if not 0 < size < 1:
                raise ValueError(f"loss.norms.{name} must be a relative size in (0, 1), got {size}")
        for name in free:
            if name not in shapes:
                raise ValueError(f"loss.free: {name!r} is not a shape nuisance of {list(shapes)}")
        self.bins, self.temperature = bins, temperature
        self.shapes, self.processes = tuple(shapes), tuple(processes)
        self.norms, self.free = norms, tuple(free)
        self.normalisation, self.min_class_events = normalisation, min_class_events
        self.count_floor, self.method = count_floor, method
        self.s_tot, self.b_tot = s_tot, b_tot
        self._sizes = [norms.get(p, 0.0) for p in self.processes]
        self._free = [name in self.free for name in self.shapes]

    def histograms(
        self, logits: Tensor, target: Tensor, weight: Tensor, process: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Soft histograms (signal (V, B), backgrounds (V, P, B)) in expected events."""
        logits = logits.unsqueeze(0) if logits.dim() == 1 else logits
        n_rows, n_events = logits.shape
        if n_rows != 1 + 2 * len(self.shapes):
            raise ValueError(
                f"InfernoLoss with shapes {list(self.shapes)} needs 1 + 2 x {len(self.shapes)} "
                f"logit rows (nominal, then down/up per shape), got {n_rows}"
            )
        w = weight.to(torch.float64).expand(n_rows, n_events)
        signal = target.bool()
        if process is None:
            if len(self.processes) != 1:
                raise ValueError(
                    f"InfernoLoss with processes {list(self.processes)} needs each event's process"
                )
            process = torch.zeros(n_events, dtype=torch.long, device=logits.device)
        elif ((process[~signal] < 0) | (process[~signal] >= len(self.processes))).any():
            raise ValueError(
                "InfernoLoss: a background event's process index lies outside "
                f"[0, {len(self.processes)}) (processes {list(self.processes)})"
            )
        # Membership (n, 1 + P): column 0 signal, column 1 + p background process p.
        member = torch.cat(
            [
                signal.unsqueeze(-1),
                (~signal).unsqueeze(-1)
                & (
                    process.unsqueeze(-1) == torch.arange(len(self.processes), device=logits.device)
                ),
            ],
            dim=-1,
        ).to(torch.float64)
        share = soft_assignment(logits, self.bins, self.temperature)  # (V, n, B)
        hists = torch.einsum("vnb,vn,np->vpb", share, w, member)
        if self.normalisation == "batch":
            scale_s, scale_b = class_scales(target, w[0], self.s_tot, self.b_tot)
            scale = torch.cat([scale_s, scale_b.expand(len(self.processes))])
            hists = hists * scale.unsqueeze(-1)
        return hists[:, 0], hists[:, 1:]

    def forward(
        self, logits: Tensor, target: Tensor, weight: Tensor, process: Tensor | None = None
    ) -> Tensor:
        signal, backgrounds = self.histograms(logits, target, weight, process)
        nominal_signal = signal[0].sum()
        usable = nominal_signal > 0
        if self.normalisation == "batch":
            n_signal = target.sum()
            enough = (n_signal >= self.min_class_events) & (
                len(target) - n_signal >= self.min_class_events
            )
            usable = usable & enough
        # Without signal I_mumu = 0 and I is singular: solve a harmless stand-in instead, so
        # no NaN reaches the gradient through the branch torch.where discards.
        signal = torch.where(usable, signal, torch.ones_like(signal))
        variance = asimov_variance(
            signal, backgrounds, self._sizes, self._free, self.count_floor, self.method
        )
        dtype = logits.dtype if logits.is_floating_point() else torch.float32
        return torch.where(usable, variance, 0.0 * variance).to(dtype)


#: The validation metrics `SigmaMu` gives: the expected sigma_mu with every nuisance profiled
#: and with none (the counterparts of the fit's fit/sigma_mu and fit/sigma_mu_stat).
SIGMA_MU, SIGMA_MU_STAT = "val/sigma_mu", "val/sigma_mu_stat"


@dataclass(frozen=True)
class SigmaMu:
    """The expected sigma_mu of the binned Asimov fit the run ends with, on given events:
    the validation fold's counterpart of fit/sigma_mu, for any loss and network.

    A metric, not a loss: HARD histograms, binned as `amsaware.fit` bins (`fit.choose_binning`:
    `bins` edges at equal signal weight of the nominal scores, then merged until every bin holds
    `min_background` background Monte Carlo events). The binning is cheap (one sort of the
    fold's scores), so it is redone at every validation, as the fit would bin that score. A fold
    too small for `bins` bins gets as many as it can fill (min(bins, signal events, background
    events / min_background)); none: NaN. Weights are rescaled per class to `s_tot`/`b_tot` from
    the events' nominal weights before the post-selection, as the fit stage rescales its events.
    The likelihood is `asimov_variance`'s (shape nuisances from the rows at -1/+1 sigma with
    their symmetric slopes, the normalisation nuisances `norms` per background process, N(0, 1)
    constraints, and with `mc_stat` the templates' staterror), so it differs from the fit's
    MINOS width only where the likelihood is not parabolic (pyhf's kinked histosys and normsys
    interpolations, docs/inferno.md) and, per bin, by the count floor.
    """

    processes: tuple[str, ...] = ("background",)
    norms: Mapping[str, float] = field(default_factory=dict)
    bins: int = 10
    min_background: int = 20  # fit.MIN_BACKGROUND (tested equal; fit imports pyhf)
    mc_stat: bool = True
    s_tot: float = S_TOT
    b_tot: float = B_TOT

    def __call__(
        self, logits: Tensor, target: Tensor, weight: Tensor, row_weight: Tensor, process: Tensor
    ) -> dict[str, float]:
        """`SIGMA_MU` and `SIGMA_MU_STAT` of events scored `logits` (V, n) (rows as
        `InfernoLoss` takes them), labels `target` (n,), nominal weights `weight` (n,) before
        the selection, per-row weights `row_weight` (V, n) (0 where a row's selection drops
        the event) and background process indices `process` (n,) into `processes`."""
        from amsaware.fit import choose_binning  # fit imports pyhf: only when measured

        z = logits.detach().to("cpu", torch.float64).numpy()
        z = z[None] if z.ndim == 1 else z
        signal = target.detach().cpu().numpy().astype(bool)
        w = weight.detach().to("cpu", torch.float64).numpy()
        rows = row_weight.detach().to("cpu", torch.float64).numpy().reshape(z.shape)
        scale_s = self.s_tot / w[signal].sum() if w[signal].sum() > 0 else 0.0
        scale_b = self.b_tot / w[~signal].sum() if w[~signal].sum() > 0 else 0.0
        rows = rows * np.where(signal, scale_s, scale_b)
        n_bins = min(self.bins, int(signal.sum()), int((~signal).sum()) // self.min_background)
        nan = {SIGMA_MU: math.nan, SIGMA_MU_STAT: math.nan}
        if n_bins < 1 or not rows[0][signal].sum() > 0:
            return nan
        binning = choose_binning(z[0], rows[0], signal, n_bins, self.min_background)
        n_bins, n_columns = binning.n_bins, 1 + len(self.processes)
        # Column 0 the signal, 1 + p background process p; one histogram per row and column.
        column = np.where(signal, 0, 1 + process.detach().cpu().numpy())
        cell = column * n_bins + binning.index(z)  # (V, n)
        hists = np.stack(
            [
                np.bincount(c, weights=r, minlength=n_columns * n_bins)
                for c, r in zip(cell, rows, strict=True)
            ]
        ).reshape(len(z), n_columns, n_bins)
        hists_t = torch.from_numpy(hists)
        sizes = [self.norms.get(p, 0.0) for p in self.processes]
        stat_errors = None
        if self.mc_stat:
            sumw2 = np.bincount(binning.index(z[0]), weights=rows[0] ** 2, minlength=n_bins)
            total = hists[0].sum(0)
            positive = total > 0
            relative = np.sqrt(sumw2, where=positive, out=np.zeros(n_bins))
            stat_errors = torch.from_numpy(np.divide(relative, total, where=positive, out=relative))
        full = asimov_variance(hists_t[:, 0], hists_t[:, 1:], sizes, stat_errors=stat_errors)
        stat = asimov_variance(hists_t[:1, 0], hists_t[:1, 1:])
        return {name: _root(v) for name, v in ((SIGMA_MU, full), (SIGMA_MU_STAT, stat))}


def _root(variance: Tensor) -> float:
    value = float(variance)
    return math.sqrt(value) if value > 0 and math.isfinite(value) else math.nan


def nuisance_options(settings: Systematics, processes: Sequence[str]) -> dict[str, object]:
    """`InfernoLoss` options from a run's systematics: its shape nuisances (in the order the
    datamodule's shifted rows follow), the data's background `processes` and the sizes of
    their normalisation nuisances."""
    return {
        "shapes": tuple(settings.shapes),
        "processes": tuple(processes),
        "norms": {p: size for p, size in settings.norm.items() if p in processes},
    }


register(InfernoLoss)

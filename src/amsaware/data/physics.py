"""Physics-level synthetic events: H -> tau tau and its main backgrounds, lepton + hadronic tau.

Where the copula generator (`amsaware.data.copula`) imitates the real data's statistics, this
one imitates its physics, so the challenge's identities hold by construction: every DER_
feature is computed from the PRI_ ones by `amsaware.data.derived.derived_features`, jets are
ordered by pT, PRI_jet_all_pt is the sum of the jets' pT, and the -999 (NaN) pattern follows
from the number of jets.

Processes (`PROCESSES`): signal gluon-fusion and vector-boson-fusion H -> tau tau (m_H = 125
GeV); background Z -> tau tau (91.19 GeV), W + jets with a jet faking the hadronic tau, and top
pairs (one W -> lepton, the other -> hadronic tau or a jet faking it). Each event is built as
four-vectors (E, px, py, pz) on the last axis (`amsaware.data.kinematics`, as the DER_ features):

- the boson gets its transverse momentum from recoil against the generated jets plus a soft
  (Gaussian) component, a rapidity, and decays isotropically in its rest frame;
- a tau decays collinearly (m_tau << m_H): its visible product carries a share x of its
  momentum, drawn from the leptonic (massless V-A) or a hadronic spectrum; neutrinos the rest;
- detector response: pT resolution per object (lepton 2%, hadronic tau 12%, jets a stochastic
  term with Student-t tails); jets counted above 30 GeV and |eta| < 4.5; jets of 15-30 GeV
  (sub-threshold, up to two per event) enter only the missing energy; the missing transverse
  energy is minus everything measured: objects, those jets, and a soft term seeing 15% of the
  soft radiation plus noise, so it carries the neutrinos, every object's mismeasurement and
  the unmeasured radiation; sum E_T leaves out muons (half the leptons), as a calorimeter does;
- selection as in the challenge: lepton pT > 26 GeV, tau pT > 20 GeV, both |eta| < 2.5.

Events are generated in slices of process x jet multiplicity (as ALPGEN-style samples are),
each with its own number of generated events, so the weight of an event is
sigma_slice * L / N_generated(slice) (times, for a fake tau, a pT-dependent fake factor and for
background a small pile-up-like event weight); `amsaware.data.synthetic` then normalises each
class to S_TOT / B_TOT. The slice sizes give the unweighted mix, the cross sections the
weighted one, both chosen to resemble the real data (see benchmarks/synthetic_fidelity.py).
No library generates this challenge's final state at this level, hence hand-written; every
step is vectorised NumPy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

from amsaware.data import kinematics
from amsaware.data.derived import derived_features
from amsaware.data.schema import PRI_FEATURES

M_H, M_Z, GAMMA_Z, M_W, GAMMA_W, M_TOP = 125.0, 91.19, 2.50, 80.38, 2.09, 172.5
#: Integrated luminosity [fb^-1] of the 2012 data the challenge simulated.
LUMINOSITY = 20.3
#: Selection thresholds [GeV] and acceptances of the challenge's lepton-hadron channel.
LEP_PT_MIN, TAU_PT_MIN, JET_PT_MIN = 26.0, 20.0, 30.0
LEP_ETA_MAX, TAU_ETA_MAX, JET_ETA_MAX = 2.5, 2.5, 4.5
#: Relative pT resolutions, and the jets' stochastic term [sqrt(GeV)].
LEP_RESOLUTION, TAU_RESOLUTION, JET_STOCHASTIC, JET_CONSTANT = 0.02, 0.12, 0.8, 0.05
#: Soft-term noise per component [GeV]: MET_NOISE * sqrt(soft sum E_T).
MET_NOISE = 0.2
#: Soft term: response to soft radiation, and the mean sum E_T of underlying event + pile-up.
SOFT_RESPONSE, SOFT_SUMET = 0.08, 78.0
#: Jets above JET_MET_MIN [GeV] enter the missing energy; each event may carry up to SOFT_JETS
#: jets between JET_MET_MIN and JET_PT_MIN (not counted), each with SOFT_JET_PROBABILITY.
JET_MET_MIN, SOFT_JET_PROBABILITY, SOFT_JETS = 15.0, 0.33, 2
#: Probability that a jet is reconstructed as a hadronic tau, at low pT (falls as exp(-pT/60)).
FAKE_RATE = 0.016

_PRI = {name: k for k, name in enumerate(PRI_FEATURES)}


# ---------------------------------------------------------------------------------------------
# decays; four-vectors as in `amsaware.data.kinematics`, shape (..., 4) = (E, px, py, pz)


def _decay(parent: np.ndarray, m1: float, m2: float, rng: np.random.Generator):
    """Isotropic two-body decay of `parent` (n, 4) into daughters of masses m1, m2 (lab frame)."""
    n = len(parent)
    mass = np.sqrt(np.maximum(parent[:, 0] ** 2 - np.sum(parent[:, 1:] ** 2, axis=1), 1e-12))
    arg = (mass**2 - (m1 + m2) ** 2) * (mass**2 - (m1 - m2) ** 2)
    p_star = np.sqrt(np.maximum(arg, 0.0)) / (2 * mass)
    cos_t = rng.uniform(-1, 1, n)
    sin_t = np.sqrt(1 - cos_t**2)
    phi = rng.uniform(-np.pi, np.pi, n)
    direction = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=1)
    momentum = p_star[:, None] * direction
    e1 = np.sqrt(p_star**2 + m1**2)
    e2 = np.sqrt(p_star**2 + m2**2)
    beta = parent[:, 1:] / parent[:, :1]
    return _boost(e1, momentum, beta), _boost(e2, -momentum, beta)


def _boost(energy: np.ndarray, momentum: np.ndarray, beta: np.ndarray) -> np.ndarray:
    b2 = np.sum(beta**2, axis=1)
    gamma = 1 / np.sqrt(1 - np.minimum(b2, 1 - 1e-12))
    bp = np.sum(beta * momentum, axis=1)
    factor = np.where(b2 > 1e-12, (gamma - 1) * bp / np.maximum(b2, 1e-12), 0.0) + gamma * energy
    return np.concatenate(
        [(gamma * (energy + bp))[:, None], momentum + factor[:, None] * beta], axis=1
    )


# ---------------------------------------------------------------------------------------------
# spectra


_SHARE_GRID = np.linspace(0, 1, 513)
_LEPTON_CDF = (5 * _SHARE_GRID - 3 * _SHARE_GRID**3 + _SHARE_GRID**4) / 3


def _lepton_share(n: int, rng: np.random.Generator) -> np.ndarray:
    """Visible momentum share of tau -> l nu nu: f(x) = (5 - 9x^2 + 4x^3) / 3 (massless V-A)."""
    return np.interp(rng.random(n), _LEPTON_CDF, _SHARE_GRID)


def _hadron_share(n: int, rng: np.random.Generator) -> np.ndarray:
    """Visible share of tau -> hadrons nu: a pi/rho/a1 mixture, harder than the leptonic one."""
    return rng.beta(1.6, 1.0, n)


def _truncated_normal(n, loc, scale, limit, rng) -> np.ndarray:
    """Normal values within |x| < limit (redrawn outside), vectorised."""
    x = rng.normal(loc, scale, n)
    bad = np.abs(x) >= limit
    while bad.any():
        x[bad] = rng.normal(np.broadcast_to(loc, (n,))[bad], scale, bad.sum())
        bad = np.abs(x) >= limit
    return x


def _jets(n: int, n_jets: int, rng, median: float, width: float, eta_scale: float):
    """`n_jets` jets above threshold and up to `SOFT_JETS` jets below it.

    Shape (n, n_jets + SOFT_JETS, 4); pT - 30 GeV is log-normal, pseudorapidity central.
    Soft jets (each present with `SOFT_JET_PROBABILITY`) are not counted in PRI_jet_num but
    enter the missing energy, which is what makes DER_pt_tot of the real data bimodal (near 0,
    or near a soft jet's pT).
    """
    pt = JET_PT_MIN + median * np.exp(width * rng.standard_normal((n, n_jets)))
    soft_pt = JET_MET_MIN + (JET_PT_MIN - JET_MET_MIN) * rng.beta(2.0, 1.0, (n, SOFT_JETS))
    soft = (rng.random((n, SOFT_JETS)) < SOFT_JET_PROBABILITY) * soft_pt
    pt = np.concatenate([pt, soft], axis=1)
    k = n_jets + SOFT_JETS
    eta = _truncated_normal(n * k, 0.0, eta_scale, JET_ETA_MAX, rng).reshape(n, k)
    return kinematics.from_pseudorapidity(pt, eta, rng.uniform(-np.pi, np.pi, (n, k)), 0.0)


def _vbf_jets(n: int, n_jets: int, rng) -> np.ndarray:
    """Two forward tagging jets in opposite hemispheres, plus central extra jets."""
    side = rng.choice([-1.0, 1.0], n)
    eta1 = side * np.abs(rng.normal(2.2, 0.9, n))
    eta2 = -side * np.abs(rng.normal(2.2, 0.9, n))
    eta = np.clip(np.stack([eta1, eta2], axis=1), -JET_ETA_MAX + 1e-3, JET_ETA_MAX - 1e-3)
    pt = JET_PT_MIN + 35.0 * np.exp(0.8 * rng.standard_normal((n, 2)))
    tags = kinematics.from_pseudorapidity(pt, eta, rng.uniform(-np.pi, np.pi, (n, 2)), 0.0)
    return np.concatenate([tags, _jets(n, max(n_jets - 2, 0), rng, 15.0, 0.8, 1.5)], axis=1)


def _boson(n, jets, mass, width, soft, rapidity, rng) -> tuple[np.ndarray, np.ndarray]:
    """A resonance recoiling against `jets` plus soft radiation; Breit-Wigner mass if width > 0.

    Returns the boson and the soft radiation's transverse momentum (n, 2), which the detector
    measures only in part (the missing energy's soft term).
    """
    m = mass + (width / 2 * rng.standard_cauchy(n) if width > 0 else 0.0)
    m = np.clip(m, mass - 10 * width - 1e-3, mass + 10 * width + 1e-3)
    radiation = rng.normal(0, soft, (n, 2))
    px = -jets[..., 1].sum(axis=1) - radiation[:, 0]
    py = -jets[..., 2].sum(axis=1) - radiation[:, 1]
    y = rng.normal(0, rapidity, n)
    pt = np.hypot(px, py)
    return kinematics.from_rapidity(pt, y, np.arctan2(py, px), m), radiation


# ---------------------------------------------------------------------------------------------
# processes: (n, n_jets, rng) -> Truth


@dataclass
class Truth:
    """True final state before the detector: visible objects, neutrinos, jets, event weight."""

    lepton: np.ndarray  # (n, 4)
    tau: np.ndarray  # (n, 4) visible hadronic tau (or the jet faking it, after its response)
    neutrinos: np.ndarray  # (n, 2) summed transverse momentum of the invisible particles
    jets: np.ndarray  # (n, k, 4), any pT (those below threshold are lost, not counted)
    radiation: np.ndarray  # (n, 2) transverse momentum of soft radiation (not in jets)
    factor: np.ndarray  # (n,) per-event weight factor (fake factor, pile-up weight)


def _tau_pair(boson: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """boson -> tau tau, one tau -> lepton, the other -> hadrons (collinear decays)."""
    n = len(boson)
    tau1, tau2 = _decay(boson, 0.0, 0.0, rng)
    x_lep, x_had = _lepton_share(n, rng), _hadron_share(n, rng)
    lepton, tau = x_lep[:, None] * tau1, x_had[:, None] * tau2
    neutrinos = (1 - x_lep)[:, None] * tau1[:, 1:3] + (1 - x_had)[:, None] * tau2[:, 1:3]
    return lepton, tau, neutrinos


def _w_to_lepton(w: np.ndarray, rng, tau_share: float = 0.15):
    """W -> l nu, or (`tau_share`) W -> tau nu, tau -> l nu nu."""
    n = len(w)
    lepton, nu = _decay(w, 0.0, 0.0, rng)
    via_tau = rng.random(n) < tau_share
    x = np.where(via_tau, _lepton_share(n, rng), 1.0)
    return x[:, None] * lepton, nu[:, 1:3] + (1 - x)[:, None] * lepton[:, 1:3]


def _fake_tau(jet: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """A jet reconstructed as a hadronic tau: pT response ~0.8, fake rate falling with pT."""
    response = np.clip(rng.normal(0.8, 0.12, len(jet)), 0.3, 1.2)
    fake_rate = FAKE_RATE * np.exp(-kinematics.pt(jet) / 60.0)
    return response[:, None] * jet, fake_rate


def _pileup(n: int, rng) -> np.ndarray:
    return np.exp(rng.normal(0.0, 0.15, n))


def _higgs_ggf(n, n_jets, rng) -> Truth:
    jets = _jets(n, n_jets, rng, 20.0, 1.0, 1.6)
    boson, radiation = _boson(n, jets, M_H, 0.0, 22.0, 1.3, rng)
    lepton, tau, nu = _tau_pair(boson, rng)
    return Truth(lepton, tau, nu, jets, radiation, np.ones(n))


def _higgs_vbf(n, n_jets, rng) -> Truth:
    jets = _vbf_jets(n, n_jets, rng)
    boson, radiation = _boson(n, jets, M_H, 0.0, 20.0, 1.0, rng)
    lepton, tau, nu = _tau_pair(boson, rng)
    return Truth(lepton, tau, nu, jets, radiation, np.ones(n))


def _z_tautau(n, n_jets, rng) -> Truth:
    jets = _jets(n, n_jets, rng, 14.0, 1.25, 2.5)
    boson, radiation = _boson(n, jets, M_Z, GAMMA_Z, 18.0, 2.0, rng)
    lepton, tau, nu = _tau_pair(boson, rng)
    return Truth(lepton, tau, nu, jets, radiation, _pileup(n, rng))


def _w_jets(n, n_jets, rng) -> Truth:
    # the jet that fakes the tau is one more recoiling jet, generated from a lower threshold
    fake_pt = 18.0 + 10.0 * np.exp(0.9 * rng.standard_normal((n, 1)))
    fake_eta = _truncated_normal(n, 0.0, 1.8, TAU_ETA_MAX, rng)[:, None]
    fake = kinematics.from_pseudorapidity(
        fake_pt, fake_eta, rng.uniform(-np.pi, np.pi, (n, 1)), 0.0
    )
    jets = _jets(n, n_jets, rng, 14.0, 1.25, 2.5)
    w, radiation = _boson(n, np.concatenate([jets, fake], axis=1), M_W, GAMMA_W, 20.0, 2.0, rng)
    lepton, nu = _w_to_lepton(w, rng)
    tau, fake_rate = _fake_tau(fake[:, 0], rng)
    # the jet's energy the tau candidate does not carry stays in the soft term
    radiation = radiation + (fake[:, 0, 1:3] - tau[:, 1:3])
    return Truth(lepton, tau, nu, jets, radiation, fake_rate * _pileup(n, rng))


def _top_pair(n, n_jets, rng) -> Truth:
    del n_jets  # the jets come from the decays
    pt = rng.gamma(2.5, 40.0, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    top1 = kinematics.from_rapidity(pt, rng.normal(0, 1.0, n), phi, M_TOP)
    top2 = kinematics.from_rapidity(
        pt * np.exp(rng.normal(0, 0.3, n)), rng.normal(0, 1.0, n), phi + np.pi, M_TOP
    )
    b1, w1 = _decay(top1, 0.0, M_W, rng)
    b2, w2 = _decay(top2, 0.0, M_W, rng)
    lepton, nu = _w_to_lepton(w1, rng)
    q1, q2 = _decay(w2, 0.0, 0.0, rng)
    # the second W: a true hadronic tau (W -> tau nu) or one of its quarks faking one
    true_tau = rng.random(n) < 0.4
    tau_w, nu_w = _decay(w2, 0.0, 0.0, rng)
    x_had = _hadron_share(n, rng)
    fake, fake_rate = _fake_tau(q1, rng)
    tau = np.where(true_tau[:, None], x_had[:, None] * tau_w, fake)
    nu = nu + np.where(true_tau[:, None], nu_w[:, 1:3] + (1 - x_had)[:, None] * tau_w[:, 1:3], 0.0)
    jets = np.stack([b1, b2, np.where(true_tau[:, None], 0.0, q2)], axis=1)
    factor = np.where(true_tau, 1.0, fake_rate) * _pileup(n, rng)
    radiation = np.where(true_tau[:, None], 0.0, q1[:, 1:3] - fake[:, 1:3])
    radiation = radiation + rng.normal(0, 10.0, (n, 2))
    return Truth(lepton, tau, nu, jets, radiation, factor)


# ---------------------------------------------------------------------------------------------
# detector


def _smear(p: np.ndarray, resolution: np.ndarray, rng, tails: bool = False) -> np.ndarray:
    """Scale momenta by 1 + resolution * (a normal, or with `tails` a Student-t(4)) variate."""
    shape = p.shape[:-1]
    variate = rng.standard_t(4, shape) / np.sqrt(2) if tails else rng.standard_normal(shape)
    scale = np.maximum(1 + resolution * variate, 0.05)
    return p * scale[..., None]


def _select(truth: Truth, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Measured lepton and tau, and which events pass the challenge's selection on them."""
    n = len(truth.lepton)
    lepton = _smear(truth.lepton, np.full(n, LEP_RESOLUTION), rng)
    tau = _smear(truth.tau, np.full(n, TAU_RESOLUTION), rng)
    passed = (
        (kinematics.pt(lepton) > LEP_PT_MIN)
        & (np.abs(kinematics.eta(lepton)) < LEP_ETA_MAX)
        & (kinematics.pt(tau) > TAU_PT_MIN)
        & (np.abs(kinematics.eta(tau)) < TAU_ETA_MAX)
    )
    return lepton, tau, passed


def _detector(truth: Truth, lepton: np.ndarray, tau: np.ndarray, rng) -> np.ndarray:
    """The 17 PRI_ columns (NaN where undefined) of events with measured `lepton` and `tau`."""
    n = len(truth.lepton)
    jet_pt_true = kinematics.pt(truth.jets)
    resolution = np.hypot(JET_STOCHASTIC / np.sqrt(np.maximum(jet_pt_true, 1.0)), JET_CONSTANT)
    jets = _smear(truth.jets, resolution, rng, tails=True)
    jet_pt, jet_eta = kinematics.pt(jets), kinematics.eta(jets)
    inside = np.abs(jet_eta) < JET_ETA_MAX
    kept = inside & (jet_pt > JET_PT_MIN)
    in_met = inside & (jet_pt > JET_MET_MIN)

    # The missing energy is minus everything measured: objects, jets above 15 GeV, and a soft
    # term that sees the rest of the hadronic activity with a response below one, plus noise.
    soft_true = truth.radiation + np.where(in_met[..., None], 0.0, truth.jets[..., 1:3]).sum(1)
    soft_sumet = np.maximum(rng.gamma(1.8, SOFT_SUMET / 1.8, n) - 12.0, 0.0)
    noise_scale = MET_NOISE * np.sqrt(soft_sumet + 1.0)
    noise = rng.standard_t(4, (n, 2)) / np.sqrt(2) * noise_scale[:, None]
    soft_measured = SOFT_RESPONSE * soft_true + noise
    mismeasured = (truth.lepton - lepton)[:, 1:3] + (truth.tau - tau)[:, 1:3]
    mismeasured = mismeasured + np.where(
        in_met[..., None], truth.jets[..., 1:3] - jets[..., 1:3], 0.0
    ).sum(axis=1)
    met = truth.neutrinos + mismeasured + soft_true - soft_measured
    # calorimeter sum: a muon (half the leptons) leaves almost none of its pT there
    electron = rng.random(n) < 0.5
    sumet = (
        soft_sumet
        + electron * kinematics.pt(lepton)
        + kinematics.pt(tau)
        + np.where(in_met, jet_pt, 0.0).sum(1)
    )

    order = np.argsort(-np.where(kept, jet_pt, -1.0), axis=1)
    jet_pt = np.take_along_axis(np.where(kept, jet_pt, 0.0), order, axis=1)
    jets = np.take_along_axis(jets, order[..., None], axis=1)
    n_jets = kept.sum(axis=1)
    pri = np.full((n, len(PRI_FEATURES)), np.nan)
    columns = {
        "PRI_tau_pt": kinematics.pt(tau),
        "PRI_tau_eta": kinematics.eta(tau),
        "PRI_tau_phi": kinematics.phi(tau),
        "PRI_lep_pt": kinematics.pt(lepton),
        "PRI_lep_eta": kinematics.eta(lepton),
        "PRI_lep_phi": kinematics.phi(lepton),
        "PRI_met": np.hypot(met[:, 0], met[:, 1]),
        "PRI_met_phi": np.arctan2(met[:, 1], met[:, 0]),
        "PRI_met_sumet": sumet,
        "PRI_jet_num": np.minimum(n_jets, 3),
        "PRI_jet_all_pt": jet_pt.sum(axis=1),
    }
    for name, values in columns.items():
        pri[:, _PRI[name]] = values
    for rank, which in ((0, "leading"), (1, "subleading")):
        if jets.shape[1] <= rank:
            continue
        has = n_jets > rank
        for quantity, values in (
            ("pt", jet_pt),
            ("eta", kinematics.eta(jets)),
            ("phi", kinematics.phi(jets)),
        ):
            pri[has, _PRI[f"PRI_jet_{which}_{quantity}"]] = values[has, rank]
    return pri


# ---------------------------------------------------------------------------------------------
# the mix


@dataclass(frozen=True)
class Process:
    """One simulated process, generated in slices of jet multiplicity.

    `cross_section` [fb] is the process's cross section x branching ratio into the
    lepton-hadron final state before selection; `jet_fractions` splits it over the slices
    (0..3 jets); `generated` is the process's share of the events made, and `slice_shares`
    how those split over the slices (more than the physical share in rare slices, so they
    are populated: that is what spreads the weights, as in the real samples).
    """

    name: str
    label: int
    make: Callable[[int, int, np.random.Generator], Truth]
    cross_section: float
    jet_fractions: tuple[float, ...]
    generated: float
    slice_shares: tuple[float, ...]


#: Cross sections, jet fractions and slice shares are tuned on the development sample (the
#: first 12,000 events of the CERN file): each class's weight splits over 0/1/2/3 jets as there
#: (background 69/23/6/2%, signal 53/29/14/4%); Z -> tau tau is generated less often without
#: jets and more often with 2-3 than W + jets, so the background's mT follows the real one per
#: jet multiplicity; and a Z -> tau tau event weighs ~0.45 of a W + jets one (real low-mT
#: background events weigh ~0.6 of high-mT ones on average). The background under the signal
#: (low mT, MMC near 125 GeV, 0 jets; or 2 jets) decides a classifier's AMS: with the flat
#: weights of before it carried ~1.8x the real weight and the AMS was ~15-20% below the real
#: data's (benchmarks/synthetic_fidelity.py).
_GGH_JETS = (0.6747, 0.2702, 0.0465, 0.0086)
_Z_JETS, _W_JETS = (0.7207, 0.206, 0.0335, 0.0398), (0.8267, 0.1481, 0.0129, 0.0123)
PROCESSES: tuple[Process, ...] = (
    Process("ggH", 1, _higgs_ggf, 560.0, _GGH_JETS, 0.27, (0.42, 0.38, 0.15, 0.05)),
    Process("VBF", 1, _higgs_vbf, 46.0, (0.0, 0.0, 0.8, 0.2), 0.07, (0.0, 0.0, 0.8, 0.2)),
    Process("Ztautau", 0, _z_tautau, 2.4e5, _Z_JETS, 0.187, (0.41, 0.31, 0.155, 0.125)),
    Process("Wjets", 0, _w_jets, 2.76e7, _W_JETS, 0.423, (0.596, 0.281, 0.076, 0.047)),
    Process("ttbar", 0, _top_pair, 2.1e4, (1.0,), 0.05, (1.0,)),
)

#: Selection efficiency assumed for a slice's first batch (later ones use the measured one),
#: and the largest batch (bounds memory).
_FIRST_EFFICIENCY, _MAX_BATCH = 0.15, 2_000_000


def _slice(process: Process, n_jets: int, wanted: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """`wanted` selected events of one slice and their weights sigma * L * factor / N_gen."""
    pri_parts, factor_parts, n_generated, have = [], [], 0, 0
    efficiency = _FIRST_EFFICIENCY
    while have < wanted:
        batch = min(int(1.2 * (wanted - have) / efficiency) + 256, _MAX_BATCH)
        truth = process.make(batch, n_jets, rng)
        lepton, tau, passed = _select(truth, rng)
        index = np.flatnonzero(passed)[: wanted - have]
        # events generated up to the last one kept (all of the batch if it fell short)
        n_generated += batch if have + len(index) < wanted else int(index[-1]) + 1
        have += len(index)
        efficiency = max(have / n_generated, 1e-3)
        kept = Truth(*(getattr(truth, f.name)[index] for f in fields(Truth)))
        pri_parts.append(_detector(kept, lepton[index], tau[index], rng))
        factor_parts.append(kept.factor)
    sigma = process.cross_section * process.jet_fractions[n_jets]
    weight = sigma * LUMINOSITY * np.concatenate(factor_parts) / n_generated
    return np.concatenate(pri_parts), weight


def generate_primary(
    n_events: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PRI_ columns (n, 17, rounded), label, raw weight and process index of `n_events` events."""
    units = [
        (p, k, j, p.generated * share)
        for k, p in enumerate(PROCESSES)
        for j, share in enumerate(p.slice_shares)
        if share > 0
    ]
    shares = np.array([u[3] for u in units])
    counts = rng.multinomial(n_events, shares / shares.sum())
    pri, weight, label, process = [], [], [], []
    for (proc, k, n_jets, _), count in zip(units, counts, strict=True):
        if count == 0:
            continue
        p, w = _slice(proc, n_jets, int(count), rng)
        pri.append(p)
        weight.append(w)
        label.append(np.full(count, proc.label, dtype=np.int8))
        process.append(np.full(count, k, dtype=np.int8))
    order = rng.permutation(n_events)
    pri_all = np.concatenate(pri)[order]
    pri_all = np.round(pri_all, 3)
    return (
        pri_all,
        np.concatenate(label)[order],
        np.concatenate(weight)[order],
        np.concatenate(process)[order],
    )


def process_names() -> np.ndarray:
    """Each process's label for `EventTable.process`: its name in lower case ('ztautau', ...).

    Lower case so that the background names match those `amsaware.data.systematics` recovers
    from the 2014 files' weights, and one normalisation setting serves both.
    """
    return np.array([p.name.lower() for p in PROCESSES])


def sample(
    n_events: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The `amsaware.data.synthetic` generator interface: (features (n, 30), label, weight,
    process), the last each event's true process name (`process_names`).

    PRI_ values are rounded to the files' 3 decimals first and the DER_ ones computed from the
    rounded values (and rounded in turn), so the stored identities hold as in the real files.
    """
    pri, label, weight, process = generate_primary(n_events, rng)
    der = np.round(derived_features(pri), 3)
    features = np.concatenate([der, pri], axis=1).astype(np.float32)
    return features, label, weight, process_names()[process]

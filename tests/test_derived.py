"""The DER_ features recomputed from the PRI_ ones: formulas on hand-made events, and agreement
with the values stored in the real sample (skipped where ../shared is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from amsaware.data.derived import MASS_SCALE, derived_features, missing_mass, primary_columns
from amsaware.data.formats import read_cern
from amsaware.data.schema import DER_FEATURES, PRI_FEATURES
from tests.conftest import REAL_SAMPLE

PRI = {name: k for k, name in enumerate(PRI_FEATURES)}
DER = {name: k for k, name in enumerate(DER_FEATURES)}
GEV = {
    "DER_mass_MMC",
    "DER_mass_transverse_met_lep",
    "DER_mass_vis",
    "DER_pt_h",
    "DER_mass_jet_jet",
    "DER_pt_tot",
    "DER_sum_pt",
}

#: Share of the 12,000 real events whose recomputed value is within 1% of the stored one, as
#: measured (tests/test_derived.py, 2026-11-23) minus a margin. Values stored with 3 decimals
#: make features near 0 miss a strict 1% (pt_tot, pt_h, lep_eta_centrality, mT): the second
#: table allows the inputs' rounding (0.1 GeV, or 0.005 for dimensionless features).
STRICT_1PCT = {
    "DER_mass_transverse_met_lep": 0.96,  # measured 0.979
    "DER_mass_vis": 0.995,  # 0.9996
    "DER_pt_h": 0.94,  # 0.958
    "DER_deltaeta_jet_jet": 0.99,  # 0.995
    "DER_prodeta_jet_jet": 0.96,  # 0.973
    "DER_deltar_tau_lep": 0.999,  # 1.000
    "DER_pt_tot": 0.87,  # 0.888
    "DER_sum_pt": 0.999,  # 1.000
    "DER_pt_ratio_lep_tau": 0.999,  # 1.000
    "DER_met_phi_centrality": 0.97,  # 0.980
    "DER_lep_eta_centrality": 0.70,  # 0.722
}
WITH_ROUNDING = {name: 0.99 for name in STRICT_1PCT}  # measured >= 0.995 for every one


def event(**values: float) -> np.ndarray:
    """One event's PRI_ row; jets undefined (NaN) unless given."""
    row = np.full(len(PRI_FEATURES), np.nan)
    defaults = {"PRI_met_sumet": 200.0, "PRI_jet_num": 0.0, "PRI_jet_all_pt": 0.0}
    for name, value in {**defaults, **values}.items():
        row[PRI[name]] = value
    return row[None, :]


def back_to_back(**extra: float) -> np.ndarray:
    return event(
        PRI_lep_pt=40.0,
        PRI_lep_eta=0.0,
        PRI_lep_phi=0.0,
        PRI_tau_pt=30.0,
        PRI_tau_eta=0.0,
        PRI_tau_phi=np.pi,
        PRI_met=10.0,
        PRI_met_phi=np.pi / 2,
        **extra,
    )


def test_formulas_on_a_hand_made_event_without_jets():
    der = derived_features(back_to_back())[0]
    # massless back to back: m^2 = 2 * 40 * 30 * (1 - cos(pi))
    assert der[DER["DER_mass_vis"]] == pytest.approx(np.sqrt(2 * 40 * 30 * 2))
    assert der[DER["DER_mass_transverse_met_lep"]] == pytest.approx(np.sqrt(2 * 40 * 10))
    assert der[DER["DER_pt_h"]] == pytest.approx(np.hypot(10, 10))  # (40-30, 10)
    assert der[DER["DER_pt_tot"]] == pytest.approx(der[DER["DER_pt_h"]])
    assert der[DER["DER_deltar_tau_lep"]] == pytest.approx(np.pi)
    assert der[DER["DER_sum_pt"]] == pytest.approx(70.0)
    assert der[DER["DER_pt_ratio_lep_tau"]] == pytest.approx(4 / 3)
    for name in ("DER_deltaeta_jet_jet", "DER_mass_jet_jet", "DER_prodeta_jet_jet"):
        assert np.isnan(der[DER[name]]), name
    assert np.isnan(der[DER["DER_lep_eta_centrality"]])


def test_met_phi_centrality_is_sqrt2_between_the_legs_and_minus_sqrt2_opposite():
    legs = dict(PRI_lep_pt=40.0, PRI_lep_eta=0.0, PRI_lep_phi=0.0, PRI_tau_pt=30.0)
    legs.update(PRI_tau_eta=0.0, PRI_tau_phi=np.pi / 2, PRI_met=20.0)
    inside = derived_features(event(**legs, PRI_met_phi=np.pi / 4))[0]
    outside = derived_features(event(**legs, PRI_met_phi=-3 * np.pi / 4))[0]
    assert inside[DER["DER_met_phi_centrality"]] == pytest.approx(np.sqrt(2))
    assert outside[DER["DER_met_phi_centrality"]] == pytest.approx(-np.sqrt(2))


def test_jet_pair_features_and_lepton_centrality_with_two_jets():
    jets = dict(
        PRI_jet_num=3.0,
        PRI_jet_leading_pt=50.0,
        PRI_jet_leading_eta=2.0,
        PRI_jet_leading_phi=0.5,
        PRI_jet_subleading_pt=40.0,
        PRI_jet_subleading_eta=-1.0,
        PRI_jet_subleading_phi=0.5,
        PRI_jet_all_pt=120.0,  # a third jet of 30 GeV: in the scalar sum, not in pt_tot
    )
    der = derived_features(back_to_back(**jets))[0]
    assert der[DER["DER_deltaeta_jet_jet"]] == pytest.approx(3.0)
    assert der[DER["DER_prodeta_jet_jet"]] == pytest.approx(-2.0)
    # same phi: m^2 = 2 pt1 pt2 (cosh(d_eta) - 1)
    assert der[DER["DER_mass_jet_jet"]] == pytest.approx(np.sqrt(2 * 50 * 40 * (np.cosh(3) - 1)))
    # lepton at eta 0, jets centred at 0.5 with d_eta 3: exp(-4/9 * 0.25)
    assert der[DER["DER_lep_eta_centrality"]] == pytest.approx(np.exp(-4 / 9 * 0.25))
    assert der[DER["DER_sum_pt"]] == pytest.approx(190.0)
    jet_x = 90 * np.cos(0.5)
    jet_y = 90 * np.sin(0.5)
    assert der[DER["DER_pt_tot"]] == pytest.approx(np.hypot(10 + jet_x, 10 + jet_y))


def collinear_event(share: float) -> np.ndarray:
    """Legs at right angles whose neutrinos carry `share` times each leg's momentum."""
    lep, tau = 40.0, 30.0
    return event(
        PRI_lep_pt=lep,
        PRI_lep_eta=0.0,
        PRI_lep_phi=0.0,
        PRI_tau_pt=tau,
        PRI_tau_eta=0.0,
        PRI_tau_phi=np.pi / 2,
        PRI_met=share * np.hypot(lep, tau),
        PRI_met_phi=np.arctan2(tau, lep),
        PRI_met_sumet=400.0,
    )


def test_missing_mass_of_exactly_collinear_events():
    m_vis = np.sqrt(2 * 40.0 * 30.0)
    scale = MASS_SCALE
    # neutrinos with half the visible momentum (the prior's mean): m = m_vis * (1 + 0.5)
    assert missing_mass(collinear_event(0.5))[0] == pytest.approx(scale * 1.5 * m_vis, rel=1e-9)
    # with as much as the visible momentum the collinear mass is 2 m_vis; the prior pulls the
    # estimate towards the typical share, so it lies between the two
    assert scale * 1.5 * m_vis < missing_mass(collinear_event(1.0))[0] < scale * 2 * m_vis
    # 150 GeV of MET opposite to both legs, beyond 5 resolutions (5 * 0.7 * sqrt(400) = 70):
    # no solution; 50 GeV there is within them
    near, far = collinear_event(1.0), collinear_event(3.0)
    near[0, PRI["PRI_met_phi"]] -= np.pi
    far[0, PRI["PRI_met_phi"]] -= np.pi
    assert np.isfinite(missing_mass(near)[0])
    assert np.isnan(missing_mass(far)[0])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"\(n, 17\) array of the PRI_ columns"):
        derived_features(np.zeros((3, 30)))
    with pytest.raises(ValueError, match="lacks the PRI_ columns"):
        primary_columns(np.zeros((2, 3)), ("a", "b", "c"))


@pytest.fixture(scope="module")
def recomputed():
    if not REAL_SAMPLE.exists():
        pytest.skip(f"shared real sample not found at {REAL_SAMPLE}")
    table = read_cern(REAL_SAMPLE)
    stored = table.features[:, : len(DER_FEATURES)].astype(np.float64)
    ours = derived_features(primary_columns(table.features, table.feature_names))
    return stored, ours, table.label


def _agreement(stored: np.ndarray, ours: np.ndarray, name: str, allow_rounding: bool) -> float:
    defined = ~np.isnan(stored)
    difference = np.abs(ours[defined] - stored[defined])
    allowed = 0.01 * np.abs(stored[defined])
    if allow_rounding:
        allowed = np.maximum(allowed, 0.1 if name in GEV else 0.005)
    return float(np.mean(difference <= allowed))


@pytest.mark.parametrize("name", sorted(STRICT_1PCT))
def test_recomputed_features_agree_with_the_real_sample(recomputed, name):
    stored, ours, _ = recomputed
    k = DER[name]
    # the undefined pattern is the same in every event
    np.testing.assert_array_equal(np.isnan(ours[:, k]), np.isnan(stored[:, k]))
    assert _agreement(stored[:, k], ours[:, k], name, False) >= STRICT_1PCT[name]
    assert _agreement(stored[:, k], ours[:, k], name, True) >= WITH_ROUNDING[name]


def test_jet_pair_mass_is_the_massless_lower_bound_of_the_stored_one(recomputed):
    # the stored DER_mass_jet_jet uses the jets' masses, which no PRI_ column holds: ours is
    # below it in every event, within 1% in 61% of them (measured), within 10% in most
    stored, ours, _ = recomputed
    k = DER["DER_mass_jet_jet"]
    defined = ~np.isnan(stored[:, k])
    ratio = ours[defined, k] / stored[defined, k]
    assert np.mean(ratio <= 1.001) >= 0.995
    assert 0.5 <= np.mean(ratio >= 0.99) <= 0.75
    assert np.mean(ratio >= 0.9) >= 0.9


def test_missing_mass_tracks_the_stored_mmc(recomputed):
    # measured: undefined in the same events for 97.1% of them, within 10% for 67.9%, and the
    # medians per class within 1.5%
    stored, ours, labels = recomputed
    k = DER["DER_mass_MMC"]
    assert np.mean(np.isnan(ours[:, k]) == np.isnan(stored[:, k])) >= 0.96
    both = ~np.isnan(ours[:, k]) & ~np.isnan(stored[:, k])
    relative = np.abs(ours[both, k] / stored[both, k] - 1)
    assert np.mean(relative <= 0.10) >= 0.66
    for cls in (0, 1):
        rows = labels == cls
        ratio = np.nanmedian(ours[rows, k]) / np.nanmedian(stored[rows, k])
        assert ratio == pytest.approx(1, abs=0.025)

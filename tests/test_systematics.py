"""Nuisance parameters on HiggsML events: the shifts, the nominal pipeline, the post-selection,
process labels (2014 weights, physics generator, samples) and the settings' refusals."""

from __future__ import annotations

import collections
import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from amsaware.data import systematics as S
from amsaware.data.derived import derived_features, primary_columns
from amsaware.data.formats import read_cern
from amsaware.data.samples import load_samples
from amsaware.data.schema import DER_FEATURES, FEATURES, PRI_FEATURES, EventTable
from amsaware.data.synthetic import generate
from tests.conftest import REPO
from tests.test_derived import WITH_ROUNDING, _agreement

COL = {name: k for k, name in enumerate(FEATURES)}
JET_PAIR = ("DER_deltaeta_jet_jet", "DER_prodeta_jet_jet", "DER_lep_eta_centrality")
ANGULAR = (*JET_PAIR, "DER_deltar_tau_lep")


def col(features: np.ndarray, name: str) -> np.ndarray:
    return features[:, COL[name]].astype(np.float64)


def met_vector(features: np.ndarray) -> np.ndarray:
    met, phi = col(features, "PRI_met"), col(features, "PRI_met_phi")
    return np.stack([met * np.cos(phi), met * np.sin(phi)], axis=1)


def pt_vector(features: np.ndarray, which: str) -> np.ndarray:
    pt, phi = col(features, f"PRI_{which}_pt"), col(features, f"PRI_{which}_phi")
    return np.nan_to_num(np.stack([pt * np.cos(phi), pt * np.sin(phi)], axis=1))


def events(**rows: list[float]) -> np.ndarray:
    """A full (n, 30) feature matrix from PRI_ columns given per name (jets NaN unless given)."""
    n = len(next(iter(rows.values())))
    pri = np.full((n, len(PRI_FEATURES)), np.nan)
    defaults = {"PRI_met_sumet": [200.0] * n, "PRI_jet_num": [0.0] * n, "PRI_jet_all_pt": [0.0] * n}
    for name, values in {**defaults, **rows}.items():
        pri[:, PRI_FEATURES.index(name)] = values
    return np.concatenate([derived_features(pri), pri], axis=1).astype(np.float32)


def two_jet_events() -> np.ndarray:
    return events(
        PRI_tau_pt=[40.0, 60.0],
        PRI_tau_eta=[0.3, -1.0],
        PRI_tau_phi=[0.5, 2.0],
        PRI_lep_pt=[35.0, 50.0],
        PRI_lep_eta=[-0.2, 0.4],
        PRI_lep_phi=[-2.0, -0.5],
        PRI_met=[30.0, 45.0],
        PRI_met_phi=[1.0, 3.0],
        PRI_jet_num=[2.0, 3.0],
        PRI_jet_leading_pt=[80.0, 70.0],
        PRI_jet_leading_eta=[2.0, -1.5],
        PRI_jet_leading_phi=[-1.0, 0.1],
        PRI_jet_subleading_pt=[30.5, 45.0],
        PRI_jet_subleading_eta=[-2.5, 1.0],
        PRI_jet_subleading_phi=[2.5, -2.8],
        PRI_jet_all_pt=[110.5, 150.0],
    )


@pytest.fixture(scope="module")
def physics_table() -> EventTable:
    return generate(4000, seed=3, generator="physics")


@pytest.fixture
def real(real_sample) -> EventTable:
    return _read_real(real_sample)


@functools.lru_cache(maxsize=1)
def _read_real(path: Path) -> EventTable:
    return read_cern(path)


# --- the nominal pipeline --------------------------------------------------------------------


def test_shift_at_one_is_the_nominal_rederivation_bit_for_bit(physics_table):
    x = physics_table.features
    out = S.shift(x, FEATURES, cuts=S.Cuts(jet_pt=30.0))
    pri = [COL[n] for n in PRI_FEATURES]
    der = [COL[n] for n in DER_FEATURES]
    np.testing.assert_array_equal(out[:, pri], x[:, pri])  # NaN == NaN here
    rederived = derived_features(primary_columns(x)).astype(np.float32)
    np.testing.assert_array_equal(out[:, der], rederived)
    # the generator stores DER_ rounded to 3 decimals from the same formulas
    np.testing.assert_allclose(out[:, der], x[:, der], rtol=1e-5, atol=1e-3)


def test_nominal_close_to_the_files_own_derived_features(real):
    out = S.shift(real.features, real.feature_names, cuts=S.Cuts(jet_pt=30.0))
    pri = [COL[n] for n in PRI_FEATURES]
    np.testing.assert_array_equal(out[:, pri], real.features[:, pri])
    # as tests/test_derived.py measures: every DER_ feature but the MMC (not recomputable) and
    # the jet-pair mass (the files' jets have masses, which no PRI_ column holds)
    for name, share in WITH_ROUNDING.items():
        a, b = col(out, name), col(real.features, name)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        assert _agreement(b, a, name, True) >= share, name


def test_nominal_demotes_jets_below_the_cut_and_keeps_the_rest():
    x = two_jet_events()
    out = S.shift(x)  # jet_pt 31: the first event's 30.5 GeV subleading jet is demoted
    assert col(out, "PRI_jet_num").tolist() == [1.0, 3.0]
    assert np.isnan(col(out, "PRI_jet_subleading_pt")[0])
    assert col(out, "PRI_jet_all_pt")[0] == pytest.approx(80.0)
    for name in JET_PAIR:
        assert np.isnan(col(out, name)[0]) and not np.isnan(col(out, name)[1])
    np.testing.assert_array_equal(out[1], S.shift(x, cuts=S.Cuts(jet_pt=30.0))[1])
    np.testing.assert_array_equal(met_vector(out), met_vector(x))  # demoted jets stay in MET


# --- the shifts ------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.97, 1.03])
def test_tes_balances_the_missing_et(physics_table, alpha):
    x = physics_table.features
    out = S.shift(x, tes=alpha, cuts=S.Cuts(jet_pt=30.0))
    np.testing.assert_allclose(col(out, "PRI_tau_pt"), alpha * col(x, "PRI_tau_pt"), rtol=1e-6)
    for name in ("PRI_tau_eta", "PRI_tau_phi", "PRI_lep_pt", "PRI_jet_leading_pt"):
        np.testing.assert_array_equal(col(out, name), col(x, name))
    new = met_vector(out) + alpha * pt_vector(x, "tau")
    old = met_vector(x) + pt_vector(x, "tau")
    np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-3)
    sumet = col(x, "PRI_met_sumet") + (alpha - 1) * col(x, "PRI_tau_pt")
    np.testing.assert_allclose(col(out, "PRI_met_sumet"), sumet, rtol=1e-6)


def test_jes_scales_jets_present_and_balances_the_missing_et(physics_table):
    x, alpha = physics_table.features, 1.03
    out = S.shift(x, jes=alpha, cuts=S.Cuts(jet_pt=30.0))  # an up-shift demotes no jet
    jets = col(x, "PRI_jet_num")
    np.testing.assert_array_equal(col(out, "PRI_jet_num"), jets)
    for which, need in (("leading", 1), ("subleading", 2)):
        pt = col(out, f"PRI_jet_{which}_pt")
        assert np.isnan(pt[jets < need]).all() and not np.isnan(pt[jets >= need]).any()
        np.testing.assert_allclose(pt, alpha * col(x, f"PRI_jet_{which}_pt"), rtol=1e-6)
    all_pt = col(x, "PRI_jet_all_pt")
    np.testing.assert_allclose(col(out, "PRI_jet_all_pt"), alpha * all_pt, rtol=1e-6)
    jets_t = pt_vector(x, "jet_leading") + pt_vector(x, "jet_subleading")
    new = met_vector(out) + alpha * jets_t
    np.testing.assert_allclose(new, met_vector(x) + jets_t, rtol=1e-5, atol=1e-3)
    none = jets == 0  # no jet, no move: the stored MET is kept exactly
    np.testing.assert_array_equal(met_vector(out)[none], met_vector(x)[none])
    sumet = col(x, "PRI_met_sumet") + (alpha - 1) * all_pt
    np.testing.assert_allclose(col(out, "PRI_met_sumet"), sumet, rtol=1e-6)


def test_jes_down_demotes_a_jet_that_falls_below_the_cut():
    x = two_jet_events()
    out = S.shift(x, jes=0.97, cuts=S.Cuts(jet_pt=30.0))  # 30.5 GeV -> 29.6 GeV
    assert col(out, "PRI_jet_num").tolist() == [1.0, 3.0]
    assert col(out, "PRI_jet_all_pt")[0] == pytest.approx(0.97 * 80.0)
    jets_t = pt_vector(x, "jet_leading") + pt_vector(x, "jet_subleading")
    np.testing.assert_allclose(met_vector(out), met_vector(x) + 0.03 * jets_t, atol=1e-3)


def test_les_scales_the_lepton_and_balances_the_missing_et(physics_table):
    x = physics_table.features
    out = S.shift(x, les=1.02)
    np.testing.assert_allclose(col(out, "PRI_lep_pt"), 1.02 * col(x, "PRI_lep_pt"), rtol=1e-6)
    new = met_vector(out) + 1.02 * pt_vector(x, "lep")
    np.testing.assert_allclose(new, met_vector(x) + pt_vector(x, "lep"), rtol=1e-5, atol=1e-3)


def test_angular_features_do_not_move_under_energy_scales(physics_table):
    x = physics_table.features
    nominal = S.shift(x, cuts=S.Cuts(jet_pt=30.0))
    out = S.shift(x, tes=1.03, jes=1.03, les=1.02, cuts=S.Cuts(jet_pt=30.0))
    for name in ANGULAR:
        np.testing.assert_array_equal(col(out, name), col(nominal, name))
    moved = ("DER_mass_vis", "DER_sum_pt", "DER_pt_h")
    for name in moved:
        assert not np.allclose(col(out, name), col(nominal, name)), name


def test_soft_met_is_seeded_and_has_the_asked_width(physics_table):
    x = physics_table.features
    a = S.shift(x, soft_met=3.0, rng=7)
    np.testing.assert_array_equal(a, S.shift(x, soft_met=3.0, rng=7))
    assert not np.array_equal(a, S.shift(x, soft_met=3.0, rng=8))
    step = met_vector(a) - met_vector(x)
    assert step.std(axis=0) == pytest.approx([3.0, 3.0], rel=0.05)
    with pytest.raises(ValueError, match="soft_met > 0 needs rng"):
        S.shift(x, soft_met=3.0)


def test_post_selection_cuts_tau_and_lepton_after_the_shift(physics_table):
    x = physics_table.features
    nominal = S.shifted(x)
    expected = (col(x, "PRI_tau_pt") > 22.0) & (col(x, "PRI_lep_pt") > 27.0)
    np.testing.assert_array_equal(nominal.passed, expected)
    down, up = S.shifted(x, tes=0.97), S.shifted(x, tes=1.03)
    assert (down.passed <= nominal.passed).all() and (nominal.passed <= up.passed).all()
    assert down.passed.sum() < nominal.passed.sum() < up.passed.sum()


def test_variations_hold_the_same_events_shifted_by_one_sigma(physics_table):
    settings = S.Systematics.from_config({"les": 0.02, "soft_met": 2.0, "seed": 4})
    v = S.variations(physics_table, settings)
    assert list(v.shapes) == ["tes", "jes", "les", "soft_met"]
    x = physics_table.features
    np.testing.assert_array_equal(v.nominal.features, S.shift(x))
    down, up = v.shapes["jes"]
    np.testing.assert_array_equal(down.features, S.shift(x, jes=0.97))
    np.testing.assert_array_equal(up.features, S.shift(x, jes=1.03))
    np.testing.assert_array_equal(up.passed, S.passes(up.features))
    soft_down, soft_up = v.shapes["soft_met"]
    assert soft_down is v.nominal
    np.testing.assert_array_equal(soft_up.features, S.shift(x, soft_met=2.0, rng=4))
    off = S.variations(x, S.Systematics.from_config({"tes": None, "jes": 0}))
    assert off.shapes == {}


# --- process labels --------------------------------------------------------------------------


def test_processes_from_the_2014_weights(real, real_sample):
    frame = pd.read_csv(real_sample, usecols=["Weight", "KaggleWeight", "Label"])
    label = (frame["Label"] == "s").to_numpy().astype(np.int8)
    process = S.processes_from_weights(frame["Weight"].to_numpy(), label)
    np.testing.assert_array_equal(real.process, process)
    key = np.floor(1e7 * frame["Weight"].to_numpy() + 0.5).astype(np.int64)
    assert set(key[label == 1]) == {4613, 57207, 8145, 4610}
    assert set(process[label == 1]) == {S.SIGNAL}
    counts = collections.Counter(process.tolist())
    assert counts[S.TTBAR] == 455 and set(key[process == S.TTBAR]) == {S.TTBAR_WEIGHT_KEY}
    # measured 2026-12-07: 13 repeated background values (2,445 events) are Z -> tau tau,
    # the 5,030 others never repeat
    assert counts[S.ZTAUTAU] == 2445 and len(set(key[process == S.ZTAUTAU])) == 13
    assert {5127399, 4435976, 225326, 217575, 944596, 936590} <= set(key[process == S.ZTAUTAU])
    assert counts[S.WJETS] == 5030 == len(set(key[process == S.WJETS]))
    # the Kaggle training.csv's Weight is KaggleWeight of set t: the same labels
    kaggle = S.processes_from_weights(
        frame["KaggleWeight"].to_numpy(), label, scale=S.KAGGLE_TRAIN_BACKGROUND_SCALE
    )
    np.testing.assert_array_equal(kaggle, process)
    assert S.background_processes(real) == (S.TTBAR, S.WJETS, S.ZTAUTAU)
    kept = real.subset(np.arange(0, 12000, 7))
    np.testing.assert_array_equal(kept.process, process[::7])


def test_processes_from_weights_on_made_up_weights():
    weight = np.array([0.5, 0.2268701, 0.2268701, 0.7, 0.7, 0.7, 1.3, 1.31, 0.5])
    label = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0])
    expected = ["htautau", "ttbar", "ttbar", *["ztautau"] * 3, "wjets", "wjets", "wjets"]
    assert S.processes_from_weights(weight, label).tolist() == expected
    scaled = S.processes_from_weights(np.where(label == 0, 2.0 * weight, weight), label, scale=2.0)
    assert scaled.tolist() == expected


def test_physics_generator_records_its_process_truth(physics_table):
    process, label = physics_table.process, physics_table.label
    assert process is not None and len(process) == len(physics_table)
    assert set(process[label == 1]) == {"ggh", "vbf"}
    assert set(process[label == 0]) == {"ztautau", "wjets", "ttbar"}
    # VBF signal is generated with two tagging jets
    assert (col(physics_table.features, "PRI_jet_num")[process == "vbf"] >= 1).mean() > 0.9
    np.testing.assert_array_equal(physics_table.subset(label == 0).process, process[label == 0])
    assert generate(200, seed=1, generator="copula").process is None


def test_samples_label_events_by_sample_name(tmp_path: Path):
    rng = np.random.default_rng(0)
    for name, n in (("ggH", 30), ("ttbar", 20), ("wjets", 25)):
        pd.DataFrame({"x": rng.normal(size=n), "w": np.ones(n)}).to_csv(tmp_path / f"{name}.csv")
    spec = {
        name: {"files": str(tmp_path / f"{name}.csv"), "weight": "w"} for name in ("ttbar", "wjets")
    }
    data = load_samples(
        signal={"ggH": {"files": str(tmp_path / "ggH.csv"), "weight": "w"}},
        background=spec,
        features=["x"],
        test_fraction=0.2,
    )
    both = np.concatenate([data.train.process, data.test.process])
    assert collections.Counter(both.tolist()) == {"ggH": 30, "ttbar": 20, "wjets": 25}
    assert set(data.train.process[data.train.label == 1]) == {"ggH"}
    settings = S.Systematics.from_config({"norm": {"ttbar": 0.1, "qcd": 0.3}})
    with pytest.raises(ValueError, match=r"systematics.norm.qcd: no background event of process"):
        S.check_norms(settings, data.train)
    S.check_norms(S.Systematics.from_config({"norm": {"ttbar": 0.1}}), data.train)


# --- settings --------------------------------------------------------------------------------


def test_the_shipped_config_gives_the_documented_defaults():
    config = yaml.safe_load((REPO / "conf" / "systematics" / "higgs.yaml").read_text())
    settings = S.Systematics.from_config(config)
    assert settings == S.Systematics()
    assert settings.shapes == {"tes": 0.03, "jes": 0.03}
    assert settings.norm == {"ztautau": 0.05, "ttbar": 0.10, "wjets": 0.20}
    off = S.Systematics.from_config({**config, "les": 0, "norm": {"ztautau": None, "ttbar": 0.1}})
    assert off.les is None and off.norm == {"ttbar": 0.1}


@pytest.mark.parametrize(
    "config, message",
    [
        ({"tes": 0.5}, r"systematics.tes: 0.5 is not a sane size"),
        ({"jes": -0.01}, r"systematics.jes: -0.01 is not a sane size"),
        ({"les": "big"}, r"systematics.les: expected a number"),
        ({"soft_met": 50}, r"systematics.soft_met: 50 GeV is not a sane size"),
        ({"norm": {"ttbar": 1.0}}, r"systematics.norm.ttbar: 1 is not a sane size"),
        ({"norm": [0.1]}, r"systematics.norm: expected a mapping"),
        ({"tess": 0.01}, r"systematics: unknown keys \['tess'\]"),
        ({"seed": -1}, r"systematics.seed: expected an integer"),
        ({"cuts": {"jet_pt": 30.0}}, r"systematics.cuts.jet_pt: 30 GeV is below"),
        ({"tes": 0.1, "cuts": {"tau_pt": 21.0}}, r"systematics.cuts.tau_pt: 21 GeV is below"),
        ({"cuts": {"met": 1}}, r"systematics.cuts: unknown keys \['met'\]"),
        ({"cuts": {"tau_pt": "high"}}, r"systematics.cuts.tau_pt: expected a threshold"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(config, message):
    with pytest.raises(ValueError, match=message):
        S.Systematics.from_config(config)


def test_norms_need_process_labels_and_each_named_process(physics_table, real):
    settings = S.Systematics()
    S.check_norms(settings, physics_table)
    S.check_norms(settings, real)
    unlabelled = generate(200, seed=1, generator="copula")
    with pytest.raises(ValueError, match="carries no process labels"):
        S.check_norms(settings, unlabelled)
    no_top = physics_table.subset(physics_table.process != "ttbar")
    with pytest.raises(ValueError, match=r"systematics.norm.ttbar: no background event"):
        S.check_norms(settings, no_top)


def test_draw_follows_the_priors():
    settings = S.Systematics.from_config({"soft_met": 2.0})
    first = S.draw(settings, np.random.default_rng(1))
    assert first == S.draw(settings, np.random.default_rng(1))
    assert set(first.pulls) == {"tes", "jes", "soft_met", *(f"norm_{p}" for p in settings.norm)}
    assert first.tes == pytest.approx(1 + 0.03 * first.pulls["tes"])
    assert first.les == 1.0 and first.soft_met == pytest.approx(2.0 * abs(first.pulls["soft_met"]))
    t = first.pulls["norm_wjets"]
    assert first.norm["wjets"] == pytest.approx(1.2**t if t >= 0 else 0.8 ** (-t))
    rng = np.random.default_rng(2)
    draws = [S.draw(settings, rng) for _ in range(2000)]
    jes = np.array([d.jes for d in draws])
    assert jes.mean() == pytest.approx(1.0, abs=0.003) and jes.std() == pytest.approx(0.03, rel=0.1)
    assert min(d.soft_met for d in draws) >= 0.0
    out = S.shift(two_jet_events(), **first.shift_kwargs, rng=0)
    assert out.shape == (2, 30)

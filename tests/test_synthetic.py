"""The embedded synthetic data: its contract, and how closely it follows the real sample.

Tests marked by the `real` fixture compare against ../shared/data/atlas-higgs-sample.csv.gz
(12,000 real events) and skip where that folder is absent; the rest are self-contained.
"""

from __future__ import annotations

import json
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from amsaware.data import copula, sources, synthetic
from amsaware.data.formats import read_cern
from amsaware.data.schema import B_TOT, FEATURES, NEEDS_ONE_JET, NEEDS_TWO_JETS, S_TOT
from amsaware.data.synthetic import GENERATORS, generate, make_dataset
from tests.conftest import DEFAULT_GENERATOR, REPO

SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/atlas-higgs-sample.csv.gz"
COL = {name: k for k, name in enumerate(FEATURES)}


GENERATOR_NAMES = ("copula", "physics")


@pytest.fixture(scope="module", params=GENERATOR_NAMES)
def generator(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def synth(generator):
    return generate(50_000, seed=1, generator=generator)


@pytest.fixture(scope="module")
def copula_synth():
    return generate(50_000, seed=1, generator="copula")


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    if not SAMPLE.exists():
        pytest.skip(f"real sample not found at {SAMPLE}")
    return copula.read_cern_file(SAMPLE)


def _real_arrays(real: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        real[list(FEATURES)].to_numpy(np.float32),
        real["label"].to_numpy(),
        real["weight"].to_numpy(),
    )


def _cv_auc(x: np.ndarray, y: np.ndarray) -> float:
    model = HistGradientBoostingClassifier(random_state=0)
    score = cross_val_predict(model, x, y, cv=3, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, score))


# ---------------------------------------------------------------------------------------------
# the contract, without the real sample


def test_physics_is_the_default_from_python_as_in_the_config():
    assert set(GENERATOR_NAMES) <= set(GENERATORS)
    assert DEFAULT_GENERATOR == synthetic.DEFAULT_GENERATOR == "physics"  # conf/data/synthetic.yaml
    assert generate(100, seed=0).source == "synthetic:physics"
    assert generate(100, seed=0, generator="copula").source == "synthetic:copula"
    assert sources.synthetic(100, 0).train.source == "synthetic:physics"


def test_same_seed_gives_same_events_and_another_seed_does_not(generator):
    a, b, c = (generate(2_000, seed=s, generator=generator) for s in (7, 7, 8))
    for field in ("features", "label", "weight"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.features, c.features, equal_nan=True)
    assert not np.array_equal(a.label, c.label)


def test_table_has_the_challenge_columns_dtypes_and_ids(generator):
    table = generate(1_000, seed=0, first_event_id=350_000, generator=generator)
    assert table.feature_names == FEATURES and len(FEATURES) == 30
    assert table.features.shape == (1_000, 30) and table.features.dtype == np.float32
    assert table.label.dtype == np.int8 and set(np.unique(table.label)) == {0, 1}
    assert table.weight.dtype == np.float64 and (table.weight > 0).all()
    assert table.event_id.dtype == np.int64
    np.testing.assert_array_equal(table.event_id, np.arange(350_000, 351_000))
    assert table.kaggle_set is None and table.labelled
    assert generate(10, seed=0).event_id[0] == 0


def test_undefined_values_follow_jet_multiplicity_exactly(synth):
    x = synth.features
    jets = x[:, COL["PRI_jet_num"]]
    assert set(np.unique(jets)) == {0.0, 1.0, 2.0, 3.0}
    undefined = np.isnan(x)
    one, two = [COL[f] for f in NEEDS_ONE_JET], [COL[f] for f in NEEDS_TWO_JETS]
    assert undefined[np.ix_(jets == 0, one + two)].all()
    assert not undefined[np.ix_(jets >= 1, one)].any()
    assert undefined[np.ix_(jets == 1, two)].all()
    assert not undefined[np.ix_(jets >= 2, two)].any()
    # apart from the jet features, only DER_mass_MMC is ever undefined
    others = [k for k in range(30) if k not in one + two and k != COL["DER_mass_MMC"]]
    assert not undefined[:, others].any()
    assert 0 < undefined[:, COL["DER_mass_MMC"]].mean() < 0.3
    # PRI_jet_all_pt is 0, not undefined, without jets, and the leading jet's pt with one
    all_pt = x[:, COL["PRI_jet_all_pt"]]
    assert (all_pt[jets == 0] == 0).all()
    np.testing.assert_array_equal(all_pt[jets == 1], x[jets == 1, COL["PRI_jet_leading_pt"]])
    # values carry the files' 3 decimals (as float32, like the CSV read into float32)
    defined = x[~undefined]
    np.testing.assert_array_equal(
        defined, np.round(defined.astype(np.float64), 3).astype(np.float32)
    )


def test_weights_carry_the_full_data_totals_per_class(synth):
    assert synth.weight[synth.label == 1].sum() == pytest.approx(S_TOT, rel=1e-12)
    assert synth.weight[synth.label == 0].sum() == pytest.approx(B_TOT, rel=1e-12)


def test_make_dataset_splits_sets_ids_and_weights_like_the_challenge(generator):
    data = make_dataset(n_train=5_000, n_test=11_000, seed=3, generator=generator)
    train, test = data.train, data.test
    assert len(train) == 5_000 and len(test) == 11_000
    assert (train.kaggle_set == "t").all()
    assert (test.kaggle_set[:2_000] == "b").all() and (test.kaggle_set[2_000:] == "v").all()
    np.testing.assert_array_equal(train.event_id, np.arange(100_000, 105_000))
    np.testing.assert_array_equal(test.event_id, np.arange(105_000, 116_000))
    for table, sets in ((train, "t"), (test, "bv")):
        assert table.labelled and table.source == f"synthetic:{generator}"
        for letter in sets:
            in_set = table.kaggle_set == letter
            assert table.weight[in_set & (table.label == 1)].sum() == pytest.approx(S_TOT)
            assert table.weight[in_set & (table.label == 0)].sum() == pytest.approx(B_TOT)
    # independent streams: the training events do not depend on the test size, and differ
    alone = make_dataset(n_train=5_000, n_test=0, seed=3, generator=generator).train
    np.testing.assert_array_equal(alone.features, train.features)
    assert not np.array_equal(train.features, test.features[:5_000], equal_nan=True)
    again = make_dataset(n_train=5_000, n_test=11_000, seed=3, generator=generator)
    np.testing.assert_array_equal(again.test.features, test.features)


def test_make_dataset_without_test_events():
    data = make_dataset(n_train=1_000, n_test=0)
    assert data.test is None and len(data.train) == 1_000


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: generate(0, seed=0), ValueError, "n_events must be >= 1"),
        (lambda: generate(10.0, seed=0), TypeError, "n_events must be an integer"),
        (lambda: generate(10, seed=-1), ValueError, "seed must be >= 0"),
        (lambda: generate(10, seed=0, first_event_id=-5), ValueError, "first_event_id"),
        (lambda: make_dataset(n_train=0), ValueError, "n_train must be >= 1"),
        (lambda: make_dataset(n_train=10, n_test=-1), ValueError, "n_test must be >= 0"),
        (
            lambda: generate(10, seed=0, generator="gan"),
            ValueError,
            r"known: \['copula', 'physics'",
        ),
        (lambda: generate(1, seed=0), ValueError, "no (signal|background) events"),
        (lambda: make_dataset(1_000, n_test=3), ValueError, "in KaggleSet 'b'"),
    ],
)
def test_bad_arguments_are_refused_clearly(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_registered_generator_replaces_the_copula(monkeypatch):
    def uniform(n, rng):
        features = rng.random((n, 30)).astype(np.float32)
        return features, (np.arange(n) % 2).astype(np.int8), np.ones(n)

    monkeypatch.setitem(GENERATORS, "uniform", uniform)
    data = make_dataset(n_train=100, n_test=55, generator="uniform")
    assert data.train.source == "synthetic:uniform"
    assert data.train.weight[data.train.label == 1].sum() == pytest.approx(S_TOT)

    monkeypatch.setitem(GENERATORS, "broken", lambda n, rng: uniform(n - 1, rng))
    with pytest.raises(ValueError, match="generator 'broken' returned shapes"):
        generate(10, seed=0, generator="broken")


def test_package_parameters_are_compact_aggregates():
    path = resources.files("amsaware.data").joinpath(synthetic.COPULA_PARAMETERS)
    text = path.read_text("utf-8")
    assert len(text.encode()) < 600_000
    params = json.loads(text)
    copula.CopulaModel.from_dict(params)  # every correlation matrix is positive definite
    n_levels = len(params["quantile_levels"])
    assert 100 <= n_levels <= 201
    for group in params["groups"]:
        # no stored list is longer than the quantile grid: statistics, not events
        assert all(len(m.get("q", m.get("values"))) <= n_levels for m in group["marginals"])
        assert group["n_events"] >= copula.MIN_GROUP_SIZE
    assert sum(g["frequency"] for g in params["groups"]) == pytest.approx(1, abs=1e-5)


def test_a_classifier_finds_the_real_data_range_of_separation(generator):
    table = generate(30_000, seed=4, generator=generator)
    assert 0.85 <= _cv_auc(table.features, table.label) <= 0.93


@pytest.mark.slow
def test_the_default_800k_events_are_made_in_seconds(generator):
    generate(100, seed=0, generator=generator)  # parameters load once
    # CPU time of this process: wall time swings with other load on a shared machine
    start = time.process_time()
    data = make_dataset(generator=generator)
    elapsed = time.process_time() - start
    assert len(data.train) == 250_000 and len(data.test) == 550_000
    assert (data.test.kaggle_set == "b").sum() == 100_000
    assert elapsed < 30, f"make_dataset() took {elapsed:.1f} s"


# ---------------------------------------------------------------------------------------------
# realism, against the real sample


def test_jet_multiplicity_matches_real(real, synth):
    x_real, _, _ = _real_arrays(real)
    for j in range(4):
        share_real = np.mean(x_real[:, COL["PRI_jet_num"]] == j)
        share_synth = np.mean(synth.features[:, COL["PRI_jet_num"]] == j)
        assert share_synth == pytest.approx(share_real, abs=0.02)


def test_mmc_missing_and_signal_fraction_match_real(real, synth):
    x_real, y_real, _ = _real_arrays(real)
    mmc = COL["DER_mass_MMC"]
    assert np.isnan(synth.features[:, mmc]).mean() == pytest.approx(
        np.isnan(x_real[:, mmc]).mean(), abs=0.03
    )
    assert synth.label.mean() == pytest.approx(y_real.mean(), abs=0.02)


def test_weight_distributions_match_real(real, copula_synth):
    synth = copula_synth  # the physics generator's weights follow its slices instead
    _, y_real, w_real = _real_arrays(real)
    for cls in (0, 1):
        a = w_real[y_real == cls] / w_real[y_real == cls].mean()
        b = synth.weight[synth.label == cls] / synth.weight[synth.label == cls].mean()
        levels = [0.1, 0.5, 0.9]
        np.testing.assert_allclose(np.quantile(b, levels), np.quantile(a, levels), rtol=0.25)


def test_feature_marginals_match_real(real, copula_synth):
    synth = copula_synth  # fitted to these marginals; the physics generator is checked in
    # tests/test_physics.py with the looser bounds it meets
    x_real, y_real, _ = _real_arrays(real)
    for k, feature in enumerate(FEATURES):
        for cls in (0, 1):
            a = x_real[y_real == cls, k]
            b = synth.features[synth.label == cls, k]
            distance = ks_2samp(a[~np.isnan(a)], b[~np.isnan(b)]).statistic
            assert distance < 0.05, f"{feature}, class {cls}: KS {distance:.3f}"


def test_a_classifier_separates_synthetic_classes_as_well_as_real_ones(real, synth):
    x_real, y_real, _ = _real_arrays(real)
    n = len(y_real)
    assert _cv_auc(synth.features[:n], synth.label[:n]) == pytest.approx(
        _cv_auc(x_real, y_real), abs=0.03
    )


def test_refit_from_the_sample_gives_the_package_parameters(real, tmp_path, capsys):
    output = tmp_path / "copula.json"
    synthetic.main(["fit", str(SAMPLE), "--output", str(output)])
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["copula.json"]  # no temporary file left
    fitted = json.loads(output.read_text("utf-8"))
    packaged = json.loads(
        resources.files("amsaware.data").joinpath(synthetic.COPULA_PARAMETERS).read_text("utf-8")
    )
    assert fitted["source"] == packaged["source"]
    # structure and group sizes do not depend on the stratifying classifier's exact version
    keys = ("label", "jet_num", "stratum", "n_events", "constants", "aliases", "variables")
    assert [[g[k] for k in keys] for g in fitted["groups"]] == [
        [g[k] for k in keys] for g in packaged["groups"]
    ]


# ---------------------------------------------------------------------------------------------
# benchmarks/synthetic_fidelity.py: how the comparison is set up and judged


@pytest.fixture(scope="module")
def fidelity():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import synthetic_fidelity

    return synthetic_fidelity


def test_train_py_defaults_to_a_registered_generator():
    assert DEFAULT_GENERATOR in GENERATORS


def test_development_like_events_carry_the_weight_scale_of_a_challenge_sized_set(
    fidelity, tmp_path
):
    table = fidelity.development_like("copula", 5_000, seed=3)
    assert len(table) == 5_000
    # the first 5,000 of 250,000 events: ~1/50 of the totals, like the real sample's 12,000
    for cls, total in ((1, S_TOT), (0, B_TOT)):
        share = table.weight[table.label == cls].sum() / total
        assert share == pytest.approx(5_000 / 250_000, rel=0.1)
    path = tmp_path / "events.csv.gz"
    fidelity.write_cern_like(table, path)
    back = read_cern(path)
    np.testing.assert_array_equal(back.event_id, table.event_id)
    np.testing.assert_array_equal(back.label, table.label)
    np.testing.assert_array_equal(back.features, table.features)  # NaN where -999 was written
    np.testing.assert_allclose(back.weight, table.weight, rtol=1e-12)
    assert set(back.kaggle_set) == {"t"}


def test_targets_compare_each_ams_relatively_and_the_auc_absolutely(fidelity):
    real = {"bce": {"ams@15%": 3.0, "ams_cut": 3.0, "auroc": 0.88}, "ams": {}}
    real["ams"] = {"ams@15%": 2.5, "ams_cut": 2.6, "auroc": 0.84}
    synth = {
        "bce": {"ams@15%": 2.65, "ams_cut": 3.2, "auroc": 0.905},
        "ams": {"ams@15%": 2.3, "ams_cut": 2.9, "auroc": 0.80},
    }
    t = fidelity.targets(real, synth, {"signal": 0.74, "background": 0.76, "all": 0.75})
    assert t["bce ams@15%"]["deviation"] == pytest.approx(2.65 / 3.0 - 1)
    assert not t["bce ams@15%"]["met"]  # -11.7%
    assert t["bce ams_cut"]["met"]  # +6.7%
    assert t["ams ams@15%"]["met"]  # -8%
    assert not t["ams ams_cut"]["met"]  # +11.5%
    assert t["bce auroc"]["deviation"] == pytest.approx(0.025)
    assert not t["bce auroc"]["met"]
    assert t["discriminator signal"]["met"] and not t["discriminator background"]["met"]


def test_the_benchmark_refuses_a_call_without_a_mode(fidelity, capsys):
    with pytest.raises(SystemExit):
        fidelity.main(["--generator", "physics"])
    assert "--real FILE" in capsys.readouterr().err

"""The embedded synthetic data: self-contained properties, then realism against the real sample."""

import numpy as np
import pytest
from scipy.stats import ks_2samp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from amsaware.data.formats import read_cern
from amsaware.data.schema import B_TOT, FEATURES, NEEDS_ONE_JET, NEEDS_TWO_JETS, S_TOT
from amsaware.data.synthetic import generate, make_dataset
from tests.conftest import REAL_SAMPLE

JET = FEATURES.index("PRI_jet_num")


@pytest.fixture(scope="module")
def synthetic():
    return generate(40_000, seed=11)


@pytest.fixture(scope="module")
def real():
    if not REAL_SAMPLE.exists():
        pytest.skip(f"shared real sample not found at {REAL_SAMPLE}")
    return read_cern(REAL_SAMPLE)


def test_deterministic_per_seed():
    a, b, c = generate(2_000, seed=5), generate(2_000, seed=5), generate(2_000, seed=6)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert not np.array_equal(a.features, c.features, equal_nan=True)


def test_columns_jet_patterns_and_totals(synthetic):
    assert synthetic.feature_names == FEATURES
    jets = synthetic.features[:, JET]
    assert set(np.unique(jets)) == {0, 1, 2, 3}
    for name in NEEDS_ONE_JET:
        column = synthetic.features[:, FEATURES.index(name)]
        assert np.array_equal(np.isnan(column), jets < 1), name
    for name in NEEDS_TWO_JETS:
        column = synthetic.features[:, FEATURES.index(name)]
        assert np.array_equal(np.isnan(column), jets < 2), name
    all_pt = synthetic.features[:, FEATURES.index("PRI_jet_all_pt")]
    assert (all_pt[jets == 0] == 0).all()
    assert synthetic.weight[synthetic.label == 1].sum() == pytest.approx(S_TOT)
    assert synthetic.weight[synthetic.label == 0].sum() == pytest.approx(B_TOT)


def test_dataset_splits_like_the_leaderboard_with_totals_per_set():
    dataset = make_dataset(2_000, 5_500, seed=1)
    test = dataset.test
    assert (dataset.train.kaggle_set == "t").all()
    assert (test.kaggle_set == "b").sum() == 1_000 and (test.kaggle_set == "v").sum() == 4_500
    assert test.event_id.min() > dataset.train.event_id.max()
    for letter in "bv":
        rows = test.kaggle_set == letter
        assert test.weight[rows & (test.label == 1)].sum() == pytest.approx(S_TOT)
        assert test.weight[rows & (test.label == 0)].sum() == pytest.approx(B_TOT)
    assert make_dataset(100, 0).test is None


def test_unknown_generator_is_named():
    with pytest.raises(ValueError, match="copula"):
        generate(10, seed=0, generator="nope")


def test_frequencies_missing_rates_and_class_balance_match_the_real_sample(synthetic, real):
    for name, stat in {
        "signal fraction": lambda t: t.label.mean(),
        "MMC missing": lambda t: np.isnan(t.features[:, 0]).mean(),
        **{f"jets={j}": (lambda t, j=j: (t.features[:, JET] == j).mean()) for j in range(4)},
    }.items():
        assert stat(synthetic) == pytest.approx(stat(real), abs=0.02), name


def test_weight_distributions_match_the_real_sample(synthetic, real):
    """Shapes per class (weights over their class mean): the totals differ by design."""
    for label in (0, 1):
        syn = synthetic.weight[synthetic.label == label]
        rea = real.weight[real.label == label]
        for q in (0.1, 0.5, 0.9):
            ratio = np.quantile(syn / syn.mean(), q) / np.quantile(rea / rea.mean(), q)
            assert ratio == pytest.approx(1.0, abs=0.25), (label, q)


def test_marginals_match_the_real_sample(synthetic, real):
    worst = []
    for label in (0, 1):
        for j, name in enumerate(FEATURES):
            syn = synthetic.features[synthetic.label == label, j]
            rea = real.features[real.label == label, j]
            syn, rea = syn[~np.isnan(syn)], rea[~np.isnan(rea)]
            worst.append((ks_2samp(syn, rea).statistic, name, label))
    assert max(worst)[0] < 0.06, sorted(worst)[-3:]


def oof_auc(table, n=12_000):
    x, y = table.features[:n], table.label[:n]
    model = HistGradientBoostingClassifier(max_iter=150, random_state=0)
    return roc_auc_score(y, cross_val_predict(model, x, y, cv=3, method="predict_proba")[:, 1])


def test_a_classifier_separates_classes_about_as_well_as_on_real_data(synthetic, real):
    """Not a trivially separable toy: the AUC lies in the real range and near the real value."""
    synthetic_auc, real_auc = oof_auc(synthetic), oof_auc(real)
    assert 0.85 <= synthetic_auc <= 0.93
    assert synthetic_auc == pytest.approx(real_auc, abs=0.03)

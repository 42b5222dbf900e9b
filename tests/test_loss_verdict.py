"""The verdict benchmark's own logic: the paired bootstrap and the verdict sentence."""

import sys

import numpy as np
import pytest
import torch

from amsaware.metrics import ams_of_selection
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from loss_verdict import selection_ams_bootstrap
from verdict_page import render, verdict


@pytest.fixture
def events():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 2000)
    weight = np.where(label == 1, rng.uniform(0.001, 0.01, 2000), rng.uniform(0.5, 5, 2000))
    score = rng.normal(label.astype(float), 1.0)
    return label, weight, score


def test_bootstrap_is_paired_and_centred_on_the_full_sample(events):
    label, weight, score = events
    top = score > np.quantile(score, 0.8)
    boot = selection_ams_bootstrap(
        {"a": top, "same": top.copy(), "other": score > 0}, label, weight, n_resamples=300
    )
    np.testing.assert_array_equal(boot["a"], boot["same"])  # same resamples for every key
    full = float(
        ams_of_selection(torch.from_numpy(top), torch.from_numpy(label), torch.from_numpy(weight))
    )
    assert np.mean(boot["a"]) == pytest.approx(full, rel=0.05)
    assert np.std(boot["a"]) > 0
    again = selection_ams_bootstrap({"a": top}, label, weight, n_resamples=300)
    np.testing.assert_array_equal(again["a"], boot["a"])  # seeded


def _document(ci_low):
    entry = {
        "description": "x",
        "mean": {"ams_at_cut": 3.0},
        "std": {"ams_at_cut": 0.1},
        "cpu_seconds": 1.0,
    }
    for key in ("cut_fraction", "oof/ams_max", "oof/ams@0.5", "oof/auroc", "oof/auroc_weighted"):
        entry["mean"][key], entry["std"][key] = 0.5, 0.0
    bce = {**entry, "mean": {**entry["mean"], "ams_at_cut": 2.9}}
    comparison = {"difference": 0.1, "ci_low": ci_low, "ci_high": 0.3, "p_not_better": 0.04}
    protocol = {
        "folds": 3,
        "eval_seeds": [1, 2, 3],
        "search_seed": 0,
        "trials_per_loss": 10,
        "search_epochs": 5,
        "epochs": 10,
        "search_objective": "o",
        "optuna": "2",
        "bootstrap": "b",
        "machine": "m",
        "torch": "t",
    }
    return {
        "data": "d",
        "protocol": protocol,
        "losses": {"bce": bce, "deltaz": entry},
        "vs_bce": {"deltaz": comparison},
    }


def test_verdict_names_a_winner_only_when_its_ci_excludes_zero():
    assert "`deltaz` beats BCE" in verdict(_document(ci_low=0.01))
    says = verdict(_document(ci_low=-0.01))
    assert "No AMS-aware loss beats BCE" in says and "0.100 above BCE's 2.900" in says
    page = render(_document(ci_low=0.01))
    assert "| `deltaz` | 3.000 ± 0.100 |" in page and "+0.100 [+0.010, +0.300]" in page
    assert "What to try next" not in page
    assert "What to try next" in render(_document(ci_low=-0.01))

"""The verdict benchmark's own logic: cuts chosen out of fold, the paired bootstrap, the page."""

import sys

import numpy as np
import pytest
import torch

from amsaware.data.schema import EventTable
from amsaware.metrics import ams_of_selection
from amsaware.protocol import choose_cut
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from loss_verdict import MODELS, PAIRS, out_of_fold_selection, selection_ams_bootstrap
from verdict_page import render, verdict


@pytest.fixture
def events():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 3000)
    weight = np.where(label == 1, rng.uniform(0.001, 0.01, 3000), rng.uniform(0.5, 5, 3000))
    score = rng.normal(label.astype(float), 1.0)
    return label, weight, score


def table_of(label, weight):
    return EventTable(
        event_id=np.arange(len(label)),
        features=np.zeros((len(label), 1)),
        feature_names=("x",),
        label=label,
        weight=weight,
    )


def test_each_folds_cut_is_chosen_on_the_other_folds(events):
    label, weight, score = events
    fold = np.arange(len(label)) % 3
    table = table_of(label, weight)
    selected, fractions = out_of_fold_selection(score, table, fold)
    for k in range(3):
        others = fold != k
        cut = choose_cut(
            score[others], label[others], weight[others], s_tot=table.s_tot, b_tot=table.b_tot
        )
        assert fractions[k] == pytest.approx(cut.fraction)
        inside = fold == k
        assert selected[inside].sum() == pytest.approx(cut.fraction * inside.sum(), abs=1)
        # The top of the fold is selected: no selected score below an unselected one.
        assert score[inside][selected[inside]].min() >= score[inside][~selected[inside]].max()
    # Relabelling a fold's own events cannot move its cut.
    flipped = label.copy()
    flipped[fold == 0] = 1 - flipped[fold == 0]
    again, _ = out_of_fold_selection(score, table_of(flipped, weight), fold)
    assert np.array_equal(again[fold == 0], selected[fold == 0])


def test_bootstrap_is_paired_and_centred_on_the_full_sample(events):
    label, weight, score = events
    top = score > np.quantile(score, 0.8)
    boot = selection_ams_bootstrap(
        {"a": top, "same": top.copy(), "other": score > 0}, label, weight, n_resamples=300
    )
    np.testing.assert_array_equal(boot["a"], boot["same"])  # same resamples for every key
    full = float(
        ams_of_selection(
            torch.from_numpy(top), torch.from_numpy(label), torch.from_numpy(weight), 1.0, 1.0
        )
    )
    assert np.mean(boot["a"]) == pytest.approx(full, rel=0.05)
    assert np.std(boot["a"]) > 0
    again = selection_ams_bootstrap({"a": top}, label, weight, n_resamples=300)
    np.testing.assert_array_equal(again["a"], boot["a"])  # seeded


def _section(per_seed, n_models=MODELS):
    stats = {"ams_oof_cut": 3.0, "cut_fraction": 0.15, "oof/ams@15%": 2.9, "oof/ams_max": 3.1}
    stats |= {"oof/auroc": 0.88, "oof/auroc_weighted": 0.91}
    entry = {"description": "x", "mean": stats, "std": dict.fromkeys(stats, 0.1), "seeds": []}
    comparison = {
        "difference": float(np.mean(per_seed)),
        "ci_low": -0.01,
        "ci_high": 0.3,
        "p_not_better": 0.06,
        "seeds_better": sum(x > 0 for x in per_seed),
        "per_seed": per_seed,
    }
    return {
        "models": dict.fromkeys(n_models, entry),
        "comparisons": {f"{a} - {b}": comparison for a, b in PAIRS},
    }


def _document(per_seed_vs_bce, bagged_difference=0.05):
    protocol = {"events": 12000, "folds": 3, "seeds": [1, 2, 3, 4, 5], "search_seed": 0}
    protocol |= {"trials": 6, "bootstrap": "b", "optuna": "5", "torch": "t"}
    protocol |= {"machine": "m", "date": "2026-11-30", "run_seconds": 600}
    search = {
        "best": {"finetune.optimizer.lr": 5e-5, "finetune.batch_size": 1024},
        "best_value": 3.2,
        "trials": [{"number": 0, "value": 3.2, "params": {"finetune.batch_size": 1024}}],
    }
    return {
        "command": "python benchmarks/loss_verdict.py",
        "protocol": protocol,
        "search": search,
        "single": _section(per_seed_vs_bce),
        "bagged": _section([bagged_difference]),
    }


def test_the_verdict_needs_four_of_five_seeds_and_the_ensemble():
    assert "beats BCE**" in verdict(_document([0.1, 0.2, 0.1, -0.05, 0.3]))
    assert "does not meet the bar" in verdict(_document([0.1, 0.2, -0.1, -0.05, 0.3]))
    assert "does not meet the bar" in verdict(_document([0.1] * 5, bagged_difference=-0.02))
    says = verdict(_document([0.1] * 5))
    assert "better in 5 of 5 seeds" in says and "within it" in says


def test_the_page_shows_every_model_and_comparison():
    page = render(_document([0.1] * 5))
    for name in MODELS:
        assert f"| `{name}` | 3.000 ± 0.100 |" in page
    for a, b in PAIRS:
        assert f"| {a} - {b} |" in page
    assert page.count("| finetune_ams - bce |") == 2  # single models and ensembles
    assert "`finetune.optimizer.lr=5e-05`" in page


def test_the_verdict_says_when_the_control_explains_the_gain():
    document = _document([0.1] * 5)
    assert "the second phase itself" not in verdict(document)
    control = dict(document["single"]["comparisons"]["finetune_bce - bce"], ci_low=0.05)
    document["single"]["comparisons"]["finetune_bce - bce"] = control
    assert "the second phase itself, not the loss" in verdict(document)

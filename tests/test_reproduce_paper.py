"""benchmarks/reproduce_paper.py: its data handling, its reading of the runs, and its page."""

import gzip
import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from amsaware.metrics import ams_of_selection
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import reproduce_paper as rp


def _cern_rows(sample, n: int) -> pd.DataFrame:
    return pd.read_csv(sample, nrows=n)


def test_first_events_keeps_the_header_and_the_first_rows(real_sample, tmp_path):
    path = rp.first_events(real_sample, 250, tmp_path)
    kept = pd.read_csv(path)
    np.testing.assert_array_equal(kept.EventId, _cern_rows(real_sample, 250).EventId)
    assert rp.first_events(real_sample, 250, tmp_path) == path  # reused
    with pytest.raises(ValueError, match="fewer than --limit"):
        rp.first_events(real_sample, 20_000, tmp_path / "other")
    with pytest.raises(ValueError, match="--limit must be >= 1"):
        rp.first_events(real_sample, 0, tmp_path)


def test_test_events_are_detected_by_kaggle_set(real_sample, tmp_path):
    frame = _cern_rows(real_sample, 30)
    path = tmp_path / "train_only.csv"
    frame.to_csv(path, index=False)
    assert not rp.has_test_events(path)
    frame.loc[20:, "KaggleSet"] = "b"
    frame.to_csv(path, index=False)
    assert rp.has_test_events(path)


def test_fold_ams_is_on_the_scale_of_a_third_of_the_totals():
    rng = np.random.default_rng(0)
    n = 3000
    label = rng.integers(0, 2, n)
    frame = pd.DataFrame(
        {
            "fold": np.arange(n) % 3,
            "label": label,
            "weight": np.where(label == 1, 0.2, 100.0),
            "score": np.clip(rng.normal(0.3 + 0.4 * label, 0.2), 0, 1),
        }
    )
    totals = (690.0, 410_000.0)
    value = rp._fold_ams_at_fold_scale(frame, totals)
    expected = []
    for _, fold in frame.groupby("fold"):
        scores, y, w = rp._tensors(fold)
        expected.append(float(ams_of_selection(scores >= 0.5, y, w, totals[0] / 3, totals[1] / 3)))
    assert value == pytest.approx(np.mean(expected))
    # Rescaled: the weights' own scale does not matter.
    tripled = rp._fold_ams_at_fold_scale(frame.assign(weight=3 * frame.weight), totals)
    assert tripled == pytest.approx(value)


def test_loss_optimum_selects_the_signal_of_a_perfectly_ranked_batch():
    rng = np.random.default_rng(1)
    n = 20_000
    label = (rng.random(n) < 0.2).astype(int)
    scores = label + rng.random(n) * 0.5  # every signal event above every background event
    weight = np.ones(n)
    fraction, curve = rp.loss_optimum(scores, label, weight, batch_size=200, n_batches=100)
    assert fraction == pytest.approx(0.2, abs=0.03)
    assert curve.shape == (200,)
    assert np.argmax(curve) == round(fraction * 200) - 1


def _measurements(fraction_half: float, ams_half: float, ams_at: dict, above: float) -> dict:
    return {
        "fraction_0.5": fraction_half,
        "ams_0.5": ams_half,
        "fraction_cut": 0.15,
        "above_0.99": above,
        "below_0.01": above,
        "tied_at_top": 0.01,
        "ams_at": {f"{f:g}": ams_at[f] for f in rp.FRACTIONS},
    }


def test_cut_explanation_reads_the_ranking_off_the_numbers():
    bce_curve = dict.fromkeys(rp.FRACTIONS, 3.0)
    ams_curve = dict.fromkeys(rp.FRACTIONS, 2.5) | {0.5: 3.1}
    result = {
        "seeds": [1],
        "runs": {
            "bce": [_measurements(0.45, 2.4, bce_curve, 0.02)],
            "ams": [_measurements(0.17, 2.6, ams_curve, 0.61)],
        },
        "loss_optimum": {"fraction": 0.27, "batch_size": 256, "b_reg": 10.0},
    }
    text = "\n".join(rp._cut_lines(result))
    assert "and leads at 50%: the ranking" in text
    assert "keeps 45.0% of the events for BCE and 17.0% for soft AMS: working points 28" in text
    assert "There soft AMS is ahead of BCE (2.600 against 2.400" in text
    assert "puts 61% of the events above p = 0.99" in text
    assert "peaks when 27% of it is selected" in text
    result["runs"]["ams"][0] |= {"ams_0.5": 2.0, "fraction_0.5": 0.44}
    text = "\n".join(rp._cut_lines(result))
    assert "There soft AMS is behind BCE" in text and "nearly the same fraction" in text
    result["runs"]["ams"][0]["ams_at"] = {k: 1.0 for k in result["runs"]["ams"][0]["ams_at"]}
    assert "trails BCE at every tabulated fraction" in "\n".join(rp._cut_lines(result))


@pytest.mark.slow
def test_the_script_reproduces_on_a_file_with_test_events(real_sample, tmp_path):
    """End to end on 1,500 events, a third relabelled as public/private test events."""
    frame = _cern_rows(real_sample, 1500)
    frame.loc[1000:1249, "KaggleSet"] = "b"
    frame.loc[1250:, "KaggleSet"] = "v"
    data = tmp_path / "cern.csv.gz"
    with gzip.open(data, "wt") as sink:
        frame.to_csv(sink, index=False)
    out, docs = tmp_path / "out", tmp_path / "docs"
    argv = [str(data), "--seeds", "1", "--epochs", "1", "--n-bootstrap", "20"]
    rp.main([*argv, "--out", str(out), "--docs", str(docs)])

    result = json.loads((docs / rp.RESULTS).read_text())
    assert result["final_fit"] is True
    for loss in rp.LOSSES:
        (measured,) = result["runs"][loss]
        oof = pd.read_csv(out / "runs" / f"{loss}-seed1" / "oof_predictions.csv")
        assert len(oof) == 1000
        assert measured["fraction_0.5"] == pytest.approx((oof.score >= 0.5).mean())
        # The paper's Kaggle numbers: the final fit's test scores cut at p > 0.5.
        assert set(measured["kaggle"]) == {"auc", "ams_public@0.5", "ams_private@0.5"}
        assert "test/ams_public" in measured["test"]
    (boot,) = result["bootstrap"]
    assert {row["statistic"] for row in boot["paper_cut"]} == {
        "ams@cut",
        "ams_max",
        "auroc",
        "auroc_weighted",
    }
    page = (docs / "reproduction.md").read_text()
    assert "<!-- paper:begin -->" in page
    (row,) = [line for line in page.splitlines() if line.startswith("| Kaggle AMS at p > 0.5")]
    assert row.count("public") == 2 and row.count("private") == 2 and "(final fit)" in row
    for name in ("history", "bootstrap", "roc", "ams_fraction", "scores"):
        assert (docs / "figures" / f"reproduction_{name}.png").stat().st_size > 1000
    # A second run reuses the finished runs and rewrites only its own section.
    rp.main([*argv, "--out", str(out), "--docs", str(docs)])
    assert (docs / "reproduction.md").read_text().count("<!-- paper:begin -->") == 1


def test_tensors_are_writable_copies():
    frame = pd.DataFrame({"score": [0.1, 0.9], "label": [0, 1], "weight": [1.0, 0.01]})
    scores, label, weight = rp._tensors(frame)
    scores += 1  # a read-only view would warn or fail here
    assert label.dtype == torch.int64 and weight.dtype == torch.float64


def _row(statistic: str, observed: float, low: float, high: float) -> dict:
    return {"statistic": statistic, "observed": observed, "ci_low": low, "ci_high": high}


def test_verdicts_follow_the_bootstrap():
    def result(half: tuple, chosen: tuple, auc: tuple, ams_half: float) -> dict:
        boot = {
            "paper_cut": [_row("ams@cut", *half)],
            "chosen_cut": [_row("ams@cut", *chosen), _row("auroc", *auc)],
        }
        run = {"oof_auc": 0.88, "ams_0.5": 2.5, "ams_cut": 2.9}
        return {
            "bootstrap": [boot, boot],
            "runs": {
                "bce": [run, run],
                "ams": [run | {"oof_auc": 0.84, "ams_0.5": ams_half, "ams_cut": 2.6}] * 2,
            },
        }

    paper_like = "\n".join(
        rp._verdict_lines(result((0.1, 0.05, 0.15), (-0.3, -0.5, -0.1), (-0.04, -0.05, -0.03), 2.6))
    )
    assert "*BCE has the higher AUC* (paper: 0.928 against 0.905): **holds**" in paper_like
    assert "p > 0.5* (paper: +0.117, CI [+0.089, +0.145]): **holds**" in paper_like
    assert "**Does not follow**: the paper's ranking comes from its p > 0.5 threshold" in paper_like
    assert "needs the full CERN file" in paper_like
    reversed_ = "\n".join(
        rp._verdict_lines(result((-0.1, -0.2, 0.01), (-0.3, -0.5, 0.1), (-0.04, -0.05, 0.01), 2.4))
    )
    assert "p > 0.5* (paper: +0.117, CI [+0.089, +0.145]): **does not reproduce**" in reversed_
    assert "higher AUC* (paper: 0.928 against 0.905): holds in direction only" in reversed_
    assert "The ranking at the chosen cut agrees with the one at p > 0.5." in reversed_

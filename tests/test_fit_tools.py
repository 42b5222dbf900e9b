"""The fit in the tools around a run: compare's paired refits of two runs' fits, eval's fit on
a labelled file, and the fit's events file a run keeps (`fit/held_out.npz`)."""

import json

import numpy as np
import pytest

from amsaware import fit
from amsaware.comparison import compare, to_dict, to_markdown
from amsaware.run_folder import FIT_EVENTS, RunFolder, RunFolderError
from tests.helpers import run

FIT = ["systematics=higgs", "fit.toys=0", "~logger"]


@pytest.fixture(scope="module")
def fit_runs(tmp_path_factory):
    """Two tiny runs with a fit, of the same events and folds: the reference and a narrower
    network."""
    root = tmp_path_factory.mktemp("fits")
    run(root / "wide", *FIT)
    run(root / "narrow", *FIT, "model.hidden_size=8")
    return root / "wide", root / "narrow"


@pytest.mark.slow
def test_a_run_keeps_its_fits_events_recorded_and_checked(fit_runs, tmp_path):
    wide, _ = fit_runs
    metrics = json.loads((wide / "metrics.json").read_text())
    assert metrics["fit"]["files"]["held_out"]["path"] == FIT_EVENTS
    data, event_id = RunFolder(wide).fit_events()
    assert len(event_id) == len(data.score) == len(np.unique(event_id))
    assert {v.name for v in data.shapes} == {"tes", "jes"}
    assert dict(data.norms) == {"ztautau": 0.05, "ttbar": 0.10, "wjets": 0.20}
    # The kept events give the run's own fit back.
    again = fit.analyse(data, fit.FitConfig(toys=0), np.random.default_rng(0))
    assert again.result.sigma_mu == pytest.approx(metrics["fit"]["fit/sigma_mu"], rel=1e-6)
    # A changed file is refused by its sha256.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(wide, copy)
    (copy / FIT_EVENTS).write_bytes((copy / FIT_EVENTS).read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(RunFolderError, match="sha256 differs"):
        RunFolder(copy).fit_events()


@pytest.mark.slow
def test_compare_shows_the_fits_and_bootstraps_sigma_mu_by_refits(fit_runs):
    wide, narrow = fit_runs
    comparison = compare([wide, narrow], n_bootstrap=50, fit_resamples=12)
    refits = comparison.fit
    assert refits is not None and refits.statistic == "fit/sigma_mu_stat"
    assert refits.runs == ["wide", "narrow"]
    for name in refits.runs:
        # The Hessian refit on all events is the MINOS stat-only sigma_mu of the run, nearly.
        recorded = next(r for r in comparison.runs if r.name == name).fit["fit/sigma_mu_stat"]
        assert refits.observed[name] == pytest.approx(recorded, rel=0.05)
        values = refits.resampled[name]
        assert len(values) + refits.failed == 12 and np.all(values > 0)
        assert np.std(values) > 0  # the resamples differ
    (difference,) = refits.differences
    assert difference.lower_is_better and difference.statistic == "fit/sigma_mu_stat"
    assert difference.ci_low <= difference.mean <= difference.ci_high
    report = to_dict(comparison)["fit"]
    assert set(report["runs"]) == {"wide", "narrow"}
    assert report["runs"]["wide"]["fit/sigma_mu"] > 0
    assert report["bootstrap"]["differences"][0]["verdict"] == difference.verdict
    table = to_markdown(comparison)
    assert "fit/sigma_mu" in table and "Paired bootstrap of fit/sigma_mu_stat" in table
    # Without resamples the metrics are still shown side by side.
    shown = compare([wide, narrow], n_bootstrap=20, fit_resamples=0)
    assert shown.fit is None and "fit/z_discovery" in to_markdown(shown)


def test_a_lower_is_better_difference_reads_negative_as_better():
    from amsaware.stats import paired_difference

    better = paired_difference(
        "b", "a", "fit/sigma_mu", (0.8, 1.0), (np.full(9, 0.8), np.full(9, 1.0)),
        lower_is_better=True,
    )  # fmt: skip
    assert better.verdict == "b better" and better.p_value == 0 and better.fraction_better == 1
    worse = paired_difference("b", "a", "oof/auc", (0.8, 1.0), (np.full(9, 0.8), np.full(9, 1.0)))
    assert worse.verdict == "a better"


@pytest.mark.slow
def test_eval_fits_a_labelled_file_with_the_runs_nuisances(fit_runs, tmp_path):
    from amsaware.data.synthetic import make_dataset
    from amsaware.evaluation import evaluate_file
    from amsaware.inference import ApplyRequest
    from amsaware.run_folder import EVAL_METRICS
    from tests.conftest import DEFAULT_GENERATOR
    from tests.helpers import N_TEST, N_TRAIN, kaggle_frame

    wide, _ = fit_runs
    test = make_dataset(N_TRAIN, N_TEST, DEFAULT_GENERATOR, 42).test
    kaggle_frame(test, with_labels=True).to_csv(tmp_path / "labelled.csv", index=False)
    # The CSV's processes come from its weights (wjets only here): the run's normalisations
    # of the other processes cannot be fitted, said in the report, its other metrics kept.
    report = evaluate_file(ApplyRequest(wide, tmp_path / "labelled.csv", tmp_path / "a.csv"))
    assert "systematics.norm.ztautau: no background event" in report["fit"]["error"]
    assert report["metrics"]["test/auroc"] > 0.5
    # The same run with shape nuisances only fits the file.
    import shutil

    import yaml

    shapes_only = tmp_path / "shapes_only"
    shutil.copytree(wide, shapes_only)
    config = shapes_only / ".hydra" / "config.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["systematics"]["norm"] = {}
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out" / "labelled.scores.csv"
    report = evaluate_file(ApplyRequest(shapes_only, tmp_path / "labelled.csv", out))
    section = report["fit"]
    assert "error" not in section, section
    assert section["fit/sigma_mu"] >= section["fit/sigma_mu_stat"] > 0
    assert section["settings"] == {"mc_stat": True, "bins": 10, "toys": 0}
    assert json.loads((out.parent / EVAL_METRICS).read_text())["fit"] == section
    spec = fit.read_workspace(out.parent / "fit" / "workspace.json")
    assert {m["name"] for s in spec["channels"][0]["samples"] for m in s["modifiers"]} >= {
        "mu", "tes", "jes",
    }  # fmt: skip
    # The file's events, weighted at the run's totals, are what was fitted.
    data, event_id = fit.load_input(out.parent / "fit" / "held_out.npz")
    np.testing.assert_array_equal(event_id, test.event_id)
    s_tot, _ = RunFolder(wide).totals()
    signal = data.process == "signal"
    assert 0 < data.weight[signal].sum() <= s_tot * (1 + 1e-9)

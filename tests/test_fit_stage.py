"""The fit stage of a run: held-out events shifted, re-scored by their own fold model, fitted.

The statistics of the fit are tested in test_fit.py and the shifts in test_systematics.py; here,
what a run adds: which events and weights reach the fit, the config that switches it on, and
what a run with `systematics=higgs` writes (metrics.json's `fit` section, a workspace that pyhf
and cabinetry reload to the same sigma_mu, the figures).
"""

import json
from pathlib import Path

import cabinetry
import numpy as np
import pyhf
import pytest

from amsaware import fit
from amsaware.checks import ConfigError, check_config
from amsaware.data.systematics import Systematics
from amsaware.data.weights import rescaled_weights
from amsaware.fit_stage import SIGNAL, HeldOutScores, no_systematics
from tests.helpers import compose_run, run


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory):
    """A tiny run with the default nuisances, its fit with a few toys."""
    run_dir = tmp_path_factory.mktemp("fit") / "run"
    metrics = run(run_dir, "systematics=higgs", "fit.toys=20", "~logger")
    return run_dir, metrics


def test_held_out_events_are_scored_once_per_repeat_with_weights_at_the_totals(small_table):
    table = small_table
    held = HeldOutScores(table, Systematics())
    assert set(held.features) == {"nominal", "tes_down", "tes_up", "jes_down", "jes_up"}
    first = np.arange(0, len(table), 2)
    second = np.arange(1, len(table), 2)
    # A "model" that returns each event's PRI_tau_pt: the shifted copies must reach it.
    tau = table.feature_names.index("PRI_tau_pt")
    held.add(first, lambda x: x[:, tau])
    with pytest.raises(ValueError, match="never scored"):
        held.fit_input()
    held.add(second, lambda x: x[:, tau])
    data = held.fit_input()
    np.testing.assert_allclose(data.score, held.features["nominal"][:, tau])
    tes = next(shape for shape in data.shapes if shape.name == "tes")
    np.testing.assert_allclose(tes.up, data.score * 1.03, rtol=1e-5)
    np.testing.assert_allclose(tes.down, data.score * 0.97, rtol=1e-5)
    # Weights at the totals over all events; an event the nominal selection drops weighs 0
    # there but keeps its weight where a shift lets it in.
    full = rescaled_weights(table.label, table.weight, table.s_tot, table.b_tot)
    passed = held.variations.nominal.passed
    assert 0 < passed.mean() < 1
    np.testing.assert_allclose(data.weight, np.where(passed, full, 0.0))
    np.testing.assert_allclose(tes.up_weight, full)
    assert set(np.unique(data.process)) == {SIGNAL, "ztautau", "wjets", "ttbar"}
    assert dict(data.norms) == {"ztautau": 0.05, "ttbar": 0.10, "wjets": 0.20}


def test_without_systematics_only_the_nominal_events_are_scored(small_table):
    held = HeldOutScores(small_table, no_systematics())
    assert set(held.features) == {"nominal"}
    held.add(np.arange(len(small_table)), lambda x: np.nan_to_num(x[:, 0]))
    assert held.fit_input().shapes == [] and held.fit_input().norms == {}


def settings_of(*overrides):
    """train.py's settings with these overrides (refusals raise)."""
    return check_config(compose_run(Path("unused"), *overrides))


def test_the_fit_runs_with_a_systematics_group_and_is_switchable():
    assert settings_of().fit is None
    with_systematics = settings_of("systematics=higgs")
    assert with_systematics.fit is not None and with_systematics.systematics.tes == 0.03
    assert settings_of("systematics=higgs", "fit.enabled=false").fit is None
    alone = settings_of("fit.enabled=true")
    assert alone.fit is not None and alone.systematics is None


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("fit.bins=0", "fit.bins"),
        ("fit.toys=-1", "fit.toys"),
        ("+fit.toy=5", "fit.toy"),
        ("systematics.tes=0.5", "systematics.tes"),
        ("systematics.jes=-0.01", "systematics.jes"),
        ("+systematics.norm.qcd=0.1", None),
        ("progress=sometimes", "progress"),
    ],
)
def test_bad_fit_and_systematics_settings_are_refused_by_key(override, named):
    if named is None:  # a process the data lack: refused once the data are loaded
        assert settings_of("systematics=higgs", override).systematics.norm["qcd"] == 0.1
        return
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        settings_of("systematics=higgs", override)


def test_fit_metrics_are_an_objective_only_where_the_run_fits():
    with pytest.raises(ValueError, match="need the fit"):
        settings_of("optimized_metric=fit/sigma_mu")
    settings = settings_of("systematics=higgs", "optimized_metric=fit/sigma_mu")
    assert settings.optimized_metric == "fit/sigma_mu"


def test_a_run_with_systematics_fits_and_keeps_a_workspace_pyhf_reloads(fit_run):
    run_dir, metrics = fit_run
    section = metrics["fit"]
    for name in ("sigma_mu", "sigma_mu_stat", "z_discovery", "z_discovery_stat", "coverage"):
        assert np.isfinite(section[f"fit/{name}"]), name
    assert section["fit/sigma_mu"] >= section["fit/sigma_mu_stat"] > 0
    assert 0 <= section["fit/coverage"] <= 1
    assert section["settings"] == {"mc_stat": True, "bins": 10, "toys": 20}
    spec = json.loads((run_dir / "fit" / "workspace.json").read_text())
    workspace = pyhf.Workspace(spec)  # validates against pyhf's schema
    assert {m["name"] for s in spec["channels"][0]["samples"] for m in s["modifiers"]} >= {
        "mu", "tes", "jes", "norm_ztautau", "norm_ttbar", "norm_wjets",
    }  # fmt: skip
    again = fit.asimov_fit(cabinetry.workspace.load(run_dir / "fit" / "workspace.json"))
    assert again.sigma_mu == pytest.approx(section["fit/sigma_mu"], rel=1e-3)
    assert workspace.get_measurement()["config"]["poi"] == "mu"
    for figure in ("distributions", "scan"):
        assert (run_dir / "fit" / f"{figure}.png").stat().st_size > 0
        assert (run_dir / "fit" / f"{figure}.pdf").stat().st_size > 0


def test_a_normalisation_of_a_process_the_data_lack_is_refused_before_training(tmp_path):
    from amsaware.experiment import run_experiment

    cfg = compose_run(tmp_path / "run", "systematics=higgs", "+systematics.norm.qcd=0.1")
    with pytest.raises(ValueError, match="qcd"):
        run_experiment(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_too_many_bins_for_the_training_events_are_refused_before_training(tmp_path):
    from amsaware.experiment import run_experiment

    cfg = compose_run(tmp_path / "run", "systematics=higgs", "fit.bins=400")
    with pytest.raises(ValueError, match=r"fit.bins=400: .* need >= 8000 background events"):
        run_experiment(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_fit_that_fails_keeps_the_runs_other_results_and_its_message(tmp_path, monkeypatch):
    def fails(*args, **kwargs):
        raise fit.FitError("the Asimov fit did not converge: FailedMinimization: EDM too large")

    monkeypatch.setattr(fit, "analyse", fails)
    metrics = run(tmp_path / "run", "systematics=higgs", "~logger")
    assert metrics["fit"]["error"].startswith("the Asimov fit did not converge")
    assert not any(key.startswith("fit/") for key in metrics["fit"])
    assert np.isfinite(metrics["cv"]["oof"]["oof/ams_max"]) and "cut" in metrics
    assert not (tmp_path / "run" / "fit" / "workspace.json").exists()

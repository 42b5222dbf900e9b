"""`fit.reference`: a run's sigma_mu set against a finished run's on the same data.

The reference is read as data and checked before any training (a finished run with fit
metrics, the same nuisances, bins and mc_stat, the same events); the run then ends with one
line comparing the two sigma_mu and records the comparison in metrics.json's `fit.reference`,
outside the metric names a search or compare.py reads.
"""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from amsaware.checks import (
    ConfigError,
    check_config,
    check_fit_reference_data,
    read_fit_reference,
)
from amsaware.experiment import load_dataset
from amsaware.report import lookup_metric
from amsaware.run_folder import FIT_EVENTS, fold_stage
from tests.helpers import compose_run, run, train

#: The fit as the tests run it: no toys (they cost seconds and are not compared).
FIT = ("systematics=higgs", "fit.toys=0", "~logger")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny BCE run with the default nuisances and its fit: the reference of the tests."""
    run_dir = tmp_path_factory.mktemp("reference") / "bce"
    return run_dir, run(run_dir, *FIT)


def _settings(reference_dir: Path, *overrides: str, output: Path = Path("unused")):
    return check_config(compose_run(output, *FIT, f"fit.reference={reference_dir}", *overrides))


def _copy(reference_dir: Path, tmp_path: Path) -> Path:
    copied = tmp_path / "copy"
    shutil.copytree(reference_dir, copied)
    return copied


def test_a_run_without_a_reference_records_none(reference):
    _, metrics = reference
    assert "reference" not in metrics["fit"]
    assert set(metrics["fit"]) >= {"fit/sigma_mu", "fit/sigma_mu_stat", "settings"}


def test_a_reference_on_the_same_data_is_printed_against_and_recorded(reference, tmp_path, caplog):
    reference_dir, theirs = reference
    with caplog.at_level(logging.INFO, logger="amsaware.experiment"):
        metrics = run(tmp_path / "ams", *FIT, "loss=ams", f"fit.reference={reference_dir}")
    recorded = metrics["fit"]["reference"]
    assert recorded["run"] == str(reference_dir.resolve())
    assert recorded["method"] == "loss=BCELoss"  # no Hydra choices in an in-process run
    assert recorded["sigma_mu"] == pytest.approx(theirs["fit"]["fit/sigma_mu"])
    assert recorded["sigma_mu_stat"] == pytest.approx(theirs["fit"]["fit/sigma_mu_stat"])
    ours = metrics["fit"]["fit/sigma_mu"]
    assert recorded["change"] == pytest.approx(ours / recorded["sigma_mu"] - 1)
    assert recorded["change_stat"] == pytest.approx(
        metrics["fit"]["fit/sigma_mu_stat"] / recorded["sigma_mu_stat"] - 1
    )
    # the search's and compare's metrics stay this run's own
    assert lookup_metric(metrics, "fit/sigma_mu") == pytest.approx(ours)
    with pytest.raises(KeyError):
        lookup_metric(metrics, "reference/sigma_mu")
    lines = [r.getMessage() for r in caplog.records]
    line = next(text for text in lines if text.startswith("fit/sigma_mu "))
    assert f"against {recorded['sigma_mu']:.3f} ({recorded['sigma_mu_stat']:.3f})" in line
    assert str(reference_dir.resolve()) in line and "(loss=BCELoss)" in line
    assert line.endswith(f"{recorded['change']:+.0%}")
    assert any("python compare.py runs='[" in text for text in lines)


def test_a_reference_with_hydra_choices_names_the_method(reference, tmp_path):
    copied = _copy(reference[0], tmp_path)
    (copied / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      loss: bce\n      finetune: inferno\n"
        "      model: mlp\n      augment: null\n"
    )
    assert read_fit_reference(_settings(copied)).method == "loss=bce finetune=inferno"


def test_a_reference_on_other_data_is_refused_before_training(reference, tmp_path):
    reference_dir, _ = reference
    cfg = compose_run(tmp_path / "other", *FIT, f"fit.reference={reference_dir}", "data.seed=3")
    with pytest.raises(ConfigError, match=r"fit\.reference=.*other events.*digest"):
        check_fit_reference_data(check_config(cfg), load_dataset(cfg))
    # the whole run stops there: no fold trained
    with pytest.raises(ConfigError, match=r"fit\.reference="):
        run(tmp_path / "run", *FIT, f"fit.reference={reference_dir}", "data.seed=3")
    assert not (tmp_path / "run" / "checkpoints").exists()
    # fewer events
    cfg = compose_run(tmp_path / "fewer", *FIT, f"fit.reference={reference_dir}")
    cfg.data.n_train = 1400
    with pytest.raises(ConfigError, match=r"fit\.reference=.*other events"):
        check_fit_reference_data(check_config(cfg), load_dataset(cfg))


def test_without_fold_scores_the_fits_own_events_are_compared(reference, tmp_path):
    copied = _copy(reference[0], tmp_path)
    (copied / "checkpoints" / fold_stage(0) / "fold_scores.npz").unlink()
    same = compose_run(tmp_path / "same", *FIT, f"fit.reference={copied}")
    check_fit_reference_data(check_config(same), load_dataset(same))  # the same events pass
    other = compose_run(tmp_path / "other", *FIT, f"fit.reference={copied}", "data.seed=3")
    with pytest.raises(ConfigError, match=r"other events.*(EventIds|labels|weights)"):
        check_fit_reference_data(check_config(other), load_dataset(other))
    (copied / FIT_EVENTS).unlink()
    with pytest.raises(ConfigError, match=r"kept no record of its events"):
        check_fit_reference_data(check_config(same), load_dataset(same))


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["fit.bins=5"], r"fit\.bins 10 there, 5 here"),
        (["fit.mc_stat=false"], r"fit\.mc_stat True there, False here"),
        (["systematics.tes=0.01"], r"systematics\.tes 0\.03 there, 0\.01 here"),
        (["~systematics.norm.wjets"], r"systematics\.norm"),
    ],
)
def test_other_systematics_or_fit_settings_are_refused_by_key(reference, overrides, named):
    with pytest.raises(ConfigError, match=rf"fit\.reference=.*not comparable.*{named}"):
        _settings(reference[0], *overrides)
    _settings(reference[0], "fit.toys=50")  # the toys do not change sigma_mu: allowed


def test_a_reference_that_is_not_a_finished_run_with_a_fit_is_refused(reference, tmp_path):
    reference_dir, _ = reference
    with pytest.raises(ConfigError, match=r"fit\.reference=.*is not there"):
        _settings(tmp_path / "missing")
    a_file = tmp_path / "metrics.json"
    a_file.write_text("{}")
    with pytest.raises(ConfigError, match=r"fit\.reference=.*is a file"):
        _settings(a_file)
    with pytest.raises(ConfigError, match=r"fit\.reference=.*own folder"):
        _settings(reference_dir, output=reference_dir)
    copied = _copy(reference_dir, tmp_path)
    metrics = json.loads((copied / "metrics.json").read_text())
    metrics["fit"] = {"error": "MIGRAD did not converge", "settings": metrics["fit"]["settings"]}
    (copied / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ConfigError, match=r"fit\.reference=.*its fit failed"):
        _settings(copied)
    del metrics["fit"]
    (copied / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ConfigError, match=r"fit\.reference=.*has no fit section"):
        _settings(copied)
    (copied / "metrics.json").unlink()  # interrupted: metrics.json is written at the end
    with pytest.raises(ConfigError, match=r"fit\.reference=.*not a finished run"):
        _settings(copied)


def test_a_reference_needs_a_fit_in_this_run(reference):
    cfg = compose_run(Path("unused"), f"fit.reference={reference[0]}")
    with pytest.raises(ConfigError, match=r"fit\.reference=.*no fit: choose systematics"):
        check_config(cfg)
    assert check_config(compose_run(Path("unused"), *FIT)).fit.reference is None
    assert np.isfinite(reference[1]["fit"]["fit/sigma_mu"])


@pytest.mark.slow
def test_the_issues_commands_on_the_real_sample_print_sigma_mu_against_bce(real_sample, tmp_path):
    """The done-when commands through train.py on the 12,000-event sample (its first 5000
    training events, experiment=smoke): BCE, then INFERNO and BCE fine-tuned by INFERNO, each
    set against the BCE run."""
    data = [
        "experiment=smoke", "data=opendata", f"data.path={real_sample}", "data.download=false",
        "data.limit=12000", "systematics=higgs", "fit.toys=0", "~logger", "threads=1",
    ]  # fmt: skip
    bce = tmp_path / "bce"
    train(bce, "loss=bce", *data, tiny=False)
    for name, method in (("inferno", ["loss=inferno"]), ("ft", ["finetune=inferno"])):
        done = train(tmp_path / name, *method, *data, f"fit.reference={bce}", tiny=False)
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        recorded = metrics["fit"]["reference"]
        assert recorded["run"] == str(bce.resolve()) and recorded["method"] == "loss=bce"
        output = done.stdout + done.stderr
        assert f"against {recorded['sigma_mu']:.3f}" in output and "(loss=bce)" in output
        assert "python compare.py runs='[" in output

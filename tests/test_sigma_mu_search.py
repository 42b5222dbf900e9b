"""Searching for sigma_mu and what the searches ship: hparams_search=optuna_inferno, the
experiments sigma_mu_bce and sigma_mu_nuisance_net (and fit_verdict's controls built on them),
and fit_verdict's bar and paired event bootstrap."""

import json
import sys

import numpy as np
import optuna
import pytest
from helpers import REPO, TINY, compose_config, multirun, run

from amsaware.experiment import run_experiment

sys.path.insert(0, str(REPO / "benchmarks"))
from fit_verdict import CONTROLS, bar_lines, bootstrap_pairs


def test_the_inferno_fine_tune_search_minimises_the_fits_sigma_mu(tmp_path):
    multirun(
        run_experiment,
        [
            "hparams_search=optuna_inferno",
            "systematics=higgs",
            "loss=bce",
            "finetune=inferno",
            *TINY,
            "trainer.max_epochs=1",
            "cv.folds=2",
            "threads=1",
            "fit.bins=4",
            "fit.mc_stat=false",
            "hydra.sweeper.n_trials=1",
            f"paths.log_dir={tmp_path}/logs",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
    )
    storage = f"sqlite:///{tmp_path}/logs/optuna/studies.db"
    (name,) = optuna.study.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert set(trial.params) == {
        "finetune.optimizer.lr",
        "finetune.batch_size",
        "finetune.max_epochs",
        "finetune.loss.temperature",
        "finetune.loss.bins",
    }
    metrics = json.loads((tmp_path / "sweep" / "0" / "metrics.json").read_text())
    assert trial.value == pytest.approx(metrics["fit"]["fit/sigma_mu"])
    assert trial.intermediate_values  # each fold's val/sigma_mu, for the pruner


@pytest.mark.parametrize(
    ("overrides", "net", "augmented"),
    [
        (["experiment=sigma_mu_bce"], "amsaware.model.MLP", False),
        (["experiment=sigma_mu_nuisance_net"], "amsaware.model.NuisanceMLP", True),
        (CONTROLS["control_mlp_augment"][1], "amsaware.model.MLP", True),
        (CONTROLS["control_mlp"][1], "amsaware.model.MLP", False),
    ],
)
def test_the_searched_settings_compose_with_the_data_given(overrides, net, augmented):
    cfg = compose_config("train", "data=opendata", *overrides)
    assert cfg.systematics.tes == pytest.approx(0.03)
    assert cfg.loss._target_.endswith("BCELoss")
    assert cfg.model._target_ == net
    assert ("augment" in cfg and cfg.augment is not None) == augmented
    assert cfg.data.batch_size == 256  # the searched value, over the data group's
    if "experiment=sigma_mu_nuisance_net" in overrides:  # the controls keep the architecture
        assert (cfg.model.n_layers, cfg.model.hidden_size) == (3, 192)


def test_the_searched_nuisance_network_trains_and_fits(tmp_path):
    metrics = run(tmp_path, "experiment=sigma_mu_nuisance_net", "fit.toys=0", "fit.bins=4")
    assert np.isfinite(metrics["fit"]["fit/sigma_mu"])
    assert all(np.isfinite(fold["val/sigma_mu"]) for fold in metrics["cv"]["folds"])


def _document(sigma: dict[str, list[float]], stat: dict[str, list[float]], coverage):
    runs = {
        name: [
            {"exact/sigma_mu": s, "exact/sigma_mu_stat": t, "exact/coverage": coverage[name]}
            for s, t in zip(sigma[name], stat[name], strict=True)
        ]
        for name in sigma
    }
    methods = {
        name: {
            "seeds": r,
            "mean": {k: float(np.mean([x[k] for x in r])) for k in r[0]},
        }
        for name, r in runs.items()
    }
    return runs, {"methods": methods, "protocol": {"toys": 200, "seeds": [1, 2, 3, 4, 5]}}


def test_the_bar_needs_every_condition():
    sigma = {
        "bce": [0.5, 0.6, 0.55, 0.5, 0.6],
        "good": [0.4, 0.45, 0.44, 0.4, 0.5],  # 20% narrower on every seed
        "few": [0.4, 0.45, 0.56, 0.6, 0.61],  # narrower on two seeds only
        "wide_stat": [0.4, 0.45, 0.44, 0.4, 0.5],
        "miscovers": [0.4, 0.45, 0.44, 0.4, 0.5],
    }
    stat = {name: [0.3] * 5 for name in sigma}
    stat["wide_stat"] = [0.33] * 5  # 10% wider stat-only
    coverage = {"bce": 0.68, "good": 0.69, "few": 0.69, "wide_stat": 0.69, "miscovers": 0.60}
    _, document = _document(sigma, stat, coverage)
    rows = {line.split(" | ")[0].strip("| "): line for line in bar_lines(document, "bce")}
    assert "| met |" in rows["good"]
    for name in ("few", "wide_stat", "miscovers"):
        assert "| not met |" in rows[name], name


def test_the_event_bootstrap_pairs_each_method_with_the_reference():
    rng = np.random.default_rng(0)
    sigma = {"bce": [0.5, 0.6], "narrow": [0.4, 0.48]}
    runs, _ = _document(sigma, {n: [0.3, 0.3] for n in sigma}, {"bce": 0.68, "narrow": 0.68})
    shared = [rng.normal(0, 0.05, 400) for _ in range(2)]  # the resamples' common noise
    draws = {
        "bce": [0.5 + shared[0], 0.6 + shared[1]],
        "narrow": [0.4 + shared[0], 0.48 + shared[1]],
    }
    out = bootstrap_pairs(runs, draws, "bce")["narrow"]
    assert out["better_by"] == pytest.approx(0.11)
    low, high = out["interval95"]
    assert low == pytest.approx(0.11) and high == pytest.approx(0.11)  # paired: noise cancels
    assert out["relative95"][0] > 0
    # a method without resamples on every seed is left out, not compared on fewer seeds
    draws["narrow"] = draws["narrow"][:1]
    assert bootstrap_pairs(runs, draws, "bce") == {}

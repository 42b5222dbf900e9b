"""val/sigma_mu: the validation fold's expected sigma_mu, every validation, for any loss and
network of a run with a systematics group; and pruning a search for fit/sigma_mu on it."""

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from helpers import TINY, compose_run, multirun, quiet_trainer, run

from amsaware import fit
from amsaware.checks import check_config
from amsaware.data.datamodule import HiggsDataModule, Needs, PriorDraws, ShiftedCopies
from amsaware.data.systematics import Systematics, background_processes
from amsaware.data.weights import rescaled_weights
from amsaware.experiment import run_experiment
from amsaware.fit_stage import variation_inputs
from amsaware.inferno import SIGMA_MU, SIGMA_MU_STAT, SigmaMu, asimov_variance
from amsaware.losses import BCELoss
from amsaware.model import NuisanceMLP, SignificanceClassifier
from amsaware.report import LOWER_IS_BETTER
from amsaware.search import fold_metric, unreported

SETTINGS = Systematics()  # tes and jes 3%, three normalisations
#: Tiny runs with a systematics group but without the fit stage (seconds of MINUIT fits and
#: impacts): val/sigma_mu needs the group only.
SMALL = ["fit.enabled=false", "trainer.max_epochs=2", "logger=csv"]


# ---------------------------------------------------------------------------------------------
# The metric against independent computations


def _toy_events(seed: int = 0, n: int = 6000):
    """Scores of a signal and two background processes, nominal and shifted: two shape
    nuisances (a symmetric shift of every score, and a one-sided one)."""
    rng = np.random.default_rng(seed)
    signal = rng.random(n) < 0.3
    process = np.where(signal, 0, rng.integers(0, 2, n))
    z = rng.normal(np.where(signal, 1.0, -0.5), 1.0)
    rows = np.stack([z, z - 0.15, z + 0.15, z - 0.05 * (process == 1), z + 0.05])
    weight = rng.uniform(0.5, 1.5, n)
    return signal, process, rows, weight


@pytest.mark.parametrize("mc_stat", [False, True])
def test_it_agrees_with_the_fits_asimov_fit_on_the_same_scores(mc_stat):
    """The same events, binned and fitted by `amsaware.fit` (pyhf, MINOS). Tolerance 1%:
    the two likelihoods differ only in the normalisation nuisances' slope at 0 (atanh f here,
    pyhf's code-1 ln(1 + f) above 0 and -ln(1 - f) below: for f = 0.1 they are 0.5% apart,
    and the norms carry part of the variance) and in MINOS reading a not quite parabolic
    likelihood (measured 0.1-0.4% apart); a wrong sign, slope or missing nuisance moves
    sigma_mu by far more (the shapes alone add 60% to it here)."""
    signal, process, rows, weight = _toy_events()
    norms = {"a": 0.05, "b": 0.1}
    metric = SigmaMu(("a", "b"), norms, bins=6, mc_stat=mc_stat, s_tot=100.0, b_tot=2000.0)
    w_rows = np.tile(weight, (len(rows), 1))
    got = metric(
        torch.tensor(rows),
        torch.tensor(signal.astype(np.int64)),
        torch.tensor(weight),
        torch.tensor(w_rows),
        torch.tensor(process),
    )
    # The fit's way: weights rescaled per class, equal-signal bins, pyhf workspace.
    rescaled = rescaled_weights(signal.astype(int), weight, 100.0, 2000.0)
    names = np.where(signal, "signal", np.array(["a", "b"])[process])
    shapes = [fit.ShapeVariation("one", rows[1], rows[2]), fit.ShapeVariation("two", *rows[3:])]
    data = fit.FitInput(rows[0], rescaled, names, "signal", shapes, norms)
    binning = fit.choose_binning(data.score, data.weight, signal, 6)
    result = fit.asimov_fit(fit.workspace(fit.build_templates(data, binning), mc_stat=mc_stat))
    assert got[SIGMA_MU] == pytest.approx(result.sigma_mu, rel=0.01)
    assert got[SIGMA_MU_STAT] == pytest.approx(result.sigma_mu_stat, rel=0.005)
    assert got[SIGMA_MU] > 1.4 * got[SIGMA_MU_STAT]  # the nuisances matter here


def test_two_bins_by_hand():
    """Two bins, one shape, one normalisation on the one background, staterror: the Fisher
    matrix written out in numpy (J_a,j = dn_j/da, I = J diag(1/n) J^T + constraints)."""
    s, b = np.array([30.0, 10.0]), np.array([50.0, 200.0])
    b_down, b_up = np.array([45.0, 205.0]), np.array([56.0, 194.0])
    f, delta = 0.1, np.array([0.05, 0.02])
    n = s + b
    jacobian = np.stack(
        [s, (b_up - b_down) / 2, np.arctanh(f) * b, np.array([n[0], 0]), np.array([0, n[1]])]
    )
    information = jacobian @ np.diag(1 / n) @ jacobian.T + np.diag([0, 1, 1, *(1 / delta**2)])
    expected = np.linalg.inv(information)[0, 0]
    signal = torch.tensor(np.stack([s, s, s]))
    backgrounds = torch.tensor(np.stack([b, b_down, b_up]))[:, None]
    for method in ("fisher", "hessian"):
        got = asimov_variance(
            signal,
            backgrounds,
            [f],
            count_floor=0.0,
            method=method,
            stat_errors=torch.tensor(delta),
        )
        assert float(got) == pytest.approx(expected, rel=1e-9)
    # staterror, like every nuisance, can only widen the interval
    without = asimov_variance(signal, backgrounds, [f], count_floor=0.0)
    assert float(without) < expected


def test_it_bins_as_the_fit_and_copes_with_a_small_fold():
    assert SigmaMu().min_background == fit.MIN_BACKGROUND
    signal, process, rows, weight = _toy_events(n=400)  # ~280 background: 14 bins of 20
    args = (torch.tensor(rows), torch.tensor(signal.astype(np.int64)), torch.tensor(weight))
    rest = (torch.tensor(np.tile(weight, (5, 1))), torch.tensor(process))
    small = SigmaMu(("a", "b"), bins=50)(*args, *rest)  # more bins than the fold can fill
    assert np.isfinite(small[SIGMA_MU])
    no_signal = SigmaMu(("a", "b"))(args[0], torch.zeros_like(args[1]), args[2], *rest)
    assert np.isnan(no_signal[SIGMA_MU])


# ---------------------------------------------------------------------------------------------
# In the module and the data module


def _datamodule(table):
    half = np.arange(len(table)) % 2 == 0
    return HiggsDataModule(table, 512, 0, np.flatnonzero(half), np.flatnonzero(~half))


def test_a_parameterised_net_scores_each_row_at_its_nuisance_inputs(small_table):
    copies = ShiftedCopies(SETTINGS, background_processes(small_table))
    net = NuisanceMLP(small_table.features.shape[1], 2, 1, 16, 0.0)
    needs = Needs(PriorDraws(SETTINGS, grid=2, pulls=True), copies)
    metric = SigmaMu(copies.processes, bins=5)
    module = SignificanceClassifier(
        net, BCELoss(), {"class": "Adam", "lr": 1e-3}, needs=needs, sigma_mu=metric
    )
    datamodule = _datamodule(small_table)
    trainer = quiet_trainer(limit_train_batches=0, limit_val_batches=0)
    trainer.strategy.connect(module)
    datamodule.trainer = trainer
    datamodule.setup("fit")
    _, target, weight, process, x_rows, w_rows = datamodule._val_device_tensors
    inputs = np.stack(list(variation_inputs(("tes", "jes")).values()))  # the fit's templates'
    np.testing.assert_array_equal(module._row_inputs.numpy(), inputs)
    net.eval()
    with torch.no_grad():
        rows = module._row_logits(x_rows)
        for v in range(len(inputs)):
            expected = net(x_rows[:, v], torch.tensor(inputs[v], dtype=torch.float32))
            torch.testing.assert_close(rows[v], expected)
    # the fold's record is that of the final network, computed the same way
    record = module.final_validation_metrics(datamodule)
    direct = metric(rows, target, weight, w_rows.T, process)
    assert record[SIGMA_MU] == pytest.approx(direct[SIGMA_MU], rel=1e-6)


def test_without_a_systematics_group_nothing_is_shifted_or_measured(small_table):
    from amsaware.experiment import build_module

    for overrides, shifted in (((), False), (("systematics=higgs",), True)):
        cfg = compose_run(Path("unused"), *overrides)
        settings = check_config(cfg)
        net = torch.nn.Linear(3, 1)
        module = build_module(settings, cfg, net, None, (1.0, 2.0), ("ztautau", "ttbar", "wjets"))
        assert (module.sigma_mu is not None) == shifted
        assert (module.needs is not None and module.needs.validation is not None) == shifted
    # a module that needs nothing: plain validation batches, nothing built
    plain = SignificanceClassifier(torch.nn.Linear(30, 1), BCELoss(), {"class": "Adam"})
    datamodule = _datamodule(small_table)
    trainer = quiet_trainer(limit_train_batches=0, limit_val_batches=0)
    trainer.strategy.connect(plain)
    datamodule.trainer = trainer
    datamodule.setup("fit")
    assert len(datamodule._val_device_tensors) == 3 and datamodule._built == {}
    assert plain.final_validation_metrics(datamodule) == {}


# ---------------------------------------------------------------------------------------------
# Whole runs


def _epochs(run_dir: Path, stage: str) -> pd.DataFrame:
    (path,) = (run_dir / "csv" / stage).rglob("metrics.csv")
    return pd.read_csv(path)


@pytest.mark.parametrize(
    "method",
    [
        ("loss=bce",),
        ("model=mlp_nuisance", "augment=systematics", "augment.grid=2"),
    ],
    ids=["bce", "mlp_nuisance"],
)
def test_runs_with_systematics_log_val_sigma_mu_every_epoch(tmp_path, method):
    metrics = run(tmp_path, "systematics=higgs", *SMALL, *method)
    folds = metrics["cv"]["folds"]
    assert all(np.isfinite(f[SIGMA_MU]) and f[SIGMA_MU] > f[SIGMA_MU_STAT] > 0 for f in folds)
    assert metrics["cv"]["mean"][SIGMA_MU] == pytest.approx(np.mean([f[SIGMA_MU] for f in folds]))
    epochs = _epochs(tmp_path, "fold0")[["epoch", SIGMA_MU]].dropna()
    assert list(epochs["epoch"]) == [0, 1]
    # without early stopping the fold ends with its last validation's network
    assert folds[0][SIGMA_MU] == pytest.approx(epochs[SIGMA_MU].iloc[-1], rel=1e-6)


def test_a_run_without_systematics_has_no_val_sigma_mu(tmp_path):
    metrics = run(tmp_path, "trainer.max_epochs=1", "logger=csv")
    assert SIGMA_MU not in metrics["cv"]["mean"] and "fit" not in metrics
    assert SIGMA_MU not in _epochs(tmp_path, "fold0").columns


# ---------------------------------------------------------------------------------------------
# Pruning a search for fit/sigma_mu


def test_the_fits_sigma_mu_prunes_on_the_folds_val_sigma_mu():
    assert fold_metric("fit/sigma_mu") == SIGMA_MU
    assert fold_metric("fit/sigma_mu_stat") == SIGMA_MU_STAT
    assert fold_metric("fit/z_discovery") is None
    assert {SIGMA_MU, SIGMA_MU_STAT} <= set(LOWER_IS_BETTER)
    assert unreported("fit/sigma_mu", parallel=False, systematics=True) is None
    assert "cv.parallel=false" in unreported("fit/sigma_mu", parallel=True, systematics=True)
    assert "systematics" in unreported("fit/sigma_mu", parallel=False, systematics=False)
    assert "no per-fold" in unreported("fit/coverage", parallel=False, systematics=True)


def test_a_sigma_mu_search_reports_each_folds_val_sigma_mu(tmp_path):
    multirun(
        run_experiment,
        [
            "hparams_search=optuna_sigma_mu",
            "systematics=higgs",
            *TINY,
            "trainer.max_epochs=1",
            "cv.folds=2",
            "threads=1",
            "fit.bins=4",  # a cheap fit per trial: few bins, no staterror
            "fit.mc_stat=false",
            "hydra.sweeper.n_trials=2",  # the config's pruner: successive halving from step 0
            f"paths.log_dir={tmp_path}/logs",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
    )
    storage = f"sqlite:///{tmp_path}/logs/optuna/studies.db"
    (name,) = optuna.study.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert trials[0].state == optuna.trial.TrialState.COMPLETE
    for trial in trials:
        reported = trial.intermediate_values
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert sorted(reported) == [0]  # stopped after its first fold
            continue
        assert trial.state == optuna.trial.TrialState.COMPLETE and sorted(reported) == [0, 1]
        metrics = json.loads((tmp_path / "sweep" / str(trial.number) / "metrics.json").read_text())
        folds = [f[SIGMA_MU] for f in metrics["cv"]["folds"]]
        assert [reported[k] for k in sorted(reported)] == pytest.approx(folds)
        assert trial.value == pytest.approx(metrics["fit"]["fit/sigma_mu"])

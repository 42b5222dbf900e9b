"""INFERNO and prior-drawn shifts inside the training protocol (loss=inferno, finetune=inferno,
augment=systematics): what the batches carry, that validation stays nominal, checkpoints,
refusals, and whole runs ending with the fit."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_run, quiet_trainer, run

from amsaware.checks import ConfigError, check_config
from amsaware.data.datamodule import HiggsDataModule, Needs, PriorDraws, ShiftedCopies
from amsaware.data.systematics import Systematics, background_processes
from amsaware.inferno import InfernoLoss, nuisance_options
from amsaware.model import MLP, SignificanceClassifier

SETTINGS = Systematics()  # tes and jes 3%, three normalisations


def settings_of(*overrides):
    return check_config(compose_run(Path("unused"), *overrides))


def _module(table, needs=None, loss=None):
    processes = background_processes(table)
    loss = loss or InfernoLoss(**nuisance_options(SETTINGS, processes))
    net = MLP(table.features.shape[1], 1, 16, 0.0)
    optimizer = {"class": "Adam", "lr": 1e-3}
    return SignificanceClassifier(net, loss, optimizer, needs=needs)


def _first_batch(datamodule, module):
    trainer = quiet_trainer(limit_train_batches=0, limit_val_batches=0)
    trainer.strategy.connect(module)
    datamodule.trainer = trainer
    datamodule.setup("fit")
    return next(iter(datamodule.train_dataloader()))


def test_inferno_batches_carry_each_event_nominal_and_shifted(small_table):
    half = np.arange(len(small_table)) % 2 == 0
    datamodule = HiggsDataModule(small_table, 256, 0, np.flatnonzero(half), np.flatnonzero(~half))
    copies = ShiftedCopies(SETTINGS, background_processes(small_table))
    module = _module(small_table, Needs(copies, copies))
    x, target, weight, process, x_rows, w_rows = _first_batch(datamodule, module)
    assert x_rows.shape == (256, 5, x.shape[1]) and w_rows.shape == (256, 5)
    # the tau energy scale moves the tau pT column: down and up differ, the other way round
    tau = small_table.feature_names.index("PRI_tau_pt")
    assert (x_rows[:, 1, tau] < x_rows[:, 2, tau]).float().mean() > 0.9
    assert torch.all((w_rows == 0) | (w_rows == weight.unsqueeze(-1)))
    assert set(process[target == 0].tolist()) <= set(range(len(copies.processes)))
    # the validation rows carry them too (val/loss), and the loss is finite on them
    val = datamodule._val_device_tensors
    assert len(val) == 6 and val[4].shape[1] == 5
    module.validation_step(val, 0)
    module.on_validation_epoch_end = lambda: None  # no trainer to log to
    rows, t, _, w, p = module._val_rows[0]
    assert torch.isfinite(module.loss(rows, t, w, p))


def test_a_module_without_needs_gets_the_plain_batches(small_table):
    datamodule = HiggsDataModule(small_table, 128, 0)
    module = _module(small_table, loss=torch.nn.BCEWithLogitsLoss())
    batch = _first_batch(datamodule, module)
    assert len(batch) == 3 and datamodule._built == {}


def test_augment_shifts_training_batches_and_leaves_validation_nominal(small_table):
    half = np.arange(len(small_table)) % 2 == 0
    train, val = np.flatnonzero(half), np.flatnonzero(~half)
    plain = HiggsDataModule(small_table, 4096, 0, train, val)
    drawn = HiggsDataModule(small_table, 4096, 0, train, val)
    from amsaware.losses import BCELoss

    needs = Needs(PriorDraws(SETTINGS, grid=4))
    x0, y0, w0 = _first_batch(plain, _module(small_table, loss=BCELoss()))
    x1, y1, w1 = _first_batch(drawn, _module(small_table, needs, loss=BCELoss()))
    assert torch.equal(y0, y1)  # the same events in the same order
    assert not torch.allclose(w0, w1)  # drawn normalisations (and the shifted selection)
    tau = small_table.feature_names.index("PRI_tau_pt")
    assert not torch.allclose(x0[:, tau], x1[:, tau])
    # validation: the nominal rows, untouched
    for a, b in zip(plain._val_device_tensors, drawn._val_device_tensors, strict=True):
        assert torch.equal(a, b)
    # the batch is one of the grid's draws, each a different shift of the same events
    x_grid = drawn._built[next(iter(drawn._built))][0]
    assert x_grid.shape[1] == 4 and not torch.equal(x_grid[:, 0], x_grid[:, 1])


def test_inferno_checkpoint_rebuilds_the_loss_with_its_nuisances(small_table, tmp_path):
    module = _module(small_table)
    path = tmp_path / "m.ckpt"
    trainer = quiet_trainer(max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    loaded = SignificanceClassifier.load_from_checkpoint(path)
    assert isinstance(loaded.loss, InfernoLoss)
    assert loaded.loss.shapes == ("tes", "jes") and loaded.loss.norms == module.loss.norms


def test_refusals_name_the_keys():
    with pytest.raises(ConfigError, match="systematics=higgs"):
        settings_of("augment=systematics")
    with pytest.raises(ConfigError, match=r"cv\.parallel=false"):
        settings_of("loss=inferno", "systematics=higgs", "cv.parallel=true")
    with pytest.raises(ConfigError, match=r"cv\.parallel=false"):
        settings_of("augment=systematics", "systematics=higgs", "cv.parallel=true")
    with pytest.raises(ConfigError, match=r"augment\.grid"):
        settings_of("augment=systematics", "systematics=higgs", "augment.grid=0")
    assert settings_of("augment=systematics", "systematics=higgs").augment.grid == 16
    assert settings_of("loss=inferno").augment is None  # stat-only INFERNO needs nothing


@pytest.mark.slow
def test_an_inferno_run_ends_with_finite_metrics_and_a_fit(tmp_path):
    metrics = run(tmp_path / "run", "loss=inferno", "systematics=higgs", "fit.toys=0", "~logger")
    assert np.isfinite(metrics["cv"]["oof"]["oof/ams_max"])
    assert np.isfinite(metrics["fit"]["fit/sigma_mu"])
    assert metrics["cv"]["oof"]["oof/auroc"] > 0.5  # each fold's score points signal high


@pytest.mark.slow
def test_a_bce_run_fine_tuned_by_inferno_and_an_augmented_run(tmp_path):
    tuned = run(
        tmp_path / "ft", "loss=bce", "finetune=inferno", "finetune.max_epochs=1",
        "systematics=higgs", "fit.toys=0", "~logger",
    )  # fmt: skip
    assert "pretrain" in tuned and np.isfinite(tuned["fit"]["fit/sigma_mu"])
    augmented = run(
        tmp_path / "aug", "augment=systematics", "augment.grid=2", "systematics=higgs",
        "fit.toys=0", "~logger",
    )  # fmt: skip
    assert np.isfinite(augmented["cv"]["oof"]["oof/ams_max"])


def test_an_inferno_score_that_ends_signal_low_is_mirrored_at_no_cost_to_the_loss(small_table):
    """INFERNO's binned likelihood is the same for a mirrored score; the run's cut and ranking
    are not, so the stage's network ends pointing signal high (decided on its training rows)."""
    table = small_table
    loss = InfernoLoss(bins=5)  # stat-only: the plain call
    net = MLP(table.features.shape[1], 1, 16, 0.0)
    module = SignificanceClassifier(net, loss, {"class": "Adam", "lr": 0.0})  # no learning
    datamodule = HiggsDataModule(
        table, 256, 0, train_index=range(2000), val_index=range(2000, 3000)
    )
    datamodule.setup("fit")
    x, target, weight = datamodule.train_tensors[:3]

    def signal_minus_background() -> float:
        logits = module.net(x).detach().double()
        s, w = target.bool(), weight.double()
        return float(
            (logits[s] * w[s]).sum() / w[s].sum() - (logits[~s] * w[~s]).sum() / w[~s].sum()
        )

    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    if signal_minus_background() > 0:  # start pointing the wrong way
        with torch.no_grad():
            last.weight.neg_(), last.bias.neg_()
    before = float(loss(module.net(x).detach(), target, weight))
    assert signal_minus_background() < 0
    quiet_trainer(2).fit(module, datamodule=datamodule)
    assert signal_minus_background() > 0
    assert float(loss(module.net(x).detach(), target, weight)) == pytest.approx(before, rel=1e-6)

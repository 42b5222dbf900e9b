"""Checkpoints a notebook can load: `SignificanceClassifier.load_from_checkpoint(path)`."""

import functools

import numpy as np
import pytest
import torch

from amsaware.inference import load_scorer
from amsaware.losses import AsimovLoss, SoftAMSLoss
from amsaware.model import MLP, SignificanceClassifier, predict_proba
from tests.helpers import quiet_trainer, run


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "run"
    run(folder, "loss=ams", "finetune=asimov", "finetune.max_epochs=1", "cv.folds=2", "~logger")
    return folder


def test_a_run_checkpoint_loads_with_lightning_alone(finetuned):
    path = finetuned / "checkpoints" / "final" / "last.ckpt"
    module = SignificanceClassifier.load_from_checkpoint(path)
    # The stage's model is the fine-tuned one: the fine-tune's loss, the tuned network sizes.
    assert isinstance(module.loss, AsimovLoss)
    assert isinstance(module.net, MLP) and module.net.hidden_size == 448
    assert module.hparams.phase == 1
    scorer = load_scorer(finetuned, "final")
    x = torch.randn(64, module.net.n_features)
    net = scorer.models[0].net
    np.testing.assert_allclose(predict_proba(module.net, x), predict_proba(net, x), rtol=1e-6)


def test_the_checkpoint_holds_plain_values_only(finetuned):
    checkpoint = torch.load(
        finetuned / "checkpoints" / "fold0" / "last.ckpt", map_location="cpu", weights_only=True
    )
    hparams = checkpoint["hyper_parameters"]
    assert hparams["net"]["class"] == "MLP" and hparams["loss"]["class"] == "AsimovLoss"
    assert hparams["optimizer"]["class"] == "Adam"


def test_options_scheduler_and_optimizer_round_trip(tmp_path):
    loss = SoftAMSLoss(normalisation="batch", temperature=3.0, s_tot=2.0, b_tot=50.0)
    module = SignificanceClassifier(
        MLP(4, 1, 8, 0.1),
        loss,
        functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        s_tot=2.0,
        b_tot=50.0,
        scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3),
    )
    trainer = quiet_trainer()
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = SignificanceClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.loss.temperature == 3.0 and loaded.loss.normalisation == "batch"
    assert loaded.totals == (2.0, 50.0)
    optimizer = loaded.configure_optimizers()
    assert isinstance(optimizer["optimizer"], torch.optim.SGD)
    assert optimizer["optimizer"].defaults["momentum"] == 0.9
    assert optimizer["lr_scheduler"]["scheduler"].step_size == 3
    for a, b in zip(module.net.parameters(), loaded.net.parameters(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("part", "spec", "key"),
    [
        ("net", {"class": "os.system", "command": "true"}, "net.class"),
        ("loss", {"class": "builtins.eval"}, "loss.class"),
        ("optimizer", {"class": "Module", "lr": 1.0}, "optimizer.class"),
    ],
)
def test_a_class_outside_the_allowlist_is_refused(part, spec, key):
    parts = {
        "net": {"class": "MLP", "n_features": 3, "n_layers": 1, "hidden_size": 4, "dropout": 0.0},
        "loss": {"class": "BCELoss", "weighted": False},
        "optimizer": {"class": "Adam", "lr": 0.1},
    }
    parts[part] = spec
    with pytest.raises(ValueError, match=key):
        SignificanceClassifier(**parts)

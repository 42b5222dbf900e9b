"""The run's settings are read once from the config (`checks.check_config` returns them), every
top-level key is declared in conf/train.yaml, and a loss added to the registry round-trips
through a checkpoint."""

import functools

import pytest
import torch
from torch import nn

from amsaware import losses
from amsaware.checks import TOP_LEVEL, ConfigError, check_config
from amsaware.model import LOSSES, MLP, SignificanceClassifier
from amsaware.settings import CutSettings, CVSettings, PhaseSettings, Settings
from tests.helpers import compose_run, quiet_trainer


def test_check_config_returns_the_typed_settings_of_the_config(tmp_path):
    cfg = compose_run(tmp_path, "cv.repeats=2", "finetune=ams", "ensemble=both")
    settings = check_config(cfg)
    assert isinstance(settings, Settings)
    assert settings.cv == CVSettings(folds=cfg.cv.folds, parallel=False, repeats=2)
    assert settings.cv.n_models == 2 * cfg.cv.folds
    assert settings.cut == CutSettings(**cfg.cut)
    assert settings.finetune == PhaseSettings(cfg.finetune.batch_size, cfg.finetune.max_epochs)
    assert settings.scores_final and settings.scores_folds
    with pytest.raises(AttributeError):
        settings.seed = 1  # frozen: read once, never changed


def test_every_top_level_key_is_declared_in_train_yaml(tmp_path):
    cfg = compose_run(tmp_path)
    # groups that are null by default leave no key in the composed config
    declared = set(cfg) | {"hydra", "finetune", "systematics", "augment"}
    assert declared == set(TOP_LEVEL)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("ensemble=all", "ensemble"),
        ("cut.smoothing=-1", r"cut\.smoothing"),
        ("optimized_metric=oof/ams_mx", "optimized_metric"),
        ("finetune.batch_size=0", r"finetune\.batch_size"),
    ],
)
def test_config_refusals_come_from_check_config(tmp_path, override, key):
    overrides = ["finetune=ams", override] if override.startswith("finetune") else [override]
    with pytest.raises(ValueError, match=key):
        check_config(compose_run(tmp_path, *overrides))


def test_parallel_folds_with_two_loggers_are_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="one logger"):
        check_config(compose_run(tmp_path, "cv.parallel=true", "logger=many"))


class ToyLoss(nn.Module):
    """A loss registered by a test: a weighted squared error on the probability."""

    def __init__(self, power: float = 2.0) -> None:
        super().__init__()
        self.power = power

    def forward(self, logits, target, weight):
        return (weight * (torch.sigmoid(logits) - target).abs() ** self.power).mean()


def test_a_registered_loss_round_trips_through_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(losses.LOSSES, "ToyLoss", ToyLoss)
    assert LOSSES["ToyLoss"] is ToyLoss  # the module's allowlist is the registry
    optimizer = functools.partial(torch.optim.Adam, lr=1e-3)
    module = SignificanceClassifier(MLP(4, 1, 8, 0.0), ToyLoss(power=3.0), optimizer)
    trainer = quiet_trainer()
    trainer.strategy.connect(module)
    path = tmp_path / "toy.ckpt"
    trainer.save_checkpoint(path)
    loaded = SignificanceClassifier.load_from_checkpoint(path)
    assert isinstance(loaded.loss, ToyLoss) and loaded.loss.power == 3.0

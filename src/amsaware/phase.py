"""A training phase: fit a fresh module, or continue a trained one in the fine-tune phase.

The floor below `amsaware.protocol` (sequential folds, the final fit) and `amsaware.parallel`
(the folds trained as one model): both train through `fit` and `FineTune.fit`, so a fine-tune
option is implemented once, here (and declared in conf/finetune/_phase.yaml and
`amsaware.settings.PhaseSettings`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from amsaware.data.datamodule import HiggsDataModule
from amsaware.data.preprocessing import transform
from amsaware.metrics import add_to_logit_sums
from amsaware.model import SignificanceClassifier, predict_logit
from amsaware.stopping import EarlyStopping

ModuleFactory = Callable[[], SignificanceClassifier]
#: A Trainer for one stage ("fold0", "final"), or one for several trained at once (a logger each).
TrainerFactory = Callable[[str | list[str]], L.Trainer]
#: Writes a stage's checkpoint and preprocessing where its callbacks would have.
StageWriter = Callable[[str, nn.Module, HiggsDataModule], None]
#: The early-stopping callbacks of the fold stages, by (stage, phase): their best epochs set
#: the final fit's epoch count.
EarlyStops = dict[tuple[str, str | None], EarlyStopping]
#: Logits of a raw feature matrix (n x the table's features, NaN where undefined, as
#: `EventTable.features` holds them), through a stage's fitted preprocessing and network;
#: a stage's own scorer also takes optional nuisance inputs (K,) (`raw_scorer`).
RawScorer = Callable[..., np.ndarray]


def fit(
    datamodule: HiggsDataModule,
    make_module: ModuleFactory,
    make_trainer: TrainerFactory,
    stage: str,
    seed: int,
) -> SignificanceClassifier:
    """Train a freshly initialised module (seeded) on the datamodule's training rows."""
    L.seed_everything(seed, verbose=False)
    module = make_module()
    make_trainer(stage).fit(module, datamodule=datamodule)
    return module


@dataclass(frozen=True)
class FineTune:
    """The second training phase (`finetune=<loss>`): the trained network continues with its
    own loss, batch size, optimizer, scheduler and epochs. Nothing is re-initialised.

    `make_module(net)` wraps the trained network in the phase's module; `make_trainer(stage,
    callbacks)` builds the phase's trainer, which writes the stage's checkpoint.
    `save_stage` writes checkpoint and preprocessing where a zero-epoch phase trains nothing.
    """

    make_module: Callable[[nn.Module], SignificanceClassifier]
    make_trainer: Callable[[str | list[str], list[L.Callback]], L.Trainer]
    batch_size: int
    max_epochs: int
    save_stage: StageWriter | None = None

    def fit(
        self,
        pretrained: SignificanceClassifier,
        datamodule: Any,
        stage: str | list[str],
        wrap: Callable[[SignificanceClassifier], SignificanceClassifier] | None = None,
    ) -> SignificanceClassifier:
        """Continue `pretrained.net` on the same rows and preprocessing, in the phase's batches.

        `datamodule` is a `HiggsDataModule` or anything with `rebatched(batch_size)` (the
        folds' data served together); `wrap` turns the phase's module into the one that trains
        (the fold-parallel module). Several stages trained at once are written by the caller.
        """
        module = self.make_module(pretrained.net)
        if self.max_epochs == 0:
            if self.save_stage is not None and isinstance(stage, str):
                self.save_stage(stage, module.net, datamodule)
            return module
        if wrap is not None:
            module = wrap(module)
        module.epoch_offset = pretrained.epoch  # the stage's curves continue
        trainer = self.make_trainer(stage, [])
        trainer.fit(module, datamodule=datamodule.rebatched(self.batch_size))
        return module


@dataclass(frozen=True)
class TrainedFold:
    """One fold's model after training, with its data module and loggers; with a fine-tune,
    `pretrained` is the network from before it."""

    net: nn.Module
    datamodule: HiggsDataModule
    logger: Any
    pretrained: nn.Module | None = None
    #: Validation metrics of the final network beyond the nominal scores' (val/sigma_mu:
    #: `SignificanceClassifier.final_validation_metrics`), for the fold's record.
    metrics: dict[str, float] = field(default_factory=dict)

    def scorer(self) -> RawScorer:
        """The fold's logits of raw features (`RawScorer`), with its own preprocessing."""
        return raw_scorer(self.net, self.datamodule)


def raw_scorer(net: nn.Module, datamodule: HiggsDataModule) -> RawScorer:
    """Logits of a raw feature matrix through `datamodule`'s fitted preprocessing and `net`,
    at the nuisance inputs `pulls` (K,) for a parameterised network (nominal zeros without);
    a plain network ignores them."""
    preprocessing = datamodule.preprocessing

    def score(features: np.ndarray, pulls: np.ndarray | None = None) -> np.ndarray:
        x = torch.from_numpy(transform(preprocessing, np.asarray(features)))
        return predict_logit(net, x, pulls=pulls).numpy()

    return score


def ensemble_scorer(scorers: Sequence[RawScorer]) -> RawScorer:
    """The fold ensemble's `RawScorer`: the logit of the fold models' mean probability, the
    key the run ranks test events by (`metrics.add_to_logit_sums`)."""
    scorers = list(scorers)

    def score(features: np.ndarray) -> np.ndarray:
        log_p = log_q = None
        for one in scorers:
            logits = one(features)
            if log_p is None:
                log_p, log_q = np.full((2, len(logits)), -np.inf)
            log_p, log_q = add_to_logit_sums(log_p, log_q, logits)
        return log_p - log_q

    return score

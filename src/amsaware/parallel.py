"""Fold-parallel cross-validation (`cv.parallel=true`): the k fold models trained as one.

The fold models share their hyperparameters, so they can be one batched network: each linear
layer's k weight matrices are stacked and applied with one batched matmul (`torch.baddbmm`)
over a leading fold axis, and one optimizer steps all k at once. An epoch then costs one
Python step per batch instead of k, which matters wherever per-step overhead dominates (a GPU
at the paper's batch sizes); on a CPU the arithmetic is the same and the gain is small.

Each fold still sees only its own training rows, through its own fitted preprocessing, in the
order the sequential path would give it (the same seeded `ShuffledBatches`), and starts from
the weights the sequential path would initialise (`seed + k`). The loss is the sum of the k
folds' losses, so each fold's gradient is its own loss's, and the optimizers of torch.optim
are elementwise, so one over the stacked weights equals k separate ones. With dropout 0 and
SGD the out-of-fold scores equal the sequential ones to float rounding (3e-8 apart on the
smoke run). Adam divides by the root of its second moment, which turns rounding-level
differences in near-zero gradients into step-sized ones, so with Adam the two paths drift
apart (0.01 in score after two smoke epochs) into equally good models; with dropout the masks
are drawn differently as well.

Folds differ in size by an event or two. Batches are padded to the largest fold's and the
padding is cut off before the loss. In the rare epoch where one fold has one batch more than
another, the fold without a batch takes a zero-gradient step (Adam still moves it by its
momentum): the only departure from the sequential path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from amsaware.data.datamodule import HiggsDataModule, ShuffledBatches
from amsaware.data.schema import EventTable
from amsaware.metrics import ValidationEvents, classification_metrics
from amsaware.model import MLP, SignificanceClassifier
from amsaware.phase import FineTune, TrainedFold

log = logging.getLogger(__name__)

#: (features (k, n, F), target (k, n), weight (k, n), each fold's real row count).
StackedBatch = tuple[Tensor, Tensor, Tensor, tuple[int, ...]]


class StackedMLP(nn.Module):
    """k `MLP`s of one architecture as one module, evaluated with batched matmuls.

    Built from k initialised MLPs (so each fold starts where the sequential path would), and
    turned back into k MLPs by `unstack` for scoring and checkpoints.
    """

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        if not nets or not all(isinstance(net, MLP) for net in nets):
            kinds = sorted({type(net).__name__ for net in nets})
            raise TypeError(f"cv.parallel=true stacks amsaware.model.MLP models, got {kinds}")
        layers = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
        shapes = {tuple(layer.weight.shape for layer in net) for net in layers}
        if len(shapes) != 1:
            raise ValueError(f"cv.parallel=true needs one architecture, got shapes {shapes}")
        dropouts = {m.p for net in nets for m in net if isinstance(m, nn.Dropout)}
        self.dropout = dropouts.pop() if dropouts else 0.0
        # (k, in, out) and (k, 1, out): x (k, n, in) @ W + b is one baddbmm per layer.
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([net[i].weight.detach().T for net in layers]).contiguous())
            for i in range(len(layers[0]))
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([net[i].bias.detach() for net in layers]).unsqueeze(1))
            for i in range(len(layers[0]))
        )

    @property
    def n_models(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: Tensor) -> Tensor:
        """Logits (k, n) of features (k, n, F): model k sees only x[k]."""
        hidden = x
        for weight, bias in zip(self.weights[:-1], self.biases[:-1], strict=True):
            hidden = torch.relu(torch.baddbmm(bias, hidden, weight))
            hidden = nn.functional.dropout(hidden, self.dropout, self.training)
        return torch.baddbmm(self.biases[-1], hidden, self.weights[-1]).squeeze(-1)

    def unstack(self) -> list[MLP]:
        """The k models as independent `MLP`s (copies, in evaluation mode)."""
        n_features, hidden_size = self.weights[0].shape[1:]
        nets = []
        for k in range(self.n_models):
            net = MLP(n_features, len(self.weights) - 1, hidden_size, self.dropout)
            linears = [m for m in net if isinstance(m, nn.Linear)]
            with torch.no_grad():
                for layer, weight, bias in zip(linears, self.weights, self.biases, strict=True):
                    layer.weight.copy_(weight[k].T)
                    layer.bias.copy_(bias[k, 0])
            nets.append(net.to(self.weights[0].device).eval())
        return nets


def _stack(parts: Sequence[Tensor]) -> Tensor:
    """Stack per-fold tensors along a new fold axis, zero-padding the shorter ones."""
    longest = max(len(part) for part in parts)
    if all(len(part) == longest for part in parts):
        return torch.stack(list(parts))
    out = parts[0].new_zeros((len(parts), longest, *parts[0].shape[1:]))
    for k, part in enumerate(parts):
        out[k, : len(part)] = part
    return out


class FoldBatches:
    """Each fold's training batches (its own seeded order), stacked along the fold axis."""

    def __init__(self, folds: Sequence[ShuffledBatches]) -> None:
        self.folds = folds

    def __len__(self) -> int:
        return max(len(fold) for fold in self.folds)

    def __iter__(self) -> Iterator[StackedBatch]:
        iterators = [iter(fold) for fold in self.folds]
        for _ in range(len(self)):
            batches = [next(it, None) for it in iterators]
            yield _stacked(batches, self.folds[0].tensors)


def _stacked(
    batches: Sequence[tuple[Tensor, ...] | None], like: tuple[Tensor, ...]
) -> StackedBatch:
    """A fold without a batch in this step contributes zero rows."""
    parts = [batch if batch is not None else tuple(t[:0] for t in like) for batch in batches]
    x, target, weight = (_stack([part[i] for part in parts]) for i in range(3))
    return x, target, weight, tuple(len(part[0]) for part in parts)


class FoldEvaluationBatches:
    """The folds' validation rows in chunks, stacked along the fold axis."""

    def __init__(self, folds: Sequence[tuple[Tensor, ...]], batch_size: int) -> None:
        self.folds = folds
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-max(len(fold[0]) for fold in self.folds) // self.batch_size)

    def __iter__(self) -> Iterator[StackedBatch]:
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chunk = [tuple(t[start : start + self.batch_size] for t in fold) for fold in self.folds]
            yield _stacked(chunk, self.folds[0])


class FoldParallelDataModule(L.LightningDataModule):
    """The k folds' DataModules served together: stacked training and validation batches."""

    def __init__(self, folds: Sequence[HiggsDataModule]) -> None:
        super().__init__()
        self.folds = list(folds)

    def setup(self, stage: str) -> None:
        for fold in self.folds:
            fold.trainer = self.trainer
            fold.setup(stage)

    def train_dataloader(self) -> FoldBatches:
        return FoldBatches([fold.train_dataloader() for fold in self.folds])

    def val_dataloader(self) -> FoldEvaluationBatches:
        tensors = [fold.val_dataloader().tensors for fold in self.folds]
        return FoldEvaluationBatches(tensors, self.folds[0].eval_batch_size)

    def rebatched(self, batch_size: int) -> FoldParallelDataModule:
        """Each fold's rows and preprocessing in batches of `batch_size` (`FineTune.fit`)."""
        return FoldParallelDataModule([fold.rebatched(batch_size) for fold in self.folds])


class FoldParallelClassifier(SignificanceClassifier):
    """`SignificanceClassifier` for a `StackedMLP`: the sum of the folds' losses, per-fold logs.

    The trainer gets one logger per fold (`fold0`, `fold1`, ...), and each fold's `train/loss`
    and `val/...` go to its own, under the names and steps the sequential path uses, so
    TensorBoard shows the same runs either way.
    """

    def __init__(self, net: StackedMLP, *args: Any, **kwargs: Any) -> None:
        """`SignificanceClassifier`'s arguments with a `StackedMLP` as `net`; `from_module`
        takes them from a sequential module instead."""
        super().__init__(net, *args, **kwargs)
        k = net.n_models
        self.train_loss = nn.ModuleList(MeanMetric(nan_strategy="disable") for _ in range(k))
        self.val_metrics = nn.ModuleList(
            classification_metrics("val/", *self.totals) for _ in range(k)
        )
        self.val_events = nn.ModuleList(ValidationEvents() for _ in range(k))

    @classmethod
    def from_module(cls, module: SignificanceClassifier, net: StackedMLP) -> FoldParallelClassifier:
        """The fold models `net` trained as `module`, a sequential module of the same phase,
        would train one: its loss, optimizer and scheduler, totals, compile mode and phase."""
        return cls(
            net,
            module.loss,
            module.optimizer_factory,
            *module.totals,
            scheduler=module.scheduler_factory,
            compile_mode=module.compile_mode,
            phase=module.phase,
        )

    def training_step(self, batch: StackedBatch, batch_idx: int) -> Tensor:
        x, target, weight, sizes = batch
        logits = self(x)
        total = logits.new_zeros(())
        for k, n in enumerate(sizes):
            if n:  # a fold without rows in this step (see the module docstring)
                loss = self.loss(logits[k, :n], target[k, :n], weight[k, :n])
                self.train_loss[k].update(loss.detach())
                total = total + loss
        return total

    def on_train_epoch_end(self) -> None:
        for k, fold_loss in enumerate(self.train_loss):
            values = {"train/loss": fold_loss.compute()}
            if self.phase is not None:
                values["phase"] = torch.tensor(float(self.phase))
            self._log_fold(k, values)
            fold_loss.reset()

    def validation_step(self, batch: StackedBatch, batch_idx: int) -> None:
        x, target, weight, sizes = batch
        logits = self(x)
        probabilities = torch.sigmoid(logits)
        for k, n in enumerate(sizes):
            if n:
                self.val_metrics[k].update(
                    preds=probabilities[k, :n], target=target[k, :n], weight=weight[k, :n]
                )
                self.val_events[k].update(logits[k, :n], target[k, :n], weight[k, :n])

    def on_validation_epoch_end(self) -> None:
        for k, (metrics, events) in enumerate(zip(self.val_metrics, self.val_events, strict=True)):
            values = metrics.compute()
            logits, target, weight = events.compute()
            if len(logits):  # the fold's loss on its whole validation set, as in sequential mode
                values["val/loss"] = self.loss(logits, target, weight).float()
            self._log_fold(k, values)
            metrics.reset()
            events.reset()

    def _log_fold(self, k: int, values: dict[str, Tensor]) -> None:
        """Fold k's metrics into its own loggers, at the epoch (the x axis of every curve)."""
        if not self.loggers or self.trainer.sanity_checking:
            return
        scalars = {name: float(value) for name, value in values.items()}
        scalars["epoch"] = self.epoch
        self.loggers[k].log_metrics(scalars, step=self.epoch)


def fit_folds_in_parallel(
    table: EventTable,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    seeds: Sequence[int],
    make_module: Callable[[], SignificanceClassifier],
    make_trainer: Callable[[list[str]], L.Trainer],
    finetune: FineTune | None = None,
) -> list[TrainedFold]:
    """Train the fold models of `folds` ((train, validation) row indices) at once, fold j
    seeded and initialised with `seeds[j]` as the sequential path would; then, with
    `finetune`, continue them at once in the fine-tune phase."""
    n_folds = len(folds)
    datamodules, nets = [], []
    for (train_index, val_index), seed in zip(folds, seeds, strict=True):
        datamodules.append(
            HiggsDataModule(table, batch_size, seed, train_index=train_index, val_index=val_index)
        )
        L.seed_everything(seed, verbose=False)
        nets.append(make_module().net)
    log.info(
        "fold0-%d [%d at once]: training on %s events",
        n_folds - 1,
        n_folds,
        "/".join(str(len(dm.train_table)) for dm in datamodules),
    )
    module = FoldParallelClassifier.from_module(make_module(), StackedMLP(nets))
    L.seed_everything(seeds[0], verbose=False)
    stages = [f"fold{k}" for k in range(n_folds)]
    trainer = make_trainer(stages)
    trainer.fit(module, datamodule=FoldParallelDataModule(datamodules))
    loggers = trainer.loggers or [None] * n_folds
    pretrained: list[MLP | None] = [None] * n_folds
    if finetune is not None:
        pretrained = [net.cpu() for net in module.net.unstack()]
        stacked = module.net
        module = finetune.fit(
            module,
            FoldParallelDataModule(datamodules),
            stages,
            wrap=lambda phase: FoldParallelClassifier.from_module(phase, stacked),
        )
        loggers = module.loggers or loggers
    return [
        TrainedFold(net.cpu(), datamodule, logger, before)
        for net, datamodule, logger, before in zip(
            module.net.unstack(), datamodules, loggers, pretrained, strict=True
        )
    ]

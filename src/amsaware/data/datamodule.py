"""The LightningDataModule: stratified folds, fold-safe preprocessing, in-memory batches."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch import Tensor

from amsaware.data.preprocessing import FittedPreprocessing, fit_preprocessing, transform
from amsaware.data.schema import EventTable

Batch = tuple[Tensor, Tensor, Tensor]


def stratified_folds(
    label: np.ndarray, n_folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) row indices of each fold, stratified by label and seeded."""
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(label)), label))


class ShuffledBatches:
    """Batches sliced from in-memory tensors after one permutation per epoch.

    Permuting the whole epoch once and slicing contiguous views is far cheaper than a per-sample
    `__getitem__` and a collate function. The generator is seeded once, so epoch k always sees
    the same order for the same seed.

    Under DDP every process draws the same permutation and takes every `world_size`-th event
    of it from its `rank` on, so the processes see disjoint shards of the epoch, in equal
    numbers (the `n % world_size` events left over, different ones each epoch, sit the epoch
    out) and hence in the same number of steps, which DDP needs.
    """

    def __init__(
        self,
        tensors: tuple[Tensor, ...],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.tensors = tensors
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.shard(rank, world_size)

    def shard(self, rank: int, world_size: int) -> None:
        """Serve process `rank`'s share of each epoch out of `world_size` processes."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.rank, self.world_size = rank, world_size

    def _events_per_epoch(self) -> int:
        return len(self.tensors[0]) // self.world_size

    def __len__(self) -> int:
        return -(-self._events_per_epoch() // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        n = len(self.tensors[0])
        order = torch.randperm(n, generator=self.generator)
        if self.world_size > 1:
            order = order[: self._events_per_epoch() * self.world_size][
                self.rank :: self.world_size
            ]
        order = order.to(self.tensors[0].device)
        shuffled = [t[order] for t in self.tensors]
        for start in range(0, len(order), self.batch_size):
            yield tuple(t[start : start + self.batch_size] for t in shuffled)


class SequentialBatches:
    """Batches in order, for evaluation; under DDP each process takes every `world_size`-th
    event from its `rank` on (the metrics gather all of them before computing)."""

    def __init__(
        self, tensors: tuple[Tensor, ...], batch_size: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.tensors = tuple(t[rank::world_size] for t in tensors) if world_size > 1 else tensors
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.tensors[0]) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        return zip(*(t.split(self.batch_size) for t in self.tensors), strict=True)


def as_tensors(table: EventTable, features: np.ndarray) -> Batch:
    """(features, label, weight) tensors of a labelled table with preprocessed features."""
    return (
        torch.from_numpy(features),
        torch.from_numpy(table.label.astype(np.int64)),
        torch.from_numpy(table.weight.astype(np.float64)),
    )


class HiggsDataModule(L.LightningDataModule):
    """Training rows (one fold's, or all) and their validation rows, preprocessed and batched.

    Preprocessing is fitted on `train_index` rows only and then applied to the validation rows,
    so a fold's validation statistics never reach its training. With `val_index=None` the module
    serves all `train_index` rows for the final fit, with no validation.
    """

    def __init__(
        self,
        table: EventTable,
        batch_size: int,
        seed: int,
        train_index: np.ndarray | None = None,
        val_index: np.ndarray | None = None,
        eval_batch_size: int = 65536,
    ) -> None:
        super().__init__()
        if not table.labelled:
            raise ValueError(f"{table.source}: training needs labels and weights")
        self.train_table = table if train_index is None else table.subset(train_index)
        self.val_table = None if val_index is None else table.subset(val_index)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.preprocessing = fit_preprocessing(self.train_table.features)
        self.train_tensors = as_tensors(
            self.train_table, transform(self.preprocessing, self.train_table.features)
        )
        self.val_tensors = (
            None
            if self.val_table is None
            else as_tensors(self.val_table, transform(self.preprocessing, self.val_table.features))
        )
        self._train_batches = ShuffledBatches(self.train_tensors, batch_size, seed)
        self._val_device_tensors = self.val_tensors

    def rebatched(self, batch_size: int) -> HiggsDataModule:
        """The same rows and fitted preprocessing served in batches of `batch_size` (a
        fine-tune phase's); the batch order restarts from the module's seed."""
        other = copy.copy(self)
        other.batch_size = batch_size
        other._train_batches = ShuffledBatches(self.train_tensors, batch_size, self.seed)
        return other

    @property
    def fitted_preprocessing(self) -> FittedPreprocessing:
        """The fitted statistics, for saving with the stage's checkpoint."""
        return FittedPreprocessing.from_pipeline(self.preprocessing, self.train_table.feature_names)

    def preprocess(self, table: EventTable) -> Tensor:
        """Features of any table through this module's fitted preprocessing."""
        return torch.from_numpy(transform(self.preprocessing, table.features))

    def setup(self, stage: str) -> None:
        """Put the batches' tensors on the training device once, for the whole fit.

        Batches are then slices of device-resident tensors: no host-to-device copy per step.
        `train_tensors` and `val_tensors` stay on the host for scoring after the fit.
        """
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        self._train_batches.tensors = tuple(t.to(device) for t in self.train_tensors)
        if self.val_tensors is not None:
            self._val_device_tensors = tuple(t.to(device) for t in self.val_tensors)
        self._train_batches.shard(*self._shard())  # under DDP, this process's share

    def _shard(self) -> tuple[int, int]:
        """(rank, world size) of this process; (0, 1) outside a trainer or without DDP."""
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def train_dataloader(self) -> ShuffledBatches:
        return self._train_batches

    def val_dataloader(self) -> SequentialBatches | list:
        if self.val_tensors is None:
            return []
        return SequentialBatches(self._val_device_tensors, self.eval_batch_size, *self._shard())

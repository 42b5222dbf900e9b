"""The LightningDataModule: stratified folds, fold-safe preprocessing, in-memory batches."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch import Tensor

from amsaware.data.preprocessing import FittedPreprocessing, fit_preprocessing, transform
from amsaware.data.schema import EventTable
from amsaware.data.systematics import Systematics, draw, passes, shift, variations

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


@dataclass(frozen=True)
class ShiftedCopies:
    """What an INFERNO step needs: every event nominal and at -1/+1 sigma of each shape
    nuisance of `settings`, and its background process as an index into `processes`.

    The batches become (x, target, weight, process, x_rows (n, V, d), w_rows (n, V)) with
    V = 1 + 2K rows in `amsaware.inferno`'s order (row 0 the nominal pipeline, then down/up per
    shape); an event failing a row's post-selection weighs 0 there.
    """

    settings: Systematics
    processes: tuple[str, ...]


@dataclass(frozen=True)
class PriorDraws:
    """What `augment=systematics` needs: each training batch shifted by one draw of the
    nuisances from their priors (`systematics.draw`), out of `grid` draws made once per fit.

    `norm` also scales each background process's weights by its drawn normalisation factor.
    The batches keep the (x, target, weight) layout, so every loss trains on them unchanged;
    with `pulls` (a network parameterised by the nuisances, `amsaware.model.NuisanceMLP`)
    each batch also carries its draw's shape inputs (K,) (`nuisance_inputs`) as a fourth item.
    """

    settings: Systematics
    grid: int = 16
    norm: bool = True
    pulls: bool = False


def nuisance_inputs(pulls: Tensor, names: tuple[str, ...]) -> Tensor:
    """A parameterised network's inputs for draws' shape pulls (..., K) of nuisances `names`:
    the shift applied in sigma units, the pull itself, except soft MET's |pull| (the smearing
    width `systematics.draw` applies, whose -1 sigma template is the nominal: input 0)."""
    one_sided = torch.tensor([name == "soft_met" for name in names])
    return torch.where(one_sided, pulls.abs(), pulls)


@dataclass(frozen=True)
class Needs:
    """What a module's batches carry beyond the nominal (x, target, weight)
    (`SignificanceClassifier.needs`; the datamodule builds it in its `setup`).

    `train`: INFERNO's shifted copies or `augment=systematics`' prior draws (None: plain
    batches). `validation`: the validation rows' shifted copies, in `ShiftedCopies`' layout,
    for val/sigma_mu (every run with a systematics group) and INFERNO's val/loss; the nominal
    (x, target, weight) stay first, so every other validation metric is unchanged.
    """

    train: ShiftedCopies | PriorDraws | None = None
    validation: ShiftedCopies | None = None


def process_index(table: EventTable, processes: tuple[str, ...]) -> np.ndarray:
    """Each event's background process as an index into `processes` (signal events: 0, unread).

    Without process labels every background event is `processes[0]`, the one background.
    """
    index = np.zeros(len(table), dtype=np.int64)
    if table.process is None:
        return index
    background = table.label == 0
    lookup = {name: k for k, name in enumerate(processes)}
    unknown = sorted(set(table.process[background].tolist()) - set(lookup))
    if unknown:
        raise ValueError(
            f"{table.source}: background processes {unknown} are not among the loss's "
            f"processes {list(processes)}"
        )
    index[background] = [lookup[name] for name in table.process[background]]
    return index


def shifted_rows(
    table: EventTable, settings: Systematics, preprocessing: object
) -> tuple[Tensor, Tensor]:
    """The events nominal and at -1/+1 sigma of every shape nuisance, preprocessed: features
    (n, 1 + 2K, d) and weights (n, 1 + 2K), 0 where an event fails that row's selection.

    Computed once per fit (`systematics.variations` recomputes every DER_ feature, far too slow
    per step) and put through the fold's preprocessing, fitted on the nominal rows.
    """
    found = variations(table, settings)
    rows = [found.nominal] + [row for pair in found.shapes.values() for row in pair]
    x = np.stack([transform(preprocessing, row.features) for row in rows], axis=1)
    w = np.stack([np.where(row.passed, table.weight, 0.0) for row in rows], axis=1)
    return torch.from_numpy(x), torch.from_numpy(w.astype(np.float64))


def drawn_rows(
    table: EventTable, needs: PriorDraws, preprocessing: object, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """`needs.grid` draws from the priors applied to every event, preprocessed: features
    (n, G, d), weights (n, G) (0 where the shifted event fails the selection, times the drawn
    normalisation of its process with `needs.norm`) and the draws' shape pulls (G, K).

    A grid made once, not a shift per batch: recomputing the DER_ features costs ~1.4 ms per
    256 events (measured once on the loaded development machine), more than a training step.
    """
    settings = needs.settings
    rng = np.random.default_rng(seed)
    xs, ws, pulls = [], [], []
    for g in range(needs.grid):
        drawn = draw(settings, rng)
        features = shift(
            table.features, table.feature_names, cuts=settings.cuts, rng=seed + g,
            **drawn.shift_kwargs,
        )  # fmt: skip
        weight = np.where(passes(features, table.feature_names, settings.cuts), table.weight, 0.0)
        if needs.norm and drawn.norm and table.process is not None:
            factor = np.array([drawn.norm.get(p, 1.0) for p in table.process])
            weight = np.where(table.label == 0, weight * factor, weight)
        xs.append(transform(preprocessing, features))
        ws.append(weight)
        pulls.append([drawn.pulls[name] for name in settings.shapes])
    x = torch.from_numpy(np.stack(xs, axis=1))
    w = torch.from_numpy(np.stack(ws, axis=1).astype(np.float64))
    return x, w, torch.tensor(pulls, dtype=torch.float32).reshape(needs.grid, -1)


class DrawnBatches(ShuffledBatches):
    """`ShuffledBatches` of (x (n, G, d), target, weight (n, G)) serving (x, target, weight)
    of one grid draw per batch, chosen by the same seeded generator as the order; with
    `inputs` (G, K), the draw's row of them follows as a fourth item."""

    def __init__(
        self, tensors: tuple[Tensor, ...], batch_size: int, seed: int, inputs: Tensor | None = None
    ) -> None:
        super().__init__(tensors, batch_size, seed)
        self.inputs = inputs

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        n_draws = self.tensors[0].shape[1]
        for x, target, weight in super().__iter__():
            g = int(torch.randint(n_draws, (1,), generator=self.generator))
            if self.inputs is None:
                yield x[:, g], target, weight[:, g]
            else:
                yield x[:, g], target, weight[:, g], self.inputs[g]


class HiggsDataModule(L.LightningDataModule):
    """Training rows (one fold's, or all) and their validation rows, preprocessed and batched.

    Preprocessing is fitted on `train_index` rows only and then applied to the validation rows,
    so a fold's validation statistics never reach its training. With `val_index=None` the module
    serves all `train_index` rows for the final fit, with no validation.

    The module being fitted may ask for more than the nominal rows (its `needs`, read in
    `setup`): for training, shifted copies for INFERNO (`ShiftedCopies`) or prior draws for
    `augment=systematics` (`PriorDraws`); for validation, shifted copies (`Needs.validation`,
    every run with a systematics group: val/sigma_mu), after the nominal tensors. They are built
    once, through the fitted preprocessing, and kept for the next fit on the same rows (a
    fine-tune). A module that needs nothing gets the plain batches: nothing shifted is ever
    built for it.
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
        #: Shifted tensors built for a module's needs, shared with `rebatched` copies.
        self._built: dict[str, tuple[Tensor, ...]] = {}

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
        # What the module's batches carry beyond (x, target, weight): INFERNO's shifted copies or
        # augmentation draws, shifted validation copies; a trainer without a module (a test's
        # stand-in) needs nothing more.
        needs = getattr(getattr(self.trainer, "lightning_module", None), "needs", None) or Needs()
        train, val = self.train_tensors, self.val_tensors
        if val is not None and needs.validation is not None:
            val = self.shifted_validation(needs.validation)
        if isinstance(needs.train, ShiftedCopies):
            train = self._with_copies(needs.train, "train")
            self._train_batches = ShuffledBatches(train, self.batch_size, self.seed)
        elif isinstance(needs.train, PriorDraws):
            draws = needs.train
            x, w, pulls = self._built_for("draws", draws, lambda: self._draws(draws))
            train = (x, train[1], w)
            inputs = None
            if draws.pulls:
                inputs = nuisance_inputs(pulls, tuple(draws.settings.shapes)).to(device)
            self._train_batches = DrawnBatches(train, self.batch_size, self.seed, inputs)
        self._train_batches.tensors = tuple(t.to(device) for t in train)
        if val is not None:
            self._val_device_tensors = tuple(t.to(device) for t in val)
        self._train_batches.shard(*self._shard())  # under DDP, this process's share

    def shifted_validation(self, needs: ShiftedCopies) -> tuple[Tensor, ...]:
        """The validation rows with their shifted copies (host tensors, built once): (x,
        target, weight, process, x_rows (n, V, d), w_rows (n, V)), `ShiftedCopies`' layout."""
        if self.val_table is None:
            raise ValueError("this data module serves no validation rows (val_index=None)")
        return self._with_copies(needs, "val")

    def _built_for(
        self, part: str, needs: ShiftedCopies | PriorDraws, build: Callable[[], tuple[Tensor, ...]]
    ) -> tuple[Tensor, ...]:
        key = f"{part}: {needs!r}"  # the settings hold a dict: no hash, but a plain repr
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    def _with_copies(self, needs: ShiftedCopies, part: str) -> tuple[Tensor, ...]:
        """A part's nominal tensors followed by process index and shifted rows (INFERNO)."""
        table = self.train_table if part == "train" else self.val_table
        tensors = self.train_tensors if part == "train" else self.val_tensors

        def build() -> tuple[Tensor, ...]:
            x_rows, w_rows = shifted_rows(table, needs.settings, self.preprocessing)
            process = torch.from_numpy(process_index(table, needs.processes))
            return (*tensors, process, x_rows, w_rows)

        return self._built_for(part, needs, build)

    def _draws(self, needs: PriorDraws) -> tuple[Tensor, Tensor, Tensor]:
        return drawn_rows(self.train_table, needs, self.preprocessing, self.seed)

    def _shard(self) -> tuple[int, int]:
        """(rank, world size) of this process; (0, 1) outside a trainer or without DDP."""
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def train_dataloader(self) -> ShuffledBatches:
        return self._train_batches

    def val_dataloader(self) -> SequentialBatches | list:
        if self.val_tensors is None:
            return []
        return SequentialBatches(self._val_device_tensors, self.eval_batch_size, *self._shard())

"""The MLP and the LightningModule that trains it with any loss of `amsaware.losses`."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from amsaware import inferno, losses
from amsaware.data.datamodule import HiggsDataModule, Needs, ShiftedCopies
from amsaware.data.schema import B_TOT, S_TOT
from amsaware.metrics import ValidationEvents, classification_metrics

Batch = tuple[Tensor, Tensor, Tensor]
#: Validation metrics shown in the progress bar next to `train/loss`.
PROGRESS_BAR_METRICS = ("val/ams_max",)
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]

log = logging.getLogger(__name__)


class MLP(nn.Sequential):
    """ReLU MLP with dropout emitting one logit per event (the seed paper's architecture)."""

    def __init__(self, n_features: int, n_layers: int, hidden_size: int, dropout: float) -> None:
        if n_layers < 1 or hidden_size < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                "model needs n_layers >= 1, hidden_size >= 1 and 0 <= dropout < 1; got "
                f"n_layers={n_layers}, hidden_size={hidden_size}, dropout={dropout}"
            )
        layers: list[nn.Module] = []
        width = n_features
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_size
        layers.append(nn.Linear(width, 1))
        super().__init__(*layers)
        # Kept so a checkpoint can say how to rebuild the network (`describe_net`).
        self.n_features, self.n_layers = n_features, n_layers
        self.hidden_size, self.dropout = hidden_size, dropout

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).squeeze(-1)


class NuisanceMLP(MLP):
    """An `MLP` parameterised by the shape nuisances: the K pulls (in `Systematics.shapes`
    order) are K more inputs after the preprocessed features (`model=mlp_nuisance`).

    Trained on events shifted by prior draws (`augment=systematics`) with the draw's pulls
    as inputs, it learns how the events change with the nuisances; the fit then scores each
    +-1 sigma template with the matching pulls (docs/inferno.md). Without `pulls` it scores at
    the nominal values (zeros, appended inside the forward), so every tool that scores
    features alone — validation, predict, eval, explain, the ONNX export — sees the nominal
    network.
    """

    def __init__(
        self, n_features: int, n_nuisances: int, n_layers: int, hidden_size: int, dropout: float
    ) -> None:
        if n_nuisances < 1:
            raise ValueError(f"model.n_nuisances must be >= 1, got {n_nuisances}")
        super().__init__(n_features + n_nuisances, n_layers, hidden_size, dropout)
        self.n_features, self.n_nuisances = n_features, n_nuisances

    def forward(self, x: Tensor, pulls: Tensor | None = None) -> Tensor:
        """Logits of features `x` (n, d) at `pulls`: (K,) for every event, (n, K) per event,
        or None for the nominal zeros."""
        if pulls is None:
            pulls = x.new_zeros(x.shape[0], self.n_nuisances)
        else:
            pulls = pulls.to(x.dtype).expand(x.shape[0], self.n_nuisances)
        return super().forward(torch.cat([x, pulls], dim=-1))


def is_parameterised(net: nn.Module) -> bool:
    """Whether `net` takes the nuisances' pulls as inputs (`NuisanceMLP`)."""
    return isinstance(net, NuisanceMLP)


@dataclass(frozen=True)
class Architecture:
    """A network a checkpoint or a run folder may rebuild: its class and the types of its
    options (besides `n_features`, which the data decides)."""

    cls: type[nn.Module]
    options: Mapping[str, type]

    @property
    def target(self) -> str:
        """The class's import path, as a run's config names it (`model._target_`)."""
        return f"{self.cls.__module__}.{self.cls.__qualname__}"


#: The networks a checkpoint (by class name) or a run folder's config (by `target`) may
#: rebuild, the one allowlist of both. A file names one of these and its options; it never
#: names a class to import, so loading a file cannot run arbitrary code.
NETS: dict[str, Architecture] = {
    "MLP": Architecture(MLP, {"n_layers": int, "hidden_size": int, "dropout": float}),
    "NuisanceMLP": Architecture(
        NuisanceMLP,
        {"n_nuisances": int, "n_layers": int, "hidden_size": int, "dropout": float},
    ),
}
#: The losses a checkpoint may rebuild: `amsaware.losses`' registry (the same dict), which
#: `amsaware.inferno` adds `InfernoLoss` to on import.
LOSSES: dict[str, type[nn.Module]] = losses.LOSSES
assert LOSSES.get("InfernoLoss") is inferno.InfernoLoss


def _plain(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(_plain(item) for item in value)
    if isinstance(value, Mapping):  # e.g. InfernoLoss's norms: process -> size
        return all(isinstance(key, str) and _plain(item) for key, item in value.items())
    return value is None or isinstance(value, bool | int | float | str)


def describe_net(net: nn.Module) -> dict[str, Any] | None:
    """The network as plain values (class name and sizes), or None if it is not in `NETS`."""
    name = type(net).__name__
    architecture = NETS.get(name)
    if architecture is None or architecture.cls is not type(net):
        return None
    sizes = ("n_features", *architecture.options)
    return {"class": name} | {key: getattr(net, key) for key in sizes}


def _build(spec: Mapping[str, Any], allowed: Mapping[str, type[nn.Module]], key: str) -> Any:
    """`allowed[spec["class"]](**rest of spec)`, refusing any class outside `allowed`."""
    options = dict(spec)
    name = options.pop("class", None)
    if name not in allowed:
        raise ValueError(
            f"checkpoint hyperparameter {key}.class must be one of {list(allowed)}, got {name!r}"
        )
    return allowed[name](**options)


def build_net(spec: Mapping[str, Any]) -> nn.Module:
    """The network `describe_net` described, built from the `NETS` allowlist."""
    return _build(spec, {name: entry.cls for name, entry in NETS.items()}, "net")


def describe_loss(loss: nn.Module) -> dict[str, Any] | None:
    """The loss as plain values (class name and constructor options), or None if it is not
    one of `LOSSES` or keeps an option under another name than its constructor's."""
    name = type(loss).__name__
    if LOSSES.get(name) is not type(loss):
        return None
    options = {}
    for key in inspect.signature(type(loss)).parameters:
        if not hasattr(loss, key) or not _plain(getattr(loss, key)):
            return None
        options[key] = getattr(loss, key)
    return {"class": name} | options


def build_loss(spec: Mapping[str, Any]) -> nn.Module:
    """The loss `describe_loss` described, built from the `LOSSES` allowlist."""
    return _build(spec, LOSSES, "loss")


def _torch_class(name: Any, module: Any, base: type, key: str) -> type:
    """A class of `module` (torch.optim or its lr_scheduler) deriving from `base`, by name."""
    cls = getattr(module, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(
            f"checkpoint hyperparameter {key}.class must name a class of {module.__name__}, "
            f"got {name!r}"
        )
    return cls


def _describe_partial(factory: Any, module: Any, base: type) -> dict[str, Any] | None:
    """A `functools.partial` of a class of `module` (as Hydra's `_partial_: true` makes) as
    plain values: the class name and its keyword options."""
    if not isinstance(factory, functools.partial) or factory.args:
        return None
    cls = factory.func
    if (
        not (isinstance(cls, type) and issubclass(cls, base))
        or getattr(module, cls.__name__, None) is not cls
    ):
        return None
    if not all(_plain(value) for value in factory.keywords.values()):
        return None
    return {"class": cls.__name__} | dict(factory.keywords)


def _build_partial(spec: Mapping[str, Any], module: Any, base: type, key: str) -> functools.partial:
    options = dict(spec)
    cls = _torch_class(options.pop("class", None), module, base, key)
    return functools.partial(cls, **options)


def _optimizer_spec(factory: Any) -> dict[str, Any] | None:
    return _describe_partial(factory, torch.optim, torch.optim.Optimizer)


def _scheduler_spec(factory: Any) -> dict[str, Any] | None:
    return _describe_partial(
        factory, torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler
    )


class SignificanceClassifier(L.LightningModule):
    """Trains `net` with `loss(logits, target, weight)`; logs `train/loss` and `val/...` per epoch.

    `val/loss` is the loss of the whole validation fold taken as one batch, so a significance
    loss sees the fold's totals rather than a mean of per-batch values. `train/loss` and the
    validation AMS are shown in the progress bar.

    The module saves its hyperparameters as plain values (network class and sizes, loss class
    and options, optimizer and scheduler class and options), so
    `SignificanceClassifier.load_from_checkpoint(path)` rebuilds it from a checkpoint; the
    classes come from allowlists (`NETS`, `LOSSES`, torch.optim), never from a name in the file.
    `net`, `loss`, `optimizer` and `scheduler` may be given as those plain descriptions too.

    Nothing in the step synchronises with the host: the running loss and the validation metrics
    accumulate on the device and are computed once per epoch.

    `needs` says what the batches must hold besides the nominal events
    (`amsaware.data.datamodule.Needs`; the datamodule builds it in its `setup`). For training:
    with `ShiftedCopies` the step scores every event nominal and shifted and hands the V rows of
    logits to an `InfernoLoss`, and `val/loss` is that loss of the whole shifted fold; with
    `PriorDraws` the batches are shifted events in the usual layout, followed by the draw's
    pulls for a network that takes them as inputs (`NuisanceMLP`). For validation
    (`Needs.validation`, any loss): the fold's events nominal and at -1/+1 sigma, scored every
    validation (a `NuisanceMLP` at each row's nuisance inputs, as the fit's templates are:
    `fit_stage.variation_inputs`), from which `sigma_mu` (`inferno.SigmaMu`) gives
    `val/sigma_mu` and `val/sigma_mu_stat`; every other validation metric stays nominal. `needs`
    describes the data, not the network, so it is not saved with the hyperparameters (nor is
    `sigma_mu`, a metric); `final_validation_metrics` gives the fold's record of it.

    `phase` (0 the first training phase, 1 a fine-tune) is logged per epoch as `phase` when
    set, marking in a fold's one timeline where the fine-tune begins.

    Every curve's x axis is the epoch (Lightning's documented `step` metric), not the optimizer
    step: folds, the final fit and runs at other batch sizes then align. `epoch_offset` is the
    epochs trained before this fit, so a fine-tune continues its stage's curves.

    `compile_mode` (a `torch.compile` mode: "default", "reduce-overhead" for CUDA graphs,
    "max-autotune") compiles the network's forward (and so its backward) for the training and
    validation steps. Only the forward function is compiled, so `net`, its state dict and the
    checkpoints stay those of the plain module.
    """

    def __init__(
        self,
        net: nn.Module | Mapping[str, Any],
        loss: nn.Module | Mapping[str, Any],
        optimizer: OptimizerFactory | Mapping[str, Any],
        s_tot: float = S_TOT,
        b_tot: float = B_TOT,
        scheduler: SchedulerFactory | Mapping[str, Any] | None = None,
        compile_mode: str | None = None,
        phase: int | None = None,
        needs: Needs | None = None,
        sigma_mu: inferno.SigmaMu | None = None,
    ) -> None:
        super().__init__()
        if isinstance(net, Mapping):
            net = build_net(net)
        if isinstance(loss, Mapping):
            loss = build_loss(loss)
        if isinstance(optimizer, Mapping):
            optimizer = _build_partial(optimizer, torch.optim, torch.optim.Optimizer, "optimizer")
        if isinstance(scheduler, Mapping):
            base = torch.optim.lr_scheduler.LRScheduler
            scheduler = _build_partial(scheduler, torch.optim.lr_scheduler, base, "scheduler")
        plain = {"s_tot": float(s_tot), "b_tot": float(b_tot)}
        plain |= {"compile_mode": compile_mode, "phase": phase}
        self._save_plain_hyperparameters(net, loss, optimizer, scheduler, plain)
        self.net = net
        self.phase = phase
        self.needs = needs
        self._shifted = needs is not None and isinstance(needs.train, ShiftedCopies)
        if self._shifted and not isinstance(loss, inferno.InfernoLoss):
            raise ValueError("shifted copies in the batch need an InfernoLoss (loss=inferno)")
        copies = None if needs is None else needs.validation
        if sigma_mu is not None and copies is None:
            raise ValueError("val/sigma_mu needs the validation rows' shifted copies (Needs)")
        self.sigma_mu = sigma_mu
        #: Each shifted row's nuisance inputs (V, K) for a network that takes them; None else.
        self._row_inputs: Tensor | None = None
        if copies is not None and is_parameterised(net):
            from amsaware.fit_stage import variation_inputs  # as the fit scores its templates

            inputs = variation_inputs(tuple(copies.settings.shapes))
            self._row_inputs = torch.tensor(np.stack(list(inputs.values())), dtype=torch.float32)
        self._val_rows: list[tuple[Tensor, ...]] = []
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.train_loss = MeanMetric(nan_strategy="disable")  # no host sync per step
        self.val_metrics = classification_metrics("val/", s_tot, b_tot)
        self.val_events = ValidationEvents()
        self.totals = (s_tot, b_tot)
        self.compile_mode = compile_mode
        self.epoch_offset = 0
        self._forward = (
            net.forward if compile_mode is None else torch.compile(net.forward, mode=compile_mode)
        )

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: Any, *args: Any, weights_only: bool = True, **kwargs: Any
    ) -> SignificanceClassifier:
        """Lightning's `load_from_checkpoint`, reading the file with `weights_only=True`
        unless the caller passes False: Lightning passes None on, and under torch < 2.6 (or
        with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD set) None unpickles anything, so a planted
        checkpoint would run its code. Everything this module saves is plain values."""
        return super().load_from_checkpoint(
            checkpoint_path, *args, weights_only=weights_only, **kwargs
        )

    def _save_plain_hyperparameters(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Any,
        scheduler: Any,
        plain: dict[str, Any],
    ) -> None:
        """Save what rebuilds this module as plain values, when every part is describable.

        A part outside the allowlists (a stacked fold-parallel network, an optimizer that is
        not a partial of a torch.optim class) saves nothing: such a checkpoint is loaded with
        `amsaware.inference.load_scorer` instead.
        """
        spec = {
            "net": describe_net(net),
            "loss": describe_loss(loss),
            "optimizer": _optimizer_spec(optimizer),
        }
        if any(value is None for value in spec.values()):
            return
        scheduler_spec = None if scheduler is None else _scheduler_spec(scheduler)
        if scheduler is not None and scheduler_spec is None:
            return
        self.save_hyperparameters(spec | {"scheduler": scheduler_spec} | plain, logger=False)

    def forward(self, x: Tensor, pulls: Tensor | None = None) -> Tensor:
        """Logits of `x`; `pulls` only for a network parameterised by the nuisances."""
        return self._forward(x) if pulls is None else self._forward(x, pulls)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if self._shifted:
            _, target, _, process, x_rows, w_rows = batch
            loss = self.loss(self._row_logits(x_rows), target, w_rows.T, process)
        else:  # prior draws for a parameterised network add the draw's pulls
            x, target, weight, *pulls = batch
            loss = self.loss(self(x, *pulls), target, weight)
        self.train_loss.update(loss.detach())
        return loss

    def _row_logits(self, x_rows: Tensor) -> Tensor:
        """Logits (V, n) of events (n, V, d) given nominal and shifted: one forward pass (a
        parameterised network's at each row's nuisance inputs)."""
        n, rows, features = x_rows.shape
        flat = x_rows.reshape(n * rows, features)
        if self._row_inputs is None:
            return self(flat).reshape(n, rows).T
        pulls = self._row_inputs.to(x_rows.device).repeat(n, 1)  # event-major, as `flat`
        return self(flat, pulls).reshape(n, rows).T

    @property
    def epoch(self) -> int:
        """The stage's epoch: this fit's, after the epochs of an earlier phase."""
        return self.epoch_offset + self.current_epoch

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss.compute(), prog_bar=True)
        self.train_loss.reset()
        if self.phase is not None:
            self.log("phase", float(self.phase))
        self._log_epoch()
        if isinstance(self.loss, inferno.InfernoLoss) and self._last_epoch():
            self._orient()

    def _last_epoch(self) -> bool:
        trainer = self.trainer
        return trainer.max_epochs is not None and self.current_epoch + 1 >= trainer.max_epochs

    @torch.no_grad()
    def _orient(self) -> None:
        """Point the score so that signal scores high, as every cut and ranking assumes.

        INFERNO's binned likelihood does not change when the score is mirrored (its bins are
        symmetric about p = 1/2), so a network may end with signal at low scores; negating the
        last layer mirrors it at no cost to the loss. Decided on the stage's own training rows
        (weighted mean logit per class), once, after the last epoch's optimizer steps and
        before its checkpoint is written.
        """
        x, target, weight = self.trainer.datamodule.train_tensors[:3]
        logits = predict_logit(self.net, x)
        signal, w = target.bool(), weight.double()
        mean = [float((logits[m] * w[m]).sum() / w[m].sum()) for m in (signal, ~signal)]
        if mean[0] < mean[1]:
            last = [m for m in self.net.modules() if isinstance(m, nn.Linear)][-1]
            last.weight.neg_()
            if last.bias is not None:
                last.bias.neg_()
            log.info("INFERNO's score pointed signal-low: mirrored (the loss is unchanged)")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, target, weight = batch[:3]
        if len(batch) > 3:  # shifted copies: val/sigma_mu, and INFERNO's val/loss
            _, _, _, process, x_rows, w_rows = batch
            self._val_rows.append((self._row_logits(x_rows), target, weight, w_rows.T, process))
        logits = self(x)
        self.val_metrics.update(preds=torch.sigmoid(logits), target=target, weight=weight)
        self.val_events.update(logits, target, weight)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        shown = {name: values.pop(name) for name in PROGRESS_BAR_METRICS if name in values}
        self.log_dict(values)
        self.log_dict(shown, prog_bar=True)
        self.val_metrics.reset()
        logits, target, weight = self.val_events.compute()
        shifted = None
        if self._val_rows:
            shifted = [torch.cat(part, -1) for part in zip(*self._val_rows, strict=True)]
            self._val_rows.clear()
        if self._shifted and shifted is not None:  # the INFERNO loss of the whole shifted fold
            rows, row_target, _, row_weight, process = shifted
            self.log("val/loss", self.loss(rows, row_target, row_weight, process).float())
        elif len(logits):
            self.log("val/loss", self.loss(logits, target, weight).float())
        if self.sigma_mu is not None and shifted is not None:
            self.log_dict(self.sigma_mu(*shifted))
        self.val_events.reset()
        self._log_epoch()

    @torch.no_grad()
    def final_validation_metrics(self, datamodule: HiggsDataModule) -> dict[str, float]:
        """`sigma_mu`'s metrics of the network as the fit leaves it (after an early stop's
        restored best epoch, or INFERNO's orientation), on `datamodule`'s validation rows: the
        fold's record, as the fold's val/ams_max is that of its final network. Empty without
        `sigma_mu` or validation rows."""
        copies = None if self.needs is None else self.needs.validation
        if self.sigma_mu is None or copies is None or datamodule.val_table is None:
            return {}
        _, target, weight, process, x_rows, w_rows = datamodule.shifted_validation(copies)
        rows = range(x_rows.shape[1])
        inputs = [None if self._row_inputs is None else self._row_inputs[v] for v in rows]
        logits = torch.stack([predict_logit(self.net, x_rows[:, v], pulls=inputs[v]) for v in rows])
        return self.sigma_mu(logits, target, weight, w_rows.T, process)

    def _log_epoch(self) -> None:
        """The epoch as the x axis (`step`, which Lightning takes as the logging step) and as
        the `epoch` column Lightning adds only when it chooses the step itself."""
        self.log_dict({"step": float(self.epoch), "epoch": float(self.epoch)})

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        """The optimizer, and the per-epoch learning-rate scheduler when one is configured."""
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        schedule = {"scheduler": scheduler, "interval": "epoch"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


@torch.no_grad()
def predict_logit(
    net: nn.Module,
    features: Tensor,
    batch_size: int = 65536,
    pulls: Tensor | np.ndarray | None = None,
) -> Tensor:
    """Logits of `net` in evaluation mode (dropout off), in large batches, as float64;
    `pulls` (K,) are the nuisance inputs of a parameterised network (`NuisanceMLP`; None: the
    nominal zeros), which a plain network ignores: it scores each variation's events alone.

    The logit is the ranking key: it does not saturate, while a significance loss pushes many
    logits so far that their probabilities round to exactly 1, even in float64 (from ~37 on).
    """
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        given = pulls is not None and is_parameterised(net)
        extra = (torch.as_tensor(pulls).to(device),) if given else ()
        chunks = [net(x.to(device), *extra).double().cpu() for x in features.split(batch_size)]
    finally:
        net.train(was_training)
    return torch.cat(chunks) if chunks else features.new_zeros(0, dtype=torch.float64)


def predict_proba(net: nn.Module, features: Tensor, batch_size: int = 65536) -> Tensor:
    """Signal probabilities of `net` in evaluation mode (dropout off), in large batches.

    The sigmoid is taken in float64: in float32 it rounds to exactly 1 from a logit of ~17 on.
    Rank by `predict_logit` where ties matter: float64 saturates too, from ~37 on.
    """
    return torch.sigmoid(predict_logit(net, features, batch_size))

"""The MLP and the LightningModule that trains it with any loss of `amsaware.losses`."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from amsaware.data.schema import B_TOT, S_TOT
from amsaware.metrics import classification_metrics

Batch = tuple[Tensor, Tensor, Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


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

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).squeeze(-1)


class SignificanceClassifier(L.LightningModule):
    """Trains `net` with `loss(logits, target, weight)`; logs `train/loss` and `val/...` per epoch.

    Nothing in the step synchronises with the host: the running loss and the validation metrics
    accumulate on the device and are computed once per epoch.

    `phase` (0 the first training phase, 1 a fine-tune) is logged per epoch as `phase` when
    set, marking in a fold's one timeline where the fine-tune begins.

    `compile_mode` (a `torch.compile` mode: "default", "reduce-overhead" for CUDA graphs,
    "max-autotune") compiles the network's forward (and so its backward) for the training and
    validation steps. Only the forward function is compiled, so `net`, its state dict and the
    checkpoints stay those of the plain module.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        s_tot: float = S_TOT,
        b_tot: float = B_TOT,
        scheduler: SchedulerFactory | None = None,
        compile_mode: str | None = None,
        phase: int | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.phase = phase
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.train_loss = MeanMetric(nan_strategy="disable")  # no host sync per step
        self.val_metrics = classification_metrics("val/", s_tot, b_tot)
        self.totals = (s_tot, b_tot)
        self.compile_mode = compile_mode
        self._forward = (
            net.forward if compile_mode is None else torch.compile(net.forward, mode=compile_mode)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, target, weight = batch
        loss = self.loss(self(x), target, weight)
        self.train_loss.update(loss.detach())
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss.compute())
        self.train_loss.reset()
        if self.phase is not None:
            self.log("phase", float(self.phase))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, target, weight = batch
        self.val_metrics.update(preds=torch.sigmoid(self(x)), target=target, weight=weight)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute())
        self.val_metrics.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        """The optimizer, and the per-epoch learning-rate scheduler when one is configured."""
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        schedule = {"scheduler": scheduler, "interval": "epoch"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


@torch.no_grad()
def predict_proba(net: nn.Module, features: Tensor, batch_size: int = 65536) -> Tensor:
    """Signal probabilities of `net` in evaluation mode (dropout off), in large batches.

    The sigmoid is taken in float64: in float32 it rounds to exactly 1 from a logit of ~17 on,
    and significance losses push many logits far beyond that, which would tie their ranks.
    """
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        chunks = [
            torch.sigmoid(net(x.to(device)).double()).cpu() for x in features.split(batch_size)
        ]
    finally:
        net.train(was_training)
    return torch.cat(chunks) if chunks else features.new_zeros(0)

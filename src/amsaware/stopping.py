"""Early stopping that fits the protocol: each fold stops at its best epoch, the final fit
(which has no validation events) trains for the folds' median best epoch count."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping


class EarlyStopping(LightningEarlyStopping):
    """Lightning's `EarlyStopping`, remembering the best epoch and, with `restore_best=True`
    (the default), putting that epoch's weights back at the end of the fit.

    The out-of-fold scores, the stage's checkpoint (rewritten after the restore) and the epoch
    count handed to the final fit are then all of the best epoch. `restore_best=False` keeps the
    last epoch's weights (`patience` epochs past the best), as Lightning does.
    At the end of a fit `<monitor>_best` is logged to the stage's loggers.
    """

    def __init__(self, *args: Any, restore_best: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.restore_best = restore_best
        self.best_epoch: int | None = None
        self._best_state: dict[str, Any] | None = None

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        # Lightning checks at the end of the training epoch or of validation, whichever its
        # settings pick; either way the check resets the wait count on an improvement.
        super()._run_early_stopping_check(trainer)
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        if self.wait_count == 0:
            self.best_epoch = trainer.current_epoch
            if self.restore_best:
                state = trainer.lightning_module.state_dict()
                self._best_state = {k: v.detach().clone() for k, v in state.items()}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.best_epoch is None:
            return
        if self.restore_best and self._best_state is not None:
            pl_module.load_state_dict(self._best_state)
            self._best_state = None
            checkpoint = trainer.checkpoint_callback
            path = getattr(checkpoint, "last_model_path", "")
            if path:  # the stage's last.ckpt holds the weights the run uses
                trainer.save_checkpoint(path)
        best = float(self.best_score)
        if math.isfinite(best):
            # At the epoch it was reached, on the epoch axis every curve uses.
            step = getattr(pl_module, "epoch_offset", 0) + self.best_epoch
            for logger in trainer.loggers:
                logger.log_metrics({f"{self.monitor}_best": best}, step=step)

    @property
    def epochs(self) -> int | None:
        """Epochs up to and including the best one (what the final fit should train)."""
        return None if self.best_epoch is None else self.best_epoch + 1


def median_epochs(epochs: list[int]) -> int:
    """The folds' median best epoch count, rounded up (at least 1)."""
    return max(1, math.ceil(float(np.median(epochs))))

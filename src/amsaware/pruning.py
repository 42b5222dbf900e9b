"""Pruning: a search trial reports its progress to its Optuna trial, which may stop it.

The sweeper (`hydra_plugins.amsaware_sweeper`) asks Optuna for a trial and launches the run
with `hydra.sweeper.trial=<number>` (plus the study's name and storage) among its overrides, so
the run finds its trial wherever it runs: in the sweeper's process, in a joblib worker or in a
SLURM job. Reports go through the study's storage (or, for an in-memory study, straight to the
sweeper's study object in the same process).

- Sequential folds: `fold_hook(settings)` is called from `cross_validate`'s per-fold hook after each
  fold with the fold's metrics; the fold's value of the metric `optimized_metric` is built
  from (`val/ams_max` for `oof/ams_max`, `val/sigma_mu` for `fit/sigma_mu`: the final
  network's, as the fold records it) is reported at step = fold index.
- `cv.parallel=true`: the `EpochPruning` callback reports the folds' mean of that metric after
  every validation, at step = the validation's index: one per epoch, or several with
  `trainer.val_check_interval` < 1 (searches validate every quarter epoch, so that a pruner can
  stop a hopeless trial a quarter of an epoch in).

Trials report whether or not a pruner is set (the values show in optuna-dashboard and let
`benchmarks/search_cost.py --replay` try the pruners on a finished search). When the study's
pruner says so, the run logs where it stopped and raises `optuna.TrialPruned`,
which the sweeper records as a PRUNED trial (with `pruned_at` among its user attributes). The
last fold or epoch is reported but never pruned: its trial is as good as finished.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import lightning as L

from amsaware.parallel import FoldParallelClassifier
from amsaware.search import (
    IN_MEMORY_STUDIES,
    PRUNED_AT,
    TrialLink,
    fold_metric,
    trial_link,
    unreported,
)
from amsaware.settings import Settings

log = logging.getLogger(__name__)


class TrialReporter:
    """Reports a run's intermediate values to its Optuna trial and stops it when pruned.

    Steps are the trial's reports in order (0, 1, ...), continuing after those an earlier
    phase of the same run made (a fine-tune after its pretraining)."""

    def __init__(self, link: TrialLink, metric: str) -> None:
        import optuna
        from hydra.utils import instantiate

        study = IN_MEMORY_STUDIES.get(link.study_name) if link.storage is None else None
        if study is None:
            # No pruner configured: a NopPruner (load_study's default would be the median).
            pruner = instantiate(link.pruner) if link.pruner else optuna.pruners.NopPruner()
            study = optuna.load_study(
                study_name=link.study_name, storage=link.storage, pruner=pruner
            )
        # Optuna has no public call that attaches to an existing trial by its number; the
        # storage's lookup is what its own distributed integrations use.
        storage = study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, link.number)
        self.trial = optuna.trial.Trial(study, trial_id)
        self.metric = metric
        self.step = len(storage.get_trial(trial_id).intermediate_values)

    def report(self, value: float, where: str, last: bool = False) -> None:
        """Report `value` at the next step; unless it is the `last` one, raise
        `optuna.TrialPruned` if the pruner says so (`where`: the run's progress, in words)."""
        import optuna

        self.trial.report(value, self.step)
        self.step += 1
        if last or not self.trial.should_prune():
            return
        self.trial.set_user_attr(PRUNED_AT, where)
        message = (
            f"trial {self.trial.number} pruned after {where}: {self.metric} = {value:.4g} is "
            "not promising against earlier trials at that point"
        )
        log.info(message)  # the search's way of working, not a problem
        raise optuna.TrialPruned(message)


def _reporter(optimized_metric: str, parallel: bool, systematics: bool) -> TrialReporter | None:
    link = trial_link()
    if link is None:
        return None  # not a search trial
    if link.storage is None and link.study_name not in IN_MEMORY_STUDIES:
        log.warning(
            "trial %d of the in-memory study %r runs outside the sweeper's process and cannot "
            "report to it, so it is not pruned: set hydra.sweeper.storage (e.g. "
            "sqlite:///logs/optuna/studies.db) to prune with this launcher",
            link.number,
            link.study_name,
        )
        return None
    why = unreported(optimized_metric, parallel, systematics)
    if why is not None:
        log.info("%s: this trial is not pruned", why)  # the sweeper warned once for the search
        return None
    metric = fold_metric(optimized_metric)
    assert metric is not None  # `unreported` says why otherwise
    return TrialReporter(link, metric)


FoldHook = Callable[[int, Mapping[str, float]], None]


def fold_hook(settings: Settings) -> FoldHook | None:
    """Reports each fold's metric in a search trial with sequential folds (with `cv.parallel`
    the `EpochPruning` callback reports instead); experiment calls it from the protocol's
    per-fold hook."""
    if settings.cv.parallel:
        return None
    reporter = _reporter(settings.optimized_metric, False, settings.systematics is not None)
    if reporter is None:
        return None
    n_folds = settings.cv.n_models

    def on_fold(k: int, metrics: Mapping[str, float]) -> None:
        last = k + 1 >= n_folds
        reporter.report(float(metrics[reporter.metric]), f"fold {k + 1} of {n_folds}", last)

    return on_fold


class EpochPruning(L.Callback):
    """Reports the folds' mean validation metric after each validation of a fold-parallel fit
    (`cv.parallel=true`) in a search trial; does nothing anywhere else.

    Step k is the run's k-th validation: one per epoch, or, with `trainer.val_check_interval`
    < 1, several (Lightning validates every `val_check_batch` training batches,
    `num_training_batches // val_check_batch` times an epoch). A fit's last validation is
    reported but never pruned."""

    def __init__(self, optimized_metric: str) -> None:
        self.optimized_metric = optimized_metric
        self._reporter: TrialReporter | None = None
        self._looked = False
        self._epoch = -1  # the epoch of the last report, and the reports made in it
        self._in_epoch = 0

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before the module's own hook, which computes, logs and resets the metrics.
        if trainer.sanity_checking:
            return
        if not isinstance(pl_module, FoldParallelClassifier):
            return  # a single model's fit: sequential folds report per fold instead
        if not self._looked:
            self._looked = True
            # val/sigma_mu is not measured here (sequential folds only): `unreported` says so
            # before it asks about the systematics group.
            self._reporter = _reporter(self.optimized_metric, True, True)
        if self._reporter is None:
            return
        name = self._reporter.metric
        values = [float(metrics.compute()[name]) for metrics in pl_module.val_metrics]
        value = math.fsum(values) / len(values)
        epoch, per_epoch = trainer.current_epoch, _validations_per_epoch(trainer)
        max_epochs = int(trainer.max_epochs or 0)
        self._in_epoch = self._in_epoch + 1 if epoch == self._epoch else 1
        self._epoch = epoch
        done = min(self._in_epoch, per_epoch) / per_epoch  # of this epoch
        last = epoch + 1 >= max_epochs and done == 1
        # A fine-tune's epochs continue the first phase's count (FoldParallelClassifier).
        offset = pl_module.epoch_offset
        where = f"epoch {offset + epoch + done:g} of {offset + max_epochs}"
        self._reporter.report(value, where, last)


def _validations_per_epoch(trainer: L.Trainer) -> int:
    """How often Lightning validates in one training epoch (1 unless `val_check_interval`
    < 1, when it validates every `val_check_batch` batches)."""
    every = trainer.val_check_batch
    if not isinstance(every, int) or every <= 0 or every >= trainer.num_training_batches:
        return 1
    return max(1, int(trainer.num_training_batches) // every)

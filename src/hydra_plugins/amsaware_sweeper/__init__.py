"""Hydra's Optuna sweeper plus a clear all-failed error and `best_run.sh` (amsaware.search).

Hydra instantiates sweepers only from the `hydra_plugins` namespace, hence this small module.
"""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import OmegaConf

from amsaware.search import RESULTS, SearchFailedError, sqlite_path, write_best_run

log = logging.getLogger(__name__)


class AmsawareSweeper(OptunaSweeper):
    """`hydra_optuna_sweeper`'s OptunaSweeper, plus the storage folder, a clear all-failed
    error and `best_run.sh` (see the module docstring)."""

    def sweep(self, arguments: list[str]) -> None:
        impl = self.sweeper
        database = sqlite_path(impl.storage)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        sweep_dir = Path(impl.config.hydra.sweep.dir)
        self._reseed_for_resume()
        try:
            impl.sweep(arguments)
        except ValueError as error:
            if impl.job_idx == 0 or self._completed_trials() != 0:
                raise  # not the "no completed trial" ending
            where = f" in {impl.storage}" if impl.storage else ""
            raise SearchFailedError(
                f"every trial of study {impl.study_name!r}{where} failed, so there is no best "
                f"trial; each trial's reason is in its train.log under {sweep_dir}/ (a diverged "
                "training, e.g. a too large optimizer.lr, or an error in the config)"
            ) from error
        results = OmegaConf.load(sweep_dir / RESULTS)
        if "best_params" not in results:
            return  # multi-objective: a Pareto front, no single best trial
        path = write_best_run(
            sweep_dir,
            impl.config.hydra.overrides.task,
            OmegaConf.to_container(results.best_params),
            float(results.best_value),
            impl.study_name,
            str(impl.config.get("optimized_metric", "objective")),
        )
        log.info("re-run the best trial: sh %s", path)

    def _reseed_for_resume(self) -> None:
        """Offset a seeded sampler by the study's trial count when continuing a study.

        The sampler's random stream restarts with every command, so a resumed study would
        otherwise propose its first trials' points again (TPE's first 10 are random draws).
        """
        impl = self.sweeper
        sampler_cfg = impl.config.hydra.sweeper.sampler
        if impl.storage is None or sampler_cfg.get("seed") is None:
            return
        try:
            study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
        except KeyError:  # a new study
            return
        if study.trials:
            seed = int(sampler_cfg.seed) + len(study.trials)
            impl.sampler = instantiate(sampler_cfg, seed=seed)
            log.info(
                "study %r has %d trials: continuing it with sampler seed %d",
                impl.study_name,
                len(study.trials),
                seed,
            )

    def _completed_trials(self) -> int:
        """Completed trials of the study (all runs of it, where it is persistent)."""
        impl = self.sweeper
        if impl.storage is None:
            return 0  # in memory, only this run's trials exist, and best_trial found none
        study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
        return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)

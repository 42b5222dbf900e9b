"""The project's Hydra sweeper: an Optuna study driven with its ask-and-tell API.

Hydra instantiates sweepers only from the `hydra_plugins` namespace, hence this package; the
parts a trial also needs live in `amsaware.search` and `amsaware.pruning`. Hydra imports this
module for every command (also `train.py --help`), so it imports Optuna, torch and the rest of
the library only when a sweep starts.

Per batch of `n_jobs` trials the sweeper asks the study for trials, launches them through the
configured launcher (each run gets its trial's parameters and `hydra.sweeper.trial`,
`study_name` and `storage`, through which it reports to its trial for pruning) and tells the
study how each ended: COMPLETE with the returned value, PRUNED, or FAIL with the error as the
trial's `fail_reason` user attribute.

No `from __future__ import annotations` here: Hydra's plugin scan executes this module without
registering it in sys.modules, where dataclasses cannot resolve string annotations.
"""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class AmsawareSweeperConf:
    """`hydra.sweeper.*` (see docs/search.md)."""

    _target_: str = "hydra_plugins.amsaware_sweeper.AmsawareSweeper"
    _recursive_: bool = False  # the sweeper builds the sampler and pruner itself
    defaults: list[Any] = field(
        default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": None}]
    )
    sampler: Any = None
    pruner: Any = None
    #: "maximize" or "minimize", or a list of them for several objectives.
    direction: Any = "maximize"
    #: A database URL (sqlite:///FILE, postgresql://...) or null for an in-memory study.
    storage: Any = None
    #: null: `<loss>[-<finetune>]-<data>-<hash of the fixed settings>` (amsaware.search).
    study_name: str | None = None
    #: Continue a study that has trials but no record of their fixed settings (written before
    #: fingerprints), recording this search's in it.
    adopt_study: bool = False
    n_trials: int = 20
    #: Trials launched at once (set the launcher's parallelism to match).
    n_jobs: int = 1
    #: Stop the search once more than this fraction of its finished trials failed.
    max_failure_rate: float = 0.0
    params: dict[str, str] | None = None
    #: Set by the sweeper in each trial's overrides: the run's Optuna trial number.
    trial: int | None = None


# Samplers and pruners, selected with hydra/sweeper/sampler=NAME, hydra/sweeper/pruner=NAME;
# any of their constructor arguments can be set as hydra.sweeper.sampler.KEY=VALUE.
SAMPLERS = {
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": None, "n_startup_trials": 10},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "cmaes": {"_target_": "optuna.samplers.CmaEsSampler", "seed": None},
    "nsgaii": {"_target_": "optuna.samplers.NSGAIISampler", "seed": None},
    "qmc": {"_target_": "optuna.samplers.QMCSampler", "seed": None},
}
PRUNERS: dict[str, dict[str, Any]] = {
    "none": {},  # = hydra.sweeper.pruner=null: every trial runs to its end
    "median": {
        "_target_": "optuna.pruners.MedianPruner",
        "n_startup_trials": 5,
        "n_warmup_steps": 0,
        "interval_steps": 1,
        "n_min_trials": 1,
    },
    "percentile": {
        "_target_": "optuna.pruners.PercentilePruner",
        "percentile": 25.0,
        "n_startup_trials": 5,
        "n_warmup_steps": 0,
    },
    "successive_halving": {
        "_target_": "optuna.pruners.SuccessiveHalvingPruner",
        # Rungs at steps 4 and 16: 1.25 and 4.25 epochs with a search's four reports an epoch
        # (Optuna's `auto`, step 1 here, stopped slow starters at 0.5 epochs: docs/search.md).
        "min_resource": 4,
        "reduction_factor": 4,
        "min_early_stopping_rate": 0,
    },
    "hyperband": {
        "_target_": "optuna.pruners.HyperbandPruner",
        "min_resource": 1,
        "max_resource": "auto",
        "reduction_factor": 3,
    },
}

store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="amsaware_optuna", node=AmsawareSweeperConf)
for _name, _node in SAMPLERS.items():
    store.store(group="hydra/sweeper/sampler", name=_name, node=_node)
for _name, _node in PRUNERS.items():
    store.store(group="hydra/sweeper/pruner", name=_name, node=_node)


class AmsawareSweeper(Sweeper):
    """Runs `n_trials` trials of an Optuna study, `n_jobs` at a time (see the module doc)."""

    def __init__(self, **settings: Any) -> None:
        # The settings are read from the composed config in `sweep`, where interpolations
        # (`${seed}`, `${paths.log_dir}`) resolve.
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        """Run the search: `n_trials` more trials of the study, then the best-run files.

        The sweeper's own lines (the study, each trial's outcome, the summary and the best
        trial) also go to `<sweep dir>/search.log`, beside the trials' folders."""
        assert self.config is not None
        sweep_dir = Path(os.path.normpath(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(sweep_dir / "search.log")
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] - %(message)s"))
        log.addHandler(handler)
        try:
            self._sweep(arguments)
        finally:
            log.removeHandler(handler)
            handler.close()

    def _sweep(self, arguments: list[str]) -> None:
        import optuna

        from amsaware import search

        assert self.config is not None and self.launcher is not None
        cfg = self.config
        settings = cfg.hydra.sweeper
        storage = settings.storage
        if not isinstance(settings.n_trials, int) or settings.n_trials < 1:
            raise search.SearchConfigError(
                f"hydra.sweeper.n_trials={settings.n_trials}: expected the number of trials "
                "to run, at least 1"
            )
        if storage is not None and not isinstance(storage, str):
            raise search.SearchConfigError(
                f"hydra.sweeper.storage must be a database URL or null, got {storage!r}"
            )
        storage = search.absolute_storage(storage)
        directions = _directions(settings.direction)
        space, fixed = search.parse_space(settings.params or {}, arguments)
        metric = str(cfg.get("optimized_metric", "objective"))
        if "optimized_metric" in cfg:
            search.check_optimized_metric(
                metric,
                bool(cfg.get("final_fit", True)),
                str(cfg.get("ensemble", "final")),
                search.runs_fit(cfg),
            )
            search.check_direction(metric, directions)
        pruner = self._instantiate(settings.pruner)
        cv = cfg.get("cv") or {}
        why = search.unreported(
            metric, bool(cv.get("parallel", False)), cfg.get("systematics") is not None
        )
        if pruner is not None and why is not None:
            # Said once here; the trials, which report nothing, say it only at INFO.
            log.warning("%s: nothing is pruned, every trial runs to its end", why)
        fixed_values = _fingerprint(cfg, space)
        study_name = settings.study_name or search.default_study_name(fixed_values)
        study = search.open_study(
            study_name, storage, directions, pruner=pruner or optuna.pruners.NopPruner()
        )
        search.check_fingerprint(
            study, fixed_values, storage, bool(settings.get("adopt_study", False))
        )
        sampler = self._sampler(settings.sampler, len(study.trials), study.study_name)
        study.sampler = sampler or study.sampler
        if storage is None:
            search.IN_MEMORY_STUDIES[study.study_name] = study
        n_trials, n_jobs = int(settings.n_trials), max(1, int(settings.n_jobs))
        log.info(
            "study %r (%s): %d trials so far, running %d more, %d at a time; space: %s",
            study.study_name,
            storage or "in memory",
            len(study.trials),
            n_trials,
            n_jobs,
            ", ".join(space),
        )
        states: list[optuna.trial.TrialState] = []
        checked_reach = False  # whether a finished trial showed the pruner can decide
        try:
            while len(states) < n_trials:
                batch = [study.ask(space) for _ in range(min(n_jobs, n_trials - len(states)))]
                jobs = [_job_overrides(t, fixed, study.study_name, storage) for t in batch]
                try:
                    returns = self.launcher.launch(jobs, initial_job_idx=len(states))
                except BaseException as error:  # Ctrl-C, a launcher error: close the trials
                    for trial in batch:
                        trial.set_user_attr(search.FAIL_REASON, f"{type(error).__name__}: {error}")
                        study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
                    raise
                for trial, job in zip(batch, returns, strict=True):
                    states.append(_tell(study, trial, job, directions))
                    if states[-1] == optuna.trial.TrialState.COMPLETE and not checked_reach:
                        checked_reach = True
                        _warn_if_never_pruned(settings.pruner, study, trial.number)
                _check_failure_rate(states, float(settings.max_failure_rate), study)
        finally:
            search.IN_MEMORY_STUDIES.pop(study.study_name, None)
        self._finish(study, states, storage, metric, directions, space)

    def _instantiate(self, node: Any) -> Any:
        from hydra.utils import instantiate

        return instantiate(node) if node else None

    def _sampler(self, node: Any, n_existing: int, study_name: str) -> Any:
        """The sampler; a seeded one continuing a study is reseeded from (seed, the study's
        trial count), since its random stream restarts with every command and would otherwise
        propose the study's first points again (TPE's first trials are random draws). Mixing
        the two (not adding them) keeps sweepers with seeds 1 and 2 that join a study at 1 and
        0 trials from drawing the same stream."""
        if not node:
            return None
        if node.get("seed") is not None and n_existing:
            import numpy as np

            sequence = np.random.SeedSequence([int(node.seed), n_existing])
            seed = int(sequence.generate_state(1)[0] >> 1)  # a non-negative 31-bit int
            log.info(
                "study %r has %d trials: continuing it with sampler seed %d",
                study_name,
                n_existing,
                seed,
            )
            node = OmegaConf.merge(node, {"seed": seed})
        return self._instantiate(node)

    def _finish(
        self,
        study: Any,
        states: list[Any],
        storage: str | None,
        metric: str,
        directions: list,
        space: dict[str, Any],
    ) -> None:
        """Summary, the all-failed error, `optimization_results.yaml` and `best_run.sh`.

        Only trials whose params are a point of the space count (`search.trials_in_space`):
        a study is data, and a trial planted in it must not reach the command best_run.sh runs.
        """
        import optuna

        from amsaware import search

        assert self.config is not None
        sweep_dir = Path(os.path.normpath(self.config.hydra.sweep.dir))  # no conf/../
        sweep_dir.mkdir(parents=True, exist_ok=True)
        count = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState if s in states}
        log.info("this search: %s", ", ".join(f"{n} {state}" for state, n in count.items()))
        finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        complete = search.trials_in_space(finished, space)
        if not complete:
            where = f" in {storage}" if storage else ""
            outside = (
                f" (its {len(finished)} complete trial(s) are outside this search's space: see "
                "the warnings above)"
                if finished
                else ""
            )
            raise search.SearchFailedError(
                f"every trial of study {study.study_name!r}{where} failed or was pruned{outside}, "
                f"so there is no best trial; each trial's reason is in its train.log under "
                f"{sweep_dir}/ and in the study (user attribute fail_reason): a diverged training "
                "(e.g. a too large optimizer.lr) or an error in the config"
            )
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name}
        results["trials"] = {"this_search": count, "study": len(study.trials)}
        if len(directions) > 1:
            kept = {t.number for t in complete}
            results["solutions"] = [
                {"number": t.number, "params": t.params, "values": t.values}
                for t in study.best_trials
                if t.number in kept
            ]
            OmegaConf.save(OmegaConf.create(results), sweep_dir / search.RESULTS)
            return
        pick = max if directions[0] == "maximize" else min
        best = pick(complete, key=lambda t: t.value)
        results |= {"best_trial": best.number, "best_params": best.params, "best_value": best.value}
        OmegaConf.save(OmegaConf.create(results), sweep_dir / search.RESULTS)
        path = search.write_best_run(
            sweep_dir,
            self.config.hydra.overrides.task,
            best.params,
            float(best.value),
            study.study_name,
            metric,
            {key: OmegaConf.select(self.config, key) for key in search.TRIAL_RESULT_KEYS},
            space,
        )
        log.info("best trial of the study: #%d, %s = %.6g", best.number, metric, best.value)
        log.info("re-run the best trial: sh %s", path)


def _fingerprint(cfg: DictConfig, space: dict[str, Any]) -> dict[str, Any]:
    """`amsaware.search.fingerprint` of the sweeper's config. Its `${hydra:...}` paths resolve
    through Hydra's global config, published here for the moment when a caller (a test, an
    API user) composed the config without running Hydra."""
    import copy

    from hydra.core.hydra_config import HydraConfig

    from amsaware.search import fingerprint

    holder = HydraConfig.instance()
    published = holder.cfg
    if published is None:
        holder.set_config(copy.deepcopy(cfg))  # set_config makes its `hydra` node read-only
    try:
        return fingerprint(cfg, space)
    finally:
        holder.cfg = published


def _directions(direction: Any) -> list[str]:
    from amsaware.search import SearchConfigError

    directions = [direction] if isinstance(direction, str) else list(direction)
    bad = [d for d in directions if str(d).lower() not in ("maximize", "minimize")]
    if bad or not directions:
        raise SearchConfigError(
            f"hydra.sweeper.direction must be maximize or minimize (or a list of them), got "
            f"{direction!r}"
        )
    return [str(d).lower() for d in directions]


def _job_overrides(
    trial: Any, fixed: dict[str, str], study_name: str, storage: str | None
) -> list[str]:
    """A trial's overrides: the fixed ones, its parameters, and where it finds its trial."""
    from amsaware.search import override_value

    return [
        *fixed.values(),
        *(f"{key}={override_value(value)}" for key, value in trial.params.items()),
        f"hydra.sweeper.trial={trial.number}",
        f"hydra.sweeper.study_name={override_value(study_name)}",
        f"hydra.sweeper.storage={override_value(storage)}",
    ]


def _tell(study: Any, trial: Any, job: Any, directions: list[str]) -> Any:
    """Record how a trial's run ended; returns its state."""
    import math

    import optuna
    from hydra.core.utils import JobStatus

    from amsaware import search

    TrialState = optuna.trial.TrialState
    run_dir = OmegaConf.select(job.hydra_cfg or {}, "hydra.runtime.output_dir")
    if run_dir:
        trial.set_user_attr(search.RUN_DIR, str(run_dir))
    if job.status == JobStatus.COMPLETED:
        values = job.return_value
        values = list(values) if isinstance(values, list | tuple) else [values]
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            values = []
        if len(values) == len(directions) and all(math.isfinite(v) for v in values):
            study.tell(trial, values)
            return TrialState.COMPLETE
        error: BaseException = ValueError(
            f"the run returned {job.return_value!r}, not {len(directions)} finite number(s)"
        )
    else:
        error = job._return_value  # the exception the run raised (JobReturn keeps it here)
    if isinstance(error, optuna.TrialPruned):
        study.tell(trial, state=TrialState.PRUNED)
        log.info("trial %d pruned: %s", trial.number, error)
        return TrialState.PRUNED
    reason = f"{type(error).__name__}: {error}"
    trial.set_user_attr(search.FAIL_REASON, reason)
    study.tell(trial, state=TrialState.FAIL)
    log.warning("trial %d failed: %s", trial.number, reason)
    return TrialState.FAIL


def first_decision_step(pruner: Any) -> int | None:
    """The first step at which the configured pruner (its `hydra.sweeper.pruner` node) can
    stop a trial, where its options fix it; None where they do not (`min_resource: auto`)."""
    if not pruner:
        return None
    name = str(pruner.get("_target_", "")).rsplit(".", 1)[-1]
    if name in ("MedianPruner", "PercentilePruner"):
        return int(pruner.get("n_warmup_steps", 0))
    resource = pruner.get("min_resource", "auto")
    if not isinstance(resource, int):
        return None
    if name == "SuccessiveHalvingPruner":
        return resource * int(pruner.get("reduction_factor", 4)) ** int(
            pruner.get("min_early_stopping_rate", 0)
        )
    return resource if name == "HyperbandPruner" else None


def _warn_if_never_pruned(pruner: Any, study: Any, number: int) -> None:
    """Say so when a finished trial's reports all came before the pruner's first decision:
    such a search prunes nothing (e.g. `min_resource: 4` counts quarter epochs, but sequential
    folds report 3 times)."""
    first = first_decision_step(pruner)
    reports = len(study.get_trials(deepcopy=False)[number].intermediate_values)
    # The last report is never pruned (it is the trial's result), so decisions need one more.
    if first is not None and reports and first >= reports - 1:
        log.warning(
            "trial %d reported %d values (steps 0-%d), but the pruner decides first at step %d: "
            "this search prunes nothing. Lower hydra.sweeper.pruner.%s, or report more often "
            "(cv.parallel=true trainer.val_check_interval=0.25: 4 reports an epoch)",
            number,
            reports,
            reports - 1,
            first,
            "n_warmup_steps" if "min_resource" not in pruner else "min_resource",
        )


def _check_failure_rate(states: list[Any], max_failure_rate: float, study: Any) -> None:
    """Stop the search once more than `max_failure_rate` of its finished trials failed."""
    import optuna

    from amsaware.search import FAIL_REASON, SearchFailedError

    failed = states.count(optuna.trial.TrialState.FAIL)
    if failed and failed / len(states) > max_failure_rate:
        last = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))[-1]
        raise SearchFailedError(
            f"{failed} of the {len(states)} trials of this search failed, more than "
            f"hydra.sweeper.max_failure_rate={max_failure_rate}; the last one's reason: "
            f"{last.user_attrs.get(FAIL_REASON)}"
        )

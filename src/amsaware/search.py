"""Hyperparameter search: the search space, the metric checks and the files a search leaves.

`conf/hparams_search/optuna.yaml` selects the project's Hydra sweeper
(`hydra_plugins.amsaware_sweeper`, where Hydra looks for plugins), which drives an Optuna study
with its ask-and-tell API. This module holds what the sweeper and the trials share:

- `parse_space`: the `hydra.sweeper.params` grammar (`choice`, `range`, `interval`,
  `tag(log, ...)`) read with Hydra's own override parser into Optuna distributions;
- `metric_names` / `check_optimized_metric`: the metric names a run's metrics.json will have,
  so that a mistyped `optimized_metric` stops the search before the first trial trains;
- `fold_metric` / `unreported`: which per-fold metric a trial reports to the pruner after
  each fold (`val/sigma_mu` for the fit's `fit/sigma_mu`), and why a search reports none;
- `fingerprint` / `default_study_name` / `check_fingerprint`: what a search holds fixed, the
  study name keyed by its hash, and the refusal to continue a study searched with other
  fixed settings;
- `open_study`: the study, with a clear message where the database predates Optuna 3;
- `trial_link` / `load_for_trial`: inside a run, which trial it is (from the overrides the
  sweeper gave it), and its data built once per process for all the trials run there;
- `best_run.sh`: the exact `train.py` command that re-runs the study's best trial as an
  ordinary run (with the final fit), written only from trials whose params are a point of
  the search space (`point_problems`, `trials_in_space`): a study is data.

Importing this module is cheap (no torch, Lightning or Optuna at import time), like the
sweeper plugin that Hydra imports for every `train.py --help` and shell completion.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import re
import shlex
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

log = logging.getLogger(__name__)

BEST_RUN = "best_run.sh"
RESULTS = "optimization_results.yaml"
#: The study's user attributes the search writes: a failed trial's reason, where a pruned
#: trial stopped, and each trial's run folder.
FAIL_REASON = "fail_reason"
PRUNED_AT = "pruned_at"
RUN_DIR = "run_dir"
#: The study's user attribute holding the fixed settings its trials ran with (`fingerprint`).
FINGERPRINT = "fingerprint"

#: Studies of in-memory searches (`hydra.sweeper.storage: null`) by name, so that trials run in
#: the sweeper's own process (Hydra's basic launcher) can report to them for pruning.
IN_MEMORY_STUDIES: dict[str, optuna.Study] = {}


class SearchFailedError(RuntimeError):
    """Every trial of the study failed: there is no best trial to report."""


# ---------------------------------------------------------------------------------------------
# The search space


def parse_space(
    params: Mapping[str, Any], arguments: Iterable[str] = ()
) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """Distributions of the swept keys, and the overrides every trial gets unchanged.

    `params` is `hydra.sweeper.params` ({key: expression}); `arguments` are the command line's
    task overrides, which come later and so win for the same key (`optimizer.lr=1e-3` fixes a
    searched key, `optimizer.lr=choice(1e-3,1e-2)` searches a new one). The grammar:
    `choice(a, b, ...)` is categorical; `range(a, b[, step])` takes integers (floats if any
    bound is a float) from a to b, both included; `interval(a, b)` is a float interval and
    `tag(int, interval(a, b))` an integer one; `tag(log, ...)` samples either on a log scale.
    """
    parser = OverridesParser.create()
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for line in lines:
        try:
            override = parser.parse_override(line)
        except Exception as error:
            raise SearchConfigError(
                f"hydra.sweeper.params: cannot parse {line!r}: {error}"
            ) from error
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed[key] = line
    return space, fixed


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (see `parse_space` for the grammar)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key = override.get_key_element()
    value = override.value()
    tags = set(getattr(value, "tags", ()) or ())
    unknown = tags - {"log", "int"}
    if unknown:
        raise SearchConfigError(
            f"hydra.sweeper.params.{key}: unknown tag(s) {sorted(unknown)}; the search knows "
            "tag(log, ...) and tag(int, interval(...))"
        )
    log_scale = "log" in tags
    if isinstance(value, ChoiceSweep):
        choices = list(value.list)
        bad = [c for c in choices if c is not None and not isinstance(c, bool | int | float | str)]
        if bad or not choices:
            raise SearchConfigError(
                f"hydra.sweeper.params.{key}: choice() needs one or more plain values "
                f"(numbers, strings, booleans, null), got {choices!r}"
            )
        if log_scale:
            raise SearchConfigError(f"hydra.sweeper.params.{key}: tag(log, ...) on a choice()")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        if value.start is None or value.stop is None:
            raise SearchConfigError(f"hydra.sweeper.params.{key}: range() needs a start and a stop")
        step = 1 if value.step is None else value.step
        if all(isinstance(v, int) for v in (value.start, value.stop, step)):
            if log_scale and step != 1:
                raise SearchConfigError(
                    f"hydra.sweeper.params.{key}: a log-scale range() must have step 1, got {step}"
                )
            return IntDistribution(value.start, value.stop, log=log_scale, step=step)
        if log_scale:
            raise SearchConfigError(
                f"hydra.sweeper.params.{key}: a float range() has a step and cannot be log-scale; "
                "use tag(log, interval(a, b))"
            )
        return FloatDistribution(float(value.start), float(value.stop), step=float(step))
    if isinstance(value, IntervalSweep):
        if "int" in tags:
            low, high = value.start, value.end
            if not (float(low).is_integer() and float(high).is_integer()):
                raise SearchConfigError(
                    f"hydra.sweeper.params.{key}: tag(int, interval(a, b)) needs integer ends, "
                    f"got {low} and {high}"
                )
            return IntDistribution(int(low), int(high), log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise SearchConfigError(
        f"hydra.sweeper.params.{key}: {override.input_line!r} is not a choice(), range() or "
        "interval() (glob and other sweeps cannot be searched)"
    )


_PLAIN = re.compile(r"^[A-Za-z0-9_./:@%+-]*$")


def override_value(value: Any) -> str:
    """`value` written so that Hydra's override parser reads it back as the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)  # inf, nan and full precision
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if text and _PLAIN.match(text) and text.lower() not in ("null", "true", "false", "inf", "nan"):
        try:
            float(text)
        except ValueError:
            return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ---------------------------------------------------------------------------------------------
# Metric names


class SearchConfigError(ValueError):
    """A `hydra.sweeper.*` setting or `optimized_metric` that no search can run with."""


def metric_names(final_fit: bool = True, ensemble: str = "final") -> list[str]:
    """`amsaware.report.metric_names`, imported when called: this module stays cheap."""
    from amsaware.report import metric_names as names

    return names(final_fit, ensemble)


def check_optimized_metric(
    name: str, final_fit: bool = True, ensemble: str = "final", fit: bool = False
) -> str:
    """`amsaware.checks.check_optimized_metric` (the home of config refusals), for the
    sweeper, imported when called: this module stays cheap."""
    from amsaware.checks import check_optimized_metric as check

    return check(name, final_fit, ensemble, fit)


def runs_fit(cfg: Any) -> bool:
    """Whether a run of this train.py config has the fit stage (`settings.FitSettings`:
    `fit.enabled`, or null with a `systematics` group), so that `fit/` metrics exist."""
    enabled = (cfg.get("fit") or {}).get("enabled")
    return bool(enabled) if enabled is not None else cfg.get("systematics") is not None


def check_direction(metric: str, directions: list[str]) -> None:
    """Refuse a single-objective direction that contradicts the metric: a search that
    maximised `fit/sigma_mu` would hunt for the worst classifier and still finish normally.

    Lower-is-better metrics are `amsaware.report.LOWER_IS_BETTER`; every other is maximised.
    The direction is not derived silently: `hparams_search/_search.yaml` sets `maximize`, and
    a search that minimises says so on its command line or in its config.
    """
    from amsaware.report import LOWER_IS_BETTER

    if len(directions) != 1:
        return  # several objectives: a list of metrics the run returns, each its own sense
    wanted = "minimize" if metric in LOWER_IS_BETTER else "maximize"
    if directions[0] != wanted:
        sense = "lower" if wanted == "minimize" else "higher"
        raise SearchConfigError(
            f"optimized_metric {metric} is better when {sense}, but hydra.sweeper.direction="
            f"{directions[0]}: set hydra.sweeper.direction={wanted}"
        )


#: The fit's metrics with a per-fold counterpart: the validation fold's expected sigma_mu
#: from the same binned Asimov likelihood (`amsaware.inferno.SigmaMu`, lower is better).
FIT_FOLD_METRICS = {"fit/sigma_mu": "val/sigma_mu", "fit/sigma_mu_stat": "val/sigma_mu_stat"}


def fold_metric(optimized_metric: str) -> str | None:
    """The per-fold (`val/...`) metric whose value a trial reports after each fold or epoch:
    `val/X` for `oof/X` or `val/X`, the fold's `val/ams_max` for the cut's AMS, the fold's
    `val/sigma_mu` for the fit's `fit/sigma_mu` (and `_stat` likewise). None where no
    fold-level counterpart exists (`cut/fraction`, test metrics, the fit's Z, coverage and
    toys): then nothing is pruned."""
    from amsaware.report import base_metric_names

    section, _, name = optimized_metric.partition("/")
    if section in ("oof", "val") and name in base_metric_names():
        return f"val/{name}"
    if optimized_metric in ("cut/ams", "cut/ams_smoothed"):
        return "val/ams_max"
    return FIT_FOLD_METRICS.get(optimized_metric)


def unreported(optimized_metric: str, parallel: bool, systematics: bool) -> str | None:
    """Why a trial of this search reports nothing to the pruner, or None where it reports.

    The fit's per-fold counterpart `val/sigma_mu` needs the validation events shifted by the
    run's systematics group and is computed with sequential folds only (`cv.parallel=true`
    trains the folds as one stacked model on plain batches: it has no val/sigma_mu)."""
    metric = fold_metric(optimized_metric)
    if metric is None:
        return (
            f"optimized_metric {optimized_metric} has no per-fold or per-epoch value (it exists "
            "only once the run's folds are done)"
        )
    if metric in FIT_FOLD_METRICS.values() and parallel:
        return (
            f"optimized_metric {optimized_metric}'s per-fold value {metric} is measured with "
            "sequential folds only: set cv.parallel=false (and trainer.val_check_interval=1.0, "
            "hydra.sweeper.pruner.min_resource=1) to prune"
        )
    if metric in FIT_FOLD_METRICS.values() and not systematics:
        return (
            f"optimized_metric {optimized_metric}'s per-fold value {metric} needs a systematics "
            "group (systematics=higgs): without it the folds do not measure it"
        )
    return None


# ---------------------------------------------------------------------------------------------
# The study


def sqlite_path(storage: Any) -> Path | None:
    """The database file of an `sqlite:///FILE` storage URL, or None for any other storage."""
    if not isinstance(storage, str) or not storage.startswith("sqlite:///"):
        return None
    path = storage.removeprefix("sqlite:///")
    return None if path in ("", ":memory:") else Path(path)


def absolute_storage(storage: str | None) -> str | None:
    """The storage URL with a relative SQLite path made absolute, so that trials started in
    another folder (a cluster job) reach the same file."""
    path = sqlite_path(storage)
    if path is None or path.is_absolute():
        return storage
    return f"sqlite:///{path.resolve()}"


#: Task config keys that do not change a trial's objective, left out of the fingerprint: where
#: files go, how many threads, loggers, progress bars, checkpoint writing, the accelerator and
#: torch.compile (speed, not the result beyond float rounding), one-run-per-folder switches.
NOT_FIXED = (
    "paths",
    "threads",
    "data.download",
    "logger",
    "compile",
    "overwrite",
    "resume",
    "callbacks.progress_bar",
    "callbacks.model_checkpoint",
    "callbacks.preprocessing",
    "callbacks.pruning",
    "trainer.accelerator",
    "trainer.enable_progress_bar",
    "trainer.enable_checkpointing",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
)
#: Config groups whose choice is left out (their values are in the fingerprint or do not count;
#: `tuned` is the loss's, pulled by conf/loss/<name>.yaml as `tuned@_global_`).
NOT_FIXED_GROUPS = ("logger", "paths", "callbacks", "trainer", "hparams_search", "tuned")


def _flatten(value: Any, prefix: str, into: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), into)
    else:
        into[prefix] = value


def _excluded(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def fingerprint(cfg: DictConfig, searched: Iterable[str]) -> dict[str, Any]:
    """Everything a search holds fixed, as {dotted key: value}: the task config resolved
    (data with its path and sizes, cv, cut, trainer epochs, loss, finetune, model, optimizer,
    seed, optimized_metric, ...) and the config groups chosen (`choices.experiment`), minus the
    searched keys and `NOT_FIXED`. Two searches with the same fingerprint optimise the same
    objective, so they may share a study; `cfg` is the sweeper's composed config (with `hydra`).
    Each `...path` naming a file also gets `<key>:content`, its `file_identity`: a data file
    replaced at the same path is other data, so its search starts a study of its own.
    """
    searched = [key.lstrip("+~") for key in searched]
    skip = [*NOT_FIXED, *searched]
    values: dict[str, Any] = {}
    for key in cfg:
        key = str(key)
        if key == "hydra" or _excluded(key, skip):
            continue
        node = cfg[key]
        item = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        flat: dict[str, Any] = {}
        _flatten(item, key, flat)
        for name, value in flat.items():
            if _excluded(name, skip):
                continue
            if name.endswith("path") and isinstance(value, str) and os.path.isabs(value):
                value = os.path.normpath(value)  # <root>/conf/../data/x -> <root>/data/x
            values[name] = value
            if name.endswith("path") and isinstance(value, str) and os.path.isfile(value):
                values[f"{name}:content"] = file_identity(value)
    choices = OmegaConf.select(cfg, "hydra.runtime.choices") or {}
    for group, choice in choices.items():
        group = str(group)
        if group.split("/")[0].split("@")[0] in ("hydra", *NOT_FIXED_GROUPS):
            continue
        if group in searched:
            continue
        values[f"choices.{group}"] = choice
    # The JSON round trip gives what the study's user attributes will read back.
    return json.loads(json.dumps(values, sort_keys=True, default=str))


#: What `file_identity` hashes of a data file: its first and last MiB and 62 blocks of 64 KiB
#: evenly between, about 6 MiB however large the file (the 65 MB CERN file is not read twice
#: for a fingerprint).
_SAMPLE_ENDS, _SAMPLE_BLOCKS, _SAMPLE_BLOCK = 1 << 20, 62, 1 << 16


def file_identity(path: str | Path) -> str:
    """`<size>:<mtime_ns>:<sha256 of samples>` of a file: any rewrite changes its size or
    modification time, and the sampled hash catches a replacement whose time was set back
    unless it differs only between the samples. Copying the file elsewhere (a new mtime)
    makes it other data: its search starts a new study."""
    stat = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if stat.st_size <= 2 * _SAMPLE_ENDS + _SAMPLE_BLOCKS * _SAMPLE_BLOCK:
            digest.update(handle.read())
        else:
            offsets = [0, stat.st_size - _SAMPLE_ENDS]
            step = (stat.st_size - 2 * _SAMPLE_ENDS) // (_SAMPLE_BLOCKS + 1)
            offsets[1:1] = [_SAMPLE_ENDS + step * (k + 1) for k in range(_SAMPLE_BLOCKS)]
            for k, offset in enumerate(offsets):
                handle.seek(offset)
                digest.update(
                    handle.read(_SAMPLE_ENDS if k in (0, len(offsets) - 1) else _SAMPLE_BLOCK)
                )
    return f"{stat.st_size}:{stat.st_mtime_ns}:{digest.hexdigest()}"


def fingerprint_hash(values: Mapping[str, Any]) -> str:
    """8 hex digits of the SHA-256 of the fingerprint's canonical JSON."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def default_study_name(values: Mapping[str, Any]) -> str:
    """`<loss>[-<finetune>]-<data>-<hash>`: readable, and keyed by everything held fixed, so
    a search over other data, sizes, folds or epochs starts a study of its own."""
    parts = [values.get("choices.loss"), values.get("choices.finetune"), values.get("choices.data")]
    prefix = "-".join(str(part) for part in parts if part not in (None, "null"))
    return f"{prefix or 'study'}-{fingerprint_hash(values)}"


def check_fingerprint(
    study: optuna.Study, values: Mapping[str, Any], storage: str | None, adopt: bool = False
) -> None:
    """Record the search's fixed settings in the study, or refuse a study searched with others.

    A new study (no trials) gets them. A study that holds them must hold these: else this
    search would continue an optimisation of another objective, and its best trial would be
    one this command never ran. A study without them (written before fingerprints, or by
    another tool) is refused unless `adopt` (`hydra.sweeper.adopt_study=true`), which records
    this search's settings in it: the user vouches that its trials ran with them.
    """
    where = f" in {storage}" if storage else ""
    stored = study.user_attrs.get(FINGERPRINT)
    if stored is None:
        if study.get_trials(deepcopy=False) and not adopt:
            raise SearchConfigError(
                f"study {study.study_name!r}{where} has trials but no record "
                "of the settings they ran with (it predates study fingerprints), so this search "
                "cannot tell whether it optimises the same objective. Leave "
                "hydra.sweeper.study_name unset for a new study keyed by this search's settings, "
                "or pass hydra.sweeper.adopt_study=true if its trials ran with exactly these "
                "settings (this search's are then recorded in it)"
            )
        study.set_user_attr(FINGERPRINT, dict(values))
        return
    differing = sorted(k for k in set(stored) | set(values) if stored.get(k) != values.get(k))
    if differing:
        shown = "; ".join(
            f"{key}: {stored.get(key, '(unset)')!r} in the study, "
            f"{values.get(key, '(unset)')!r} in this search"
            for key in differing
        )
        raise SearchConfigError(
            f"study {study.study_name!r}{where} was searched with other fixed settings, so its "
            f"trials optimised another objective: {shown}. Leave hydra.sweeper.study_name unset "
            "(the default name is keyed by these settings) or choose another one"
        )


def open_study(
    study_name: str | None,
    storage: str | None,
    directions: list[str],
    sampler: Any = None,
    pruner: Any = None,
    create: bool = True,
) -> optuna.Study:
    """The study `study_name` in `storage` (created if `create`, else it must exist).

    An SQLite file whose tables an older Optuna wrote (e.g. the Optuna 2.10 of this project's
    earlier versions) is refused with the one command that upgrades it in place.
    """
    import optuna

    database = sqlite_path(storage)
    if database is not None and create:
        database.parent.mkdir(parents=True, exist_ok=True)
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    try:
        if not create:
            return optuna.load_study(
                study_name=study_name, storage=storage, sampler=sampler, pruner=pruner
            )
        for attempt in range(3):
            try:
                return optuna.create_study(
                    study_name=study_name,
                    storage=storage,
                    sampler=sampler,
                    pruner=pruner,
                    directions=directions,
                    load_if_exists=True,
                )
            except (IntegrityError, ProgrammingError):
                # Sweeper processes starting together on a new server database race to create
                # its tables; the loser finds them made a moment later.
                if attempt == 2:
                    raise
                time.sleep(1.0 + attempt)
        raise AssertionError("unreachable")
    except RuntimeError as error:
        if "optuna storage upgrade" not in str(error):
            raise
        raise SearchConfigError(
            f"the study database {storage} was written by an older Optuna and its tables must "
            f"be upgraded before this search can use it. Back the file up (the upgraded file "
            f"cannot be opened by Optuna 2 any more), then run once:\n"
            f"    optuna storage upgrade --storage {shlex.quote(str(storage))}\n"
            f"(Optuna said: {error})"
        ) from error


# ---------------------------------------------------------------------------------------------
# Inside a trial


@dataclass(frozen=True)
class TrialLink:
    """Where a search trial's run finds its Optuna trial (from the sweeper's overrides)."""

    study_name: str
    storage: str | None
    number: int
    pruner: Any


def trial_link() -> TrialLink | None:
    """The trial this run is, when the project's sweeper launched it; None otherwise."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().get("sweeper") or {}
    if sweeper.get("trial") is None or not sweeper.get("study_name"):
        return None
    return TrialLink(
        str(sweeper.study_name), sweeper.get("storage"), int(sweeper.trial), sweeper.get("pruner")
    )


T = TypeVar("T")
_TRIAL_DATA: dict[str, Any] = {}


def load_for_trial(source: dict[str, Any], load: Callable[[dict[str, Any]], T]) -> T:
    """`load(source)`, built once per process for the search trials it runs.

    Trials of one search share their data config, and where several run in one process (Hydra's
    basic launcher, a joblib worker) generating or reading the events again for each would
    repeat seconds of work. The last data set is kept, keyed on the resolved data config, and
    each trial gets its own deep copy, so nothing one trial does to it reaches the next.
    Outside a search, `load(source)` as is.
    """
    if trial_link() is None:
        return load(source)
    key = json.dumps(source, sort_keys=True, default=str)
    if key not in _TRIAL_DATA:
        _TRIAL_DATA.clear()
        _TRIAL_DATA[key] = load(source)
    else:
        log.info("data: the events this process built for an earlier trial")
    return copy.deepcopy(_TRIAL_DATA[key])


# ---------------------------------------------------------------------------------------------
# The best run


def point_problems(params: Mapping[str, Any], space: Mapping[str, BaseDistribution]) -> list[str]:
    """Why `params` are not a point of the search space (empty: they are).

    A study is data: a trial added to it by hand or by another tool may carry any key and any
    value, and what is written from it (best_run.sh) is run. Only the space's own keys, each
    with a value of its declared type in its declared range or choices, pass.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    problems = [f"{key} is not searched" for key in params if key not in space]
    problems += [f"{key} is missing" for key in space if key not in params]
    for key, dist in space.items():
        if key not in params:
            continue
        value = params[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(dist, CategoricalDistribution):
            fine = any(type(c) is type(value) and c == value for c in dist.choices)
            expected = f"one of {list(dist.choices)}"
        elif isinstance(dist, IntDistribution):
            fine = isinstance(value, int) and number and dist.low <= value <= dist.high
            fine = fine and (value - dist.low) % dist.step == 0
            expected = f"an integer in [{dist.low}, {dist.high}] (step {dist.step})"
        elif isinstance(dist, FloatDistribution):
            fine = number and math.isfinite(value) and dist.low <= value <= dist.high
            expected = f"a number in [{dist.low}, {dist.high}]"
        else:
            fine, expected = False, f"a value of {type(dist).__name__}"
        if not fine:
            problems.append(f"{key}={value!r} is not {expected}")
    return problems


def trials_in_space(
    trials: Iterable[optuna.trial.FrozenTrial], space: Mapping[str, BaseDistribution]
) -> list[optuna.trial.FrozenTrial]:
    """The trials whose params are a point of the space; each other one is named in a warning
    and left out of the best trial and best_run.sh."""
    kept = []
    for trial in trials:
        problems = point_problems(trial.params, space)
        if problems:
            log.warning(
                "trial #%d is ignored: its params are not a point of this search's space (%s)",
                trial.number,
                "; ".join(problems),
            )
        else:
            kept.append(trial)
    return kept


#: What a search's config (conf/hparams_search/_search.yaml) sets for its trials that changes a
#: trial's result and that a plain `train.py` run does not share: best_run.sh passes it on.
TRIAL_RESULT_KEYS = ("cv.parallel",)


def best_run_command(
    task_overrides: Iterable[str],
    best_params: Mapping[str, Any],
    trial_settings: Mapping[str, Any] | None = None,
    script: str = "train.py",
    space: Mapping[str, BaseDistribution] | None = None,
) -> str:
    """The `python train.py ...` command that re-runs a trial as an ordinary training run.

    Keeps the command line's task overrides (loss, data, sizes, ...) except the search itself
    (`hparams_search`) and the searched keys, which take the trial's values. Hydra's own
    settings (`hydra.*`, `hydra/launcher=...`) belong to the sweep and are dropped.
    `trial_settings` (`TRIAL_RESULT_KEYS` as the trials ran) are written as they were, so
    that the run trains its folds as the trial did. With `space`, `best_params` must be a
    point of it (`point_problems`). Every word is quoted for the shell.
    """
    problems = point_problems(best_params, space) if space is not None else []
    if problems:
        raise SearchConfigError(
            f"the best trial's params are not a point of the search space: {'; '.join(problems)}"
        )
    parser = OverridesParser.create()
    settings = dict(trial_settings or {})
    replaced = {key.lstrip("+~") for key in best_params} | set(settings)
    kept = []
    for text in task_overrides:
        override = parser.parse_override(text)
        key = override.get_key_element().lstrip("+~")
        if key in replaced or key == "hparams_search" or key.split("/")[0].startswith("hydra"):
            continue
        kept.append(text)
    chosen = [
        f"{key}={override_value(value)}" for key, value in (settings | dict(best_params)).items()
    ]
    return shlex.join(["python", script, *kept, *chosen])


def write_best_run(
    sweep_dir: Path,
    task_overrides: Iterable[str],
    best_params: Mapping[str, Any],
    best_value: float,
    study_name: str | None,
    metric: str,
    trial_settings: Mapping[str, Any] | None = None,
    space: Mapping[str, BaseDistribution] | None = None,
) -> Path:
    """Write `best_run.sh` (executable): the command re-running the study's best trial,
    whose params must be a point of `space` where given (`best_run_command`)."""
    from amsaware.atomic import atomic_path

    command = best_run_command(task_overrides, best_params, trial_settings, space=space)
    value = f"{best_value:.6g}" if math.isfinite(best_value) else str(best_value)
    text = (
        "#!/bin/sh\n"
        f"# Best trial of study {study_name!r}: {metric} = {value}.\n"
        "# Re-runs it as an ordinary training run (cross-validation, cut, final fit).\n"
        "# Run from the project folder; extra overrides are passed on: sh best_run.sh seed=1\n"
        f'{command} "$@"\n'
    )
    path = sweep_dir / BEST_RUN
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        tmp.chmod(0o755)
    return path

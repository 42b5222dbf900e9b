"""What train.py refuses before any training: impossible settings, misspelt keys, a used folder.

`check_run` runs first in every run. It checks the composed config against the project's own
schema (`cv`, `cut` and the top-level keys; a misspelt key, even one added with `+`,
is an error instead of a silently ignored setting), refuses values that cannot be meant
(no epochs, fewer than two folds, a non-positive learning rate, a negative seed), claims the
run folder (one run per folder, a lock held for the run's lifetime; `resume=true` or
`ckpt_path=` is the one other way into a used folder, for the command that wrote it) and makes
Ctrl-C end the run with exit status 130 after logging where it stopped. Checks of the events
themselves (weights, feature magnitudes) run after loading, in
`amsaware.data.formats.check_trainable`.

This module is the one home of train.py's config refusals: the schema, the values, the cut,
the ensemble, `optimized_metric`, the fine-tune phase and what `cv.parallel` or resume cannot
do. `check_config` returns the run's typed `amsaware.settings.Settings`; the protocol reads
those, not the config. The fine-tune's loss is built once after the data is loaded
(`check_finetune`), since its options may depend on the data's totals.

The run folder's claim and lock live in `amsaware.run_folder.claim`; the Hydra callback here
calls them before Hydra writes into the folder.

Every error is a `ConfigError` (a `ValueError`) naming the key, or a `RunFolderError`
(`amsaware.run_folder`'s, also a `ValueError`) naming the folder and what is in it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

# The one error for a run folder: here, one that already holds a run or is being written.
from amsaware.run_folder import RunFolderError, scorers_of
from amsaware.run_folder.claim import claim_run_folder
from amsaware.run_folder.config import save_self_contained, self_contained
from amsaware.search import SearchConfigError
from amsaware.settings import AugmentSettings, CutSettings, CVSettings, FitSettings, Settings

if TYPE_CHECKING:
    from amsaware.data.schema import Dataset, EventTable
    from amsaware.data.systematics import Systematics
    from amsaware.fit_stage import FitReference
    from amsaware.run_folder import RunFolder

log = logging.getLogger(__name__)

#: Lightning's (and numpy's legacy) seed range; fold k trains with seed + k.
MAX_SEED = 2**32 - 1
#: Exit status of a run stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


class ConfigError(ValueError):
    """A setting that cannot be meant; the message names the key and what is allowed."""


# --- the schema of the project's own sections ------------------------------------------------

#: The project's own sections with a fixed set of keys. (`paths` is open: a user may add a
#: folder there for the interpolations of a data config of their own.)
SECTIONS: dict[str, type] = {
    "cv": CVSettings,
    "cut": CutSettings,
    "fit": FitSettings,
    "augment": AugmentSettings,
}

#: Top-level keys of train.yaml and its config groups; conf/train.yaml declares each one
#: (a test holds the two together).
TOP_LEVEL: frozenset[str] = frozenset(
    {
        # train.yaml's own settings
        "task_name",
        "tags",
        "seed",
        "threads",
        "compile",
        "final_fit",
        "ensemble",
        "optimized_metric",
        "overwrite",
        "resume",
        "ckpt_path",
        "cv",
        "cut",
        "optimizer",
        "scheduler",
        # config groups
        "data",
        "model",
        "trainer",
        "logger",
        "callbacks",
        "paths",
        "loss",
        "finetune",
        "systematics",
        "fit",
        "progress",
        "augment",
        "hydra",  # present when composed with return_hydra_config
    }
)


def _kind(value: Any, expected: type) -> bool:
    """Whether a config value has the schema's type (an int is a float; a bool is no number)."""
    if expected is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if expected is float:
        return isinstance(value, int | float)
    return isinstance(value, expected)


def _type_name(expected: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[expected]


def check_section(cfg: DictConfig, name: str, schema: type) -> None:
    """`cfg[name]` has only the schema's keys, each of the schema's type."""
    section = cfg.get(name)
    if section is None:
        return
    if not OmegaConf.is_dict(section):
        raise ConfigError(f"{name} is {section!r}; expected a section with keys {_keys(schema)}")
    fields = {field.name: field.type for field in dataclasses.fields(schema)}
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(f'{name}.{key}' for key in unknown)}; {name} has {_keys(schema)} "
            "(a misspelt key would otherwise be ignored)"
        )
    types = {"int": int, "float": float, "bool": bool, "str": str}
    for key, annotation in fields.items():
        if key not in section:
            continue
        optional = isinstance(annotation, str) and annotation.endswith(" | None")
        if optional:
            if section[key] is None:
                continue
            annotation = annotation.removesuffix(" | None")
        value = section[key]
        expected = types[annotation if isinstance(annotation, str) else annotation.__name__]
        if not _kind(value, expected):
            raise ConfigError(f"{name}.{key} is {value!r}; expected {_type_name(expected)}")


def _keys(schema: type) -> str:
    return ", ".join(field.name for field in dataclasses.fields(schema))


def check_top_level(cfg: DictConfig) -> None:
    unknown = sorted(set(cfg) - TOP_LEVEL)
    if unknown:
        raise ConfigError(
            f"unknown top-level key{'s' if len(unknown) > 1 else ''} {unknown}; train.py knows "
            f"{sorted(TOP_LEVEL - {'hydra'})} (a misspelt key would otherwise be ignored)"
        )


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_values(cfg: DictConfig) -> None:
    """Values that would train nothing, forever, or fail deep inside a fold: refused by key."""
    cv = CVSettings(**(cfg.get("cv") or {}))  # the keys and their types: check_section's
    folds, repeats = cv.folds, cv.repeats
    if not _integer(folds) or folds < 2:
        raise ConfigError(
            f"cv.folds is {folds!r}; expected an integer >= 2 (the out-of-fold scores that "
            "choose the cut need at least two folds)"
        )
    if not _integer(repeats) or repeats < 1:
        raise ConfigError(f"cv.repeats is {repeats!r}; expected an integer >= 1")
    epochs = (cfg.get("trainer") or {}).get("max_epochs")
    if not _integer(epochs) or epochs < 1:
        raise ConfigError(
            f"trainer.max_epochs is {epochs!r}; expected an integer >= 1 (0 trains nothing, "
            "-1 trains until the process is killed)"
        )
    _check_training_limits(cfg.get("trainer") or {})
    optimizer = cfg.get("optimizer") or {}
    if "lr" in optimizer:
        lr = optimizer.lr
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
            raise ConfigError(f"optimizer.lr is {lr!r}; expected a finite learning rate > 0")
    # Repeat r's fold k trains with seed + 1000 r + k (protocol.repeat_seed).
    highest = MAX_SEED - 1000 * (repeats - 1) - (folds - 1)
    for key, value in (
        ("seed", cfg.get("seed")),
        ("data.seed", (cfg.get("data") or {}).get("seed")),
    ):
        if key == "data.seed" and value is None:
            continue
        if not _integer(value) or not 0 <= value <= highest:
            raise ConfigError(
                f"{key} is {value!r}; expected an integer from 0 to {highest} (fold k of repeat "
                "r trains with seed + 1000 r + k, and seeds are unsigned 32-bit numbers)"
            )
    threads = cfg.get("threads")
    if threads is not None and (not _integer(threads) or threads < 1):
        raise ConfigError(f"threads is {threads!r}; expected an integer >= 1 or null")
    for key in ("final_fit", "overwrite", "resume"):
        value = cfg.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(f"{key} is {value!r}; expected true or false")
    check_resume_options(cfg)


def _check_training_limits(trainer: Any) -> None:
    """Lightning's other ways to train nothing, refused like `max_epochs=0`: a run that takes
    no step ends without `last.ckpt` and with an untrained network's scores, exit 0."""
    steps = trainer.get("max_steps", -1)
    if not _integer(steps) or not (steps == -1 or steps >= 1):
        raise ConfigError(
            f"trainer.max_steps is {steps!r}; expected -1 (no limit: max_epochs decides) or an "
            "integer >= 1 (0 trains nothing)"
        )
    batches = trainer.get("limit_train_batches")
    if batches is not None and not (_number(batches) and 0 < batches < math.inf):
        raise ConfigError(
            f"trainer.limit_train_batches is {batches!r}; expected null, a fraction in (0, 1] "
            "or a number of batches >= 1 (0 trains nothing)"
        )


def check_cut_options(min_fraction: float, max_fraction: float, smoothing: float) -> None:
    """Reject impossible `cut.*` options before any training starts."""
    if not 0.0 < min_fraction < max_fraction <= 1.0:
        raise ConfigError(
            "cut.min_fraction and cut.max_fraction must satisfy 0 < min < max <= 1, got "
            f"{min_fraction} and {max_fraction}"
        )
    if smoothing < 0.0:
        raise ConfigError(f"cut.smoothing must be >= 0, got {smoothing}")


def check_ensemble(ensemble: Any) -> str:
    """`ensemble` must name the scorers of a run (final|folds|both)."""
    try:
        scorers_of(ensemble)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return ensemble


def check_fit_options(cfg: DictConfig) -> None:
    """`fit.bins` and `fit.toys` that could give a fit; `progress` true, false or null."""
    section = cfg.get("fit") or {}
    bins, toys = section.get("bins", 10), section.get("toys", 0)
    if not _integer(bins) or bins < 1:
        raise ConfigError(f"fit.bins is {bins!r}; expected an integer >= 1")
    if not _integer(toys) or toys < 0:
        raise ConfigError(f"fit.toys is {toys!r}; expected an integer >= 0 (0: no toys)")
    progress = cfg.get("progress")
    if progress is not None and not isinstance(progress, bool):
        raise ConfigError(f"progress is {progress!r}; expected true, false or null")


def check_systematics(cfg: DictConfig) -> Systematics | None:
    """The `systematics` group's nuisances, each size checked (`Systematics.from_config`)."""
    if cfg.get("systematics") is None:
        return None
    from amsaware.data.systematics import Systematics

    section = OmegaConf.to_container(cfg.systematics, resolve=True)
    try:
        return Systematics.from_config(section, "systematics")
    except ValueError as error:  # its refusals name the key
        raise ConfigError(str(error)) from None


def check_fit_events(fit: FitSettings | None, table: EventTable) -> None:
    """Enough training events for `fit.bins` bins, before any training: the fit bins the
    held-out scores of every training event, and each bin needs `fit.MIN_BACKGROUND`
    background events and a signal event (`fit.choose_binning`), which would otherwise fail
    only after every fold has trained."""
    if fit is None or table.label is None:
        return
    from amsaware.fit import MIN_BACKGROUND

    n_signal = int((table.label == 1).sum())
    n_background = len(table) - n_signal
    need = fit.bins * MIN_BACKGROUND
    if n_background < need or n_signal < fit.bins:
        most = max(1, min(n_background // MIN_BACKGROUND, n_signal))
        raise ConfigError(
            f"fit.bins={fit.bins}: {table.source} has {n_background} background and {n_signal} "
            f"signal training events; {fit.bins} bins need >= {need} background events "
            f"({MIN_BACKGROUND} a bin) and >= {fit.bins} signal events: set fit.bins <= {most} "
            "or use more events"
        )


# --- fit.reference ---------------------------------------------------------------------------

#: The choices that say how a reference run was trained, in its line (`loss=bce ...`).
_METHOD_GROUPS = ("loss", "finetune", "augment", "model")


def read_fit_reference(settings: Settings) -> FitReference | None:
    """The run folder `fit.reference` names, read as data (`RunFolder`'s checked readers, the
    safe YAML reader: nothing in it runs) and refused, naming the key and the folder, unless it
    is a finished run with fit metrics made with this run's nuisances, bins and mc_stat: only
    then are the two sigma_mu comparable. Its events are checked once the data is loaded
    (`check_fit_reference_data`). None without `fit.reference`."""
    given = None if settings.fit is None else settings.fit.reference
    if given is None:
        return None
    from amsaware.fit_stage import FitReference
    from amsaware.run_folder import RunFolder, read_plain_config

    where = f"fit.reference={given}"
    folder = RunFolder(given)
    if not folder.path.is_dir():
        kind = "a file" if folder.path.exists() else "not there"
        raise ConfigError(f"{where}: {folder.path} is {kind}; expected a finished run folder")
    if folder.path.resolve() == settings.output_dir.resolve():
        raise ConfigError(f"{where} is this run's own folder; name another, finished run")
    try:
        metrics = folder.metrics()
        raw = read_plain_config(folder.config_path) if folder.config_path.is_file() else None
    except RunFolderError as error:
        raise ConfigError(f"{where}: not a finished run: {error}") from None
    if raw is None:
        raise ConfigError(f"{where}: no {folder.config_path.name} in .hydra/; not a train.py run")
    section = metrics.get("fit")
    if not isinstance(section, dict):
        raise ConfigError(
            f"{where}: {folder.metrics_path} has no fit section; the reference must be a run "
            "with a fit (trained with the same systematics=...)"
        )
    if "error" in section:
        raise ConfigError(f"{where}: its fit failed ({section['error']}); nothing to compare")
    values = [section.get(name) for name in ("fit/sigma_mu", "fit/sigma_mu_stat")]
    if not all(_number(v) and math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(
            f"{where}: {folder.metrics_path} lacks finite fit/sigma_mu and fit/sigma_mu_stat "
            f"(found {values[0]!r} and {values[1]!r})"
        )
    how = section.get("settings")
    differ = _reference_differences(settings, how if isinstance(how, dict) else {}, raw, where)
    if differ:
        raise ConfigError(
            f"{where}: its fit is not comparable with this run's: {'; '.join(differ)}. "
            "Train the reference with this run's systematics and fit settings, or set them here"
        )
    return FitReference(
        folder.path.resolve(), _method_of(folder), float(values[0]), float(values[1])
    )


def _reference_differences(
    settings: Settings, how: Mapping[str, Any], raw: Mapping[str, Any], where: str
) -> list[str]:
    """What of the fit's settings (metrics.json's `fit.settings`) and nuisances (the config's
    `systematics`) the reference has other than this run: `key: theirs there, ours here`."""
    from amsaware.data.systematics import Systematics

    assert settings.fit is not None
    defaults = FitSettings()
    found = []
    for key in ("bins", "mc_stat"):
        theirs, ours = how.get(key, getattr(defaults, key)), getattr(settings.fit, key)
        if theirs != ours:
            found.append(f"fit.{key} {theirs!r} there, {ours!r} here")
    section = raw.get("systematics")
    try:
        theirs_sys = None if section is None else Systematics.from_config(section, "systematics")
    except ValueError as error:
        raise ConfigError(f"{where}: its systematics cannot be read: {error}") from None
    ours_sys = settings.systematics
    if (theirs_sys is None) != (ours_sys is None):
        found.append(
            f"systematics {'null' if theirs_sys is None else 'set'} there, "
            f"{'null' if ours_sys is None else 'set'} here"
        )
    elif theirs_sys is not None and ours_sys is not None:
        for field in dataclasses.fields(theirs_sys):
            a, b = getattr(theirs_sys, field.name), getattr(ours_sys, field.name)
            if a != b:
                found.append(f"systematics.{field.name} {_plain(a)} there, {_plain(b)} here")
    return found


def _plain(value: Any) -> str:
    """A nuisance setting as a config would write it (a mapping, a dataclass, a number)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return str(dataclasses.asdict(value))
    return str(dict(value)) if isinstance(value, Mapping) else repr(value)


def _method_of(folder: RunFolder) -> str:
    """How a run was trained, as the command chose it (`loss=bce finetune=inferno`): Hydra's
    choices in `.hydra/hydra.yaml` (read safely), else the loss's class from its config."""
    from amsaware.run_folder import read_plain_config

    choices: Mapping[str, Any] = {}
    saved = folder.path / ".hydra" / "hydra.yaml"
    if saved.is_file():
        try:
            hydra = read_plain_config(saved).get("hydra") or {}
            choices = (hydra.get("runtime") or {}).get("choices") or {}
        except RunFolderError:
            choices = {}
    chosen = {group: choices.get(group) for group in _METHOD_GROUPS}
    if chosen["model"] == "mlp":  # the default network goes without saying
        del chosen["model"]
    parts = [f"{group}={name}" for group, name in chosen.items() if isinstance(name, str)]
    if not any(part.startswith("loss=") for part in parts):
        parts.insert(0, f"loss={folder.loss_name()}")
    return " ".join(parts)


def check_fit_reference_data(settings: Settings, dataset: Dataset, data: str = "") -> None:
    """`fit.reference` was trained on this run's events, refused before training otherwise:
    its totals (metrics.json's `data`) and the digest of every training (and test) event that
    each finished fold keeps for resume (`checkpoints/fold0/fold_scores.npz`); a reference that
    kept no fold scores (no checkpoints, `cv.parallel`) is checked by its fit's own events
    (EventIds, labels and weights of `fit/held_out.npz`). `data` names this run's data."""
    given = None if settings.fit is None else settings.fit.reference
    if given is None:
        return
    import numpy as np

    from amsaware.protocol import FoldStore
    from amsaware.run_folder import RunFolder, fold_stage

    where = f"fit.reference={given}"
    other = f"{where} was trained on other events than this run's {data or 'data'}"
    folder, train = RunFolder(given), dataset.train
    try:
        theirs = folder.totals()
        scores = folder.fold_scores(fold_stage(0))
    except RunFolderError as error:
        raise ConfigError(f"{where}: {error}") from None
    ours = (train.s_tot, train.b_tot)
    if not np.allclose(theirs, ours, rtol=1e-9, atol=0.0):
        raise ConfigError(f"{other}: its totals S_tot, B_tot are {theirs}, this run's {ours}")
    if scores is not None:
        # FoldStore's digest: what a resumed fold is checked against, so the same events.
        digests = {FoldStore.digest(train, None)}
        if dataset.test is not None:
            digests.add(FoldStore.digest(train, dataset.test))
        if scores.events not in digests:
            raise ConfigError(
                f"{other}: the digest of its events ({folder.fold_scores_path(fold_stage(0))}) "
                "differs from this run's training events"
            )
        return
    try:
        events, event_id = folder.fit_events()
    except RunFolderError as error:
        raise ConfigError(f"{where}: kept no record of its events to check: {error}") from None
    if not np.array_equal(np.asarray(event_id), train.event_id):
        raise ConfigError(f"{other}: its fit's EventIds ({folder.path / 'fit'}) differ")
    signal = np.asarray(events.process) == events.signal
    if train.label is None or not np.array_equal(signal, train.label == 1):
        raise ConfigError(f"{other}: its fit's events have other labels")
    from amsaware.data.weights import rescaled_weights

    weight = rescaled_weights(train.label, train.weight, train.s_tot, train.b_tot)
    kept = np.asarray(events.weight) != 0
    if not np.allclose(np.asarray(events.weight)[kept], weight[kept], rtol=1e-9, atol=0.0):
        raise ConfigError(f"{other}: its fit's events have other weights")


def check_optimized_metric(
    name: str, final_fit: bool = True, ensemble: str = "final", fit: bool = False
) -> str:
    """`name` if a run with these settings writes it to metrics.json, else a clear error, so
    that a typo stops a run (or a whole search) before its first fold trains."""
    from amsaware.report import metric_names

    known = metric_names(final_fit, ensemble, fit)
    if name in known:
        return name
    hint = ""
    if name in metric_names(final_fit, ensemble, True):
        hint = " (fit/ metrics need the fit: choose systematics=..., or set fit.enabled=true)"
    if name in metric_names(True, "both"):
        hint = (
            f" ({name} exists only with final_fit=true"
            + ("" if name.startswith("test/") else " and ensemble=folds or both")
            + "; search trials skip the final fit)"
        )
    raise SearchConfigError(
        f"optimized_metric {name!r} is not a metric of this run{hint}; known: {known}"
    )


#: The keys of a `finetune` section (conf/finetune/_phase.yaml and its loss).
FINETUNE_KEYS = frozenset({"loss", "batch_size", "max_epochs", "optimizer", "scheduler"})


def _finetune_losses() -> list[str]:
    """The `_target_`s a fine-tune may name: `amsaware.losses.FINETUNE`, the registry's."""
    from amsaware import inferno, losses  # importing inferno registers InfernoLoss

    assert losses.LOSSES["InfernoLoss"] is inferno.InfernoLoss
    return [f"{losses.LOSSES[name].__module__}.{name}" for name in losses.FINETUNE]


def check_finetune_options(finetune: DictConfig | None) -> None:
    """The fine-tune's own keys (conf/finetune/_phase.yaml and its loss's class), by key."""
    if not finetune:
        return
    unknown = sorted(set(finetune) - FINETUNE_KEYS)
    if unknown:
        raise ConfigError(
            f"finetune has no key {', '.join(unknown)} (a typo would be ignored silently); "
            f"its keys are {', '.join(sorted(FINETUNE_KEYS))}"
        )
    loss = finetune.get("loss")
    target = None if not loss else loss.get("_target_")
    allowed = _finetune_losses()
    if target not in allowed:
        raise ConfigError(
            f"finetune.loss._target_ must be one of {allowed} "
            f"(finetune=ams|asimov|deltaz|bce|inferno), got {target!r}"
        )
    for key, least in (("batch_size", 1), ("max_epochs", 0)):
        value = finetune.get(key)
        if not _integer(value) or value < least:
            raise ConfigError(f"finetune.{key} must be an integer >= {least}, got {value!r}")
    optimizer = finetune.get("optimizer")
    if not optimizer or "_target_" not in optimizer:
        raise ConfigError("finetune.optimizer must name a torch optimizer (_target_, _partial_)")
    lr = optimizer.get("lr")
    if lr is not None and not (_number(lr) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"finetune.optimizer.lr must be a number > 0, got {lr!r}")


def check_finetune(finetune: DictConfig | None, totals: tuple[float, float]) -> None:
    """Reject a fine-tune that cannot be meant before any training, naming the key.

    The loss is built once here with the data's totals, so a bad loss option fails now, not
    after the first phase of the first fold.
    """
    check_finetune_options(finetune)
    if not finetune:
        return
    from hydra.utils import instantiate

    from amsaware.settings import loss_totals

    try:
        instantiate(finetune.loss, **loss_totals(finetune.loss, *totals))
    except Exception as error:  # the loss's own message names its option
        raise ConfigError(f"finetune.loss: {error}") from error


def check_parallel(cfg: DictConfig) -> None:
    """What `cv.parallel=true` cannot do: its folds share one trainer."""
    if not (cfg.get("cv") or {}).get("parallel"):
        return
    from amsaware.loggers import logger_configs

    loggers = logger_configs(cfg.get("logger"))
    if len(loggers) > 1:
        raise ConfigError(
            "cv.parallel=true logs each fold through one logger; choose one logger "
            f"(logger=tensorboard|csv|mlflow|wandb), not {list(loggers)}"
        )
    if _early_stopping(cfg):
        raise ConfigError(
            "callbacks.early_stopping needs each fold's own trainer: use it with cv.parallel=false"
        )
    inferno = "amsaware.inferno.InfernoLoss"
    targets = [(cfg.get("loss") or {}).get("_target_")]
    targets.append(((cfg.get("finetune") or {}).get("loss") or {}).get("_target_"))
    shifting = cfg.get("augment") is not None or (
        inferno in targets and cfg.get("systematics") is not None
    )
    if shifting:
        raise ConfigError(
            "cv.parallel=true trains the folds on plain batches: shifted training events "
            "(augment=systematics, or loss=inferno / finetune=inferno with a systematics group) "
            "need cv.parallel=false"
        )


def _early_stopping(cfg: DictConfig) -> bool:
    """Whether a configured callback is an `amsaware.stopping.EarlyStopping`."""
    from hydra.utils import get_class

    from amsaware.stopping import EarlyStopping

    for callback in (cfg.get("callbacks") or {}).values():
        target = None if not callback else callback.get("_target_")
        if target and issubclass(get_class(target), EarlyStopping):
            return True
    return False


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- resume ----------------------------------------------------------------------------------

#: Keys a resumed run's command may set differently from the run's own.
RESUME_KEYS = ("resume", "ckpt_path", "overwrite")


def resuming(cfg: DictConfig) -> bool:
    """Whether the command continues the run in its folder (`resume=true` or `ckpt_path=`)."""
    return bool(cfg.get("resume")) or cfg.get("ckpt_path") is not None


def check_resume_options(cfg: DictConfig) -> None:
    """What resume cannot do, refused before anything runs (docs/training.md, Resume)."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and not isinstance(ckpt_path, str):
        raise ConfigError(f"ckpt_path is {ckpt_path!r}; expected the path of a run folder")
    if not resuming(cfg):
        return
    how = "ckpt_path=..." if ckpt_path is not None else "resume=true"
    if cfg.get("overwrite"):
        raise ConfigError(
            f"{how} continues the run in its folder and overwrite=true deletes it: choose one"
        )
    if (cfg.get("cv") or {}).get("parallel"):
        raise ConfigError(
            f"{how} cannot resume cv.parallel=true: its folds train together as one model, so "
            "an interrupted run has no finished fold to keep; train it again (overwrite=true)"
        )
    if (cfg.get("callbacks") or {}).get("early_stopping"):
        raise ConfigError(
            f"{how} cannot resume callbacks.early_stopping: the final fit's epoch count comes "
            "from the folds' early-stopping state, which a finished fold does not keep; train "
            "it again (overwrite=true)"
        )
    if (cfg.get("callbacks") or {}).get("model_checkpoint", True) is None:
        raise ConfigError(
            f"{how} cannot resume a run without checkpoints (callbacks.model_checkpoint=null): "
            "its finished folds kept nothing to reload; train it again (overwrite=true)"
        )
    strategy = str((cfg.get("trainer") or {}).get("strategy", "auto"))
    if "ddp" in strategy:
        raise ConfigError(
            f"{how} cannot resume trainer.strategy={strategy}: resuming is tested for one "
            "process, and every DDP process would reload and retrain folds on its own; train "
            "it again (overwrite=true)"
        )


def resume_folder(ckpt_path: str) -> Path:
    """The run folder `ckpt_path=` names, checked to hold a train.py run's config."""
    folder = Path(ckpt_path)
    if folder.is_file():
        raise RunFolderError(
            f"ckpt_path={ckpt_path} is a file; ckpt_path names the run folder to continue "
            "(e.g. logs/train/runs/<time>): a run resumes all its stages, each from its own "
            "files"
        )
    if not (folder / ".hydra" / "config.yaml").is_file():
        raise RunFolderError(
            f"ckpt_path={ckpt_path}: no run folder of train.py there (no .hydra/config.yaml) "
            "to continue"
        )
    return folder


def _differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        keys = sorted(set(stored) | set(current), key=str)
        return [
            key
            for name in keys
            for key in _differences(stored.get(name), current.get(name), f"{prefix}{name}.")
        ]
    return [] if stored == current else [prefix.rstrip(".")]


def check_resume_config(run_dir: Path, cfg: DictConfig) -> None:
    """A resumed command must be the run's own: its config may differ from the folder's
    `.hydra/config.yaml` only in `RESUME_KEYS`. A folder without one has nothing to compare.

    The folder keeps Hydra's resolver calls resolved (`self_contained`); runs written before
    that keep them as written, so a key differs only if it differs from both forms."""
    from amsaware.run_folder import read_plain_config

    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return
    stored = read_plain_config(path)
    written = OmegaConf.to_container(cfg, resolve=False)
    written = {k: v for k, v in written.items() if k != "hydra"}
    differ = [
        key
        for key in set(_differences(stored, written))
        & set(_differences(stored, self_contained(cfg)))
        # paths.output_dir is the run folder itself, the one ckpt_path names.
        if key.split(".")[0] not in RESUME_KEYS and key != "paths.output_dir"
    ]
    differ.sort()
    if differ:
        raise RunFolderError(
            f"{run_dir}: cannot resume: the command's config differs from the run's "
            f"({path}) in {', '.join(differ[:12])}{' ...' if len(differ) > 12 else ''}. "
            "Resume with the run's own settings (only resume and ckpt_path may differ), or "
            "train into another folder."
        )


def check_config(cfg: DictConfig) -> Settings:
    """The schema of the project's sections and the values that cannot be meant; returns the
    run's `Settings`, which the protocol reads instead of the config."""
    check_top_level(cfg)
    for name, schema in SECTIONS.items():
        check_section(cfg, name, schema)
    check_values(cfg)
    check_cut_options(**(cfg.get("cut") or {}))
    check_fit_options(cfg)
    settings = Settings.from_config(cfg, check_systematics(cfg))
    check_ensemble(settings.ensemble)
    check_optimized_metric(
        settings.optimized_metric, settings.final_fit, settings.ensemble, settings.fit is not None
    )
    if settings.fit is None and (cfg.get("fit") or {}).get("reference") is not None:
        raise ConfigError(
            f"fit.reference={cfg.fit.reference} sets this run's fit against another run's, but "
            "this run has no fit: choose systematics=... (or fit.enabled=true)"
        )
    read_fit_reference(settings)
    check_finetune_options(cfg.get("finetune"))
    check_parallel(cfg)
    check_augment(settings)
    check_nuisance_network(cfg, settings)
    check_accelerator(cfg.get("trainer") or {})
    check_debug(cfg)
    return settings


def check_nuisance_network(cfg: DictConfig, settings: Settings) -> None:
    """`model=mlp_nuisance` (`amsaware.model.NuisanceMLP`) learns its nuisance inputs from
    training events shifted by prior draws with the draw's pulls: it needs `augment` and one
    input per shape nuisance of the systematics group, and no INFERNO phase (which scores
    its shifted copies at nominal inputs)."""
    from amsaware.model import NETS

    model = cfg.get("model") or {}
    if model.get("_target_") != NETS["NuisanceMLP"].target:
        return
    shapes = [] if settings.systematics is None else list(settings.systematics.shapes)
    if settings.augment is None or not shapes:
        raise ConfigError(
            "model=mlp_nuisance takes the shape nuisances' pulls as inputs and learns them from "
            "events shifted by prior draws: choose a systematics group with shape nuisances "
            "and augment=systematics (systematics=higgs augment=systematics)"
        )
    if model.get("n_nuisances") != len(shapes):
        raise ConfigError(
            f"model.n_nuisances is {model.get('n_nuisances')!r}; the systematics group switches "
            f"on {len(shapes)} shape nuisances {shapes}: set model.n_nuisances={len(shapes)}"
        )
    inferno = "amsaware.inferno.InfernoLoss"
    for key in ("loss", "finetune.loss"):
        if OmegaConf.select(cfg, f"{key}._target_") == inferno:
            raise ConfigError(
                f"{key}=inferno trains on shifted copies scored at nominal nuisance inputs, "
                "so model=mlp_nuisance would never learn its inputs: choose another loss, or "
                "model=mlp"
            )


def check_augment(settings: Settings) -> None:
    """`augment=systematics` draws the nuisances of a `systematics` group, at least one grid
    point of them."""
    if settings.augment is None:
        return
    if settings.systematics is None or not settings.systematics.shapes:
        raise ConfigError(
            "augment=systematics shifts the training events by the shape nuisances of a "
            "systematics group (systematics.tes, .jes, .les, .soft_met): choose one "
            "(systematics=higgs) with at least one shape nuisance switched on, or augment=null"
        )
    if settings.augment.grid < 1:
        raise ConfigError(f"augment.grid must be an integer >= 1, got {settings.augment.grid}")


#: Lightning's debugging switches: their runs' metrics mean nothing (one batch, a few batches).
DEBUG_SWITCHES = ("fast_dev_run", "overfit_batches")


def check_debug(cfg: DictConfig) -> None:
    """A debugging run (`trainer.fast_dev_run`, `overfit_batches`) only as `debug=...`, whose
    runs go to logs/debug/ (`task_name: debug`): its metrics.json would otherwise sit among
    real runs, looking like one."""
    trainer = cfg.get("trainer") or {}
    switched = [key for key in DEBUG_SWITCHES if trainer.get(key)]
    if switched and cfg.get("task_name") != "debug":
        raise ConfigError(
            f"trainer.{switched[0]} is a debugging run: use debug=fdr (fast_dev_run) or "
            "debug=overfit, which write into logs/debug/ (or set task_name=debug)"
        )


def check_accelerator(trainer: Mapping[str, Any]) -> None:
    """`trainer=gpu` where torch sees no GPU: refused before the data is built (Lightning would
    refuse it only when the first fold's trainer is made)."""
    accelerator = str(trainer.get("accelerator", "cpu"))
    if accelerator not in ("gpu", "cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} (trainer=gpu), but torch sees no CUDA GPU on "
            f"this machine (torch {torch.__version__}, built for "
            f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU only'}): "
            "train on the CPU with trainer=default"
        )


def _main_process() -> bool:
    """False in the other processes of a DDP run: the main one owns the folder."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


# --- Ctrl-C ----------------------------------------------------------------------------------


def _stage_of(frame: FrameType | None) -> str:
    """The stage ('fold1', 'final', ...) and function the main thread was in, from its stack."""
    stage, where = None, None
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("amsaware."):
            where = where or f"{module}.{frame.f_code.co_name}"
            value = frame.f_locals.get("stage")
            if stage is None and isinstance(value, str):
                stage = value
        frame = frame.f_back
    if where is None:
        return "before the protocol started"
    return f"stage {stage} ({where})" if stage else where


#: Overrides a continued run sets itself (`resume_command`) or that only place the folder.
_NOT_REPEATED = ("hydra.run.dir", "ckpt_path", "resume", "overwrite")


def resume_command(run_dir: Path) -> str | None:
    """The command that continues the run in `run_dir`: `python train.py ckpt_path=<run_dir>`
    and the run's own overrides (Hydra's `.hydra/overrides.yaml`), or None outside a single
    Hydra run (a search continues through its study)."""
    import shlex

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    saved = run_dir / ".hydra" / "overrides.yaml"
    if not HydraConfig.initialized() or HydraConfig.get().mode == RunMode.MULTIRUN:
        return None
    if not saved.is_file():
        return None
    overrides = [
        str(item)
        for item in OmegaConf.load(saved)
        if str(item).lstrip("+~").split("=", 1)[0] not in _NOT_REPEATED
    ]
    words = ["python", "train.py", f"ckpt_path={run_dir}", *overrides]
    return " ".join(shlex.quote(word) for word in words)


def _interrupted(run_dir: Path) -> Any:
    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        log.error(
            "interrupted (Ctrl-C) in %s; %s keeps only the files written in full before it "
            "(every artifact is renamed into place when complete)",
            _stage_of(frame),
            run_dir,
        )
        command = resume_command(run_dir)
        if command is not None:
            log.error("continue it with: %s", command)
        raise SystemExit(INTERRUPTED)

    return handler


def exit_on_interrupt(run_dir: Path) -> None:
    """Ctrl-C logs where the run stopped and exits 130 (Lightning would exit 1, silently).

    Only in train.py's main thread: a library user's Ctrl-C stays a KeyboardInterrupt.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if not _under_hydra():
        return
    signal.signal(signal.SIGINT, _interrupted(run_dir))


def _under_hydra() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized()


# --- the one call ----------------------------------------------------------------------------


#: The hydra override by which a sweep's jobs leave their `.hydra/` to `RunFolderCallback`.
_NO_JOB_SUBDIR = "hydra.output_subdir=null"


def _save_job_files(config: DictConfig, folder: Path, subdir: str) -> None:
    """What Hydra's run_job saves in a job's `.hydra/` (config, hydra and overrides YAML), with
    the hydra config as it would have been without `_NO_JOB_SUBDIR`."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = OmegaConf.create(OmegaConf.to_container(HydraConfig.instance().cfg))
    hydra_cfg.hydra.output_subdir = subdir
    overrides = [o for o in hydra_cfg.hydra.overrides.hydra if o != _NO_JOB_SUBDIR]
    hydra_cfg.hydra.overrides.hydra = overrides
    task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(task, folder / "config.yaml")
    OmegaConf.save(hydra_cfg, folder / "hydra.yaml")
    OmegaConf.save(config.hydra.overrides.task, folder / "overrides.yaml")


class RunFolderCallback(Callback):
    """Hydra callback (conf/hydra/default.yaml): checks a training config and claims its run
    folder before Hydra writes the new `.hydra/` config into it.

    `check_run` at the start of the run repeats both (it is what library callers get), but by
    then Hydra has replaced the folder's `.hydra/config.yaml`; refusing here keeps an earlier
    run's config intact. Only for training configs (`cv` and `trainer`). A sweep's trials are
    claimed in `on_job_start`, before this callback saves their `.hydra/` (Hydra is told not
    to save it first), so a search into a used `hydra.sweep.dir` leaves the earlier trials'
    configs intact.
    """

    #: The `.hydra` folder name of a sweep's jobs, which this callback saves itself.
    _job_subdir: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra saves each job's .hydra/ before on_job_start (hydra.core.utils.run_job), so a
        # trial folder of an earlier search would lose its config before check_run refused
        # it. The jobs are composed from these hydra overrides (load_sweep_config): they save
        # none, and on_job_start claims the folder, then saves them.
        if "cv" in config and "trainer" in config and config.hydra.output_subdir is not None:
            self._job_subdir = str(config.hydra.output_subdir)
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.overrides.hydra.append(_NO_JOB_SUBDIR)
        # Hydra resolves the sweeper's settings when it builds the sweeper, right after this
        # hook and before it publishes its config; the search's storage lies under
        # paths.log_dir, which resolves through ${hydra:...} (paths.root_dir).
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(copy.deepcopy(config))  # it makes `hydra` read-only

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "cv" not in config or "trainer" not in config:
            return
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        # The run folder's path may use ${hydra:...} (paths.root_dir), which resolves only once
        # Hydra has published its config; it does that after this hook, with the same config.
        from hydra.core.hydra_config import HydraConfig

        try:
            if config.get("ckpt_path") is not None:
                # Continue in the named folder: the run's files, log and config go there.
                folder = resume_folder(config.ckpt_path)
                with read_write(config.hydra), open_dict(config.hydra):
                    config.hydra.run.dir = str(folder)
            HydraConfig.instance().set_config(config)
            check_config(task)
            if _main_process():
                run_dir = Path(config.hydra.run.dir)
                claim_run_folder(run_dir, bool(config.get("overwrite")), resuming(task))
                if resuming(task):
                    check_resume_config(run_dir, task)
        except (ConfigError, RunFolderError, SearchConfigError) as error:
            # Hydra turns a callback's exception into a warning and runs the job anyway.
            from amsaware.cli import debugging, exit_with

            if debugging():
                raise
            exit_with(error)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra has just saved the job's config with its own ${hydra:...} calls; the run folder
        # keeps it self-contained so that predict, eval, export and explain can read it.
        if "cv" not in config or "trainer" not in config or not _main_process():
            return
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        subdir = config.hydra.output_subdir
        if subdir is None and self._job_subdir is not None:  # a sweep's job: claim, then save
            subdir = self._job_subdir
            run_dir = Path(config.hydra.runtime.output_dir)
            try:
                claim_run_folder(run_dir, bool(task.get("overwrite")), resuming(task))
            except RunFolderError as error:
                raise SystemExit(f"{type(error).__name__}: {error}") from None
            _save_job_files(config, run_dir / subdir, subdir)
        if subdir is None:
            return
        saved = Path(config.hydra.runtime.output_dir) / subdir / "config.yaml"
        if saved.is_file():
            save_self_contained(task, saved)


def check_run(cfg: DictConfig) -> Settings:
    """Everything refused before a run starts, then the run folder claimed (see module doc);
    returns the run's settings."""
    settings = check_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    if resuming(cfg):
        _check_resume_target(cfg, run_dir)
    if _main_process():
        claim_run_folder(run_dir, bool(cfg.get("overwrite", False)), resuming(cfg))
        if resuming(cfg):
            check_resume_config(run_dir, cfg)
    exit_on_interrupt(run_dir)
    return settings


def _check_resume_target(cfg: DictConfig, run_dir: Path) -> None:
    """A resumed run is one run in its own folder: not a sweep's trial, and `ckpt_path` is
    the folder it writes into (train.py makes it so; a library caller sets both)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError(
            "resume=true and ckpt_path are for a single run, not a sweep (-m): a search "
            "continues through its study"
        )
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and Path(ckpt_path).resolve() != run_dir.resolve():
        raise ConfigError(
            f"ckpt_path={ckpt_path} is not the run's output folder {run_dir}: a run is "
            "continued in its own folder (set paths.output_dir to it)"
        )

"""How an entry point ends on bad input: one line naming the file or key and the fix, exit 1.

The library raises its own errors for what a user can fix (`RunFolderError`,
`DataFormatError`, `ConfigError`, `SearchConfigError`: all `ValueError`s; a missing file; a
missing optional dependency; a mandatory key left `???`). A traceback adds nothing to their
message, so an entry point decorated with `reports_errors` (under `@hydra.main`) prints the
message alone on stderr and exits with status 1; an error Hydra's `instantiate` wrapped
(a data source's) is unwrapped first. `HYDRA_FULL_ERROR=1` or `AMSAWARE_DEBUG=1`
lets the error through with its traceback. Anything else (a bug) keeps its traceback.

A tool that failed leaves nothing behind: Hydra creates a run folder (`.hydra/` and the log)
before the tool starts, and a folder holding nothing else is removed.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

T = TypeVar("T")

DEBUG_VARIABLES = ("AMSAWARE_DEBUG", "HYDRA_FULL_ERROR")
#: Errors whose message is the whole story: bad input, a missing file or optional dependency.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    OSError,
    ImportError,
    MissingMandatoryValue,
)
#: What Hydra writes into a run folder before the task runs.
HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}


def debugging() -> bool:
    """Whether the user asked for tracebacks."""
    return any(os.environ.get(name, "") not in ("", "0") for name in DEBUG_VARIABLES)


def user_error(error: BaseException) -> BaseException | None:
    """The user's error in `error`, if it is one: Hydra's `instantiate` wraps what a config's
    target raised (a data source's missing file, an unknown argument) in an
    `InstantiationException` naming the target; the wrapped error is the story."""
    from hydra.errors import InstantiationException

    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        cause = error.__cause__
        if isinstance(cause, TypeError) and "argument" in str(cause):  # a config key it lacks
            key = f"{error.full_key}: " if getattr(error, "full_key", "") else ""
            return ValueError(f"{key}{cause}")
        return user_error(cause)
    return error if isinstance(error, USER_ERRORS) else None


def message_of(error: BaseException) -> str:
    """The error's own text, in one line (unless the error `keeps_lines`); a `???` key says
    which key and how to give it."""
    if isinstance(error, MissingMandatoryValue):
        key = getattr(error, "full_key", None) or "a key"
        return f"{key} is required (it is ??? in the config): pass {key}=..."
    if getattr(error, "keeps_lines", False):  # written as lines (download guidance)
        return "\n".join(line.rstrip() for line in str(error).splitlines() if line.strip())
    text = " ".join(str(error).split()) or type(error).__name__
    return text


def reported_by_the_tool(error: BaseException) -> bool:
    """Whether a single run's entry point prints `error` itself (`reports_errors`), so that the
    library need not log it first: a user error, not in a sweep (whose trials' logs keep it)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode == RunMode.MULTIRUN:
        return False
    return user_error(error) is not None and not debugging()


def remove_if_only_hydra(folder: Path) -> bool:
    """Remove a run folder that holds only Hydra's `.hydra/` and logs (nothing the tool made),
    and train.py's claim on it (its lock file)."""
    from amsaware.run_folder.layout import LOCK_FILE

    if not folder.is_dir() or folder.resolve() == Path.cwd().resolve():
        return False
    for entry in folder.iterdir():
        if entry.name == LOCK_FILE and entry.is_file():
            continue
        if entry.name == ".hydra" and entry.is_dir():
            if {p.name for p in entry.iterdir()} - HYDRA_FILES:
                return False
        elif not (entry.is_file() and entry.suffix == ".log"):
            return False
    shutil.rmtree(folder)
    return True


def _hydra_output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.output_subdir is None:  # the tool writes only its output file, no run folder
        return None
    return Path(hydra.runtime.output_dir)


def _close_logs_in(folder: Path) -> None:
    """Close the root logger's file handlers writing into `folder` (before it is removed)."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(
            folder.resolve()
        ):
            root.removeHandler(handler)
            handler.close()


def reports_errors(task: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """Decorate an entry point's task (under `@hydra.main`): see the module docstring."""

    @functools.wraps(task)
    def run(cfg: DictConfig) -> T:
        try:
            return task(cfg)
        except Exception as error:
            reported = user_error(error)
            if reported is None or debugging():
                raise
            folder = _hydra_output_dir()
            if folder is not None:
                _close_logs_in(folder)
                remove_if_only_hydra(folder)
            exit_with(reported)

    return run


def exit_with(error: BaseException) -> NoReturn:
    """Print `tool: error: message` (and how to see the traceback) on stderr; exit 1."""
    tool = Path(sys.argv[0]).name or "amsaware"
    print(f"{tool}: error: {message_of(error)}", file=sys.stderr)
    print("(AMSAWARE_DEBUG=1 shows the traceback)", file=sys.stderr)
    raise SystemExit(1) from None


def null_choices(args: list[str], conf_dir: Path) -> list[str]:
    """`GROUP=null` as `~GROUP` for each config group of `conf_dir` (`logger=null`: no logger).

    Hydra reads `null` on the command line as no value and refuses it as a group's choice
    ("Config group override must be a string"); `~GROUP` is Hydra's way to drop a group, and
    `null` is what the configs' own comments call "none". Other arguments pass unchanged.
    """
    groups = {p.name for p in conf_dir.iterdir() if p.is_dir()}
    rewritten = []
    for arg in args:
        name, _, value = arg.partition("=")
        if value in ("null", "None") and name in groups:
            arg = f"~{name}"
        rewritten.append(arg)
    return rewritten


def tags_suffix(tags: Any) -> str:
    """`_tag1_tag2` for a run folder's name from the config's `tags` (empty for none), so
    that `logs/train/runs/` lists what each run was for; Hydra calls it through the
    `amsaware.tags` resolver of conf/hydra/default.yaml."""
    if tags is None:
        return ""
    if isinstance(tags, str) or not isinstance(tags, Sequence):
        raise ValueError(f"tags must be a list of words, e.g. tags='[bce,smoke]'; got {tags!r}")
    words = [re.sub(r"[^A-Za-z0-9.+-]+", "-", str(tag)).strip("-") for tag in tags]
    return "".join(f"_{word}" for word in words if word)


def register_resolvers() -> None:
    """The resolvers conf/ uses (`amsaware.tags`, `amsaware.normpath`), for every entry point
    that composes it."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("amsaware.tags"):
        OmegaConf.register_new_resolver("amsaware.tags", tags_suffix)
    if not OmegaConf.has_resolver("amsaware.normpath"):
        OmegaConf.register_new_resolver("amsaware.normpath", os.path.normpath)

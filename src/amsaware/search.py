"""Hyperparameter search: Hydra's Optuna sweeper with what a long, resumable search needs.

`conf/hparams_search/optuna.yaml` selects `hydra_plugins.amsaware_sweeper.AmsawareSweeper`
(Hydra loads sweepers only from the `hydra_plugins` package; the logic lives here). It runs the
sweeper of
`hydra-optuna-sweeper` unchanged (its sampler, search space syntax, storage and
`optimization_results.yaml`) and adds three things the plugin lacks:

- the SQLite file's folder is created, so the default persistent storage works on first use;
- a search in which no trial succeeded ends with an error saying so, instead of Optuna's
  "No trials are completed yet";
- `best_run.sh` in the sweep folder: the exact `train.py` command that re-runs the best trial
  of the study as an ordinary run (with the final fit).

Trials that diverge or raise are turned into failed Optuna trials by the task function
(`run_experiment` raises, `max_failure_rate: 1.0` lets the search go on).
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser

from amsaware.artifacts import atomic_path

log = logging.getLogger(__name__)

BEST_RUN = "best_run.sh"
RESULTS = "optimization_results.yaml"


class SearchFailedError(RuntimeError):
    """Every trial of the study failed: there is no best trial to report."""


def sqlite_path(storage: Any) -> Path | None:
    """The database file of an `sqlite:///FILE` storage URL, or None for any other storage."""
    if not isinstance(storage, str) or not storage.startswith("sqlite:///"):
        return None
    path = storage.removeprefix("sqlite:///")
    return None if path in ("", ":memory:") else Path(path)


def best_run_command(
    task_overrides: Iterable[str], best_params: Mapping[str, Any], script: str = "train.py"
) -> str:
    """The `python train.py ...` command that re-runs a trial as an ordinary training run.

    Keeps the command line's task overrides (loss, data, sizes, ...) except the search itself
    (`hparams_search`) and the searched keys, which take the trial's values. Hydra's own
    settings (`hydra.*`, `hydra/launcher=...`) belong to the sweep and are dropped.
    """
    parser = OverridesParser.create()
    kept = []
    for text in task_overrides:
        override = parser.parse_override(text)
        key = override.get_key_element().lstrip("+~")
        if key in best_params or key == "hparams_search" or key.split("/")[0].startswith("hydra"):
            continue
        kept.append(text)
    chosen = [f"{key}={_value(value)}" for key, value in best_params.items()]
    return shlex.join(["python", script, *kept, *chosen])


def _value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def write_best_run(
    sweep_dir: Path,
    task_overrides: Iterable[str],
    best_params: Mapping[str, Any],
    best_value: float,
    study_name: str | None,
    metric: str,
) -> Path:
    """Write `best_run.sh` (executable): the command re-running the study's best trial."""
    command = best_run_command(task_overrides, best_params)
    text = (
        "#!/bin/sh\n"
        f"# Best trial of study {study_name!r}: {metric} = {best_value:.6g}.\n"
        "# Re-runs it as an ordinary training run (cross-validation, cut, final fit).\n"
        "# Run from the project folder; extra overrides are passed on: sh best_run.sh seed=1\n"
        f'{command} "$@"\n'
    )
    path = sweep_dir / BEST_RUN
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        tmp.chmod(0o755)
    return path

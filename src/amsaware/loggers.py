"""One Lightning logger per stage and kind (`logger=tensorboard|csv|mlflow|wandb|many`).

Every stage of a run (`fold0`, ..., `final`, and `oof`, `summary`) is a run of its own in each
logger, named after the stage and grouped by run folder: TensorBoard and CSV write
`<run>/<kind>/<stage>/`, MLflow tags its runs with the run folder (and keeps its store in the
run folder by default), W&B groups them by the run folder. Loggers name a stage through
different arguments (`version`, `run_name`, `name`), so the logger config never holds it.

A stage trained in two phases (`finetune=...`) has two trainers; the second continues the
first's run (same TensorBoard/CSV folder, same MLflow run id, same W&B run object).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

#: The argument that names a stage's run, per logger class (name of the class).
STAGE_ARGUMENT = {
    "TensorBoardLogger": "version",
    "CSVLogger": "version",
    "MLFlowLogger": "run_name",
    # `version` would be the W&B run id: the same ids in every run folder would collide.
    "WandbLogger": "name",
}


#: The package each optional logger needs (the `loggers` extra).
PACKAGES = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb"}


def logger_configs(section: DictConfig | None) -> dict[str, DictConfig]:
    """The configured loggers by key: `logger: {tensorboard: {...}, csv: {...}}`, entries set
    to null left out. A single logger (`logger: {_target_: ...}`) is accepted as `logger`."""
    if not section:
        return {}
    if "_target_" in section:
        return {"logger": section}
    configs = {}
    for key, value in section.items():
        if value is None:
            continue
        if not isinstance(value, Mapping) or "_target_" not in value:
            raise ValueError(
                f"logger.{key} must be a logger config with a _target_ (or null), got {value!r}"
            )
        configs[str(key)] = value
    return configs


def _class_name(config: DictConfig) -> str:
    return str(config._target_).rsplit(".", 1)[-1]


class StageLoggers:
    """Builds each stage's loggers from the `logger` config section, remembering what a later
    phase of the same stage needs to continue the run; `close()` ends every run it opened."""

    def __init__(self, section: DictConfig | None) -> None:
        self.configs = logger_configs(section)
        for key, config in self.configs.items():
            if _class_name(config) not in STAGE_ARGUMENT:
                raise ValueError(
                    f"logger.{key}._target_ is {config._target_}: amsaware names each stage's "
                    f"run itself and knows how for {sorted(STAGE_ARGUMENT)}"
                )
            package = PACKAGES.get(_class_name(config))
            if package and importlib.util.find_spec(package) is None:
                raise ModuleNotFoundError(
                    f"logger.{key} ({_class_name(config)}) needs {package}: "
                    "pip install -e '.[loggers]' (or pip install 'amsaware[loggers]')"
                )
        self._mlflow_runs: dict[tuple[str, str], str] = {}
        self._wandb_runs: dict[tuple[str, str], Any] = {}

    def __bool__(self) -> bool:
        return bool(self.configs)

    def kinds(self) -> list[str]:
        return [_class_name(config) for config in self.configs.values()]

    def make(self, stage: str, only: tuple[str, ...] | None = None) -> list[Logger]:
        """The loggers of `stage` (of the classes in `only`, when given)."""
        from hydra.utils import instantiate

        loggers = []
        for key, config in self.configs.items():
            kind = _class_name(config)
            if only is not None and kind not in only:
                continue
            arguments: dict[str, Any] = {STAGE_ARGUMENT[kind]: stage}
            if kind == "MLFlowLogger" and (key, stage) in self._mlflow_runs:
                arguments["run_id"] = self._mlflow_runs[(key, stage)]
            if kind == "WandbLogger" and rank_zero_only.rank == 0:  # others get Lightning's dummy
                arguments["experiment"] = self._wandb_run(key, config, stage)
            logger = instantiate(config, **arguments)
            if kind == "MLFlowLogger":
                self._mlflow_runs[(key, stage)] = logger.run_id
            loggers.append(logger)
        return loggers

    def _wandb_run(self, key: str, config: DictConfig, stage: str) -> Any:
        """The stage's W&B run: created once (several may be open at once: folds trained
        together), reused by the stage's later phase."""
        if (key, stage) not in self._wandb_runs:
            import wandb

            options = OmegaConf.to_container(config, resolve=True)
            init = {
                "project": options.get("project"),
                "name": stage,
                "group": options.get("group"),
                "job_type": options.get("job_type"),
                "tags": options.get("tags"),
                "dir": options.get("save_dir"),
                "mode": "offline" if options.get("offline") else "online",
                "reinit": "create_new",
            }
            self._wandb_runs[(key, stage)] = wandb.init(**init)
        return self._wandb_runs[(key, stage)]

    def close(self) -> None:
        """Finish the W&B runs (Lightning leaves them open); MLflow's end with each fit."""
        for run in self._wandb_runs.values():
            run.finish()
        self._wandb_runs.clear()

"""One Lightning logger per stage and kind (`logger=tensorboard|csv|mlflow|wandb|many`).

Every stage of a run (`fold0`, ..., `final`, and `oof`, `summary`) is a run of its own in each
logger, named after the stage and grouped by run folder: TensorBoard and CSV write
`<run>/<kind>/<stage>/`, MLflow tags its runs with the run folder (and keeps its store in the
run folder by default), W&B groups them by the run folder. Loggers name a stage through
different arguments (`version`, `run_name`, `name`), so the logger config never holds it.

A stage trained in two phases (`finetune=...`) has two trainers; the second continues the
first's run (same TensorBoard/CSV folder, same MLflow run id, same W&B run object).

Also what a run logs besides the trainers' curves: its one-line description (`describe_run`),
its settings and final metrics as a `summary` run (`log_hparams`), and the figures of each
fold (`log_fold_figures`, the protocol's per-fold hook) and of the out-of-fold scores.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import MLFlowLogger as _LightningMLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import numpy as np

    from amsaware.data.schema import EventTable
    from amsaware.protocol import FoldReport
    from amsaware.run_folder import Cut

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


# --- MLflow's metric names --------------------------------------------------------------------

#: MLflow allows letters, digits and `_ / . -` and space in a metric name; Lightning drops the
#: rest, so `val/ams@15%` and `val/ams@0.15` would both become `val/ams15`-like names that no
#: longer say what they are. amsaware's names use two other characters, mapped both ways.
MLFLOW_NAMES = (("@", "_at_"), ("%", "pct"))


def mlflow_name(name: str) -> str:
    """`val/ams@15%` -> `val/ams_at_15pct`, `oof/ams@0.5` -> `oof/ams_at_0.5` (docs/training.md).

    Reversible (`metric_name`) because amsaware's metric names never contain `_at_` or a digit
    followed by `pct`; any other character MLflow refuses is an error rather than dropped.
    """
    for character, replacement in MLFLOW_NAMES:
        name = name.replace(character, replacement)
    if re.search(r"[^a-zA-Z0-9_/. -]", name):
        raise ValueError(f"metric name {name!r} has characters MLflow does not allow")
    return name


def metric_name(mlflow: str) -> str:
    """The amsaware metric name of an MLflow metric name (the inverse of `mlflow_name`)."""
    return re.sub(r"(\d)pct\b", r"\1%", mlflow.replace("_at_", "@"))


class MLFlowLogger(_LightningMLFlowLogger):
    """Lightning's MLflow logger with amsaware's metric names mapped by `mlflow_name` instead
    of stripped of `@` and `%` with a warning per name."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({mlflow_name(k): v for k, v in metrics.items()}, step)


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
                # W&B prints ~25 lines per run (banner, sync hints, a summary table): with one
                # run per stage that buries the training log; logger.wandb.silent=false shows them.
                "settings": wandb.Settings(silent=bool(options.get("silent", True))),
            }
            self._wandb_runs[(key, stage)] = wandb.init(**init)
        return self._wandb_runs[(key, stage)]

    def close(self) -> None:
        """Finish the W&B runs (Lightning leaves them open); MLflow's end with each fit."""
        for run in self._wandb_runs.values():
            run.finish()
        self._wandb_runs.clear()


# --- what a run logs besides its curves ---------------------------------------------------------


def choice(group: str) -> str | None:
    """The option Hydra selected for a config group (`loss=ams` -> "ams"), when under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def describe_run(cfg: DictConfig) -> str:
    """The run's key choices in one line, logged at start: `loss=X` also sets the model size,
    learning rate and batch size, which would otherwise go unseen."""
    model = cfg.model

    def number(value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    sizes = "x".join(str(model.get(key)) for key in ("n_layers", "hidden_size") if key in model)
    sizes += f", dropout={number(model.get('dropout'))}" if "dropout" in model else ""
    parts = [
        f"loss={choice('loss') or cfg.loss._target_.rsplit('.', 1)[-1]}",
        f"model={model._target_.rsplit('.', 1)[-1]}({sizes})",
        f"lr={number(cfg.optimizer.get('lr'))}",
        f"batch={cfg.data.batch_size}",
        f"epochs={cfg.trainer.max_epochs}",
    ]
    ft = cfg.get("finetune")
    if ft:
        name = choice("finetune") or ft.loss._target_.rsplit(".", 1)[-1]
        parts.append(
            f"finetune={name}(lr={number(ft.optimizer.get('lr'))}, batch={ft.batch_size}, "
            f"epochs={ft.max_epochs})"
        )
    parts.append(f"data={choice('data') or cfg.data._target_.rsplit('.', 1)[-1]}")
    parts.append(f"cv={cfg.cv.folds} folds x {cfg.cv.repeats}")
    parts.append(f"seed={cfg.seed}")
    return " ".join(parts)


def run_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The settings that tell runs apart in TensorBoard's HParams view, as flat scalars.

    The selected loss and data (config choices), every scalar of `loss`, `model` and
    `optimizer`, and the training sizes; `_target_` entries name the class.
    """
    params: dict[str, Any] = {}
    for group in ("loss", "finetune", "data"):
        if choice(group):
            params[group] = choice(group)

    def flatten(section: Any, prefix: str) -> None:
        for key, value in OmegaConf.to_container(section, resolve=True).items():
            if key == "_target_":
                params[f"{prefix}.class"] = str(value).rsplit(".", 1)[-1]
            elif isinstance(value, bool | int | float | str) and key != "_partial_":
                params[f"{prefix}.{key}"] = value

    for group in ("loss", "model", "optimizer"):
        flatten(cfg[group], group)
    if cfg.get("finetune"):
        flatten(cfg.finetune, "finetune")
        for group in ("loss", "optimizer"):
            flatten(cfg.finetune[group], f"finetune.{group}")
    params |= {
        "data.batch_size": int(cfg.data.batch_size),
        "trainer.max_epochs": int(cfg.trainer.max_epochs),
        "cv.folds": int(cfg.cv.folds),
        "cv.repeats": int(cfg.cv.repeats),
        "seed": int(cfg.seed),
    }
    return params


def log_hparams(cfg: DictConfig, metrics: dict[str, Any], loggers: StageLoggers) -> None:
    """One `summary` run per run folder and logger: its settings and final metrics (for
    TensorBoard's HParams view, MLflow's and W&B's run tables)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    final = dict(metrics["cv"]["oof"]) | {"cut/fraction": metrics["cut"]["fraction"]}
    final |= metrics.get("test", {}) | metrics.get("test_folds", {})
    final = {name: value for name, value in final.items() if math.isfinite(value)}
    for logger in loggers.make("summary"):
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(run_hparams(cfg), final)
        else:
            logger.log_hyperparams(run_hparams(cfg))
            logger.log_metrics(final)
        logger.finalize("success")


def log_fold_figures(report: FoldReport) -> None:
    """A trained fold's validation ROC, AMS curve and score figures into its own loggers (the
    protocol's per-fold hook); a fold reloaded on resume has none."""
    import torch

    from amsaware import plots

    if report.loggers is None:
        return
    probability = torch.sigmoid(torch.from_numpy(report.val_logits)).numpy()
    plots.log_to_logger(
        report.loggers, "val/", probability, report.label, report.weight, totals=report.totals
    )


def log_oof_figures(
    scores: np.ndarray,
    train: EventTable,
    cut: Cut,
    loggers: StageLoggers,
    run_dir: Path | None = None,
    source: str | None = None,
) -> None:
    """The out-of-fold ROC, AMS curve and score figures (the cut marked), as each
    figure-taking logger's run `oof`, and as PNG and PDF files `<run_dir>/figures/oof_*`
    (whatever the loggers: a figure to open without TensorBoard). `source`: the data source's
    name for the figures' label (`plots.experiment_label`)."""
    from amsaware import plots

    totals = (train.s_tot, train.b_tot)
    figures = plots.stage_figures(
        "oof/", scores, train.label, train.weight, cut.fraction, totals, cut.threshold, source
    )
    if run_dir is not None:
        from amsaware.run_folder import FIGURES, RunFolder

        folder = RunFolder(run_dir)
        plots.save_both(figures, folder.writable(folder.path / FIGURES), prefix="oof_")
    for logger in loggers.make("oof", only=plots.FIGURE_LOGGERS):
        plots.log_to_logger(
            logger, "oof/", scores, train.label, train.weight, 0, totals=totals, figures=figures
        )
        logger.finalize("success")


def log_fit(loggers: StageLoggers, metrics: dict[str, float], figures: dict[str, Any]) -> None:
    """The fit stage's metrics and figures (templates, impacts, scan) as each logger's run
    `fit`."""
    from amsaware import plots

    for logger in loggers.make("fit"):
        logger.log_metrics(metrics, step=0)
        plots.figures_to_logger(logger, "fit/", figures)
        logger.finalize("success")

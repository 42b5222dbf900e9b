"""A training run's settings, read once from the composed config and typed.

`amsaware.checks.check_config` builds a `Settings` after refusing what cannot be meant, so
every other module reads a checked value of one type instead of `cfg.get(key, default)` with a
default of its own. What Hydra instantiates (`model`, `loss`, `optimizer`, `trainer`,
`callbacks`, `logger`, `data`) stays config: it is built where it is used. The dataclasses of
`cv` and `cut` are also their sections' schema (`checks.SECTIONS`): a key is added here once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CVSettings:
    """`cv`: stratified k-fold cross-validation, repeated `repeats` times with other splits."""

    folds: int = 3
    parallel: bool = False
    repeats: int = 1

    @property
    def n_models(self) -> int:
        """The fold models of the run: R x k."""
        return self.folds * self.repeats


@dataclass(frozen=True)
class CutSettings:
    """`cut`: the window and smoothing of the out-of-fold AMS curve that chooses the cut."""

    min_fraction: float = 0.05
    max_fraction: float = 0.5
    smoothing: float = 0.02

    def options(self) -> dict[str, float]:
        """The keyword arguments of `protocol.choose_cut`."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PhaseSettings:
    """`finetune`'s scalar options (conf/finetune/_phase.yaml): the second phase's batch size
    and epochs; its loss, optimizer and scheduler are instantiated from the config."""

    batch_size: int
    max_epochs: int


@dataclass(frozen=True)
class Settings:
    """Everything train.py's protocol reads from the config, checked (`checks.check_config`)."""

    seed: int
    cv: CVSettings
    cut: CutSettings
    #: `data.batch_size`: the first phase's training batch.
    batch_size: int
    final_fit: bool
    #: Which models score the test events: final, folds or both.
    ensemble: str
    optimized_metric: str
    #: The fine-tune phase, None for a run of one phase.
    finetune: PhaseSettings | None = None
    threads: int | None = None
    compile: str | None = None
    #: `resume=true` or `ckpt_path=`: the run continues in its folder.
    resume: bool = False
    overwrite: bool = False
    #: Whether `callbacks.model_checkpoint` / `callbacks.preprocessing` are on: a run without
    #: checkpoints (a search trial) saves no fold scores and cannot be resumed.
    checkpoints: bool = True
    preprocessing: bool = True
    output_dir: Path = Path(".")

    @property
    def scores_final(self) -> bool:
        """Whether a final model is trained on all training events (and scores the test ones)."""
        return self.final_fit and self.ensemble != "folds"

    @property
    def scores_folds(self) -> bool:
        """Whether the fold models score the test events (the fold ensemble)."""
        return self.final_fit and self.ensemble != "final"

    @classmethod
    def from_config(cls, cfg: Any) -> Settings:
        """The settings of a composed train.py config, as written (refusals are `checks`')."""
        cv = cfg.get("cv") or {}
        cut = cfg.get("cut") or {}
        finetune = cfg.get("finetune")
        callbacks = cfg.get("callbacks") or {}
        paths = cfg.get("paths") or {}
        return cls(
            seed=cfg.seed,
            cv=CVSettings(**{key: cv[key] for key in _names(CVSettings) if key in cv}),
            cut=CutSettings(**{key: cut[key] for key in _names(CutSettings) if key in cut}),
            batch_size=int(cfg.data.batch_size),
            final_fit=bool(cfg.get("final_fit", True)),
            ensemble=str(cfg.get("ensemble") or "final"),
            optimized_metric=str(cfg.get("optimized_metric", "oof/ams_max")),
            finetune=None
            if not finetune
            else PhaseSettings(int(finetune.batch_size), int(finetune.max_epochs)),
            threads=cfg.get("threads"),
            compile=cfg.get("compile"),
            resume=bool(cfg.get("resume")) or cfg.get("ckpt_path") is not None,
            overwrite=bool(cfg.get("overwrite", False)),
            checkpoints=callbacks.get("model_checkpoint") is not None,
            preprocessing=bool(callbacks.get("preprocessing")),
            output_dir=Path(str(paths.get("output_dir", "."))),
        )


def _names(schema: type) -> list[str]:
    return [field.name for field in dataclasses.fields(schema)]


def loss_totals(loss: Any, s_tot: float, b_tot: float) -> dict[str, float]:
    """The data's totals for a loss config whose class takes `s_tot`/`b_tot` and was not
    given them (the soft-AMS losses rescale their counts to the data's totals)."""
    import inspect

    from hydra.utils import get_class

    parameters = inspect.signature(get_class(loss._target_)).parameters
    totals = {"s_tot": s_tot, "b_tot": b_tot}
    return {
        name: value for name, value in totals.items() if name in parameters and name not in loss
    }

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from amsaware.data.systematics import Systematics


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
class FitSettings:
    """`fit`: the binned profile-likelihood fit of the held-out scores (`amsaware.fit_stage`).

    `enabled` null runs it when a `systematics` group is chosen; `mc_stat` adds the templates'
    own Monte Carlo statistics (staterror); `toys` pseudo-experiments measure the coverage of
    the 68.27% interval on mu; `reference`, a finished run folder fitted on the same data with
    the same nuisances and fit settings (`checks.read_fit_reference`), is what the run's
    sigma_mu is set against at its end.
    """

    enabled: bool | None = None
    bins: int = 10
    mc_stat: bool = True
    toys: int = 200
    reference: str | None = None


@dataclass(frozen=True)
class AugmentSettings:
    """`augment=systematics`: every training batch shifted by one draw of the nuisances from
    their priors, out of `grid` draws made once per fit; `norm` also scales each background
    process's weights by its drawn normalisation (`amsaware.data.datamodule.PriorDraws`)."""

    grid: int = 16
    norm: bool = True


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
    #: The nuisance parameters (`systematics=higgs`), None without.
    systematics: Systematics | None = None
    #: The fit stage's settings, None when the run has no fit.
    fit: FitSettings | None = None
    #: Lightning's bar (True), a log line per epoch (False), or None: the bar on a terminal.
    progress: bool | None = None
    #: Training batches shifted by prior draws of the nuisances (`augment=systematics`).
    augment: AugmentSettings | None = None

    @property
    def scores_final(self) -> bool:
        """Whether a final model is trained on all training events (and scores the test ones)."""
        return self.final_fit and self.ensemble != "folds"

    @property
    def scores_folds(self) -> bool:
        """Whether the fold models score the test events (the fold ensemble)."""
        return self.final_fit and self.ensemble != "final"

    @classmethod
    def from_config(cls, cfg: Any, systematics: Systematics | None = None) -> Settings:
        """The settings of a composed train.py config, as written (refusals are `checks`';
        `checks.check_config` passes the `systematics` it has checked)."""
        cv = cfg.get("cv") or {}
        cut = cfg.get("cut") or {}
        finetune = cfg.get("finetune")
        callbacks = cfg.get("callbacks") or {}
        paths = cfg.get("paths") or {}
        fit_section = cfg.get("fit") or {}
        fit = FitSettings(
            **{key: fit_section[key] for key in _names(FitSettings) if key in fit_section}
        )
        if systematics is None and cfg.get("systematics") is not None:
            from omegaconf import OmegaConf

            from amsaware.data.systematics import Systematics

            section = OmegaConf.to_container(cfg.systematics, resolve=True)
            systematics = Systematics.from_config(section, "systematics")
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
            systematics=systematics,
            fit=fit if fit.enabled or (fit.enabled is None and systematics is not None) else None,
            progress=cfg.get("progress"),
            augment=None
            if cfg.get("augment") is None
            else AugmentSettings(
                **{k: cfg.augment[k] for k in _names(AugmentSettings) if k in cfg.augment}
            ),
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

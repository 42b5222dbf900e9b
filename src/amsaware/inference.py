"""Apply a finished run to new events: its config, checkpoints and preprocessing, no refit.

A run folder (docs/run-folder.md) has it all: the architecture in `.hydra/config.yaml` (`model`),
per stage `checkpoints/<stage>/last.ckpt` (loaded with `weights_only=True`, so a checkpoint
cannot run code) and `checkpoints/<stage>/preprocessing.json`, and the chosen cut in
`metrics.json`. A scorer is the final fit or the fold ensemble (the mean probability of the
k fold models).

The cut, for events the run never saw, is applied in one of two ways (`cut=`):

- `threshold` (default): `score >= t`, a fixed cut as a physicist applies it to any sample,
  whatever its signal fraction. `t` is on the scorer's own scale: the lowest score the run
  selected among its test events with the same models (`cut.threshold_final`,
  `cut.threshold_folds` in metrics.json). A fold ensemble of a run that scored no test events
  uses the out-of-fold score at the chosen fraction (`cut.threshold`), its models' scale on
  events they did not see. A final model without a recorded threshold has none: the final
  model's scores are calibrated differently from the out-of-fold ones.
- `fraction`: the top `cut.fraction` of the file's events, the protocol's rule for test
  events; right only for a file mixed like the training events (the challenge's test set).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from amsaware import artifacts
from amsaware.data import samples
from amsaware.data.formats import read_events
from amsaware.data.preprocessing import FittedPreprocessing
from amsaware.data.schema import MISSING, EventTable
from amsaware.metrics import logit_of_mean, select_top_fraction
from amsaware.model import predict_logit

log = logging.getLogger(__name__)

SCORERS = ("final", "folds")
CUTS = ("threshold", "fraction")
CHECKPOINT = "last.ckpt"


class RunError(ValueError):
    """A run folder that cannot be applied as asked; the message says what is missing."""


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """torch's float64 sigmoid, as training computes the scores it writes."""
    return torch.sigmoid(torch.from_numpy(logits)).numpy()


@dataclass(frozen=True)
class StageModel:
    """One trained stage (`final` or `fold<k>`): its network and fitted preprocessing."""

    stage: str
    net: nn.Module
    preprocessing: FittedPreprocessing

    def score(self, features: np.ndarray) -> np.ndarray:
        return _sigmoid(self.logit(features))

    def logit(self, features: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(self.preprocessing.transform(features))
        return predict_logit(self.net, x).numpy()


@dataclass(frozen=True)
class Scorer:
    """The final model or the fold ensemble of a run, with the run's cut on its scale."""

    name: str
    models: tuple[StageModel, ...]
    fraction: float
    threshold: float | None
    #: The run's cut on the logit (runs from before logits were kept have none).
    threshold_logit: float | None = None

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.models[0].preprocessing.feature_names

    def score(self, table: EventTable) -> np.ndarray:
        """Signal probability per event: the model's, or the mean of the fold models'."""
        return self.score_and_logit(table)[0]

    def score_and_logit(self, table: EventTable) -> tuple[np.ndarray, np.ndarray]:
        """The probability and the ranking key (`metrics.logit_of_mean`) of every event."""
        check_features(table, self.feature_names)
        logits = [model.logit(table.features) for model in self.models]
        scores = np.mean([_sigmoid(z) for z in logits], axis=0)
        return scores, logit_of_mean(np.stack(logits))

    def select(
        self, scores: np.ndarray, cut: str = "threshold", logits: np.ndarray | None = None
    ) -> np.ndarray:
        """Pass/fail of the run's cut, by `threshold` or by `fraction` (module docstring).

        With `logits`, events are ranked by them: probabilities that round to 1 do not tie.
        """
        if cut not in CUTS:
            raise ValueError(f"cut must be one of {CUTS}, got {cut!r}")
        if cut == "fraction":
            ranking = scores if logits is None else logits
            return select_top_fraction(torch.from_numpy(ranking), self.fraction).numpy()
        if logits is not None and self.threshold_logit is not None:
            return logits >= self.threshold_logit
        if self.threshold is None:
            raise RunError(
                f"the run's final model has no score threshold: the run scored no test events "
                "with it, so its cut is known only as a fraction. Use cut=fraction (the top "
                f"{self.fraction:.2%} of the file's events) or ensemble=folds."
            )
        return scores >= self.threshold


def check_features(table: EventTable, expected: tuple[str, ...]) -> None:
    """The table must carry the features the run was trained on, in the same order."""
    names = tuple(table.feature_names)
    if names == tuple(expected) and table.features.shape[1] == len(expected):
        return
    missing = [name for name in expected if name not in names]
    extra = [name for name in names if name not in expected]
    detail = f"missing {missing}; " if missing else ""
    detail += f"unexpected {extra}; " if extra else ""
    raise RunError(
        f"{table.source}: has {table.features.shape[1]} features, the run was trained on "
        f"{len(expected)}: {detail}expected {list(expected)} in that order."
    )


def load_config(run_dir: str | Path) -> DictConfig:
    """The run's composed config (`.hydra/config.yaml`), with a clear error if absent."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run folder")
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir}: no .hydra/config.yaml; not a run folder of train.py")
    return OmegaConf.load(path)


def load_metrics(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / artifacts.METRICS
    if not path.is_file():
        raise RunError(
            f"{run_dir}: no {artifacts.METRICS}; the run did not finish (or failed), and its "
            "cut is chosen only at the end"
        )
    return artifacts.read_metrics(run_dir)


def build_net(cfg: DictConfig, n_features: int) -> nn.Module:
    """The run's architecture from its `model` config, checked to be a torch module first.

    Instantiating calls the config's `_target_`; only torch module classes are called, so a
    tampered config cannot name an arbitrary function.
    """
    from hydra.utils import get_class, instantiate

    target = cfg.model.get("_target_") if "model" in cfg else None
    try:
        cls = get_class(str(target))
    except Exception as error:
        raise RunError(f"model._target_ {target!r} is not an importable class: {error}") from None
    if not issubclass(cls, nn.Module):
        raise RunError(f"model._target_ {target!r} is not a torch.nn.Module")
    return instantiate(cfg.model, n_features=n_features)


def load_stage(run_dir: str | Path, stage: str, cfg: DictConfig | None = None) -> StageModel:
    """The network and preprocessing of one stage, from `checkpoints/<stage>/`."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir) if cfg is None else cfg
    folder = run_dir / "checkpoints" / stage
    checkpoint = folder / CHECKPOINT
    if not checkpoint.is_file():
        raise RunError(f"{run_dir}: no checkpoints/{stage}/{CHECKPOINT}")
    stats = folder / artifacts.PREPROCESSING
    if not stats.is_file():
        raise RunError(
            f"{run_dir}: no checkpoints/{stage}/{artifacts.PREPROCESSING}; the run was trained "
            "without saving its preprocessing (callbacks.preprocessing=null, or before it "
            "existed), so its inputs cannot be reproduced. Train it again."
        )
    preprocessing = artifacts.read_preprocessing(stats)
    net = build_net(cfg, len(preprocessing.feature_names))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    weights = {
        name.removeprefix("net."): value
        for name, value in state["state_dict"].items()
        if name.startswith("net.")
    }
    try:
        net.load_state_dict(weights)
    except RuntimeError as error:
        raise RunError(
            f"{checkpoint}: the weights do not fit the model of .hydra/config.yaml "
            f"({OmegaConf.to_container(cfg.model)}): {error}"
        ) from None
    net.eval()
    return StageModel(stage, net, preprocessing)


def default_scorer(cfg: DictConfig) -> str:
    """The scorer the run itself used for its submission: the final fit unless ensemble=folds."""
    return "folds" if cfg.get("ensemble", "final") == "folds" else "final"


def load_scorer(run_dir: str | Path, ensemble: str | None = None) -> Scorer:
    """The run's final model (`ensemble='final'`) or fold ensemble (`'folds'`).

    `None` picks what the run used for its own submission.
    """
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    metrics = load_metrics(run_dir)
    name = default_scorer(cfg) if ensemble is None else ensemble
    if name not in SCORERS:
        raise ValueError(f"ensemble must be one of {SCORERS} (or null), got {name!r}")
    cut = metrics["cut"]
    if name == "final":
        if not (run_dir / "checkpoints" / "final" / CHECKPOINT).is_file():
            reason = (
                "it was trained with final_fit=false (a search trial?)"
                if not cfg.get("final_fit", True)
                else f"it was trained with ensemble={cfg.get('ensemble')}"
                if cfg.get("ensemble") == "folds"
                else "its checkpoints were not kept (callbacks.model_checkpoint=null?)"
            )
            raise RunError(
                f"{run_dir}: has no final model (checkpoints/final/{CHECKPOINT}): {reason}. "
                "Score with the fold models instead: ensemble=folds."
            )
        models = (load_stage(run_dir, "final", cfg),)
        threshold = cut.get("threshold_final")
        threshold_logit = cut.get("threshold_logit_final")
    else:
        # With cv.repeats, R x k fold models: checkpoints/fold0 ... fold<R k - 1>.
        n_folds = int(cfg.cv.folds) * int(cfg.cv.get("repeats", 1))
        missing = [
            k
            for k in range(n_folds)
            if not (run_dir / "checkpoints" / f"fold{k}" / CHECKPOINT).is_file()
        ]
        if missing:
            raise RunError(
                f"{run_dir}: the fold ensemble needs all {n_folds} fold checkpoints; missing "
                f"checkpoints/fold<k>/{CHECKPOINT} for k in {missing} (search trials keep none)"
            )
        models = tuple(load_stage(run_dir, f"fold{k}", cfg) for k in range(n_folds))
        threshold = cut.get("threshold_folds", cut["threshold"])
        threshold_logit = cut.get("threshold_logit_folds", cut.get("threshold_logit"))
    names = {model.preprocessing.feature_names for model in models}
    if len(names) != 1:
        raise RunError(f"{run_dir}: the fold models were trained on different features")
    return Scorer(name, models, float(cut["fraction"]), threshold, threshold_logit)


def predict_table(scorer: Scorer, table: EventTable, cut: str = "threshold") -> pd.DataFrame:
    """`EventId,score,selected` (selected: 1 if the event passes the run's cut)."""
    scores, logits = scorer.score_and_logit(table)
    selected = scorer.select(scores, cut, logits)
    return pd.DataFrame(
        {"EventId": table.event_id, "score": scores, "selected": selected.astype(np.int8)}
    )


def default_output(input_path: str | Path) -> Path:
    """`<input name>.scores.csv` in the current folder (input never overwritten)."""
    name = Path(input_path).name
    for suffix in (".gz", ".csv", ".root", ".parquet", ".pq"):
        name = name.removesuffix(suffix)
    return Path(f"{name}.scores.csv")


def trained_on_samples(cfg: DictConfig) -> bool:
    """Whether the run's data were a physicist's samples (`data=samples`), not challenge files."""
    target = str((cfg.get("data") or {}).get("_target_", ""))
    return target.rsplit(".", 1)[-1] == "samples"


def placeholder_of(cfg: DictConfig) -> float | dict | None:
    """The run's value(s) marking an undefined feature: `data.placeholder`, or the challenge's."""
    if not trained_on_samples(cfg):
        return MISSING
    placeholder = cfg.data.get("placeholder")
    return OmegaConf.to_container(placeholder) if OmegaConf.is_config(placeholder) else placeholder


def read_input(
    cfg: DictConfig,
    input_path: str | Path,
    feature_names: tuple[str, ...],
    tree: str | None = None,
) -> EventTable:
    """The events of a file to score, with the run's features.

    A ROOT or Parquet file, and any file for a run trained on samples, is read by the run's
    feature names (branches), with the run's placeholder and `tree` (default: the run's
    `data.tree`); a CSV file for a challenge run by its header (`read_events`).
    """
    if not trained_on_samples(cfg) and samples.file_kind(input_path) == "csv":
        return read_events(input_path)
    if tree is None and trained_on_samples(cfg):
        tree = cfg.data.get("tree")
    return samples.read_feature_file(input_path, feature_names, tree, placeholder_of(cfg))


def predict_file(
    run_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path | None = None,
    ensemble: str | None = None,
    cut: str = "threshold",
    tree: str | None = None,
) -> Path:
    """Score a file of events and write the scores (atomically; a `.gz` name is gzipped).

    The file is a Kaggle test or training CSV or the CERN file, or, read by the run's feature
    branches (see `read_input`), a ROOT (`tree`), Parquet or CSV file of a physicist's events.
    """
    if cut not in CUTS:
        raise ValueError(f"cut must be one of {CUTS}, got {cut!r}")
    scorer = load_scorer(run_dir, ensemble)
    table = read_input(load_config(run_dir), input_path, scorer.feature_names, tree)
    frame = predict_table(scorer, table, cut)
    output = default_output(input_path) if output_path is None else Path(output_path)
    if output.resolve() == Path(input_path).resolve():
        raise ValueError(f"output {output} would overwrite the input file")
    with artifacts.atomic_path(output) as tmp:
        frame.to_csv(tmp, index=False, compression="gzip" if output.suffix == ".gz" else None)
    log.info(
        "%s: %d events scored with the %s model(s) of %s; %d pass the cut (%s)",
        output,
        len(frame),
        scorer.name,
        run_dir,
        int(frame.selected.sum()),
        f"score >= {scorer.threshold:.6g}" if cut == "threshold" else f"top {scorer.fraction:.2%}",
    )
    return output

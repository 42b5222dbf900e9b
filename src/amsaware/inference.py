"""Apply a finished run to new events: its config, checkpoints and preprocessing, no refit.

A run folder (docs/run-folder.md) has it all: the architecture in `.hydra/config.yaml` (`model`),
per stage `checkpoints/<stage>/last.ckpt` (loaded with `weights_only=True`, so a checkpoint
cannot run code) and `checkpoints/<stage>/preprocessing.json`, and the chosen cut in
`metrics.json`. A scorer is the final fit or the fold ensemble (the mean probability of the
k fold models).

A run folder is data, however it was obtained: nothing read from it is called. Its config is
read as plain values (`load_config`): the network is rebuilt from the name of a known
architecture (`ARCHITECTURES`) and its integer and float options, the data source is one of
the project's own (`amsaware.data.sources.SOURCES`) with every option type-checked, and
`${key}` references are substituted by this module, never by a resolver. Every number read
back from metrics.json and preprocessing.json is checked to be finite and in range.

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
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from torch import nn

from amsaware import artifacts
from amsaware.data import samples
from amsaware.data.formats import read_events
from amsaware.data.preprocessing import FittedPreprocessing
from amsaware.data.schema import MISSING, EventTable
from amsaware.data.sources import source_options
from amsaware.metrics import logit_of_mean, select_top_fraction
from amsaware.model import MLP, predict_logit

log = logging.getLogger(__name__)

SCORERS = ("final", "folds")
CUTS = ("threshold", "fraction")
ENSEMBLES = ("final", "folds", "both")
CHECKPOINT = "last.ckpt"
#: The architectures a run folder may name (`model._target_`) and their options' types.
ARCHITECTURES: dict[str, tuple[type[nn.Module], dict[str, type]]] = {
    "amsaware.model.MLP": (MLP, {"n_layers": int, "hidden_size": int, "dropout": float}),
}


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


@dataclass(frozen=True)
class ModelSpec:
    """A run's network as plain values: a known architecture's name and its options."""

    architecture: str
    options: dict[str, int | float]

    def build(self, n_features: int) -> nn.Module:
        cls, _ = ARCHITECTURES[self.architecture]
        return cls(n_features=n_features, **self.options)


@dataclass(frozen=True)
class RunConfig:
    """What the tools need of a run's `.hydra/config.yaml`, every value checked (module doc)."""

    path: Path
    model: ModelSpec
    folds: int
    repeats: int
    ensemble: str
    final_fit: bool
    #: The data source (`amsaware.data.sources.SOURCES`) and its checked options.
    data_source: str
    data: dict[str, Any] = field(default_factory=dict)


_REFERENCE = re.compile(r"\$\{([^{}]*)\}")
_KEY_PATH = re.compile(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*")


def _substitute(value: Any, root: dict[str, Any], where: str, depth: int = 0) -> Any:
    """`value` with each `${a.b}` replaced by the plain value of key a.b of the same file.

    Only references to other keys: a resolver call (`${oc.env:...}`, `${hydra:...}`) is
    refused, so reading a run folder's config runs nothing.
    """
    if depth > 20:
        raise RunError(f"{where}: references nest more than 20 deep (a cycle?)")
    if isinstance(value, dict):
        return {k: _substitute(v, root, f"{where}.{k}", depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, root, f"{where}[{i}]", depth) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(key: str) -> Any:
        if not _KEY_PATH.fullmatch(key):
            raise RunError(
                f"{where}: ${{{key}}} is not a reference to another key (resolvers such as "
                "oc.env are not evaluated in a run folder's config)"
            )
        node: Any = root
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise RunError(f"{where}: ${{{key}}} refers to a key the config does not have")
            node = node[part]
        return _substitute(node, root, key, depth + 1)

    whole = _REFERENCE.fullmatch(value)
    if whole:
        return lookup(whole.group(1))
    if "${" in _REFERENCE.sub("", value):
        raise RunError(f"{where}: {value!r} is not plain text or ${{key}} references")
    return _REFERENCE.sub(lambda m: str(lookup(m.group(1))), value)


def _model_spec(model: Any, where: str) -> ModelSpec:
    if not isinstance(model, dict):
        raise RunError(f"{where}: model is {model!r}; expected the model section")
    target = model.get("_target_")
    if target not in ARCHITECTURES:
        raise RunError(
            f"{where}: model._target_ {target!r} is not a known architecture; a run folder's "
            f"network is rebuilt only as one of {sorted(ARCHITECTURES)}"
        )
    _, types = ARCHITECTURES[target]
    options = {k: v for k, v in model.items() if k != "_target_"}
    if set(options) != set(types):
        raise RunError(
            f"{where}: model has options {sorted(options)}; {target} takes exactly {sorted(types)}"
        )
    for key, kind in types.items():
        value = options[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (isinstance(value, int) if kind is int else number) or isinstance(value, bool):
            expected = "an integer" if kind is int else "a number"
            raise RunError(f"{where}: model.{key} is {value!r}; expected {expected}")
        if kind is float and not math.isfinite(value):
            raise RunError(f"{where}: model.{key} is {value!r}; expected a finite number")
        options[key] = kind(value)
    return ModelSpec(target, options)


def load_config(run_dir: str | Path) -> RunConfig:
    """The run's config (`.hydra/config.yaml`) as checked plain values, with clear errors.

    YAML is read with a safe loader and nothing in it is instantiated or resolved by a
    resolver; an unknown architecture or data source, a nested `_target_`, or a value of the
    wrong type is refused with the file and key named.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run folder")
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir}: no .hydra/config.yaml; not a run folder of train.py")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as error:
        raise RunError(f"{path}: corrupt, not a YAML config ({type(error).__name__})") from None
    if not isinstance(raw, dict):
        raise RunError(f"{path}: corrupt, expected a YAML mapping")
    where = str(path)
    model = _model_spec(_substitute(raw.get("model"), raw, "model"), where)
    data = _substitute(raw.get("data"), raw, "data")
    try:
        source, options = source_options(data, where)
    except ValueError as error:
        raise RunError(str(error)) from None
    cv = _substitute(raw.get("cv") or {}, raw, "cv")
    folds = cv.get("folds") if isinstance(cv, dict) else None
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise RunError(f"{where}: cv.folds is {folds!r}; expected an integer >= 2")
    repeats = cv.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise RunError(f"{where}: cv.repeats is {repeats!r}; expected an integer >= 1")
    ensemble = _substitute(raw.get("ensemble", "final"), raw, "ensemble")
    if ensemble not in ENSEMBLES:
        raise RunError(f"{where}: ensemble is {ensemble!r}; expected one of {ENSEMBLES}")
    final_fit = _substitute(raw.get("final_fit", True), raw, "final_fit")
    if not isinstance(final_fit, bool):
        raise RunError(f"{where}: final_fit is {final_fit!r}; expected true or false")
    return RunConfig(path, model, folds, repeats, ensemble, final_fit, source, options)


def load_metrics(run_dir: str | Path) -> dict[str, Any]:
    """metrics.json, with the cut's values that the tools apply checked to be in range."""
    path = Path(run_dir) / artifacts.METRICS
    if not path.is_file():
        raise RunError(
            f"{run_dir}: no {artifacts.METRICS}; the run did not finish (or failed), and its "
            "cut is chosen only at the end"
        )
    metrics = artifacts.read_metrics(run_dir)
    cut = metrics.get("cut")
    if not isinstance(cut, dict) or "fraction" not in cut or "threshold" not in cut:
        raise RunError(f"{path}: corrupt, no cut.fraction and cut.threshold")
    for key, low, high in (("fraction", 0.0, 1.0), *((k, 0.0, 1.0) for k in _THRESHOLDS)):
        if key not in cut:
            continue
        value = cut[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        fine = number and math.isfinite(value) and low <= value <= high
        if not fine or (key == "fraction" and value == 0):
            bounds = "in (0, 1]" if key == "fraction" else "a probability in [0, 1]"
            raise RunError(f"{path}: cut.{key} is {value!r}; expected {bounds} (damaged?)")
    return metrics


_THRESHOLDS = ("threshold", "threshold_final", "threshold_folds")


def build_net(cfg: RunConfig, n_features: int) -> nn.Module:
    """The run's architecture, rebuilt from its checked plain values (`RunConfig.model`)."""
    try:
        return cfg.model.build(n_features)
    except ValueError as error:
        raise RunError(f"{cfg.path}: model: {error}") from None


def load_stage(run_dir: str | Path, stage: str, cfg: RunConfig | None = None) -> StageModel:
    """The network and preprocessing of one stage, from `checkpoints/<stage>/`."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir) if cfg is None else cfg
    folder = run_dir / "checkpoints" / stage
    checkpoint = folder / CHECKPOINT
    if not checkpoint.is_file():
        raise RunError(f"{run_dir}: no checkpoints/{stage}/{CHECKPOINT}")
    versions = sorted(p.name for p in folder.glob("last-v*.ckpt"))
    if versions:
        raise RunError(
            f"{folder}: holds {versions} beside {CHECKPOINT}: more than one run was written "
            "into this folder, so which weights belong to its metrics.json and preprocessing "
            "is unknown. Train it again into an empty folder."
        )
    stats = folder / artifacts.PREPROCESSING
    if not stats.is_file():
        raise RunError(
            f"{run_dir}: no checkpoints/{stage}/{artifacts.PREPROCESSING}; the run was trained "
            "without saving its preprocessing (callbacks.preprocessing=null, or before it "
            "existed), so its inputs cannot be reproduced. Train it again."
        )
    preprocessing = artifacts.read_preprocessing(stats)
    weights = read_weights(checkpoint)
    n_features = len(preprocessing.feature_names)
    # Shapes first, on the meta device (no memory): a config naming absurd sizes allocates
    # nothing before it is found not to match the checkpoint.
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in build_net(cfg, n_features).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if shapes != found:
        differ = sorted(k for k in shapes.keys() | found.keys() if shapes.get(k) != found.get(k))
        raise RunError(
            f"{checkpoint}: the weights do not fit the model of .hydra/config.yaml "
            f"({cfg.model.architecture} {cfg.model.options}, {n_features} features): "
            f"tensors {differ[:4]} differ (config {[shapes.get(k) for k in differ[:4]]}, "
            f"checkpoint {[found.get(k) for k in differ[:4]]})"
        )
    net = build_net(cfg, n_features)
    net.load_state_dict(weights)
    net.eval()
    return StageModel(stage, net, preprocessing)


def read_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The network's tensors of a Lightning checkpoint, loaded with `weights_only=True`.

    A file that is not such a checkpoint is reported as corrupt; torch's own message, which
    suggests turning `weights_only` off (letting the file run code), is not passed on.
    """
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RunError(
            f"{checkpoint}: corrupt or not a checkpoint of train.py ({type(error).__name__}); "
            "it is only ever read as tensors, so restore the file or train the run again"
        ) from None
    tensors = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(tensors, dict) or not all(
        isinstance(v, torch.Tensor) for v in tensors.values()
    ):
        raise RunError(f"{checkpoint}: corrupt, no state_dict of tensors")
    return {
        name.removeprefix("net."): value
        for name, value in tensors.items()
        if isinstance(name, str) and name.startswith("net.")
    }


def default_scorer(cfg: RunConfig) -> str:
    """The scorer the run itself used for its submission: the final fit unless ensemble=folds."""
    return "folds" if cfg.ensemble == "folds" else "final"


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
                if not cfg.final_fit
                else f"it was trained with ensemble={cfg.ensemble}"
                if cfg.ensemble == "folds"
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
        n_folds = cfg.folds * cfg.repeats
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


def trained_on_samples(cfg: RunConfig) -> bool:
    """Whether the run's data were a physicist's samples (`data=samples`), not challenge files."""
    return cfg.data_source.rsplit(".", 1)[-1] == "samples"


def placeholder_of(cfg: RunConfig) -> float | dict | None:
    """The run's value(s) marking an undefined feature: `data.placeholder`, or the challenge's."""
    if not trained_on_samples(cfg):
        return MISSING
    return cfg.data.get("placeholder")


def read_input(
    cfg: RunConfig,
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


def check_output(output: Path, input_path: str | Path | None = None) -> None:
    """An output name that can be written, checked before any work (`output=`)."""
    if output.is_dir():
        raise ValueError(f"output={output} is a directory; expected the name of a file to write")
    if input_path is not None and output.resolve() == Path(input_path).resolve():
        raise ValueError(f"output {output} would overwrite the input file")


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
    output = default_output(input_path) if output_path is None else Path(output_path)
    check_output(output, input_path)
    scorer = load_scorer(run_dir, ensemble)
    table = read_input(load_config(run_dir), input_path, scorer.feature_names, tree)
    frame = predict_table(scorer, table, cut)
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

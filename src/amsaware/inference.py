"""Apply a finished run to new events: its config, checkpoints and preprocessing, no refit.

A run folder (docs/run-folder.md, read through `amsaware.run_folder.RunFolder`) has it all:
the architecture in `.hydra/config.yaml`, per stage the checkpoint and preprocessing files
that metrics.json records, and the chosen cut. A scorer is `final` (the final fit) or `folds`
(the fold ensemble: the mean probability of the fold models).

A run folder is data, however it was obtained: nothing read from it is called. Its config is
read as plain values (`RunFolder.config`): the network is rebuilt from the name of a known
architecture (`amsaware.model.NETS`) and its integer and float options, checkpoints are
loaded with `weights_only=True`, and every number read back from metrics.json and
preprocessing.json is checked to be finite and in range.

The cut, for events the run never saw, is applied in one of two ways (`cut_by=`):

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
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from amsaware.atomic import write_frame
from amsaware.data import samples
from amsaware.data.formats import read_events
from amsaware.data.preprocessing import FittedPreprocessing
from amsaware.data.schema import MISSING, EventTable
from amsaware.data.sources import load_source
from amsaware.metrics import logit_of_mean
from amsaware.model import predict_logit
from amsaware.run_folder import (
    CUTS,
    OOF_PREDICTIONS,
    SCORERS,
    Cut,
    RunConfig,
    RunFolder,
    RunFolderError,
)

log = logging.getLogger(__name__)


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

    def logit(self, features: np.ndarray, pulls: np.ndarray | None = None) -> np.ndarray:
        """Logits at the nuisance inputs `pulls` (K,) of a parameterised network (nominal
        zeros without: what predict, eval and explain score); a plain network ignores them."""
        x = torch.from_numpy(self.preprocessing.transform(features))
        return predict_logit(self.net, x, pulls=pulls).numpy()


@dataclass(frozen=True)
class Scorer:
    """A run's scorer (`final`: the final model, `folds`: the fold ensemble) and its cut."""

    name: str
    models: tuple[StageModel, ...]
    cut: Cut

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.models[0].preprocessing.feature_names

    @property
    def fraction(self) -> float:
        return self.cut.fraction

    @property
    def threshold(self) -> float | None:
        """The run's cut on this scorer's score scale (None: known only as a fraction)."""
        return self.cut.thresholds(self.name)[0]

    @property
    def threshold_logit(self) -> float | None:
        """The same on the logit (runs from before logits were kept have none)."""
        return self.cut.thresholds(self.name)[1]

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
        self, scores: np.ndarray, cut_by: str = "threshold", logits: np.ndarray | None = None
    ) -> np.ndarray:
        """Pass/fail of the run's cut, by `threshold` or by `fraction` (module docstring).

        With `logits`, events are ranked by them: probabilities that round to 1 do not tie.
        """
        return self.cut.select(scores, self.name, cut_by, logits)


def check_features(table: EventTable, expected: tuple[str, ...]) -> None:
    """The table must carry the features the run was trained on, in the same order."""
    names = tuple(table.feature_names)
    if names == tuple(expected) and table.features.shape[1] == len(expected):
        return
    missing = [name for name in expected if name not in names]
    extra = [name for name in names if name not in expected]
    detail = f"missing {missing}; " if missing else ""
    detail += f"unexpected {extra}; " if extra else ""
    raise RunFolderError(
        f"{table.source}: has {table.features.shape[1]} features, the run was trained on "
        f"{len(expected)}: {detail}expected {list(expected)} in that order."
    )


def build_net(cfg: RunConfig, n_features: int) -> nn.Module:
    """The run's architecture, rebuilt from its checked plain values (`RunConfig.model`)."""
    try:
        return cfg.model.build(n_features)
    except ValueError as error:
        raise RunFolderError(f"{cfg.path}: model: {error}") from None


def load_stage(run_dir: str | Path, stage: str, cfg: RunConfig | None = None) -> StageModel:
    """The network and preprocessing of one stage, the files metrics.json records for it."""
    run = RunFolder(run_dir)
    cfg = run.config() if cfg is None else cfg
    weights = run.checkpoint(stage)
    preprocessing = run.preprocessing(stage)
    n_features = len(preprocessing.feature_names)
    # Shapes first, on the meta device (no memory): a config naming absurd sizes allocates
    # nothing before it is found not to match the checkpoint.
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in build_net(cfg, n_features).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if shapes != found:
        differ = sorted(k for k in shapes.keys() | found.keys() if shapes.get(k) != found.get(k))
        config, checkpoint = [shapes.get(k) for k in differ[:4]], [found.get(k) for k in differ[:4]]
        raise RunFolderError(
            f"{run.stage_files(stage)['checkpoint'][0]}: the weights do not fit the model of "
            f".hydra/config.yaml ({cfg.model.architecture} {cfg.model.options}, {n_features} "
            f"features): tensors {differ[:4]} differ (config {config}, checkpoint {checkpoint})"
        )
    net = build_net(cfg, n_features)
    net.load_state_dict(weights)
    net.eval()
    return StageModel(stage, net, preprocessing)


def load_scorer(run_dir: str | Path, scorer: str | None = None) -> Scorer:
    """The run's final model (`scorer='final'`) or fold ensemble (`'folds'`).

    `None` picks what the run used for its own submission.
    """
    run = RunFolder(run_dir)
    cfg = run.config()
    cut = run.cut()
    name = cfg.default_scorer if scorer is None else scorer
    if name not in SCORERS:
        raise ValueError(f"scorer must be one of {SCORERS} (or null), got {name!r}")
    if name == "final":
        if not run.has_checkpoint("final"):
            reason = (
                "it was trained with final_fit=false (a search trial?)"
                if not cfg.final_fit
                else f"it was trained with ensemble={cfg.ensemble}"
                if cfg.ensemble == "folds"
                else "its checkpoints were not kept (callbacks.model_checkpoint=null?)"
            )
            raise RunFolderError(
                f"{run_dir}: has no final model (checkpoints/final/last.ckpt): {reason}. "
                "Score with the fold models instead: scorer=folds."
            )
        stages = ["final"]
    else:
        stages = cfg.fold_stages
        missing = [k for k, stage in enumerate(stages) if not run.has_checkpoint(stage)]
        if missing:
            raise RunFolderError(
                f"{run_dir}: the fold ensemble needs all {len(stages)} fold checkpoints; missing "
                f"checkpoints/fold<k>/last.ckpt for k in {missing} (search trials keep none)"
            )
    models = tuple(load_stage(run_dir, stage, cfg) for stage in stages)
    if len({model.preprocessing.feature_names for model in models}) != 1:
        raise RunFolderError(f"{run_dir}: the fold models were trained on different features")
    return Scorer(name, models, cut)


def predict_table(scorer: Scorer, table: EventTable, cut_by: str = "threshold") -> pd.DataFrame:
    """`EventId,score,selected` (selected: 1 if the event passes the run's cut)."""
    scores, logits = scorer.score_and_logit(table)
    selected = scorer.select(scores, cut_by, logits)
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


def training_events(run_dir: str | Path) -> tuple[EventTable, pd.DataFrame]:
    """The run's training events, and its `oof_predictions.csv` in the same order.

    `oof_predictions.csv` holds no features, so the events are reloaded from the run's data
    config (`.hydra/config.yaml`), through the project's own sources only, with options
    checked (`RunFolder.config`), and matched by EventId; labels must agree, or the data
    changed since the run.
    """
    run = RunFolder(run_dir)
    cfg = run.config()
    if not run.oof_path.is_file():
        raise RunFolderError(f"{run_dir}: no {OOF_PREDICTIONS}; pass events with input=FILE")
    oof = run.oof_predictions()
    source = {"_target_": cfg.data_source, **cfg.data}
    options = dict(cfg.data)
    # Only training events: no test events to generate (the synthetic source's training
    # events do not depend on them), as for a run without a final fit.
    if options.get("n_test") and (cfg.data_source.endswith(".synthetic") or not cfg.final_fit):
        options["n_test"] = 0
    try:
        train = load_source(cfg.data_source, options).train
    except Exception as error:
        raise RunFolderError(
            f"{run_dir}: could not reload the run's training events from its data config "
            f"{source}: {type(error).__name__}: {error}. Run the tool from the folder train.py "
            "ran in, or pass the events with input=FILE."
        ) from None
    rows = pd.Index(train.event_id).get_indexer(oof.EventId.to_numpy())
    unknown = rows < 0
    if unknown.any() or len(train) != len(oof):
        raise RunFolderError(
            f"{run_dir}: the run's data config {source} now gives {len(train)} training events, "
            f"its {OOF_PREDICTIONS} has {len(oof)} ({int(unknown.sum())} EventIds not "
            "found): the data changed since the run. Pass the events with input=FILE."
        )
    table = train.subset(rows)
    if not np.array_equal(table.label, oof.label.to_numpy()):
        first = int(np.flatnonzero(table.label != oof.label.to_numpy())[0])
        raise RunFolderError(
            f"{run_dir}: EventId {oof.EventId[first]} has label {oof.label[first]} in "
            f"{OOF_PREDICTIONS} but {table.label[first]} in {source}: the data "
            "changed since the run. Pass the events with input=FILE."
        )
    return table, oof


def threshold_or_fallback(request: ApplyRequest, scorer: Scorer) -> tuple[Scorer, str]:
    """The scorer and cut to apply: the request's, unless it asks for a threshold the scorer
    has none of (a final model whose run scored no test events with it).

    Then the fold ensemble and its out-of-fold threshold, where the request left the scorer to
    the run and the run kept its fold models; else the top fraction of the file. One warning
    line says which.
    """
    if request.cut_by != "threshold" or scorer.threshold is not None:
        return scorer, request.cut_by
    run = RunFolder(request.run)
    why = (
        f"{request.run}: the {scorer.name} model has no score threshold (the run scored no test "
        "events with it)"
    )
    if request.scorer is None and all(run.has_checkpoint(s) for s in run.config().fold_stages):
        log.warning("%s: scoring with the fold ensemble's threshold instead (scorer=folds)", why)
        return load_scorer(request.run, "folds"), "threshold"
    log.warning(
        "%s: selecting the top %.2f%% of the file's events instead (cut_by=fraction)",
        why,
        100 * scorer.fraction,
    )
    return scorer, "fraction"


def check_output(output: Path, input_path: str | Path | None = None) -> None:
    """An output name that can be written, checked before any work (`output=`)."""
    if output.is_dir():
        raise ValueError(f"output={output} is a directory; expected the name of a file to write")
    if input_path is not None and output.resolve() == Path(input_path).resolve():
        raise ValueError(f"output {output} would overwrite the input file")


#: Old names of the apply tools' options (before `scorer` and `cut_by`), still accepted.
DEPRECATED = {"ensemble": "scorer", "cut": "cut_by"}


@dataclass(frozen=True)
class ApplyRequest:
    """What an apply tool (predict, eval, explain, export) is asked to do, checked once.

    `run`: the run folder; `input`: the events (explain: None for the run's own); `output`: where
    to write (None: the tool's default); `scorer`: `final`, `folds` or None (what the run used
    for its own submission); `cut_by`: `threshold` or `fraction` (module docstring); `tree`:
    the tree of a ROOT input (None: the run's `data.tree`, else the file's only tree).
    """

    run: Path
    input: Path | None = None
    output: Path | None = None
    scorer: str | None = None
    cut_by: str = "threshold"
    tree: str | None = None

    def __post_init__(self) -> None:
        for name in ("run", "input", "output"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.scorer is not None and self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {SCORERS} (or null), got {self.scorer!r}")
        if self.cut_by not in CUTS:
            raise ValueError(f"cut_by must be one of {CUTS}, got {self.cut_by!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **values: Any) -> ApplyRequest:
        """The request of an entry point's config (`run`, `input`, ...; `values` win).

        The old keys `ensemble` and `cut` are read as `scorer` and `cut_by`, with a warning.
        """
        # keys(), not `in`: a mandatory key left ??? is there, and cfg[name] raises naming it.
        given = set(cfg.keys())
        options = {
            name: cfg[name]
            for name in ("run", "input", "output", "scorer", "cut_by", "tree")
            if name in given
        }
        defaults = {f.name: f.default for f in fields(cls)}
        for old, new in DEPRECATED.items():
            value = cfg.get(old)
            if value is None:
                continue
            log.warning("%s=%s is deprecated: write %s=%s", old, value, new, value)
            if new in options and options[new] not in (None, value, defaults[new]):
                raise ValueError(
                    f"{old}={value} and {new}={options[new]} disagree: {old} is the old name "
                    f"of {new}; give only {new}"
                )
            options[new] = value
        options = {k: v for k, v in options.items() if v is not None}
        return cls(**{**options, **values})


@dataclass(frozen=True)
class ScoringInput:
    """A file of events ready to score with a run: what predict.py and eval.py share."""

    run: RunFolder
    scorer: Scorer
    table: EventTable
    output: Path
    cut_by: str = "threshold"


def open_input(request: ApplyRequest, output: Path | None = None) -> ScoringInput:
    """Check the output name, load the run's scorer and read the request's file.

    The file is a Kaggle test or training CSV or the CERN file, or, read by the run's feature
    branches (see `read_input`), a ROOT (`tree`), Parquet or CSV file of a physicist's events.
    `output` is the tool's default output name (predict's `default_output`).
    """
    if request.input is None:
        raise ValueError("input is null; expected the file of events to score (input=FILE)")
    if request.output is not None:
        output = request.output
    output = default_output(request.input) if output is None else output
    check_output(output, request.input)
    run = RunFolder(request.run)
    scorer = load_scorer(request.run, request.scorer)
    table = read_input(run.config(), request.input, scorer.feature_names, request.tree)
    scorer, cut_by = threshold_or_fallback(request, scorer)
    return ScoringInput(run, scorer, table, output, cut_by)


def write_scores(frame: pd.DataFrame, output: Path) -> None:
    """The scores file, atomically (gzipped where the name ends in .gz)."""
    write_frame(frame, output)


def describe_cut(scorer: Scorer, cut_by: str) -> str:
    """The cut as the log states it: `score >= t` or `top f%`."""
    if cut_by == "threshold":
        return f"score >= {scorer.threshold:.6g}"
    return f"top {scorer.fraction:.2%}"


def predict_file(request: ApplyRequest) -> Path:
    """Score a file of events and write `EventId,score,selected` (see `open_input`)."""
    job = open_input(request)
    scorer = job.scorer
    frame = predict_table(scorer, job.table, job.cut_by)
    write_scores(frame, job.output)
    log.info(
        "%s: %d events scored with the %s model(s) of %s; %d pass the cut (%s)",
        job.output,
        len(frame),
        scorer.name,
        request.run,
        int(frame.selected.sum()),
        describe_cut(scorer, job.cut_by),
    )
    return job.output

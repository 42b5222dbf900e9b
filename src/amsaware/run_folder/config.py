"""A run's `.hydra/config.yaml` read safely: plain values, nothing resolved or instantiated.

A run folder is data, however it was obtained. Its YAML is read with a safe loader, `${a.b}`
references to other keys are substituted by hand (a resolver such as `oc.env` is refused, so
reading runs nothing), and the network is only ever one of `amsaware.model.NETS`, with
integer and float options of the types that registry gives.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amsaware.run_folder.layout import ENSEMBLES, RunFolderError, fold_stage, is_number

if TYPE_CHECKING:
    from torch import nn

    from amsaware.model import Architecture


def architecture(target: Any, where: str) -> Architecture:
    """The registered network (`amsaware.model.NETS`) whose import path is `target`."""
    from amsaware.model import NETS

    known = {entry.target: entry for entry in NETS.values()}
    if not isinstance(target, str) or target not in known:
        raise RunFolderError(
            f"{where}: model._target_ {target!r} is not a known architecture; a run folder's "
            f"network is rebuilt only as one of {sorted(known)}"
        )
    return known[target]


@dataclass(frozen=True)
class ModelSpec:
    """A run's network as plain values: a known architecture's name and its options."""

    architecture: str
    options: dict[str, int | float]

    def build(self, n_features: int) -> nn.Module:
        cls = architecture(self.architecture, "model").cls
        return cls(n_features=n_features, **self.options)


@dataclass(frozen=True)
class RunConfig:
    """What the tools need of a run's `.hydra/config.yaml`, every value checked."""

    path: Path
    model: ModelSpec
    folds: int
    repeats: int
    ensemble: str
    final_fit: bool
    #: The data source (`amsaware.data.sources.SOURCES`) and its checked options.
    data_source: str
    data: dict[str, Any] = field(default_factory=dict)
    #: The whole file as plain values, references unresolved (for comparing configs).
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def default_scorer(self) -> str:
        """The scorer of the run's own submission: the final fit unless ensemble=folds."""
        return "folds" if self.ensemble == "folds" else "final"

    @property
    def fold_stages(self) -> list[str]:
        """`fold0` ... `fold<R k - 1>`: with cv.repeats, R x k fold models."""
        return [fold_stage(k) for k in range(self.folds * self.repeats)]


_REFERENCE = re.compile(r"\$\{([^{}]*)\}")
_KEY_PATH = re.compile(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*")


def _substitute(value: Any, root: dict[str, Any], where: str, depth: int = 0) -> Any:
    """`value` with each `${a.b}` replaced by the plain value of key a.b of the same file.

    Only references to other keys: a resolver call (`${oc.env:...}`, `${hydra:...}`) is
    refused, so reading a run folder's config runs nothing.
    """
    if depth > 20:
        raise RunFolderError(f"{where}: references nest more than 20 deep (a cycle?)")
    if isinstance(value, dict):
        return {k: _substitute(v, root, f"{where}.{k}", depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, root, f"{where}[{i}]", depth) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(key: str) -> Any:
        if not _KEY_PATH.fullmatch(key):
            raise RunFolderError(
                f"{where}: ${{{key}}} is not a reference to another key (resolvers such as "
                "oc.env are not evaluated in a run folder's config)"
            )
        node: Any = root
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise RunFolderError(
                    f"{where}: ${{{key}}} refers to a key the config does not have"
                )
            node = node[part]
        return _substitute(node, root, key, depth + 1)

    whole = _REFERENCE.fullmatch(value)
    if whole:
        return lookup(whole.group(1))
    return _REFERENCE.sub(lambda m: str(lookup(m.group(1))), value)


def _model_spec(model: Any, where: str) -> ModelSpec:
    if not isinstance(model, dict):
        raise RunFolderError(f"{where}: model is {model!r}; expected the model section")
    target = model.get("_target_")
    types = architecture(target, where).options
    options = {k: v for k, v in model.items() if k != "_target_"}
    if set(options) != set(types):
        raise RunFolderError(
            f"{where}: model has options {sorted(options)}; {target} takes exactly {sorted(types)}"
        )
    for key, kind in types.items():
        value = options[key]
        if not (isinstance(value, int) if kind is int else is_number(value)) or isinstance(
            value, bool
        ):
            expected = "an integer" if kind is int else "a number"
            raise RunFolderError(f"{where}: model.{key} is {value!r}; expected {expected}")
        if kind is float and not math.isfinite(value):
            raise RunFolderError(f"{where}: model.{key} is {value!r}; expected a finite number")
        options[key] = kind(value)
    return ModelSpec(target, options)


def read_plain_config(path: Path) -> dict[str, Any]:
    """A YAML config as plain values: safely loaded, nothing resolved or instantiated."""
    from omegaconf import OmegaConf

    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as error:
        raise RunFolderError(
            f"{path}: corrupt, not a YAML config ({type(error).__name__})"
        ) from None
    if not isinstance(raw, dict):
        raise RunFolderError(f"{path}: corrupt, expected a YAML mapping")
    return raw


def read_config(path: Path) -> RunConfig:
    """A run's `.hydra/config.yaml` as checked plain values (see `RunFolder.config`)."""
    from amsaware.data.sources import source_options

    raw = read_plain_config(path)
    where = str(path)
    model = _model_spec(_substitute(raw.get("model"), raw, "model"), where)
    data = _substitute(raw.get("data"), raw, "data")
    try:
        source, options = source_options(data, where)
    except ValueError as error:
        raise RunFolderError(str(error)) from None
    cv = _substitute(raw.get("cv") or {}, raw, "cv")
    folds = cv.get("folds") if isinstance(cv, dict) else None
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise RunFolderError(f"{where}: cv.folds is {folds!r}; expected an integer >= 2")
    repeats = cv.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise RunFolderError(f"{where}: cv.repeats is {repeats!r}; expected an integer >= 1")
    ensemble = _substitute(raw.get("ensemble", "final"), raw, "ensemble")
    if ensemble not in ENSEMBLES:
        raise RunFolderError(f"{where}: ensemble is {ensemble!r}; expected one of {ENSEMBLES}")
    final_fit = _substitute(raw.get("final_fit", True), raw, "final_fit")
    if not isinstance(final_fit, bool):
        raise RunFolderError(f"{where}: final_fit is {final_fit!r}; expected true or false")
    return RunConfig(Path(path), model, folds, repeats, ensemble, final_fit, source, options, raw)

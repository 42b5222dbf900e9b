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


#: A resolver call inside an interpolation (`${hydra:...}`, `${oc.env:...}`, `${now:...}`), as
#: opposed to a reference to another key (`${paths.data_dir}`).
_RESOLVER_CALL = re.compile(r"\$\{\s*[\w.\-]+\s*:")


def self_contained(cfg: Any) -> dict[str, Any]:
    """A task config (`DictConfig`) as plain values, each resolver call replaced by its value.

    Hydra saves a job's config with its own `${hydra:...}` calls (the default
    `paths.root_dir`), which resolve only inside the job that wrote them, and the safe reader
    refuses resolver calls; resolving them when the job starts keeps every run readable by the
    tools. References between keys stay, so the file still says where each path came from. A
    resolver that cannot be evaluated here (no Hydra job) is kept as written.
    """
    from omegaconf import OmegaConf

    def plain(container: Any, raw: Any) -> Any:
        items = raw.items() if isinstance(raw, dict) else enumerate(raw)
        out = {k: resolved(container, k, v) for k, v in items}
        return out if isinstance(raw, dict) else list(out.values())

    def resolved(container: Any, key: Any, value: Any) -> Any:
        if isinstance(value, (dict, list)):
            return plain(container[key], value)
        if not (isinstance(value, str) and _RESOLVER_CALL.search(value)):
            return value
        try:
            result = container[key]
        except Exception:  # no Hydra job here: keep the call as written
            return value
        return (
            OmegaConf.to_container(result, resolve=True) if OmegaConf.is_config(result) else result
        )

    raw = OmegaConf.to_container(cfg, resolve=False)
    return plain(cfg, {k: v for k, v in raw.items() if k != "hydra"})


def save_self_contained(cfg: Any, path: Path) -> None:
    """Write `self_contained(cfg)` to `path` (a Hydra job's `.hydra/config.yaml`), atomically."""
    from omegaconf import OmegaConf

    from amsaware.atomic import atomic_path

    with atomic_path(path) as tmp:
        OmegaConf.save(OmegaConf.create(self_contained(cfg)), tmp)


def read_plain_config(path: Path) -> dict[str, Any]:
    """A YAML config as plain values: safely loaded, nothing resolved or instantiated.

    YAML aliases (`*name`) are refused before anything is built: nested ones expand
    exponentially (a "billion laughs" file of a few hundred bytes would hang the reader), and
    the configs Hydra saves never hold one."""
    import yaml
    from omegaconf import OmegaConf

    try:
        text = Path(path).read_text(encoding="utf-8")
    except PermissionError:
        raise RunFolderError(f"{path}: not readable (permission denied)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path}: not a readable YAML config ({error})") from None
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise RunFolderError(
                    f"{path}: holds a YAML alias (*{event.anchor}), which a saved run config "
                    "never does; refused unread (nested aliases expand exponentially)"
                )
        raw = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    except RunFolderError:
        raise
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

    def value(key: str, default: Any = None) -> Any:
        """Top-level key `key`, references substituted; an error names the file and key."""
        try:
            return _substitute(raw.get(key, default), raw, key)
        except RunFolderError as error:
            raise RunFolderError(f"{path}: {error}") from None

    where = str(path)
    model = _model_spec(value("model"), where)
    data = value("data")
    try:
        source, options = source_options(data, where)
    except ValueError as error:
        raise RunFolderError(str(error)) from None
    cv = value("cv") or {}
    folds = cv.get("folds") if isinstance(cv, dict) else None
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise RunFolderError(f"{where}: cv.folds is {folds!r}; expected an integer >= 2")
    repeats = cv.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise RunFolderError(f"{where}: cv.repeats is {repeats!r}; expected an integer >= 1")
    ensemble = value("ensemble", "final")
    if ensemble not in ENSEMBLES:
        raise RunFolderError(f"{where}: ensemble is {ensemble!r}; expected one of {ENSEMBLES}")
    final_fit = value("final_fit", True)
    if not isinstance(final_fit, bool):
        raise RunFolderError(f"{where}: final_fit is {final_fit!r}; expected true or false")
    return RunConfig(Path(path), model, folds, repeats, ensemble, final_fit, source, options, raw)

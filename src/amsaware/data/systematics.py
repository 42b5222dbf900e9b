"""Nuisance parameters on HiggsML events: energy-scale shifts, soft missing ET, process labels.

The 2014 files carry no systematic variations, so they are simulated, as the FAIR Universe
HiggsML Uncertainty Challenge (2024) and Estrade et al. do: the PRI_ columns are shifted and
every DER_ column is recomputed from them with `amsaware.data.derived.derived_features` (whose
collinear mass stands in for DER_mass_MMC, which cannot be recomputed). With the transverse
vector p_T = pT (cos phi, sin phi) and the missing-ET vector E_T:

- tau energy scale a_tau: PRI_tau_pt *= a_tau, E_T -= (a_tau - 1) p_T,tau (before the shift);
- jet energy scale a_j: the leading (PRI_jet_num >= 1) and subleading (>= 2) jet pT and
  PRI_jet_all_pt *= a_j, E_T -= (a_j - 1)(p_T,j1 + p_T,j2);
- lepton energy scale a_lep: PRI_lep_pt *= a_lep, E_T -= (a_lep - 1) p_T,lep;
- soft missing ET: E_T += (N(0, s), N(0, s)) per event (s in GeV, seeded);
- PRI_met_sumet moves by the scaled objects' pT: (a_tau - 1) pT,tau + (a_lep - 1) pT,lep +
  (a_j - 1) PRI_jet_all_pt (the soft term is a vector smearing; it leaves the sum alone).

Then the post-selection (`Cuts`): jets below `jet_pt` are demoted (no longer counted, as a
higher jet threshold would do; their momentum stays in the missing ET), and an event passes if
its tau and lepton are above `tau_pt` and `lep_pt`. The cuts sit above the file's own thresholds
(tau 20, lepton 26, jets 30 GeV), so an up-shift never needs an object the file does not hold.
Nominal events take the same pipeline at a = 1: nominal and shifted differ only by the shift.

Normalisation nuisances scale a background process's weights; their process labels come from
the 2014 files' weights (`processes_from_weights`), the physics generator's truth, or the
sample names of `data=samples` (`EventTable.process`). docs/systematics.md has the formulas,
default sizes and their sources. Hand-written: no library shifts this challenge's columns.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np

from amsaware.data.derived import derived_features, primary_columns
from amsaware.data.kinematics import transverse
from amsaware.data.schema import DER_FEATURES, FEATURES, PRI_FEATURES, EventTable

_PRI = {name: k for k, name in enumerate(PRI_FEATURES)}

#: The selection thresholds of the 2014 files [GeV] (their smallest stored values).
FILE_TAU_PT, FILE_LEP_PT, FILE_JET_PT = 20.0, 26.0, 30.0
#: Largest accepted size of an energy scale (relative): published priors are 1-3%.
MAX_SCALE = 0.10
#: Largest accepted soft-MET smearing [GeV]: published studies use 0-5 GeV.
MAX_SOFT_MET = 20.0
#: Shape nuisances in the order `variations` lists them.
SHAPES: tuple[str, ...] = ("tes", "jes", "les", "soft_met")

#: Process labels recovered from the 2014 files' weights.
SIGNAL, ZTAUTAU, TTBAR, WJETS = "htautau", "ztautau", "ttbar", "wjets"
#: k = int(1e7 Weight + 0.5) of the top-pair sample's one weight in the 2014 files.
TTBAR_WEIGHT_KEY = 2268701
#: A background weight shared by at least this many events (to the file's 12 digits) is a
#: sample slice of constant weight (Z -> tau tau or top pairs); W + jets weights carry a
#: per-event fake factor and never repeat: on the 12,000-event sample 5,030 distinct W values.
SLICE_MIN_EVENTS = 2
#: KaggleWeight / Weight of the background in KaggleSet t: the Kaggle training.csv's `Weight`
#: is KaggleWeight, so its raw weight is Weight / this (constant to 1e-11 on the 12,000-event
#: sample, all of set t).
KAGGLE_TRAIN_BACKGROUND_SCALE = 3.27965792537


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cuts:
    """Post-selection thresholds [GeV] applied after every shift, nominal included.

    Each must cover the largest up-shift: an object just below the file's threshold (absent from
    the file) shifted up must stay below the cut. tau 22 GeV covers a tau scale up to +10%,
    lepton 27 GeV +3.8%, jets 31 GeV +3.3%.
    """

    tau_pt: float = 22.0
    lep_pt: float = 27.0
    jet_pt: float = 31.0


@dataclass(frozen=True)
class Systematics:
    """Validated nuisance sizes: None switches a nuisance off.

    `tes`, `jes`, `les` are relative 1-sigma sizes of the energy scales (0.03: a = 1 +- 0.03);
    `soft_met` the 1-sigma smearing width [GeV]; `norm` maps a background process name to its
    relative normalisation uncertainty; `seed` seeds the soft-MET smearing; `cuts` the
    post-selection. Build it from a config with `from_config`.
    """

    tes: float | None = 0.03
    jes: float | None = 0.03
    les: float | None = None
    soft_met: float | None = None
    norm: Mapping[str, float] = field(
        default_factory=lambda: {ZTAUTAU: 0.05, TTBAR: 0.10, WJETS: 0.20}
    )
    seed: int = 0
    cuts: Cuts = field(default_factory=Cuts)

    @classmethod
    def from_config(cls, config: Mapping | None, where: str = "systematics") -> Systematics:
        """Settings from a config mapping (`conf/systematics/higgs.yaml`), checked key by key.

        Unknown keys, sizes <= 0 or absurd (a scale above `MAX_SCALE`, soft MET above
        `MAX_SOFT_MET` GeV, a normalisation >= 1), cuts below the file's thresholds or too low
        for the shift they must cover: a ValueError naming the key. null or 0 switches off.
        """
        config = _section(config, where, cls, "a mapping of nuisance sizes")
        defaults = cls()
        values = {}
        for name, bound, unit in (
            ("tes", MAX_SCALE, ""),
            ("jes", MAX_SCALE, ""),
            ("les", MAX_SCALE, ""),
            ("soft_met", MAX_SOFT_MET, " GeV"),
        ):
            raw = config.get(name, getattr(defaults, name))
            values[name] = _size(raw, f"{where}.{name}", bound, unit, inclusive=True)
        norm = config.get("norm", defaults.norm)
        if norm is None:
            norm = {}
        if not isinstance(norm, Mapping):
            raise ValueError(
                f"{where}.norm: expected a mapping process -> size (e.g. {{ztautau: 0.05}}), "
                f"got {norm!r}"
            )
        sizes = {
            str(p): _size(v, f"{where}.norm.{p}", 1.0, "", inclusive=False) for p, v in norm.items()
        }
        values["norm"] = {p: v for p, v in sizes.items() if v is not None}
        seed = config.get("seed", defaults.seed)
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"{where}.seed: expected an integer >= 0, got {seed!r}")
        values["seed"] = int(seed)
        values["cuts"] = _cuts(config.get("cuts"), f"{where}.cuts", values)
        return cls(**values)

    @property
    def shapes(self) -> dict[str, float]:
        """The shape nuisances switched on and their 1-sigma sizes, in `SHAPES` order."""
        return {n: getattr(self, n) for n in SHAPES if getattr(self, n) is not None}


def _size(value: object, key: str, bound: float, unit: str, inclusive: bool) -> float | None:
    if value is None or (isinstance(value, numbers.Real) and value == 0):
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{key}: expected a number (or null to switch it off), got {value!r}")
    value = float(value)
    beyond = value > bound if inclusive else value >= bound
    if not math.isfinite(value) or value < 0 or beyond:
        limit = f"<= {bound:g}{unit}" if inclusive else f"< {bound:g}"
        raise ValueError(
            f"{key}: {value:g}{unit} is not a sane size; expected 0 < size {limit} "
            "(null or 0 switches it off; docs/systematics.md lists published sizes)"
        )
    return value


def _section(config: object, where: str, schema: type, expected: str) -> Mapping:
    """`config` (None: empty) as a mapping of `schema`'s fields only, else a ValueError."""
    config = {} if config is None else config
    if not isinstance(config, Mapping):
        raise ValueError(f"{where}: expected {expected}, got {config!r}")
    known = {f.name for f in fields(schema)}
    unknown = sorted(str(k) for k in config if k not in known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")
    return config


def _cuts(config: object, key: str, sizes: Mapping[str, float | None]) -> Cuts:
    """Cuts from the config, each above the file's threshold moved up by its scale's 1 sigma."""
    config = _section(config, key, Cuts, "a mapping (tau_pt, lep_pt, jet_pt)")
    for name, value in config.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{key}.{name}: expected a threshold in GeV, got {value!r}")
    cuts = Cuts(**{k: float(v) for k, v in config.items()})
    for name, scale, threshold in (
        ("tau_pt", "tes", FILE_TAU_PT),
        ("lep_pt", "les", FILE_LEP_PT),
        ("jet_pt", "jes", FILE_JET_PT),
    ):
        cut, size = getattr(cuts, name), sizes[scale] or 0.0
        if not cut >= threshold * (1 + size):
            raise ValueError(
                f"{key}.{name}: {cut:g} GeV is below the file's threshold {threshold:g} GeV "
                f"moved up by {scale}={size:g} ({threshold * (1 + size):.4g} GeV): events the "
                "file lacks would enter after the shift; raise the cut"
            )
    return cuts


# --- shifting --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shifted:
    """Events after a shift and the post-selection: features, and which events pass."""

    features: np.ndarray
    passed: np.ndarray


def shift(
    features: np.ndarray,
    feature_names: tuple[str, ...] = FEATURES,
    *,
    tes: float = 1.0,
    jes: float = 1.0,
    les: float = 1.0,
    soft_met: float = 0.0,
    rng: np.random.Generator | int | None = None,
    cuts: Cuts | None = None,
) -> np.ndarray:
    """The feature matrix with the energy scales and soft MET applied, jets below the cut
    demoted, and every DER_ column recomputed (float32, NaN where undefined).

    `tes`, `jes`, `les` are the scale factors a (1.0: none); `soft_met` the smearing width in
    GeV, drawn from `rng` (a Generator or a seed; required when soft_met > 0). Columns other
    than the PRI_ and DER_ ones are returned unchanged. An event whose missing-ET vector does
    not move keeps its stored PRI_met and PRI_met_phi bit for bit, so `shift` at a = 1 is the
    nominal pipeline. Which events pass the post-selection: `passes`.
    """
    cuts = cuts or Cuts()
    features = np.asarray(features)
    p = primary_columns(features, feature_names).astype(np.float64)
    col = {name: p[:, k] for name, k in _PRI.items()}
    met_x, met_y = transverse(col["PRI_met"], col["PRI_met_phi"])
    dx, dy = np.zeros(len(p)), np.zeros(len(p))
    sumet = col["PRI_met_sumet"].copy()

    def scale(pt_name: str, phi_name: str, factor: float, present: np.ndarray) -> None:
        if factor == 1.0:
            return
        pt = np.where(present, col[pt_name], 0.0)
        px, py = transverse(pt, np.where(present, col[phi_name], 0.0))
        dx[:] -= (factor - 1) * px
        dy[:] -= (factor - 1) * py
        col[pt_name][present] *= factor

    everyone = np.ones(len(p), dtype=bool)
    jets = col["PRI_jet_num"]
    if tes != 1.0:
        sumet += (tes - 1) * col["PRI_tau_pt"]
    if les != 1.0:
        sumet += (les - 1) * col["PRI_lep_pt"]
    if jes != 1.0:
        sumet += (jes - 1) * col["PRI_jet_all_pt"]
    scale("PRI_tau_pt", "PRI_tau_phi", tes, everyone)
    scale("PRI_lep_pt", "PRI_lep_phi", les, everyone)
    scale("PRI_jet_leading_pt", "PRI_jet_leading_phi", jes, jets >= 1)
    scale("PRI_jet_subleading_pt", "PRI_jet_subleading_phi", jes, jets >= 2)
    col["PRI_jet_all_pt"] *= jes
    if soft_met > 0:
        if rng is None:
            raise ValueError("shift: soft_met > 0 needs rng (a numpy Generator or a seed)")
        noise = np.random.default_rng(rng).normal(0.0, soft_met, (len(p), 2))
        dx += noise[:, 0]
        dy += noise[:, 1]
    moved = (dx != 0) | (dy != 0)
    new_x, new_y = met_x + dx, met_y + dy
    col["PRI_met"][:] = np.where(moved, np.hypot(new_x, new_y), col["PRI_met"])
    col["PRI_met_phi"][:] = np.where(moved, np.arctan2(new_y, new_x), col["PRI_met_phi"])
    col["PRI_met_sumet"][:] = sumet
    _demote_jets(col, cuts.jet_pt)

    out = features.astype(np.float32, copy=True)
    index = {name: k for k, name in enumerate(feature_names)}
    der = derived_features(p)
    for k, name in enumerate(PRI_FEATURES):
        out[:, index[name]] = p[:, k]
    for k, name in enumerate(DER_FEATURES):
        if name in index:
            out[:, index[name]] = der[:, k]
    return out


def _demote_jets(col: dict[str, np.ndarray], jet_pt: float) -> None:
    """Jets below `jet_pt` are no longer counted (in place): a higher jet threshold.

    Jets are ordered by pT, so a leading jet below the cut takes every jet with it (0 jets) and a
    subleading one all but the leading. A third jet's pT is not in the files, so PRI_jet_num = 3
    events whose subleading jet passes keep their count and PRI_jet_all_pt.
    """
    jets = col["PRI_jet_num"]
    no_jets = (jets >= 1) & (col["PRI_jet_leading_pt"] < jet_pt)
    one_jet = (jets >= 2) & ~no_jets & (col["PRI_jet_subleading_pt"] < jet_pt)
    col["PRI_jet_all_pt"][one_jet] = col["PRI_jet_leading_pt"][one_jet]
    col["PRI_jet_all_pt"][no_jets] = 0.0
    jets[one_jet], jets[no_jets] = 1.0, 0.0
    for quantity in ("pt", "eta", "phi"):
        col[f"PRI_jet_subleading_{quantity}"][one_jet | no_jets] = np.nan
        col[f"PRI_jet_leading_{quantity}"][no_jets] = np.nan


def passes(
    features: np.ndarray, feature_names: tuple[str, ...] = FEATURES, cuts: Cuts | None = None
) -> np.ndarray:
    """Which events pass the post-selection: tau pT > cuts.tau_pt and lepton pT > cuts.lep_pt."""
    cuts = cuts or Cuts()
    p = primary_columns(np.asarray(features), feature_names)
    return (p[:, _PRI["PRI_tau_pt"]] > cuts.tau_pt) & (p[:, _PRI["PRI_lep_pt"]] > cuts.lep_pt)


def shifted(features: np.ndarray, feature_names: tuple[str, ...] = FEATURES, **kwargs) -> Shifted:
    """`shift` and `passes` in one: the shifted features and which events pass after the shift."""
    out = shift(features, feature_names, **kwargs)
    return Shifted(out, passes(out, feature_names, kwargs.get("cuts")))


@dataclass(frozen=True)
class Variations:
    """The nominal events and, per shape nuisance, its (-1 sigma, +1 sigma) shifted copies.

    All hold the same events in the same order; an event failing the post-selection in a
    variation has `passed` False there (give it weight 0 in that template). The fit's histosys
    templates come from re-scoring each with the same model.
    """

    nominal: Shifted
    shapes: dict[str, tuple[Shifted, Shifted]]


def variations(
    events: EventTable | np.ndarray,
    settings: Systematics,
    feature_names: tuple[str, ...] | None = None,
) -> Variations:
    """Nominal and +-1 sigma feature matrices of every shape nuisance switched on in `settings`.

    Energy scales go to a = 1 -+ size. Soft MET has no negative width: its -1 sigma is the
    nominal and its +1 sigma a smearing of width `soft_met` seeded by `settings.seed`.
    """
    if isinstance(events, EventTable):
        features, names = events.features, feature_names or events.feature_names
    else:
        features, names = events, feature_names or FEATURES
    cuts = settings.cuts
    nominal = shifted(features, names, cuts=cuts)
    shapes: dict[str, tuple[Shifted, Shifted]] = {}
    for name, size in settings.shapes.items():
        if name == "soft_met":
            up = shifted(features, names, soft_met=size, rng=settings.seed, cuts=cuts)
            shapes[name] = (nominal, up)
        else:
            down = shifted(features, names, cuts=cuts, **{name: 1.0 - size})
            up = shifted(features, names, cuts=cuts, **{name: 1.0 + size})
            shapes[name] = (down, up)
    return Variations(nominal, shapes)


# --- pseudo-experiments ----------------------------------------------------------------------


@dataclass(frozen=True)
class Draw:
    """One pseudo-experiment's true nuisance values drawn from their priors.

    `pulls` are the standard-normal values per nuisance ('tes', ..., 'norm_ztautau'), the
    parameterisation of the fit; the rest are what they mean: scale factors, a smearing width
    [GeV] and per-process weight factors. `shift(..., **draw.shift_kwargs)` applies the shapes.
    """

    pulls: dict[str, float]
    tes: float = 1.0
    jes: float = 1.0
    les: float = 1.0
    soft_met: float = 0.0
    norm: dict[str, float] = field(default_factory=dict)

    @property
    def shift_kwargs(self) -> dict[str, float]:
        return {"tes": self.tes, "jes": self.jes, "les": self.les, "soft_met": self.soft_met}


def draw(settings: Systematics, rng: np.random.Generator) -> Draw:
    """True nuisance values for one pseudo-experiment, drawn from their Gaussian priors.

    A pull t ~ N(0, 1) per nuisance switched on: scales a = 1 + size t; soft MET a width
    size |t| (a width cannot be negative); a process's weight factor (1 + size)^t for t >= 0 and
    (1 - size)^(-t) below, pyhf's normsys interpolation, so toys and fit agree.
    """
    pulls, values = {}, {}
    for name, size in settings.shapes.items():
        t = float(rng.standard_normal())
        pulls[name] = t
        values[name] = size * abs(t) if name == "soft_met" else 1.0 + size * t
    norm = {}
    for process, size in settings.norm.items():
        t = float(rng.standard_normal())
        pulls[f"norm_{process}"] = t
        norm[process] = (1 + size) ** t if t >= 0 else (1 - size) ** (-t)
    return Draw(pulls=pulls, norm=norm, **values)


# --- processes -------------------------------------------------------------------------------


def processes_from_weights(
    weight: np.ndarray, label: np.ndarray, *, scale: float = 1.0
) -> np.ndarray:
    """Each 2014 event's process from its weight: 'htautau', 'ttbar', 'ztautau' or 'wjets'.

    `weight / scale` must be the CERN file's `Weight` column (scale 1) or a per-class rescaling
    of it with background factor `scale` (the Kaggle training.csv: `KAGGLE_TRAIN_BACKGROUND_SCALE`).
    Signal is 'htautau'. A background weight is a sample slice when at least `SLICE_MIN_EVENTS`
    events share it exactly: the slice with k = int(1e7 Weight + 0.5) = `TTBAR_WEIGHT_KEY` is top
    pairs, the others Z -> tau tau; weights that do not repeat are W + jets (a per-event fake
    factor makes each unique). Exact equality is the rule: weights are stored to 12 digits, so
    two W events sharing one by chance are improbable even in the full file.
    """
    weight, label = np.asarray(weight, dtype=np.float64), np.asarray(label)
    out = np.full(len(weight), WJETS, dtype="<U7")
    out[label == 1] = SIGNAL
    background = label == 0
    _, inverse, counts = np.unique(weight[background], return_inverse=True, return_counts=True)
    slice_ = counts[inverse] >= SLICE_MIN_EVENTS
    with np.errstate(invalid="ignore"):  # a weight no file has (refused later, by row)
        key = np.floor(1e7 * weight[background] / scale + 0.5).astype(np.int64)
    names = np.where(slice_, np.where(key == TTBAR_WEIGHT_KEY, TTBAR, ZTAUTAU), WJETS)
    out[background] = names
    return out


def background_processes(table: EventTable) -> tuple[str, ...]:
    """The distinct background processes of a labelled table with process labels, sorted."""
    if table.process is None or table.label is None:
        raise ValueError(f"{table.source}: the events carry no process labels (or no labels)")
    return tuple(sorted(set(table.process[table.label == 0].tolist())))


def check_norms(settings: Systematics, table: EventTable, where: str = "systematics") -> None:
    """A ValueError naming the process when a normalisation names no background event of it.

    Run before training: a nuisance on a process the data lack would silently do nothing.
    """
    if not settings.norm:
        return
    if table.process is None:
        raise ValueError(
            f"{where}.norm sets {sorted(settings.norm)} but {table.source} carries no process "
            "labels; use a source that knows them (the CERN file, data=synthetic with the "
            f"physics generator, data=samples) or set {where}.norm to {{}}"
        )
    present = background_processes(table)
    for process in settings.norm:
        if process not in present:
            raise ValueError(
                f"{where}.norm.{process}: no background event of process {process!r} in "
                f"{table.source}; its background processes are {list(present)}"
            )

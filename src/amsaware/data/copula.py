"""Gaussian-copula model of the challenge events: fitted to aggregate statistics, then sampled.

Why a copula: the features have awkward marginals (hard cuts at 20/26/30 GeV, point masses at
|sqrt(2)| and 0/1, long tails) that any parametric family gets wrong, while much of their
dependence is monotone. A Gaussian copula keeps each marginal exact (an empirical quantile
function) and models the dependence by one correlation matrix of normal scores.

Events are split into groups, class (signal/background) x PRI_jet_num, because the jet
multiplicity decides which features exist (the challenge's -999 pattern) and shifts almost every
distribution; each group is split once more, at the median of an out-of-fold gradient-boosting
signal score fitted to the same file. That last split is what makes the classes overlap as much
as in the real data: real background is a mixture of processes, and some of it (Z -> tau tau)
looks like signal in every feature at once, a joint structure one Gaussian copula per group
cannot hold. Without the split, a classifier separates the synthetic classes far better than the
real ones (AUC ~0.94 against ~0.89 on the 12,000-event development sample); with it, as well (see
benchmarks/synthetic_realism.py). The score only chooses which events are fitted together; it is
not stored and not needed to sample.

Per group the model stores only aggregate statistics of the fitting file:

- the group's frequency;
- per defined feature, its quantiles at fixed levels (rounded to a few significant digits);
  features constant in the group (PRI_jet_all_pt = 0 without jets) as constants, and features
  equal to an earlier one in nearly every event (PRI_jet_all_pt = PRI_jet_leading_pt with one
  jet, DER_pt_tot = DER_pt_h without jets) as aliases, so those identities hold exactly;
- two extra copula variables: whether DER_mass_MMC is undefined (a 0/1 variable, so its
  probability and its dependence on the other features are both kept) and the event weight
  (KaggleWeight), whose distribution differs strongly between jet multiplicities and processes;
  variables with few distinct values (that indicator, the signal weights) are stored as discrete
  distributions rather than quantiles;
- the correlation matrix of the normal scores (its lower triangle), shrunk towards the identity
  (Ledoit-Wolf) so that it is positive definite even for the smallest group.

Sampling draws z ~ N(0, R) per group (Cholesky), maps u = Phi(z) through each stored inverse
CDF, and rounds features to the files' 3 decimals. No event of the fitting file is stored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri
from scipy.stats import rankdata
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import cross_val_predict

from amsaware.data.schema import FEATURES, MISSING, NEEDS_ONE_JET, NEEDS_TWO_JETS

FORMAT = "amsaware.synthetic.copula/1"

#: Quantile levels of the stored continuous marginals (0 and 1 are the group's min and max).
#: Evenly spaced, which lets sampling find the interval by arithmetic instead of a search.
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 121)
#: Each class x jet group is split into this many strata of the out-of-fold signal score.
STRATA = 2
#: Variables with at most this many distinct values in a group are stored as discrete.
MAX_DISCRETE_VALUES = 16
#: Groups smaller than this cannot give a usable correlation matrix.
MIN_GROUP_SIZE = 50
#: Extra copula variables besides the features.
MMC_MISSING = "DER_mass_MMC:missing"
WEIGHT = "weight"
#: A feature equal to an earlier one in at least this share of a group's events is an alias.
ALIAS_SHARE = 0.99

_COLUMN = {name: k for k, name in enumerate(FEATURES)}
_SIG_DIGITS_FEATURE = 5
_SIG_DIGITS_WEIGHT = 6
_CORR_DECIMALS = 4
_MIN_EIGENVALUE = 0.01
_MAX_CORRELATION = 0.98


def undefined_features(jet_num: int) -> tuple[str, ...]:
    """Features the challenge leaves undefined (-999) at this jet multiplicity."""
    if jet_num == 0:
        return NEEDS_ONE_JET + NEEDS_TWO_JETS
    if jet_num == 1:
        return NEEDS_TWO_JETS
    return ()


# ----------------------------------------------------------------------------------------------
# sampling


@dataclass(frozen=True)
class _Marginal:
    """Inverse CDF of one copula variable: quantiles at evenly spaced levels (interpolated
    linearly), or a discrete distribution (values and cumulative probabilities)."""

    values: np.ndarray
    cdf: np.ndarray | None = None  # None: continuous

    def __call__(self, u: np.ndarray) -> np.ndarray:
        if self.cdf is not None:
            index = np.searchsorted(self.cdf, u, side="right")
            return self.values[np.minimum(index, len(self.values) - 1)]
        position = u * (len(self.values) - 1)
        index = np.minimum(position.astype(np.intp), len(self.values) - 2)
        low = self.values[index]
        return low + (position - index) * (self.values[index + 1] - low)


@dataclass(frozen=True)
class _Group:
    label: int
    jet_num: int
    frequency: float
    variables: tuple[str, ...]
    marginals: tuple[_Marginal, ...]
    cholesky: np.ndarray
    constants: dict[str, float]
    aliases: dict[str, str]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`n` events of this group: float32 features (NaN where undefined) and raw weights."""
        # float32 halves the work; its resolution of u (~1e-7) is far below a quantile step.
        z = rng.standard_normal((n, len(self.variables)), dtype=np.float32)
        u = ndtr(z @ self.cholesky.T)
        features = np.full((n, len(FEATURES)), np.nan)
        features[:, _COLUMN["PRI_jet_num"]] = self.jet_num
        for name, value in self.constants.items():
            features[:, _COLUMN[name]] = value
        weight = np.empty(0)
        mmc_missing = np.zeros(n, dtype=bool)
        for k, (name, marginal) in enumerate(zip(self.variables, self.marginals, strict=True)):
            values = marginal(u[:, k])
            if name == WEIGHT:
                weight = values.astype(np.float64)
            elif name == MMC_MISSING:
                mmc_missing = values > 0.5
            else:
                features[:, _COLUMN[name]] = values
        features[mmc_missing, _COLUMN["DER_mass_MMC"]] = np.nan
        for name, source in self.aliases.items():
            features[:, _COLUMN[name]] = features[:, _COLUMN[source]]
        # round in float64, then store the float32 nearest to each 3-decimal value, as a reader
        # of the CSV files does
        return np.round(features, 3, out=features).astype(np.float32), weight


@dataclass(frozen=True)
class CopulaModel:
    """A fitted copula (see the module docstring); `sample` is the registered generator."""

    groups: tuple[_Group, ...]
    source: dict[str, Any]

    def sample(
        self, n_events: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw events: float32 features (n, 30) with NaN, int8 labels, float64 raw weights.

        Group sizes are multinomial with the fitted frequencies; rows come out shuffled.
        """
        frequencies = np.array([g.frequency for g in self.groups])
        counts = rng.multinomial(n_events, frequencies / frequencies.sum())
        parts = [g.sample(int(c), rng) for g, c in zip(self.groups, counts, strict=True)]
        label = np.repeat(np.array([g.label for g in self.groups], dtype=np.int8), counts)
        order = rng.permutation(n_events)
        features = np.concatenate([p[0] for p in parts])[order]
        weight = np.concatenate([p[1] for p in parts])[order]
        return features, label[order], weight

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> CopulaModel:
        """Build from the JSON form written by `fit`; checks the format and each matrix."""
        if params.get("format") != FORMAT:
            raise ValueError(f"not a copula parameter set of format {FORMAT!r}")
        levels = np.asarray(params["quantile_levels"], dtype=np.float64)
        if not np.allclose(levels, np.linspace(0.0, 1.0, len(levels)), rtol=0, atol=1e-6):
            raise ValueError("quantile_levels must be evenly spaced from 0 to 1")
        groups = []
        for g in params["groups"]:
            name = f"group label={g['label']} jet_num={g['jet_num']} stratum={g['stratum']}"
            marginals = tuple(
                _Marginal(np.asarray(m["q"], dtype=np.float32))
                if "q" in m
                else _Marginal(np.asarray(m["values"]), np.asarray(m["cdf"], dtype=np.float32))
                for m in g["marginals"]
            )
            if any(m.cdf is None and len(m.values) != len(levels) for m in marginals):
                raise ValueError(f"{name}: quantiles do not match quantile_levels")
            try:
                cholesky = np.linalg.cholesky(_from_lower(g["correlation"]))
            except np.linalg.LinAlgError as err:
                raise ValueError(f"{name}: correlation matrix is not positive definite") from err
            groups.append(
                _Group(
                    label=int(g["label"]),
                    jet_num=int(g["jet_num"]),
                    frequency=float(g["frequency"]),
                    variables=tuple(g["variables"]),
                    marginals=marginals,
                    cholesky=cholesky.astype(np.float32),
                    constants=dict(g["constants"]),
                    aliases=dict(g["aliases"]),
                )
            )
        return cls(groups=tuple(groups), source=dict(params["source"]))


def load(path: str | Path) -> CopulaModel:
    """Read a parameter file written by `fit`."""
    with open(path, encoding="utf-8") as f:
        return CopulaModel.from_dict(json.load(f))


def _from_lower(rows: list[list[float]]) -> np.ndarray:
    """The symmetric matrix with unit diagonal whose strict lower triangle has these rows."""
    d = len(rows) + 1
    matrix = np.eye(d)
    for i, row in enumerate(rows, start=1):
        matrix[i, :i] = row
        matrix[:i, i] = row
    return matrix


# ----------------------------------------------------------------------------------------------
# fitting


def read_cern_file(path: str | Path) -> pd.DataFrame:
    """The labelled training events of a CERN Open Data (or Kaggle training) file, for fitting.

    Uses KaggleSet 't' where the file has that column, and KaggleWeight where it has it (else
    Weight, which is the same thing in Kaggle's training.csv): weights are renormalised per
    KaggleSet, so mixing sets would mix scales.
    """
    frame = pd.read_csv(path)
    weight_column = "KaggleWeight" if "KaggleWeight" in frame.columns else "Weight"
    absent = [c for c in (*FEATURES, "Label", weight_column) if c not in frame.columns]
    if absent:
        raise ValueError(f"{path}: missing columns {absent}")
    if "KaggleSet" in frame.columns:
        frame = frame[frame["KaggleSet"] == "t"]
        if frame.empty:
            raise ValueError(f"{path}: no rows with KaggleSet 't' to fit on")
    labels = set(frame["Label"].unique())
    if not labels <= {"s", "b"}:
        raise ValueError(f"{path}: column Label holds {sorted(labels - {'s', 'b'})}, not s/b")
    out = frame[list(FEATURES)].astype(np.float64).replace(MISSING, np.nan)
    out["label"] = (frame["Label"] == "s").astype(np.int8).to_numpy()
    out["weight"] = frame[weight_column].astype(np.float64).to_numpy()
    return out.reset_index(drop=True)


def fit(frame: pd.DataFrame, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit the copula to events (columns FEATURES with NaN, `label`, `weight`); JSON-ready dict."""
    jet_num = frame["PRI_jet_num"].to_numpy()
    if not np.isin(jet_num, [0, 1, 2, 3]).all():
        raise ValueError("PRI_jet_num must be 0, 1, 2 or 3")
    if not (frame["weight"] > 0).all():
        raise ValueError("weights must be positive")
    score = _signal_score(frame)
    groups = []
    for label in (1, 0):
        for j in range(4):
            index = np.flatnonzero((frame["label"].to_numpy() == label) & (jet_num == j))
            # equal-sized strata by rank of the score (stable, so ties split deterministically)
            ranked = index[np.argsort(score[index], kind="stable")]
            for stratum, rows in enumerate(np.array_split(ranked, STRATA)):
                group = _fit_group(frame.iloc[np.sort(rows)], label, j, stratum, len(frame))
                groups.append(group)
    return {
        "format": FORMAT,
        "source": {**(source or {}), "n_events": len(frame)},
        "quantile_levels": [round(float(q), 6) for q in QUANTILE_LEVELS],
        "groups": groups,
    }


def fit_file(path: str | Path) -> dict[str, Any]:
    """Fit to a CERN-format file; records its name and SHA-256 as provenance."""
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return fit(read_cern_file(path), source={"file": path.name, "sha256": digest})


def _signal_score(frame: pd.DataFrame) -> np.ndarray:
    """Out-of-fold signal probability (3-fold gradient boosting), used only to form strata."""
    model = HistGradientBoostingClassifier(random_state=0)
    x = frame[list(FEATURES)].to_numpy()
    y = frame["label"].to_numpy()
    return cross_val_predict(model, x, y, cv=3, method="predict_proba")[:, 1]


def _fit_group(
    rows: pd.DataFrame, label: int, jet_num: int, stratum: int, n_total: int
) -> dict[str, Any]:
    name = f"group label={label} jet_num={jet_num} stratum={stratum}"
    if len(rows) < MIN_GROUP_SIZE:
        raise ValueError(f"{name}: {len(rows)} events, need at least {MIN_GROUP_SIZE} to fit")
    undefined = set(undefined_features(jet_num))
    for feature in FEATURES:
        defined = rows[feature].notna()
        if feature in undefined and defined.any():
            raise ValueError(f"{name}: {feature} is defined although it needs more jets")
        if feature not in undefined and feature != "DER_mass_MMC" and not defined.all():
            raise ValueError(f"{name}: {feature} is undefined in {int((~defined).sum())} events")

    constants: dict[str, float] = {}
    aliases: dict[str, str] = {}
    columns: dict[str, np.ndarray] = {}
    for feature in FEATURES:
        if feature in undefined or feature == "PRI_jet_num":
            continue
        values = rows[feature].to_numpy()
        defined = values[~np.isnan(values)]
        if len(defined) < 2:
            raise ValueError(f"{name}: {feature} has fewer than 2 defined values")
        if defined.min() == defined.max():
            constants[feature] = float(defined[0]) + 0.0  # -0.0 -> 0.0
            continue
        same = next((s for s, v in columns.items() if np.mean(v == values) >= ALIAS_SHARE), None)
        if same is not None:
            aliases[feature] = same
            continue
        columns[feature] = values
    columns[MMC_MISSING] = rows["DER_mass_MMC"].isna().to_numpy().astype(np.float64)
    columns[WEIGHT] = rows["weight"].to_numpy()

    variables, marginals, scores, factors = [], [], [], []
    for variable, values in columns.items():
        defined = values[~np.isnan(values)]
        if defined.min() == defined.max():  # e.g. DER_mass_MMC never undefined in this group
            continue
        digits = _SIG_DIGITS_WEIGHT if variable == WEIGHT else _SIG_DIGITS_FEATURE
        marginal, factor = _fit_marginal(defined, digits)
        variables.append(variable)
        marginals.append(marginal)
        scores.append(_normal_scores(values))
        factors.append(factor)
    correlation, shrinkage = _correlation(np.column_stack(scores), np.array(factors))
    return {
        "label": label,
        "jet_num": jet_num,
        "stratum": stratum,
        "n_events": len(rows),
        "frequency": round(len(rows) / n_total, 6),
        "mmc_missing": round(float(rows["DER_mass_MMC"].isna().mean()), 6),
        "constants": constants,
        "aliases": aliases,
        "variables": variables,
        "marginals": marginals,
        "shrinkage": round(shrinkage, 6),
        "correlation": [row[:i].tolist() for i, row in enumerate(correlation)][1:],
    }


def _fit_marginal(values: np.ndarray, digits: int) -> tuple[dict[str, Any], float]:
    """Stored inverse CDF, and the factor that turns correlations with this variable's scores
    into latent-normal ones (1 for continuous variables; the polyserial correction of
    Olsson, Drasgow and Dorans 1982 for discrete ones, whose scores take few values)."""
    distinct, counts = np.unique(values, return_counts=True)
    if len(distinct) > MAX_DISCRETE_VALUES:
        return {"q": _round_sig(np.quantile(values, QUANTILE_LEVELS), digits)}, 1.0
    cdf = np.cumsum(counts) / len(values)
    cdf[-1] = 1.0
    lower = np.concatenate([[0.0], cdf[:-1]])
    category_scores = ndtri((lower + cdf) / 2)  # each category's mid-rank normal score
    p = counts / len(values)
    mean = np.sum(p * category_scores)
    sd = np.sqrt(np.sum(p * (category_scores - mean) ** 2))
    thresholds = ndtri(cdf[:-1])
    denom = np.sum(np.exp(-(thresholds**2) / 2) / np.sqrt(2 * np.pi) * np.diff(category_scores))
    marginal = {
        "values": _round_sig(distinct, digits),
        "cdf": [round(float(c), 6) for c in cdf],
    }
    return marginal, float(sd / denom)


def _normal_scores(values: np.ndarray) -> np.ndarray:
    """Phi^-1 of mid-ranks / (n + 1), NaN kept (DER_mass_MMC where undefined)."""
    out = np.full(len(values), np.nan)
    defined = ~np.isnan(values)
    out[defined] = ndtri(rankdata(values[defined]) / (defined.sum() + 1))
    return out


def _correlation(scores: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, float]:
    """Positive-definite correlation of normal scores (NaN-aware, pairwise complete)."""
    d = scores.shape[1]
    defined = ~np.isnan(scores)
    corr = np.eye(d)
    for i in range(d):
        for j in range(i):
            both = defined[:, i] & defined[:, j]
            x, y = scores[both, i], scores[both, j]
            if x.std() == 0 or y.std() == 0:  # DER_mass_MMC vs its own missing indicator
                continue
            r = np.corrcoef(x, y)[0, 1] * factors[i] * factors[j]
            corr[i, j] = corr[j, i] = np.clip(r, -_MAX_CORRELATION, _MAX_CORRELATION)
    # Ledoit-Wolf intensity from the standardised scores (undefined scores at their mean 0).
    filled = np.nan_to_num(scores)
    shrinkage = float(ledoit_wolf_shrinkage((filled - filled.mean(0)) / filled.std(0)))
    corr = (1 - shrinkage) * corr + shrinkage * np.eye(d)
    eigenvalues, vectors = np.linalg.eigh(corr)
    corr = (vectors * np.maximum(eigenvalues, _MIN_EIGENVALUE)) @ vectors.T
    scale = np.sqrt(np.diag(corr))
    corr = np.round(corr / np.outer(scale, scale), _CORR_DECIMALS)
    np.fill_diagonal(corr, 1.0)
    return corr, shrinkage


def _round_sig(values: np.ndarray, digits: int) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in values]

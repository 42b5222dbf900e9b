"""The challenge's columns, constants and the one in-memory form every reader produces."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

DER_FEATURES: tuple[str, ...] = (
    "DER_mass_MMC",
    "DER_mass_transverse_met_lep",
    "DER_mass_vis",
    "DER_pt_h",
    "DER_deltaeta_jet_jet",
    "DER_mass_jet_jet",
    "DER_prodeta_jet_jet",
    "DER_deltar_tau_lep",
    "DER_pt_tot",
    "DER_sum_pt",
    "DER_pt_ratio_lep_tau",
    "DER_met_phi_centrality",
    "DER_lep_eta_centrality",
)
PRI_FEATURES: tuple[str, ...] = (
    "PRI_tau_pt",
    "PRI_tau_eta",
    "PRI_tau_phi",
    "PRI_lep_pt",
    "PRI_lep_eta",
    "PRI_lep_phi",
    "PRI_met",
    "PRI_met_phi",
    "PRI_met_sumet",
    "PRI_jet_num",
    "PRI_jet_leading_pt",
    "PRI_jet_leading_eta",
    "PRI_jet_leading_phi",
    "PRI_jet_subleading_pt",
    "PRI_jet_subleading_eta",
    "PRI_jet_subleading_phi",
    "PRI_jet_all_pt",
)
FEATURES: tuple[str, ...] = DER_FEATURES + PRI_FEATURES

#: Value the challenge files use for "undefined for this event"; read as NaN.
MISSING = -999.0

#: Features undefined when PRI_jet_num < 1 and < 2 respectively (the challenge documentation).
NEEDS_ONE_JET: tuple[str, ...] = (
    "PRI_jet_leading_pt",
    "PRI_jet_leading_eta",
    "PRI_jet_leading_phi",
)
NEEDS_TWO_JETS: tuple[str, ...] = (
    "DER_deltaeta_jet_jet",
    "DER_mass_jet_jet",
    "DER_prodeta_jet_jet",
    "DER_lep_eta_centrality",
    "PRI_jet_subleading_pt",
    "PRI_jet_subleading_eta",
    "PRI_jet_subleading_phi",
)

#: Weight totals of the full data set (any KaggleSet by KaggleWeight; docs/formulas.md).
S_TOT = 691.988607712
B_TOT = 410999.847322


@dataclass(frozen=True)
class EventTable:
    """Validated events: the single form that flows from readers to the DataModule.

    `features` is float32 (n, len(feature_names)) with NaN where the source had -999.
    `label` (1 signal, 0 background) and `weight` are None for unlabelled test files;
    `kaggle_set` holds the CERN file's KaggleSet letters ('t', 'b', 'v', 'u') where known.
    `s_tot`/`b_tot` are the full-data signal and background totals the weights stand for: AMS
    rescales any subset's weights to them. The challenge's constants unless a source knows
    better (a physicist's samples: the sums of their weights). `subset` keeps them.
    `row` is each event's data row in its file (0-based), where a reader knows it, so that a
    check after loading can name the row as the readers do.
    `process` names each event's physics process (strings, e.g. 'ztautau', 'ttbar', 'wjets')
    where a source knows it: the normalisation nuisances of `amsaware.data.systematics` scale
    each background process separately. None where unknown.
    """

    event_id: np.ndarray
    features: np.ndarray
    label: np.ndarray | None = None
    weight: np.ndarray | None = None
    kaggle_set: np.ndarray | None = None
    source: str = "<memory>"
    feature_names: tuple[str, ...] = FEATURES
    s_tot: float = S_TOT
    b_tot: float = B_TOT
    row: np.ndarray | None = None
    process: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.event_id)

    def where(self, k: int) -> str:
        """Event `k` for a message: its file row and line where known, always its EventId."""
        if self.row is None:
            return f"EventId {self.event_id[k]}"
        row = int(self.row[k])
        return f"row {row + 1} (line {row + 2}, EventId {self.event_id[k]})"

    @property
    def labelled(self) -> bool:
        return self.label is not None and self.weight is not None

    def subset(self, index: np.ndarray) -> EventTable:
        """Rows selected by an integer index or boolean mask, as a new table."""

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return replace(
            self,
            event_id=self.event_id[index],
            features=self.features[index],
            label=take(self.label),
            weight=take(self.weight),
            kaggle_set=take(self.kaggle_set),
            row=take(self.row),
            process=take(self.process),
        )


@dataclass(frozen=True)
class Dataset:
    """Training events (labelled) and, where the source has them, test events to score."""

    train: EventTable
    test: EventTable | None = None

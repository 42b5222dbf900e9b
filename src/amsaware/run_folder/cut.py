"""The run's selection (`Cut`): the top fraction of events, and each scorer's threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from amsaware.run_folder.layout import CUTS, SCORERS, RunFolderError, is_number


@dataclass(frozen=True)
class Cut:
    """The selection applied to test events: the top `fraction` of them, ranked by logit.

    `threshold` is the out-of-fold score at that fraction, `threshold_logit` the out-of-fold
    logit there (the exact cut where probabilities round to 1); `ams` is the raw out-of-fold
    AMS there and `ams_smoothed` the smoothed curve's value that chose it. Test events are cut
    by rank, as the challenge winners did: the final model's scores are calibrated differently
    from the fold models'. `threshold_<scorer>` (and `threshold_logit_<scorer>`) are the
    lowest test score each scorer selected, the cut on that scorer's own scale, which
    predict.py applies to new events; they are None where the scorer selected no test events.
    """

    fraction: float
    threshold: float
    ams: float
    ams_smoothed: float
    threshold_logit: float | None = None
    threshold_final: float | None = None
    threshold_logit_final: float | None = None
    threshold_folds: float | None = None
    threshold_logit_folds: float | None = None

    _ALWAYS = ("fraction", "threshold", "ams", "ams_smoothed", "threshold_logit")

    def to_dict(self) -> dict[str, float | None]:
        """metrics.json's `cut`: the out-of-fold cut, and each scorer's threshold it has."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in values.items() if k in self._ALWAYS or v is not None}

    @classmethod
    def from_dict(cls, cut: Any, where: str) -> Cut:
        """metrics.json's `cut`, every value the tools apply checked to be in range."""
        if not isinstance(cut, dict) or "fraction" not in cut or "threshold" not in cut:
            raise RunFolderError(f"{where}: corrupt, no cut.fraction and cut.threshold")
        values: dict[str, float | None] = {}
        for f in fields(cls):
            value = cut.get(f.name)
            if value is None and f.name not in ("fraction", "threshold"):
                values[f.name] = math.nan if f.name.startswith("ams") else None
                continue
            fine = is_number(value) and (f.name.startswith("ams") or math.isfinite(value))
            if f.name == "fraction":
                fine = fine and 0.0 < value <= 1.0
                bounds = "in (0, 1]"
            elif f.name.startswith("threshold_logit"):
                bounds = "a finite logit"
            elif f.name.startswith("threshold"):
                fine = fine and 0.0 <= value <= 1.0
                bounds = "a probability in [0, 1]"
            else:
                bounds = "a number"
            if not fine:
                raise RunFolderError(
                    f"{where}: cut.{f.name} is {value!r}; expected {bounds} (damaged?)"
                )
            values[f.name] = float(value)
        return cls(**values)

    def thresholds(self, scorer: str) -> tuple[float | None, float | None]:
        """The cut as (score, logit) thresholds on `scorer`'s scale.

        The fold ensemble of a run that scored no test events falls back to the out-of-fold
        values, its models' scale on events they did not see; a final model has none then.
        """
        if scorer == "final":
            return self.threshold_final, self.threshold_logit_final
        if scorer == "folds":
            score = self.threshold if self.threshold_folds is None else self.threshold_folds
            logit = self.threshold_logit_folds
            return score, self.threshold_logit if logit is None else logit
        raise ValueError(f"scorer must be one of {SCORERS}, got {scorer!r}")

    def select(
        self,
        scores: np.ndarray,
        scorer: str = "final",
        how: str = "fraction",
        logits: np.ndarray | None = None,
    ) -> np.ndarray:
        """Pass/fail per event: the top `fraction` (`how='fraction'`), or `scorer`'s threshold.

        Events are ranked by `logits` where given: probabilities that round to 1 do not tie.
        """
        if how not in CUTS:
            raise ValueError(f"cut must be one of {CUTS}, got {how!r}")
        if how == "fraction":
            from amsaware.metrics import select_top_fraction

            ranking = np.asarray(scores if logits is None else logits)
            return select_top_fraction(torch.from_numpy(ranking), self.fraction).numpy()
        threshold, threshold_logit = self.thresholds(scorer)
        if logits is not None and threshold_logit is not None:
            return logits >= threshold_logit
        if threshold is None:
            raise RunFolderError(
                f"the run's {scorer} model has no score threshold: the run scored no test events "
                "with it, so its cut is known only as a fraction. Use cut=fraction (the top "
                f"{self.fraction:.2%} of the file's events) or ensemble=folds."
            )
        return scores >= threshold

    def with_test_selection(
        self, scorer: str, scores: np.ndarray, selected: np.ndarray, logits: np.ndarray | None
    ) -> Cut:
        """The cut with `scorer`'s thresholds: the lowest test score (and logit) it selected."""
        if not selected.any():
            return self
        low_logit = None if logits is None else float(logits[selected].min())
        return replace(
            self,
            **{
                f"threshold_{scorer}": float(scores[selected].min()),
                f"threshold_logit_{scorer}": low_logit,
            },
        )

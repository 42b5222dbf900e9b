"""Fold-safe preprocessing: the seed paper's mean imputation then standard scaling.

Fitted on the training rows of a fold only, so no statistic of the validation rows leaks in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


def fit_preprocessing(features: np.ndarray) -> Pipeline:
    """Mean imputation of NaN (the challenge's -999) followed by standard scaling.

    `keep_empty_features` keeps a column that is all-NaN in these rows (it becomes 0) so the
    model's input width never depends on the fold.
    """
    pipeline = make_pipeline(
        SimpleImputer(strategy="mean", keep_empty_features=True),
        StandardScaler(),
    )
    pipeline.fit(features)
    return pipeline


def transform(pipeline: Pipeline, features: np.ndarray) -> np.ndarray:
    """Apply a fitted pipeline, returning float32 (the model's dtype)."""
    return pipeline.transform(features).astype(np.float32, copy=False)


FORMAT = "amsaware.preprocessing/1"


@dataclass(frozen=True)
class FittedPreprocessing:
    """The fitted statistics of the pipeline, in a form that can be saved as JSON.

    A run's preprocessing must travel with its checkpoints without pickle (which runs code on
    load), and the ONNX export folds the same numbers into its graph. `transform` repeats the
    pipeline's arithmetic (fill NaN, subtract, divide, all in float32 as sklearn does), so
    its output equals `transform(pipeline, x)` bit for bit; tests check that.
    """

    feature_names: tuple[str, ...]
    fill: np.ndarray  # the imputer's per-feature mean (0 for a feature empty in training)
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_pipeline(
        cls, pipeline: Pipeline, feature_names: tuple[str, ...]
    ) -> FittedPreprocessing:
        imputer, scaler = pipeline[0], pipeline[1]
        if len(feature_names) != len(imputer.statistics_):
            raise ValueError(
                f"{len(feature_names)} feature names for a pipeline fitted on "
                f"{len(imputer.statistics_)} features"
            )
        return cls(
            tuple(feature_names),
            np.asarray(imputer.statistics_, dtype=np.float64),
            np.asarray(scaler.mean_, dtype=np.float64),
            np.asarray(scaler.scale_, dtype=np.float64),
        )

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Raw features (NaN where undefined) -> the model's float32 inputs."""
        if features.ndim != 2 or features.shape[1] != len(self.feature_names):
            raise ValueError(
                f"expected features of shape (n, {len(self.feature_names)}), got {features.shape}"
            )
        x = np.array(features, dtype=np.float32, copy=True)
        missing = np.isnan(x)
        x[missing] = np.broadcast_to(self.fill.astype(np.float32), x.shape)[missing]
        x -= self.mean.astype(np.float32)  # as StandardScaler: statistics cast to float32
        x /= self.scale.astype(np.float32)
        return x

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; Python's float repr round-trips float64 exactly."""
        return {
            "format": FORMAT,
            "steps": ["SimpleImputer(strategy='mean') on NaN", "StandardScaler"],
            "features": [
                {"name": name, "fill": float(f), "mean": float(m), "scale": float(s)}
                for name, f, m, s in zip(
                    self.feature_names, self.fill, self.mean, self.scale, strict=True
                )
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> FittedPreprocessing:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{source}: expected preprocessing format {FORMAT!r}, got {found!r}")
        try:
            rows = data["features"]
            names = tuple(str(row["name"]) for row in rows)
            columns = {
                key: np.array([float(row[key]) for row in rows], dtype=np.float64)
                for key in ("fill", "mean", "scale")
            }
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{source}: malformed preprocessing statistics ({type(error).__name__}: {error});"
                " expected 'features': [{'name', 'fill', 'mean', 'scale'}, ...]"
            ) from None
        largest = float(np.finfo(np.float32).max)  # transform computes in float32
        for key, values in columns.items():
            bad = ~np.isfinite(values) | (np.abs(values) > largest)
            bad |= (values < np.finfo(np.float32).tiny) if key == "scale" else False
            if bad.any():
                k = int(np.argmax(bad))
                raise ValueError(f"{source}: feature {names[k]!r}: invalid {key} {values[k]}")
        return cls(names, columns["fill"], columns["mean"], columns["scale"])

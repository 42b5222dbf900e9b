"""Fold-safe preprocessing: the seed paper's mean imputation then standard scaling.

Fitted on the training rows of a fold only, so no statistic of the validation rows leaks in.
"""

from __future__ import annotations

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

"""Prediction drift: the distribution of the scores the champion served against the scores the same
version gives its own test split.

Labels arrive weeks late; the model's output moves at once. The served ``probability`` column of the
prediction log (the champion's answers only: shadow scores were never returned) is compared with the
version's scores on the test split of the training set it was built from, by the same statistic as
feature drift (:func:`ml_platform.monitoring.drift.compute_drift` on one column): the Wasserstein
distance normed by the reference's standard deviation (drifted at ``>=`` the threshold) or the
Kolmogorov-Smirnov p-value (drifted at ``<=`` it). The threshold defaults to the method's per-feature
drift threshold (0.1 for Wasserstein, 0.05 for KS).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.monitoring.drift import METHOD_TITLES, DriftConfig, compute_drift
from ml_platform.monitoring.health import reference_features

SCORE_COLUMN = "probability"
QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)


def score_quantiles(scores: np.ndarray, quantiles: tuple[float, ...] = QUANTILES) -> dict[str, float]:
    """The finite ``scores``' quantiles by name (``p05``, ``p50``, ...); empty when none is finite."""
    values = np.asarray(scores, dtype="float64")
    values = values[np.isfinite(values)]
    if not len(values):
        return {}
    return {
        f"p{round(100 * q):02d}": float(value)
        for q, value in zip(quantiles, np.quantile(values, quantiles), strict=True)
    }


@dataclass(frozen=True)
class PredictionDrift:
    """The served scores against the reference scores: ``score`` by ``method`` and the verdict."""

    method: str
    score: float
    threshold: float
    drifted: bool
    rows: int
    reference_rows: int
    quantiles: dict[str, float]  # of the served scores
    reference_quantiles: dict[str, float]

    @property
    def method_title(self) -> str:
        return METHOD_TITLES.get(self.method, self.method)

    def describe(self) -> str:
        relation = (">=" if self.drifted else "<") if self.method == "wasserstein" else ("<=" if self.drifted else ">")
        verdict = "drifted" if self.drifted else "no drift"
        median = self.quantiles.get("p50", float("nan"))
        reference_median = self.reference_quantiles.get("p50", float("nan"))
        return (
            f"{verdict}: {self.method_title} {self.score:.4g} {relation} {self.threshold:g} on {self.rows} served "
            f"scores against {self.reference_rows} test-split scores (median {median:.4g} vs {reference_median:.4g})"
        )


def prediction_drift(
    reference_scores: np.ndarray,
    served_scores: np.ndarray,
    config: DriftConfig = DriftConfig(),  # noqa: B008 - frozen dataclass, immutable default
) -> PredictionDrift:
    """Drift of ``served_scores`` against ``reference_scores`` by ``config``'s method and threshold.

    Non-finite scores are dropped from each side; a side left empty is a ValueError naming it."""
    reference = pd.DataFrame({SCORE_COLUMN: np.asarray(reference_scores, dtype="float64").reshape(-1)})
    current = pd.DataFrame({SCORE_COLUMN: np.asarray(served_scores, dtype="float64").reshape(-1)})
    report = compute_drift(reference, current, [SCORE_COLUMN], config)
    [feature] = report.features
    return PredictionDrift(
        method=config.method,
        score=float(feature.score),
        threshold=float(feature.threshold),
        drifted=bool(feature.drifted),
        rows=report.current_rows,
        reference_rows=report.reference_rows,
        quantiles=score_quantiles(current[SCORE_COLUMN].to_numpy()),
        reference_quantiles=score_quantiles(reference[SCORE_COLUMN].to_numpy()),
    )


def reference_scores(booster, training_set_path: Path) -> np.ndarray:
    """What ``booster`` (an ``xgboost.Booster``) scores the test split of the training set at
    ``training_set_path``: the scores its served ones are compared with."""
    from ml_platform.training.train import predict_probability

    features = reference_features(training_set_path, MODEL_FEATURES)
    return predict_probability(booster, features[list(MODEL_FEATURES)])

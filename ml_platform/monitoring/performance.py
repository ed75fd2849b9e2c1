"""Live model quality: the served predictions judged by the labels that have arrived.

The prediction log holds each answer's decision (``is_fraud``, at the model's own threshold); the
label store holds the late ground truth. Joining them on ``request_id`` gives accuracy, precision,
recall and F1 on real traffic, compared with the same metrics the version scored on its test split
when it was evaluated: the gap is the "accuracy drop" the alert rules watch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

LIVE_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1")


def _nan_to_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class LivePerformance:
    model_version: int | None
    labeled_rows: int
    unlabeled_rows: int
    metrics: dict[str, float]  # accuracy, precision, recall, f1 on labeled traffic (NaN when none is labeled)
    baseline: dict[str, float]  # the same names from the version's evaluation
    positive_rate: float = float("nan")  # share of labeled rows that are fraud
    confusion: dict[str, int] = field(default_factory=dict)  # true/false positives/negatives

    @property
    def label_coverage(self) -> float:
        total = self.labeled_rows + self.unlabeled_rows
        return self.labeled_rows / total if total else float("nan")

    def drop(self, name: str = "accuracy") -> float:
        """``baseline - live`` for metric ``name`` (positive = worse live); NaN when either is unknown."""
        live = self.metrics.get(name, float("nan"))
        base = self.baseline.get(name, float("nan"))
        if live is None or base is None:
            return float("nan")
        return float(base) - float(live)

    def to_dict(self) -> dict:
        """JSON-able (NaN becomes null)."""
        return {
            "model_version": self.model_version,
            "labeled_rows": self.labeled_rows,
            "unlabeled_rows": self.unlabeled_rows,
            "label_coverage": _nan_to_none(self.label_coverage),
            "positive_rate": _nan_to_none(self.positive_rate),
            "metrics": {name: _nan_to_none(value) for name, value in self.metrics.items()},
            "baseline": {name: _nan_to_none(value) for name, value in self.baseline.items()},
            "drops": {name: _nan_to_none(self.drop(name)) for name in LIVE_METRICS},
            "confusion": dict(self.confusion),
        }


def live_performance(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    baseline: Mapping[str, float],
    *,
    model_version: int | None = None,
) -> LivePerformance:
    """Accuracy, precision, recall and F1 of the logged decisions against the arrived labels.

    ``predictions`` are prediction log rows (``request_id``, ``is_fraud``, ``model_version``);
    ``labels`` are label store rows (``request_id``, ``label``), one per request. With
    ``model_version`` only that version's rows count (the version serving now: a rollback must not be
    judged by its predecessor's answers). Rows without a label are counted as unlabeled.
    """
    from sklearn import metrics as skm

    for side, frame, needed in (
        ("predictions", predictions, ("request_id", "is_fraud", "model_version")),
        ("labels", labels, ("request_id", "label")),
    ):
        missing = [name for name in needed if name not in frame.columns]
        if missing:
            raise ValueError(f"{side}: missing column(s) {', '.join(missing)}")
    rows = predictions
    if model_version is not None:
        rows = rows.loc[rows["model_version"] == int(model_version)]
    # ids as text on both sides: an empty label frame must not fail the join on dtype
    known = pd.DataFrame({"request_id": labels["request_id"].astype(str), "label": labels["label"].to_numpy()})
    known = known.drop_duplicates("request_id", keep="last")
    answers = pd.DataFrame({"request_id": rows["request_id"].astype(str), "is_fraud": rows["is_fraud"].to_numpy()})
    joined = answers.merge(known, on="request_id", how="left", validate="many_to_one")
    labeled = joined.loc[joined["label"].notna()]
    labeled_rows = len(labeled)
    base = {name: float(baseline[name]) for name in LIVE_METRICS if name in baseline and baseline[name] is not None}
    if labeled_rows == 0:
        return LivePerformance(
            model_version=model_version,
            labeled_rows=0,
            unlabeled_rows=len(joined),
            metrics={name: float("nan") for name in LIVE_METRICS},
            baseline=base,
        )
    truth = labeled["label"].to_numpy().astype(bool).astype(int)
    predicted = labeled["is_fraud"].to_numpy().astype(bool).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(truth, predicted, labels=[0, 1]).ravel()
    metrics = {
        "accuracy": float(skm.accuracy_score(truth, predicted)),
        "precision": float(skm.precision_score(truth, predicted, zero_division=0)),
        "recall": float(skm.recall_score(truth, predicted, zero_division=0)),
        "f1": float(skm.f1_score(truth, predicted, zero_division=0)),
    }
    return LivePerformance(
        model_version=model_version,
        labeled_rows=labeled_rows,
        unlabeled_rows=len(joined) - labeled_rows,
        metrics=metrics,
        baseline=base,
        positive_rate=float(np.mean(truth)),
        confusion={
            "true_negatives": int(tn),
            "false_positives": int(fp),
            "false_negatives": int(fn),
            "true_positives": int(tp),
        },
    )

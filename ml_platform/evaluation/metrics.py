"""Classification metrics for a fraud model, computed with scikit-learn.

scikit-learn is imported when a metric is computed, not with this module: the Dagster code location
imports this module and is loaded again by every step process of a run.
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")
# The confusion counts at the decision threshold: with them a metric's uncertainty can be judged later.
COUNT_NAMES = ("true_positives", "false_positives", "false_negatives", "true_negatives")
# The bootstrap standard error of PR AUC, which no count gives.
PR_AUC_SE = "pr_auc_se"
PR_AUC_SE_RESAMPLES = 500
PR_AUC_SE_SEED = 0


def classification_metrics(y_true: np.ndarray, probability: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall and F1 at ``threshold``; ROC AUC and PR AUC (average precision)
    over all thresholds; plus the confusion counts and the row count."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true).astype(int)
    probability = np.asarray(probability, dtype="float64")
    if len(y_true) != len(probability):
        raise ValueError(f"{len(y_true)} labels but {len(probability)} predictions")
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on zero rows")
    predicted = (probability >= threshold).astype(int)
    both_classes = len(np.unique(y_true)) == 2
    tn, fp, fn, tp = skm.confusion_matrix(y_true, predicted, labels=[0, 1]).ravel()
    return {
        "accuracy": float(skm.accuracy_score(y_true, predicted)),
        "precision": float(skm.precision_score(y_true, predicted, zero_division=0)),
        "recall": float(skm.recall_score(y_true, predicted, zero_division=0)),
        "f1": float(skm.f1_score(y_true, predicted, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y_true, probability)) if both_classes else float("nan"),
        "pr_auc": float(skm.average_precision_score(y_true, probability)) if both_classes else float("nan"),
        "true_negatives": int(tn),
        "false_positives": int(fp),
        "false_negatives": int(fn),
        "true_positives": int(tp),
        "rows": int(len(y_true)),
        "positive_rate": float(y_true.mean()),
    }


def pr_auc_standard_error(
    y_true: np.ndarray,
    probability: np.ndarray,
    *,
    resamples: int = PR_AUC_SE_RESAMPLES,
    seed: int = PR_AUC_SE_SEED,
) -> float:
    """The standard error of PR AUC (average precision) over ``resamples`` seeded bootstrap resamples of
    the rows (the same rows always give the same figure); NaN unless both classes are present.

    A resample with replacement is the rows weighted by how often each was drawn, so the rows are sorted by
    score once and each resample is a weighted average precision over that order (:func:`_weighted_average_precision`,
    scikit-learn's definition, ties included): a few milliseconds per resample instead of a sort and a
    precision-recall curve each, which on a test split of 150,000 rows took 10 s for 500 resamples.
    """
    y_true = np.asarray(y_true).astype(int)
    probability = np.asarray(probability, dtype="float64")
    if len(y_true) != len(probability):
        raise ValueError(f"{len(y_true)} labels but {len(probability)} predictions")
    if len(np.unique(y_true)) != 2:
        return float("nan")
    order = np.argsort(probability, kind="mergesort")[::-1]
    positive = y_true[order].astype(bool)
    scores = probability[order]
    # the last row of each run of tied scores: precision and recall are read there, as scikit-learn does
    group_ends = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    rng = np.random.default_rng(seed)
    rows = len(scores)
    batch = max(1, min(resamples, 4_000_000 // rows))  # resamples drawn at once, bounded in memory
    estimates = np.empty(resamples, dtype="float64")
    for first in range(0, resamples, batch):
        count = min(batch, resamples - first)
        drawn = rng.integers(0, rows, size=(count, rows), dtype=np.int64)
        drawn += np.arange(count, dtype=np.int64)[:, None] * rows
        weights = np.bincount(drawn.ravel(), minlength=count * rows).reshape(count, rows)
        estimates[first : first + count] = weighted_average_precision(positive, weights, group_ends)
    return float(np.std(estimates, ddof=1))


def weighted_average_precision(positive: np.ndarray, weights: np.ndarray, group_ends: np.ndarray) -> np.ndarray:
    """Average precision of rows sorted by descending score, once per row of ``weights`` (how many times each
    row counts): the sum over thresholds of recall step x precision, the thresholds being the distinct scores
    (``group_ends``: the last row of each run of equal scores), which is scikit-learn's
    ``average_precision_score`` on the rows repeated by their weights; 0 for a weighting without positives,
    as scikit-learn scores it. Only thresholds with a positive row move recall, so only those are read."""
    positive_rows = np.flatnonzero(positive)
    # the thresholds whose group holds a positive row, and how many positive rows lie at or above each
    groups = np.searchsorted(group_ends, positive_rows)
    stepping, first_positive = np.unique(groups, return_index=True)
    positives_through = np.r_[first_positive[1:], len(positive_rows)]
    true_positives = np.cumsum(weights[:, positive_rows], axis=1)[:, positives_through - 1]
    predicted = np.cumsum(weights, axis=1)[:, group_ends[stepping]]
    total = true_positives[:, -1:].astype("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positives / predicted, 0.0)
        recall_step = np.diff(true_positives, axis=1, prepend=0) / total
    return np.where(total[:, 0] > 0, np.sum(np.nan_to_num(recall_step) * precision, axis=1), 0.0)


def best_f1_threshold(y_true: np.ndarray, probability: np.ndarray) -> float:
    """The decision threshold that maximises F1 on (validation) data; 0.5 when there are no positives."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true).astype(int)
    if y_true.sum() == 0:
        return 0.5
    precision, recall, thresholds = skm.precision_recall_curve(y_true, probability)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(thresholds[best]) if len(thresholds) else 0.5

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
    the rows (the same rows always give the same figure); NaN unless both classes are present."""
    import warnings

    from scipy import stats
    from sklearn import metrics as skm

    y_true = np.asarray(y_true).astype(int)
    probability = np.asarray(probability, dtype="float64")
    if len(y_true) != len(probability):
        raise ValueError(f"{len(y_true)} labels but {len(probability)} predictions")
    if len(np.unique(y_true)) != 2:
        return float("nan")

    def average_precision(truth: np.ndarray, score: np.ndarray) -> float:
        with warnings.catch_warnings():  # a resample without positives scores 0, without a warning each
            warnings.simplefilter("ignore")
            return float(skm.average_precision_score(truth, score))

    result = stats.bootstrap(
        (y_true, probability),
        average_precision,
        n_resamples=resamples,
        vectorized=False,
        paired=True,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.standard_error)


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

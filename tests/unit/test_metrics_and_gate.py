"""Metrics against hand counts and brute-force AUCs; the promotion gate's verdicts and wording."""

import math

import numpy as np
import pytest

from ml_platform.evaluation.gate import GateConfig, no_regression, quality_floor
from ml_platform.evaluation.metrics import best_f1_threshold, classification_metrics

# 10 rows, 4 positives; ties at 0.7 (one positive, one negative) and at 0.2 (two negatives).
Y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 0])
P = np.array([0.9, 0.8, 0.7, 0.6, 0.7, 0.2, 0.3, 0.2, 0.1, 0.05])


def brute_roc_auc(y, p):
    pairs = [(pos, neg) for pos in p[y == 1] for neg in p[y == 0]]
    return sum(1.0 if pos > neg else 0.5 if pos == neg else 0.0 for pos, neg in pairs) / len(pairs)


def brute_average_precision(y, p):
    """Sum over distinct score thresholds (high to low) of (recall gain) x (precision at that threshold)."""
    total, previous_recall = 0.0, 0.0
    for threshold in sorted(set(p), reverse=True):
        chosen = p >= threshold
        true_positives = int((chosen & (y == 1)).sum())
        recall = true_positives / int((y == 1).sum())
        precision = true_positives / int(chosen.sum())
        total += (recall - previous_recall) * precision
        previous_recall = recall
    return total


def brute_f1(y, p, threshold):
    predicted = p >= threshold
    tp = int((predicted & (y == 1)).sum())
    fp = int((predicted & (y == 0)).sum())
    fn = int((~predicted & (y == 1)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def test_metrics_at_a_threshold_match_hand_counts():
    metrics = classification_metrics(Y, P, threshold=0.5)
    # predicted positive: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.6 (pos), 0.7 (neg) -> tp 3, fp 2; fn 1 (0.3)
    assert (metrics["true_positives"], metrics["false_positives"]) == (3, 2)
    assert (metrics["false_negatives"], metrics["true_negatives"]) == (1, 4)
    assert metrics["accuracy"] == pytest.approx(7 / 10)
    assert metrics["precision"] == pytest.approx(3 / 5)
    assert metrics["recall"] == pytest.approx(3 / 4)
    assert metrics["f1"] == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))
    assert metrics["rows"] == 10
    assert metrics["positive_rate"] == pytest.approx(0.4)


def test_threshold_is_inclusive():
    metrics = classification_metrics(Y, P, threshold=0.7)
    assert (metrics["true_positives"], metrics["false_positives"]) == (2, 2)  # 0.9, 0.7 pos; 0.8, 0.7 neg


def test_auc_values_match_brute_force():
    metrics = classification_metrics(Y, P, threshold=0.5)
    # hand count over 24 (pos, neg) pairs: 0.9 wins 6, 0.7 wins 4 and ties 1, 0.6 and 0.3 win 4 each
    assert brute_roc_auc(Y, P) == pytest.approx(18.5 / 24)
    assert metrics["roc_auc"] == pytest.approx(brute_roc_auc(Y, P), abs=1e-12)
    assert metrics["pr_auc"] == pytest.approx(brute_average_precision(Y, P), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_values_match_brute_force_on_random_scores_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(200) < 0.2).astype(int)
    p = np.round(np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1), 1)  # coarse scores: many ties
    metrics = classification_metrics(y, p, threshold=0.5)
    assert metrics["roc_auc"] == pytest.approx(brute_roc_auc(y, p), abs=1e-12)
    assert metrics["pr_auc"] == pytest.approx(brute_average_precision(y, p), abs=1e-12)


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_gives_nan_aucs(label):
    metrics = classification_metrics(np.full(5, label), np.linspace(0.1, 0.9, 5), threshold=0.5)
    assert math.isnan(metrics["roc_auc"]) and math.isnan(metrics["pr_auc"])
    assert metrics["accuracy"] == pytest.approx(0.6 if label == 1 else 0.4)  # 0.5, 0.7, 0.9 predicted positive


def test_length_mismatch_and_no_rows_raise():
    with pytest.raises(ValueError, match="10 labels but 9 predictions"):
        classification_metrics(Y, P[:-1], threshold=0.5)
    with pytest.raises(ValueError, match="zero rows"):
        classification_metrics(np.array([]), np.array([]), threshold=0.5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_best_f1_threshold_reaches_the_best_f1_over_the_scores(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(150) < 0.15).astype(int)
    p = np.round(np.clip(rng.normal(0.3 + 0.25 * y, 0.2), 0, 1), 2)
    threshold = best_f1_threshold(y, p)
    best = max(brute_f1(y, p, t) for t in np.unique(p))
    assert brute_f1(y, p, threshold) == pytest.approx(best, abs=1e-12)
    assert threshold in set(p)


def test_best_f1_threshold_on_the_hand_example():
    # F1 by threshold: 0.9 -> 0.4, 0.8 -> 1/3, 0.7 -> 1/2, 0.6 -> 2/3, 0.3 -> 0.8 (best), 0.2 -> 2/3, ...
    assert best_f1_threshold(Y, P) == pytest.approx(0.3)


def test_best_f1_threshold_without_positives_is_one_half():
    assert best_f1_threshold(np.zeros(4), np.array([0.1, 0.4, 0.6, 0.9])) == 0.5


# ---- the gate ----------------------------------------------------------------------------------

CONFIG = GateConfig(min_accuracy=0.85, min_pr_auc=0.30, regression_metric="pr_auc", max_regression=0.01)


def test_quality_floor_passes_a_good_model():
    result = quality_floor({"accuracy": 0.95, "pr_auc": 0.6}, CONFIG)
    assert result.passed and result.name == "quality_floor"
    assert result.metadata == {"accuracy": 0.95, "min_accuracy": 0.85, "pr_auc": 0.6, "min_pr_auc": 0.30}


def test_quality_floor_passes_exactly_at_the_floor():
    assert quality_floor({"accuracy": 0.85, "pr_auc": 0.30}, CONFIG).passed


def test_quality_floor_fails_on_low_accuracy():
    result = quality_floor({"accuracy": 0.80, "pr_auc": 0.6}, CONFIG)
    assert not result.passed
    assert result.description == "accuracy 0.8000 is below the floor 0.8500"


def test_quality_floor_fails_on_low_pr_auc():
    result = quality_floor({"accuracy": 0.95, "pr_auc": 0.2}, CONFIG)
    assert not result.passed
    assert result.description == "PR AUC 0.2000 is below the floor 0.3000"


def test_quality_floor_names_both_failures():
    result = quality_floor({"accuracy": 0.5, "pr_auc": 0.1}, CONFIG)
    assert not result.passed
    assert "accuracy 0.5000" in result.description and "PR AUC 0.1000" in result.description


def test_quality_floor_fails_on_nan_pr_auc():
    result = quality_floor({"accuracy": 0.99, "pr_auc": float("nan")}, CONFIG)
    assert not result.passed
    assert "PR AUC nan" in result.description


def test_no_regression_passes_without_a_champion():
    result = no_regression({"pr_auc": 0.4}, None, CONFIG)
    assert result.passed and "no champion" in result.description
    assert result.metadata == {"metric": "pr_auc", "challenger": 0.4}


@pytest.mark.parametrize("challenger", [0.60, 0.595, 0.70])
def test_no_regression_passes_within_tolerance(challenger):
    result = no_regression({"pr_auc": challenger}, {"pr_auc": 0.60}, CONFIG)
    assert result.passed
    assert "within" in result.description
    assert result.metadata["change"] == pytest.approx(challenger - 0.60)


def test_no_regression_fails_beyond_tolerance():
    result = no_regression({"pr_auc": 0.55}, {"pr_auc": 0.60}, CONFIG)
    assert not result.passed
    assert "0.5500" in result.description and "0.6000" in result.description
    assert "beyond" in result.description and "-0.0500" in result.description


def test_no_regression_fails_on_nan():
    assert not no_regression({"pr_auc": float("nan")}, {"pr_auc": 0.6}, CONFIG).passed


def test_no_regression_uses_the_configured_metric():
    config = GateConfig(regression_metric="roc_auc", max_regression=0.0)
    challenger, champion = {"roc_auc": 0.90, "pr_auc": 0.9}, {"roc_auc": 0.91, "pr_auc": 0.1}
    result = no_regression(challenger, champion, config)
    assert not result.passed and result.description.startswith("roc_auc:")

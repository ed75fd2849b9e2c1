"""Metrics against hand counts and brute-force AUCs; the promotion gate's verdicts and wording."""

import math

import numpy as np
import pytest

from ml_platform.evaluation.gate import GateConfig, beats_champion, quality_floor
from ml_platform.evaluation.metrics import (
    COUNT_NAMES,
    best_f1_threshold,
    classification_metrics,
    pr_auc_standard_error,
    weighted_average_precision,
)

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

CONFIG = GateConfig(min_accuracy=0.85, min_pr_auc=0.30, comparison_metric="pr_auc", min_improvement=0.005)


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


def test_beats_champion_passes_without_a_champion():
    result = beats_champion({"pr_auc": 0.4}, None, CONFIG)
    assert result.passed and result.name == "beats_champion"
    assert result.description == "no champion yet: the first model that clears the floor becomes champion"
    assert result.metadata == {"metric": "pr_auc", "challenger": 0.4}


def test_defaults_ask_for_a_pr_auc_gain_of_half_a_point():
    assert (GateConfig().comparison_metric, GateConfig().min_improvement) == ("pr_auc", 0.005)


@pytest.mark.parametrize("challenger", [0.605, 0.61, 0.70])
def test_beats_champion_passes_at_or_above_the_margin(challenger):
    result = beats_champion({"pr_auc": challenger}, {"pr_auc": 0.60}, CONFIG)
    assert result.passed
    assert result.description.endswith("at least the margin: the challenger replaces the champion")
    assert result.metadata == {
        "metric": "pr_auc",
        "challenger": challenger,
        "champion": 0.60,
        "change": pytest.approx(challenger - 0.60),
        "min_improvement": 0.005,
    }


def test_a_tie_keeps_the_champion():
    result = beats_champion({"pr_auc": 0.4884}, {"pr_auc": 0.4884}, CONFIG)
    assert not result.passed
    assert result.description == (
        "pr_auc: challenger 0.4884 vs champion 0.4884, change +0.0000, margin +0.0050, "
        "below the margin: the champion stays"
    )


@pytest.mark.parametrize("challenger", [0.604, 0.60, 0.55])
def test_beats_champion_fails_below_the_margin(challenger):
    result = beats_champion({"pr_auc": challenger}, {"pr_auc": 0.60}, CONFIG)
    assert not result.passed
    assert result.description.endswith("below the margin: the champion stays")
    assert f"change {challenger - 0.60:+.4f}" in result.description


@pytest.mark.parametrize(("challenger", "champion"), [(float("nan"), 0.6), (0.7, float("nan"))])
def test_beats_champion_fails_on_nan(challenger, champion):
    result = beats_champion({"pr_auc": challenger}, {"pr_auc": champion}, CONFIG)
    assert not result.passed and "the champion stays" in result.description


def test_a_negative_margin_lets_a_worse_challenger_through():
    config = GateConfig(min_improvement=-1.0)
    assert beats_champion({"pr_auc": 0.2}, {"pr_auc": 0.9}, config).passed


def test_beats_champion_uses_the_configured_metric():
    config = GateConfig(comparison_metric="roc_auc", min_improvement=0.0)
    challenger, champion = {"roc_auc": 0.90, "pr_auc": 0.9}, {"roc_auc": 0.91, "pr_auc": 0.1}
    result = beats_champion(challenger, champion, config)
    assert not result.passed and result.description.startswith("roc_auc: challenger 0.9000 vs champion 0.9100")


# ---- what live monitoring needs to allow for the uncertainty of the test metrics ---------------------------
def test_the_logged_confusion_counts_are_among_the_metrics():
    metrics = classification_metrics(Y, P, threshold=0.5)
    assert {name: metrics[name] for name in COUNT_NAMES} == {
        "true_positives": 3,
        "false_positives": 2,
        "false_negatives": 1,
        "true_negatives": 4,
    }


def _scored_sample(rng: np.random.Generator, rows: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` rows with 5% positives, scored higher on average than the negatives, with overlap."""
    y = (rng.random(rows) < 0.05).astype(int)
    return y, rng.normal(0.3 + 0.25 * y, 0.15)


def test_pr_auc_standard_error_matches_the_spread_over_independent_samples():
    rng = np.random.default_rng(0)
    spread = np.std([classification_metrics(*_scored_sample(rng), 0.5)["pr_auc"] for _ in range(300)], ddof=1)
    y, p = _scored_sample(np.random.default_rng(1))
    error = pr_auc_standard_error(y, p)
    assert 0.05 < spread < 0.1  # about 50 positives: PR AUC is known to several points
    assert 0.8 < error / spread < 1.25  # one sample's bootstrap sees the spread of many samples


def test_pr_auc_standard_error_is_seeded():
    y, p = _scored_sample(np.random.default_rng(1))
    assert pr_auc_standard_error(y, p) == pr_auc_standard_error(y, p)  # the same rows give the same figure
    other = pr_auc_standard_error(y, p, seed=7)
    assert other != pr_auc_standard_error(y, p) and other == pytest.approx(pr_auc_standard_error(y, p), rel=0.2)


def test_weighted_average_precision_is_scikit_learns_on_the_repeated_rows():
    """A bootstrap resample is the rows weighted by how often each was drawn: the weighted figure over the
    sorted rows equals scikit-learn's on the resample itself, ties in the scores included."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.15).astype(int)
    p = np.round(rng.random(400) * 0.6 + 0.3 * y, 2)  # two decimals: many tied scores, across both classes
    order = np.argsort(p, kind="mergesort")[::-1]
    group_ends = np.r_[np.flatnonzero(np.diff(p[order])), len(p) - 1]
    draws = rng.integers(0, len(y), size=(6, len(y)))
    weights = np.stack([np.bincount(d, minlength=len(y))[order] for d in draws])
    got = weighted_average_precision(y[order].astype(bool), weights, group_ends)
    expected = [average_precision_score(y[d], p[d]) for d in draws]
    assert got == pytest.approx(expected, rel=1e-12)
    no_positives = np.where(y[order] == 1, 0, 1)[None, :]  # a weighting that leaves every positive out
    assert weighted_average_precision(y[order].astype(bool), no_positives, group_ends).tolist() == [0.0]


@pytest.mark.parametrize("label", [0, 1])
def test_pr_auc_standard_error_is_nan_with_one_class(label):
    assert math.isnan(pr_auc_standard_error(np.full(5, label), np.linspace(0.1, 0.9, 5)))


def test_pr_auc_standard_error_names_a_length_mismatch():
    with pytest.raises(ValueError, match="10 labels but 9 predictions"):
        pr_auc_standard_error(Y, P[:-1])

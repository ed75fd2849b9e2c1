"""Live performance: logged decisions joined with late labels, against scikit-learn on a hand-made case;
the confidence bounds against their closed forms; the accuracy drop verdict on hand-made figures."""

import json
import math
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from ml_platform.monitoring.alerts import DEFAULT_RULES
from ml_platform.monitoring.health import rule_values
from ml_platform.monitoring.performance import (
    LIVE_METRICS,
    LivePerformance,
    baseline_lower_bounds,
    bonferroni_level,
    judge_accuracy_drop,
    live_performance,
)

BASELINE = {"accuracy": 0.97, "precision": 0.8, "recall": 0.7, "f1": 0.75, "roc_auc": 0.99, "pr_auc": 0.6}
LEVEL = 1 - 0.05 / 3  # the default confidence 0.95 shared by recall, precision and PR AUC
# What model evaluation logs beside BASELINE: 1,900 test rows, 120 of them fraud; recall 84/120 = 0.7,
# precision 84/105 = 0.8, accuracy 1843/1900 = 0.97; and PR AUC's bootstrap standard error.
COUNTS = {"true_positives": 84, "false_negatives": 36, "false_positives": 21, "true_negatives": 1759, "pr_auc_se": 0.04}


def predictions() -> pd.DataFrame:
    """12 answers: v3 answered r0..r9, v4 (a challenger) answered c0, c1."""
    decided = [1, 0, 1, 1, 0, 0, 0, 1, 0, 0, 1, 0]
    ids = [f"r{i}" for i in range(10)] + ["c0", "c1"]
    return pd.DataFrame(
        {
            "request_id": ids,
            "is_fraud": [bool(d) for d in decided],
            "model_version": [3] * 10 + [4, 4],
            "probability": [0.9 - 0.01 * i if d else 0.1 + 0.01 * i for i, d in enumerate(decided)],
        }
    )


def labels() -> pd.DataFrame:
    """Labels for r0..r7 (r8, r9 not yet known), c0, and a request that is not in the window."""
    truth = {"r0": 1, "r1": 0, "r2": 0, "r3": 1, "r4": 1, "r5": 0, "r6": 0, "r7": 1, "c0": 0, "zz": 1}
    return pd.DataFrame({"request_id": list(truth), "label": [bool(v) for v in truth.values()]})


def test_metrics_equal_sklearn_on_the_labeled_rows():
    result = live_performance(predictions(), labels(), BASELINE)
    # hand-made: labeled r0..r7 and c0
    y_true = [1, 0, 0, 1, 1, 0, 0, 1, 0]
    y_pred = [1, 0, 1, 1, 0, 0, 0, 1, 1]
    scores = predictions()["probability"].to_numpy()[[0, 1, 2, 3, 4, 5, 6, 7, 10]]
    assert result.labeled_rows == 9 and result.unlabeled_rows == 3
    assert result.metrics["accuracy"] == skm.accuracy_score(y_true, y_pred) == 6 / 9
    assert result.metrics["precision"] == skm.precision_score(y_true, y_pred) == 3 / 5
    assert result.metrics["recall"] == skm.recall_score(y_true, y_pred) == 3 / 4
    assert result.metrics["f1"] == pytest.approx(skm.f1_score(y_true, y_pred))
    assert result.metrics["pr_auc"] == pytest.approx(skm.average_precision_score(y_true, scores))
    assert result.confusion == {"true_negatives": 3, "false_positives": 2, "false_negatives": 1, "true_positives": 3}
    assert result.labelled_positives == 4
    assert result.positive_rate == 4 / 9
    assert result.baseline == {k: BASELINE[k] for k in LIVE_METRICS}  # roc_auc is not a live metric
    assert result.drop() == pytest.approx(0.97 - 6 / 9)
    assert result.drop("recall") == pytest.approx(0.7 - 0.75)  # negative: better live than at evaluation
    assert result.label_coverage == 9 / 12


def test_proportion_bounds_are_one_sided_clopper_pearson_at_the_shared_level():
    result = live_performance(predictions(), labels(), BASELINE)
    assert result.confidence == 0.95 and result.bound_level == pytest.approx(LEVEL) == bonferroni_level(0.95)
    # the one-sided exact upper bound of k successes in n trials is the beta quantile B(level; k + 1, n - k)
    assert result.upper_bounds["recall"] == pytest.approx(stats.beta.ppf(LEVEL, 3 + 1, 4 - 3), abs=1e-9)
    assert result.upper_bounds["precision"] == pytest.approx(stats.beta.ppf(LEVEL, 3 + 1, 5 - 3), abs=1e-9)
    assert result.upper_bounds["accuracy"] == pytest.approx(stats.beta.ppf(LEVEL, 6 + 1, 9 - 6), abs=1e-9)
    assert result.bound_drop("recall") == pytest.approx(0.7 - result.upper_bounds["recall"])
    looser = live_performance(predictions(), labels(), BASELINE, confidence=0.8)
    assert looser.upper_bounds["recall"] == pytest.approx(stats.beta.ppf(1 - 0.2 / 3, 4, 1), abs=1e-9)
    assert looser.upper_bounds["recall"] < result.upper_bounds["recall"]


def test_bootstrap_bounds_are_seeded_and_above_the_live_figure():
    first = live_performance(predictions(), labels(), BASELINE)
    again = live_performance(predictions(), labels(), BASELINE)
    assert first.upper_bounds == again.upper_bounds  # the same window always gives the same bound
    for name in ("f1", "pr_auc"):
        assert first.metrics[name] <= first.upper_bounds[name] <= 1.0, name
    # 9 rows, 4 of them fraud: a resample can be all right, so F1's and PR AUC's bounds reach 1
    assert first.upper_bounds["f1"] == 1.0 and first.upper_bounds["pr_auc"] == 1.0


def test_version_filter_judges_only_the_version_serving_now():
    v3 = live_performance(predictions(), labels(), BASELINE, model_version=3)
    assert v3.model_version == 3
    assert v3.labeled_rows == 8 and v3.unlabeled_rows == 2
    assert v3.metrics["accuracy"] == 6 / 8
    v4 = live_performance(predictions(), labels(), BASELINE, model_version=4)
    assert v4.labeled_rows == 1 and v4.unlabeled_rows == 1
    assert {k: v4.metrics[k] for k in ("accuracy", "precision", "recall", "f1")} == {
        "accuracy": 0.0,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }  # zero_division=0
    assert math.isnan(v4.metrics["pr_auc"]) and math.isnan(v4.upper_bounds["pr_auc"])  # one class only
    unknown = live_performance(predictions(), labels(), BASELINE, model_version=9)
    assert unknown.labeled_rows == 0 and unknown.unlabeled_rows == 0


def test_nan_when_nothing_is_labeled():
    empty_labels = pd.DataFrame({"request_id": pd.Series(dtype="float64"), "label": pd.Series(dtype="bool")})
    result = live_performance(predictions(), empty_labels, BASELINE, model_version=3)
    assert result.labeled_rows == 0 and result.unlabeled_rows == 10 and result.labelled_positives == 0
    assert all(math.isnan(result.metrics[name]) for name in LIVE_METRICS)
    assert math.isnan(result.drop("accuracy")) and math.isnan(result.confident_drop())
    assert math.isnan(live_performance(predictions(), labels(), {}).drop("accuracy"))  # no baseline
    as_dict = result.to_dict()
    json.dumps(as_dict, allow_nan=False)  # strict JSON: NaN became null
    assert as_dict["metrics"]["accuracy"] is None and as_dict["baseline"]["accuracy"] == 0.97
    assert as_dict["upper_bounds"]["recall"] is None and as_dict["labelled_positives"] == 0


def test_missing_columns_and_a_bad_confidence_are_named():
    with pytest.raises(ValueError, match=r"predictions: missing column\(s\) is_fraud"):
        live_performance(predictions().drop(columns=["is_fraud"]), labels(), BASELINE)
    with pytest.raises(ValueError, match=r"predictions: missing column\(s\) probability"):
        live_performance(predictions().drop(columns=["probability"]), labels(), BASELINE)
    with pytest.raises(ValueError, match=r"labels: missing column\(s\) label"):
        live_performance(predictions(), labels().drop(columns=["label"]), BASELINE)
    for bad in (0.5, 1.0, 1.5, "high"):
        with pytest.raises(ValueError, match=r"confidence must be a number in \(0.5, 1\)"):
            live_performance(predictions(), labels(), BASELINE, confidence=bad)


# ---- the verdict, on hand-made figures ------------------------------------------------------------------
def figures(positives: int = 40, **bounds: float) -> LivePerformance:
    """2,000 labelled rows with ``positives`` fraud; live recall 0.45, precision 0.78, PR AUC 0.6 against a
    baseline of 0.7, 0.8 and 0.75; upper bounds as given (default: each 0.1 above the live figure)."""
    live = {"accuracy": 0.985, "precision": 0.78, "recall": 0.45, "f1": 0.57, "pr_auc": 0.6}
    upper = {name: min(value + 0.1, 1.0) for name, value in live.items()} | bounds
    caught = round(0.45 * positives)
    return LivePerformance(
        model_version=5,
        labeled_rows=2000,
        unlabeled_rows=100,
        metrics=live,
        baseline={"accuracy": 0.99, "precision": 0.8, "recall": 0.7, "f1": 0.75, "pr_auc": 0.75},
        confusion={
            "true_negatives": 2000 - positives - 3,
            "false_positives": 3,
            "false_negatives": positives - caught,
            "true_positives": caught,
        },
        upper_bounds=upper,
    )


def test_a_significant_drop_fires_naming_the_metrics_and_the_counts():
    performance = figures(recall=0.55, pr_auc=0.68)  # recall: 0.55 < 0.7 - 0.05; PR AUC: 0.68 < 0.75 - 0.05
    verdict = judge_accuracy_drop(performance, 0.05, window="24h")
    assert verdict.fires and verdict.judged
    assert verdict.dropped == ("recall", "pr_auc")
    assert verdict.value == pytest.approx(0.7 - 0.45)  # the largest point drop of the significant ones
    assert verdict.description.startswith("recall, PR AUC dropped by more than 0.05: recall 0.45 vs 0.7 at test")
    assert "on 2000 labelled rows (40 positives) of v5 over 24h" in verdict.description
    assert "upper 98.3% bound 0.55" in verdict.description
    assert performance.confident_drop() == pytest.approx(0.7 - 0.55)
    assert rule_values(performance=performance)["accuracy_drop"] == pytest.approx(0.15)
    assert DEFAULT_RULES["accuracy_drop"].fires(rule_values(performance=performance)["accuracy_drop"])


def test_a_large_point_drop_within_the_noise_passes():
    performance = figures(recall=0.66, precision=0.9, pr_auc=0.71)  # every bound within 0.05 of the baseline
    verdict = judge_accuracy_drop(performance, 0.05)
    assert not verdict.fires and verdict.judged and verdict.dropped == ()
    assert verdict.value == pytest.approx(0.25)  # the largest point drop (recall), reported though not decisive
    assert verdict.description.startswith("no significant drop beyond 0.05: recall 0.45 vs 0.7 at test")
    assert performance.confident_drop() == pytest.approx(0.75 - 0.71)
    assert not DEFAULT_RULES["accuracy_drop"].fires(rule_values(performance=performance)["accuracy_drop"])
    # a looser threshold on the same figures: now recall's bound is far enough below
    assert judge_accuracy_drop(performance, 0.02).dropped == ("recall", "pr_auc")


def test_accuracy_and_f1_are_reported_but_never_judged():
    performance = figures(accuracy=0.5, f1=0.1, recall=0.8, precision=0.9, pr_auc=0.9)
    assert performance.bound_drop("accuracy") > 0.05 and performance.bound_drop("f1") > 0.05
    assert not judge_accuracy_drop(performance, 0.05).fires


def test_too_few_labelled_positives_pass_with_not_enough_labels():
    performance = figures(positives=12, recall=0.3)  # would fire with enough positives
    verdict = judge_accuracy_drop(performance, 0.05, window="24h")
    assert not verdict.fires and not verdict.judged and verdict.value is None
    assert verdict.description == (
        "nothing to judge: not enough labels: 12 labelled positives among 2000 labelled rows of v5 over 24h, 20 needed"
    )
    assert math.isnan(performance.confident_drop())
    assert judge_accuracy_drop(performance, 0.05, min_labelled_positives=12).fires


def test_nothing_to_judge_without_labels_or_baseline():
    unlabelled = live_performance(predictions(), labels().iloc[0:0], BASELINE, model_version=3)
    verdict = judge_accuracy_drop(unlabelled, 0.05, window="24h")
    assert not verdict.fires and verdict.value is None
    assert verdict.description == "nothing to judge: no labeled predictions of v3 over 24h (10 awaiting labels)"
    never_evaluated = live_performance(predictions(), labels(), {}, model_version=3)
    assert judge_accuracy_drop(never_evaluated, 0.05).description == (
        "nothing to judge: v3 has no test metrics to compare with (it was never evaluated)"
    )


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_a_bad_minimum_of_positives_is_named(bad):
    with pytest.raises(ValueError, match="min_labelled_positives must be"):
        judge_accuracy_drop(figures(), 0.05, min_labelled_positives=bad)


def test_rule_value_is_nan_without_a_verdict():
    assert math.isnan(rule_values()["accuracy_drop"])
    assert np.isnan(rule_values(performance=figures(positives=5))["accuracy_drop"])


# ---- the baseline's own uncertainty -----------------------------------------------------------------------
def test_baseline_lower_bounds_come_from_the_logged_counts_and_standard_error():
    lower = baseline_lower_bounds(BASELINE | COUNTS, LEVEL)
    # the one-sided exact lower bound of k successes in n trials is the beta quantile B(1 - level; k, n - k + 1)
    assert lower["recall"] == pytest.approx(stats.beta.ppf(1 - LEVEL, 84, 120 - 84 + 1), abs=1e-9)
    assert lower["precision"] == pytest.approx(stats.beta.ppf(1 - LEVEL, 84, 105 - 84 + 1), abs=1e-9)
    assert lower["accuracy"] == pytest.approx(stats.beta.ppf(1 - LEVEL, 1843, 1900 - 1843 + 1), abs=1e-9)
    assert lower["pr_auc"] == pytest.approx(0.6 - stats.norm.ppf(LEVEL) * 0.04, abs=1e-12)
    assert set(lower) == {"accuracy", "precision", "recall", "pr_auc"}  # F1 has no count of its own
    assert 0.6 < lower["recall"] < 0.61  # 120 test positives: recall 0.7 is known to about -0.1 at this level
    assert baseline_lower_bounds(BASELINE, LEVEL) == {}  # evaluated before the counts were logged
    counts_only = baseline_lower_bounds(BASELINE | COUNTS | {"pr_auc_se": float("nan")}, LEVEL)
    assert set(counts_only) == {"accuracy", "precision", "recall"}  # a one-class test split: no PR AUC error


@pytest.mark.parametrize(
    ("logged", "message"),
    [
        ({"true_positives": 84}, "test confusion counts incomplete, false_positives, false_negatives, true_negatives"),
        (COUNTS | {"true_positives": -1.0}, "true_positives must be a whole number >= 0, got -1.0"),
        (COUNTS | {"false_negatives": 36.5}, "false_negatives must be a whole number >= 0, got 36.5"),
        (COUNTS | {"true_negatives": "many"}, "true_negatives must be a whole number >= 0, got 'many'"),
        (COUNTS | {"pr_auc_se": -0.01}, "pr_auc_se must be a number >= 0, got -0.01"),
        (COUNTS | {"pr_auc_se": float("inf")}, "pr_auc_se must be a number >= 0, got inf"),
    ],
)
def test_malformed_baseline_counts_are_named(logged, message):
    with pytest.raises(ValueError, match=re.escape(f"baseline: {message}")):
        live_performance(predictions(), labels(), BASELINE | logged)


def test_live_performance_allows_for_the_baseline_when_its_counts_are_logged():
    result = live_performance(predictions(), labels(), BASELINE | COUNTS)
    assert result.baseline == {k: BASELINE[k] for k in LIVE_METRICS}  # the counts are not metrics
    assert result.baseline_lower_bounds == baseline_lower_bounds(BASELINE | COUNTS, LEVEL)
    upper, lower = result.upper_bounds["recall"], result.baseline_lower_bounds["recall"]
    assert result.bound_drop("recall") == pytest.approx(lower - upper)  # the baseline's lower bound, not 0.7
    point = live_performance(predictions(), labels(), BASELINE)
    assert point.bound_drop("recall") == pytest.approx(0.7 - upper)
    assert result.bound_drop("recall") < point.bound_drop("recall")  # the baseline's uncertainty is allowed for
    assert result.bound_drop("f1") == point.bound_drop("f1")  # no baseline bound: judged as before
    as_dict = result.to_dict()
    json.dumps(as_dict, allow_nan=False)
    assert as_dict["baseline_lower_bounds"]["recall"] == pytest.approx(lower)
    unlabelled = live_performance(predictions(), labels().iloc[0:0], BASELINE | COUNTS, model_version=3)
    assert unlabelled.baseline_lower_bounds == result.baseline_lower_bounds


def test_allowing_for_the_baseline_keeps_quiet_a_drop_within_both_sides_noise():
    point = figures(recall=0.55, pr_auc=0.68)  # fires on recall and PR AUC against the point values
    assert judge_accuracy_drop(point, 0.05).description.endswith(
        "; baseline counts unknown: judged against the point value"
    )
    bounds = {"recall": 0.62, "precision": 0.7, "pr_auc": 0.7}
    allowed = replace(point, baseline_lower_bounds=bounds)
    # the baseline's lower bound less the live upper bound
    assert allowed.bound_drop("recall") == pytest.approx(0.62 - 0.55)  # 0.07: still significant
    assert allowed.bound_drop("pr_auc") == pytest.approx(0.7 - 0.68)  # 0.02: within both sides' noise
    assert allowed.bound_drop("precision") == pytest.approx(0.7 - 0.88)
    verdict = judge_accuracy_drop(allowed, 0.05, window="24h")
    assert verdict.fires and verdict.dropped == ("recall",) and verdict.value == pytest.approx(0.25)
    assert verdict.baseline_bounds == bounds
    assert verdict.description == (
        "recall dropped by more than 0.05: recall 0.45 vs 0.7 at test (upper 98.3% bound 0.55, test's lower "
        "bound 0.62); on 2000 labelled rows (40 positives) of v5 over 24h"
    )
    assert allowed.confident_drop() == pytest.approx(0.07)
    assert rule_values(performance=allowed)["accuracy_drop"] == pytest.approx(0.07)
    quieter = replace(point, baseline_lower_bounds=bounds | {"recall": 0.59})
    assert not judge_accuracy_drop(quieter, 0.05).fires  # 0.59 - 0.55: the point value's 0.15 was noise
    # an exactly known baseline (lower bound = baseline) is the point-value judgement
    exact = replace(point, baseline_lower_bounds={"recall": 0.7})
    assert exact.bound_drop("recall") == pytest.approx(point.bound_drop("recall")) == pytest.approx(0.15)


def test_a_baseline_without_pr_auc_error_judges_pr_auc_against_its_point_value():
    partial = replace(figures(recall=0.55, pr_auc=0.68), baseline_lower_bounds={"recall": 0.62, "precision": 0.7})
    verdict = judge_accuracy_drop(partial, 0.05)
    assert verdict.dropped == ("recall", "pr_auc") and verdict.baseline_bounds == {"recall": 0.62, "precision": 0.7}
    assert verdict.description.endswith("; baseline uncertainty of PR AUC unknown: judged against its point value")
    assert partial.bound_drop("pr_auc") == pytest.approx(0.75 - 0.68)

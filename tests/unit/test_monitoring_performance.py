"""Live performance: logged decisions joined with late labels, against scikit-learn on a hand-made case."""

import json
import math

import pandas as pd
import pytest
from sklearn import metrics as skm

from ml_platform.monitoring.performance import LIVE_METRICS, live_performance

BASELINE = {"accuracy": 0.97, "precision": 0.8, "recall": 0.7, "f1": 0.75, "roc_auc": 0.99}


def predictions() -> pd.DataFrame:
    """12 answers: v3 answered r0..r9, v4 (a challenger) answered c0, c1."""
    decided = [1, 0, 1, 1, 0, 0, 0, 1, 0, 0, 1, 0]
    ids = [f"r{i}" for i in range(10)] + ["c0", "c1"]
    return pd.DataFrame(
        {
            "request_id": ids,
            "is_fraud": [bool(d) for d in decided],
            "model_version": [3] * 10 + [4, 4],
            "probability": [0.9 if d else 0.1 for d in decided],
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
    assert result.labeled_rows == 9 and result.unlabeled_rows == 3
    assert result.metrics["accuracy"] == skm.accuracy_score(y_true, y_pred) == 6 / 9
    assert result.metrics["precision"] == skm.precision_score(y_true, y_pred) == 3 / 5
    assert result.metrics["recall"] == skm.recall_score(y_true, y_pred) == 3 / 4
    assert result.metrics["f1"] == pytest.approx(skm.f1_score(y_true, y_pred))
    assert result.confusion == {"true_negatives": 3, "false_positives": 2, "false_negatives": 1, "true_positives": 3}
    assert result.positive_rate == 4 / 9
    assert result.baseline == {k: BASELINE[k] for k in LIVE_METRICS}  # roc_auc is not a live metric
    assert result.drop() == pytest.approx(0.97 - 6 / 9)
    assert result.drop("recall") == pytest.approx(0.7 - 0.75)  # negative: better live than at evaluation
    assert result.label_coverage == 9 / 12


def test_version_filter_judges_only_the_version_serving_now():
    v3 = live_performance(predictions(), labels(), BASELINE, model_version=3)
    assert v3.model_version == 3
    assert v3.labeled_rows == 8 and v3.unlabeled_rows == 2
    assert v3.metrics["accuracy"] == 6 / 8
    v4 = live_performance(predictions(), labels(), BASELINE, model_version=4)
    assert v4.labeled_rows == 1 and v4.unlabeled_rows == 1
    assert v4.metrics == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}  # zero_division=0
    unknown = live_performance(predictions(), labels(), BASELINE, model_version=9)
    assert unknown.labeled_rows == 0 and unknown.unlabeled_rows == 0


def test_nan_when_nothing_is_labeled():
    empty_labels = pd.DataFrame({"request_id": pd.Series(dtype="float64"), "label": pd.Series(dtype="bool")})
    result = live_performance(predictions(), empty_labels, BASELINE, model_version=3)
    assert result.labeled_rows == 0 and result.unlabeled_rows == 10
    assert all(math.isnan(result.metrics[name]) for name in LIVE_METRICS)
    assert math.isnan(result.drop("accuracy"))
    assert math.isnan(live_performance(predictions(), labels(), {}).drop("accuracy"))  # no baseline
    as_dict = result.to_dict()
    json.dumps(as_dict, allow_nan=False)  # strict JSON: NaN became null
    assert as_dict["metrics"]["accuracy"] is None and as_dict["baseline"]["accuracy"] == 0.97


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match=r"predictions: missing column\(s\) is_fraud"):
        live_performance(predictions().drop(columns=["is_fraud"]), labels(), BASELINE)
    with pytest.raises(ValueError, match=r"labels: missing column\(s\) label"):
        live_performance(predictions(), labels().drop(columns=["label"]), BASELINE)

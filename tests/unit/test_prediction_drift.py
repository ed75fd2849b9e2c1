"""Prediction drift: the served scores against the version's own test-split scores, scored as scipy
scores them, judged at the threshold, and the reference is the test split scored by the booster."""

import numpy as np
import pytest
from scipy import stats

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.monitoring.drift import DriftConfig
from ml_platform.monitoring.prediction_drift import prediction_drift, reference_scores, score_quantiles
from ml_platform.training.dataset import SPLIT_COLUMN
from ml_platform.training.train import predict_probability


def scores(seed: int, rows: int, a: float, b: float) -> np.ndarray:
    return np.random.default_rng(seed).beta(a, b, rows)


REFERENCE = scores(0, 3_000, 1.0, 20.0)  # mostly near 0, as fraud scores are
SHIFTED = scores(1, 800, 2.0, 12.0)  # the served scores moved up
SAME = scores(2, 800, 1.0, 20.0)


def test_the_wasserstein_score_is_scipys_distance_normed_by_the_reference_deviation():
    drift = prediction_drift(REFERENCE, SHIFTED, DriftConfig("wasserstein"))
    expected = stats.wasserstein_distance(REFERENCE, SHIFTED) / np.std(REFERENCE)
    assert drift.score == pytest.approx(expected, rel=1e-12)
    assert (drift.method, drift.threshold, drift.drifted) == ("wasserstein", 0.1, True)
    assert (drift.rows, drift.reference_rows) == (800, 3_000)
    assert drift.method_title == "Wasserstein distance (normed)"


def test_the_ks_score_is_scipys_p_value():
    drift = prediction_drift(REFERENCE, SHIFTED, DriftConfig("ks"))
    assert drift.score == stats.ks_2samp(REFERENCE, SHIFTED).pvalue
    assert drift.threshold == 0.05 and drift.drifted is True
    calm = prediction_drift(REFERENCE, SAME, DriftConfig("ks"))
    assert calm.score == pytest.approx(stats.ks_2samp(REFERENCE, SAME).pvalue, rel=1e-12)
    assert calm.score > 0.05 and calm.drifted is False


def test_the_verdict_turns_at_the_threshold():
    score = prediction_drift(REFERENCE, SAME).score
    assert 0.0 < score < 0.1  # the same distribution: within the default threshold
    below = prediction_drift(REFERENCE, SAME, DriftConfig("wasserstein", feature_threshold=score * 0.999))
    at = prediction_drift(REFERENCE, SAME, DriftConfig("wasserstein", feature_threshold=score))
    above = prediction_drift(REFERENCE, SAME, DriftConfig("wasserstein", feature_threshold=score * 1.001))
    assert (below.drifted, at.drifted, above.drifted) == (True, True, False)
    assert "no drift" in above.describe() and f"on 800 served scores against {len(REFERENCE)}" in above.describe()
    p_value = prediction_drift(REFERENCE, SAME, DriftConfig("ks")).score
    assert prediction_drift(REFERENCE, SAME, DriftConfig("ks", feature_threshold=p_value * 1.001)).drifted is True
    assert prediction_drift(REFERENCE, SAME, DriftConfig("ks", feature_threshold=p_value * 0.999)).drifted is False


def test_quantiles_of_both_sides_and_non_finite_scores_dropped():
    served = np.concatenate([SHIFTED, [np.nan, np.inf]])
    drift = prediction_drift(REFERENCE, served)
    assert drift.rows == 802
    assert drift.score == pytest.approx(stats.wasserstein_distance(REFERENCE, SHIFTED) / np.std(REFERENCE), rel=1e-12)
    assert list(drift.quantiles) == ["p05", "p25", "p50", "p75", "p95"]
    assert drift.quantiles["p50"] == pytest.approx(np.median(SHIFTED))
    assert drift.reference_quantiles["p95"] == pytest.approx(np.quantile(REFERENCE, 0.95))
    assert score_quantiles(np.array([np.nan])) == {}


def test_a_side_without_a_finite_score_is_a_named_error():
    with pytest.raises(ValueError, match=r"current\['probability'\]: no finite values"):
        prediction_drift(REFERENCE, np.array([np.nan, np.nan]))
    with pytest.raises(ValueError, match="current: no rows to compare"):
        prediction_drift(REFERENCE, np.array([]))


def test_the_reference_is_the_test_split_scored_by_the_booster(training_set, trained_model, tmp_path):
    path = tmp_path / "training_set.parquet"
    training_set.to_parquet(path, index=False)
    test_rows = training_set.loc[training_set[SPLIT_COLUMN] == "test", list(MODEL_FEATURES)]
    assert 0 < len(test_rows) < len(training_set)
    reference = reference_scores(trained_model.booster, path)
    expected = predict_probability(trained_model.booster, test_rows.reset_index(drop=True))
    np.testing.assert_array_equal(reference, expected)

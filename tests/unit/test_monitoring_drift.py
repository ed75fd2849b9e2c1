"""Drift scores: equal to Evidently's DataDriftPreset and to scipy, on seeded data shaped like the
model's features (heavy-tailed amounts, whole hours, 0/1 flags, category codes with many ties, NaN for
customers without history, a constant column)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.monitoring.drift import (
    DRIFT_METHODS,
    DriftConfig,
    compute_drift,
    evidently_drift,
    ks_pvalue_sorted,
    render_drift_html,
    wasserstein_sorted,
)


def feature_frame(rows: int, seed: int, *, shift: float = 0.0) -> pd.DataFrame:
    """Model-feature-like columns; ``shift`` inflates amounts and moves hours (a drifted world)."""
    rng = np.random.default_rng(seed)
    amount = np.round(rng.lognormal(3.4 + shift, 0.6, rows), 2)
    purchases = rng.poisson(12, rows).astype(float)
    average = rng.lognormal(3.4, 0.5, rows)
    days_since = rng.exponential(3.0, rows)
    new_customer = rng.random(rows) < 0.05
    average[new_customer] = np.nan
    days_since[new_customer] = np.nan
    frame = pd.DataFrame(
        {
            "amount": amount,
            "hour_of_day": np.floor(np.clip(rng.normal(14.5 + 3 * shift, 3.5, rows), 0, 23.99)),
            "is_online": (rng.random(rows) < 0.3).astype(float),
            "category_code": rng.integers(0, 12, rows).astype(float),
            "total_purchases": purchases,
            "avg_order_value": average,
            "lifetime_value": purchases * np.nan_to_num(average, nan=0.0),
            "days_since_last_order": days_since,
            "amount_to_avg_ratio": amount / average,
        }
    )
    return frame[list(MODEL_FEATURES)]


def with_edge_columns(frame: pd.DataFrame, seed: int, reference: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = frame.copy()
    # constant in the reference (std 0: Evidently's 0.001 floor), spread in the current data
    frame["constant"] = 5.0 if reference else 5.0 + rng.normal(0, 0.01, len(frame))
    infinite = rng.normal(0, 1, len(frame))
    infinite[:: 17 if reference else 13] = np.inf
    infinite[5::29] = -np.inf
    frame["with_infinity"] = infinite
    return frame


EDGE_COLUMNS = [*MODEL_FEATURES, "constant", "with_infinity"]


@pytest.fixture(scope="module")
def reference():
    return with_edge_columns(feature_frame(12_000, seed=1), seed=11, reference=True)


@pytest.fixture(scope="module")
def current():
    return with_edge_columns(feature_frame(11_000, seed=2, shift=0.15), seed=12, reference=False)


@pytest.mark.parametrize("method", DRIFT_METHODS)
def test_scores_and_decisions_equal_evidently(reference, current, method):
    """> 10,000 rows a side, so the KS p-value takes scipy's asymptotic branch."""
    config = DriftConfig(method=method)
    ours = compute_drift(reference, current, EDGE_COLUMNS, config)
    theirs = evidently_drift(reference, current, EDGE_COLUMNS, config)
    assert [f.feature for f in ours.features] == [f.feature for f in theirs.features]
    ours_scores, their_scores = ours.scores, theirs.scores
    assert set(ours_scores) == set(EDGE_COLUMNS)
    for name in EDGE_COLUMNS:
        assert abs(ours_scores[name] - their_scores[name]) < 1e-9, name
    assert {f.feature: f.drifted for f in ours.features} == {f.feature: f.drifted for f in theirs.features}
    assert {f.threshold for f in theirs.features} == {config.threshold}
    assert ours.drift_score == theirs.drift_score
    # the shifted features drift, the untouched ones do not (both methods agree on these)
    assert {"amount", "hour_of_day", "constant"} <= set(ours.drifted_features)
    assert not {"is_online", "category_code", "total_purchases", "with_infinity"} & set(ours.drifted_features)


@pytest.mark.parametrize("method", DRIFT_METHODS)
def test_small_samples_equal_evidently(method):
    """A few hundred rows: scipy's exact KS branch, NaN columns, ties."""
    reference = feature_frame(700, seed=5)
    current = feature_frame(400, seed=6, shift=0.3)
    config = DriftConfig(method=method)
    ours = compute_drift(reference, current, MODEL_FEATURES, config)
    theirs = evidently_drift(reference, current, MODEL_FEATURES, config)
    assert max(abs(ours.scores[n] - theirs.scores[n]) for n in MODEL_FEATURES) < 1e-9
    assert ours.drifted_features == theirs.drifted_features
    assert ours.drifted_features  # the shift is visible even on 400 rows


@pytest.mark.parametrize("method", DRIFT_METHODS)
def test_a_score_exactly_at_the_threshold_is_drifted_as_in_evidently(method):
    reference = feature_frame(600, seed=7)
    current = feature_frame(600, seed=8, shift=0.05)
    score = compute_drift(reference, current, ["amount"], DriftConfig(method=method)).scores["amount"]
    at_threshold = DriftConfig(method=method, feature_threshold=score)
    ours = compute_drift(reference, current, ["amount"], at_threshold)
    theirs = evidently_drift(reference, current, ["amount"], at_threshold)
    assert ours.features[0].drifted is True  # Evidently: distance >= threshold, p-value <= threshold
    assert theirs.features[0].drifted is True


def test_scores_equal_scipy_on_all_finite_rows(reference, current):
    for name in ("amount", "avg_order_value", "category_code", "with_infinity"):
        ref = reference[name].to_numpy()
        cur = current[name].to_numpy()
        ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
        wasserstein = compute_drift(reference, current, [name]).scores[name]
        ks = compute_drift(reference, current, [name], DriftConfig("ks")).scores[name]
        assert wasserstein == stats.wasserstein_distance(ref, cur) / np.std(ref)
        assert ks == stats.ks_2samp(ref, cur).pvalue


def test_sorted_kernels_are_bit_identical_to_scipy():
    rng = np.random.default_rng(3)
    for n1, n2 in ((1, 1), (3, 50_000), (20_000, 15_000), (10_000, 10_000), (10_001, 9)):
        a = rng.integers(0, 7, n1).astype(float)  # many ties
        b = rng.normal(3, 2, n2)
        a_sorted, b_sorted = np.sort(a), np.sort(b)
        assert wasserstein_sorted(a_sorted, b_sorted) == stats.wasserstein_distance(a, b)
        assert ks_pvalue_sorted(a_sorted, b_sorted) == stats.ks_2samp(a, b).pvalue
        assert ks_pvalue_sorted(a_sorted, a_sorted) == stats.ks_2samp(a, a).pvalue


def test_report_is_sorted_most_drifted_first_and_serializes(reference, current):
    report = compute_drift(reference, current, MODEL_FEATURES)
    scores = [f.score for f in report.features]
    drifted = [f.drifted for f in report.features]
    assert drifted == sorted(drifted, reverse=True)
    assert scores[: sum(drifted)] == sorted(scores[: sum(drifted)], reverse=True)
    assert report.top(2) == list(report.features[:2])
    assert report.drift_score == pytest.approx(len(report.drifted_features) / 9)
    frame = report.to_frame()
    assert list(frame.columns) == ["feature", "score", "threshold", "drifted"]
    assert frame["feature"].tolist() == [f.feature for f in report.features]
    as_dict = report.to_dict()
    assert as_dict["reference_rows"] == 12_000 and as_dict["current_rows"] == 11_000
    assert as_dict["drifted_features"] == report.drifted_features
    ks_report = compute_drift(reference, current, MODEL_FEATURES, DriftConfig("ks"))
    p_values = [f.score for f in ks_report.features if f.drifted]
    assert p_values == sorted(p_values)  # smallest p-value (strongest evidence) first


def test_no_drift_between_two_samples_of_one_world():
    report = compute_drift(feature_frame(5_000, seed=21), feature_frame(5_000, seed=22), MODEL_FEATURES)
    assert report.drifted_features == []
    assert report.drift_score == 0.0


def test_config_validation_names_the_field():
    assert DriftConfig().threshold == 0.1
    assert DriftConfig("ks").threshold == 0.05
    assert DriftConfig("ks", 0.01).threshold == 0.01
    with pytest.raises(ValueError, match=r"^method: unknown drift method 'psi'; expected one of wasserstein, ks"):
        DriftConfig(method="psi")
    with pytest.raises(ValueError, match=r"^feature_threshold: a KS p-value threshold must be in \(0, 1\), got 1.5"):
        DriftConfig(method="ks", feature_threshold=1.5)
    with pytest.raises(ValueError, match=r"^feature_threshold: a Wasserstein threshold must be positive, got -0.1"):
        DriftConfig(feature_threshold=-0.1)
    with pytest.raises(ValueError, match=r"^feature_threshold: expected a finite number, got nan"):
        DriftConfig(feature_threshold=math.nan)
    with pytest.raises(ValueError, match=r"^feature_threshold: expected a finite number, got '0.1'"):
        DriftConfig(feature_threshold="0.1")


def test_bad_inputs_get_clear_errors():
    frame = feature_frame(50, seed=1)
    with pytest.raises(ValueError, match=r"current: missing column\(s\) 'amount', 'nope'"):
        compute_drift(frame.assign(nope=1.0), frame.drop(columns=["amount"]), ["hour_of_day", "amount", "nope"])
    with pytest.raises(ValueError, match=r"reference: missing column\(s\) 'amount'"):
        compute_drift(frame.drop(columns=["amount"]), frame, ["amount"])
    with pytest.raises(ValueError, match=r"current: no rows to compare"):
        compute_drift(frame, frame.iloc[:0], ["amount"])
    with pytest.raises(ValueError, match=r"columns: expected at least one column"):
        compute_drift(frame, frame, [])
    all_nan = frame.assign(amount=np.nan)
    with pytest.raises(ValueError, match=r"current\['amount'\]: no finite values"):
        compute_drift(frame, all_nan, ["amount"])
    with pytest.raises(ValueError, match=r"reference\['label'\]: expected numbers"):
        compute_drift(frame.assign(label="x"), frame.assign(label="y"), ["label"])


def test_html_report_is_written_atomically(tmp_path, reference, current):
    path = render_drift_html(
        reference, current, MODEL_FEATURES, DriftConfig(), tmp_path / "reports" / "drift.html", sample_rows=500
    )
    assert path == tmp_path / "reports" / "drift.html"
    text = path.read_text()
    assert path.stat().st_size > 1_000_000  # Evidently embeds plotly
    assert "<html" in text.lower() and "amount_to_avg_ratio" in text
    assert [p.name for p in path.parent.iterdir()] == ["drift.html"]  # no temporary left behind


def test_columns_scored_in_threads_give_the_same_report(reference, current, monkeypatch):
    import ml_platform.monitoring.drift as drift

    serial = {method: compute_drift(reference, current, EDGE_COLUMNS, DriftConfig(method)) for method in DRIFT_METHODS}
    monkeypatch.setattr(drift, "PARALLEL_MIN_ROWS", 0)  # 23,000 rows: threads only when told
    monkeypatch.setattr(drift.os, "cpu_count", lambda: 4)
    for method in DRIFT_METHODS:
        threaded = compute_drift(reference, current, EDGE_COLUMNS, DriftConfig(method))
        assert threaded == serial[method]  # equality ignores the timing field
    with pytest.raises(ValueError, match=r"current\['amount'\]: no finite values"):
        compute_drift(reference, current.assign(amount=np.nan), EDGE_COLUMNS)


def test_the_synthetic_worlds_normal_days_do_not_drift_and_drifted_days_do():
    """The platform's own defaults on its own data: new days with the drift knob off score 0 against the
    newest slice of the history (so the hourly check stays quiet); with the knob on, the request-time
    features move past the 0.15 rule. The cumulative features are left out: they move every day."""
    from datetime import date

    from ml_platform.data.synthetic import SyntheticConfig, generate_transactions
    from ml_platform.features.engineering import CUMULATIVE_FEATURES, DRIFT_FEATURES, model_features, stats_before

    assert not set(CUMULATIVE_FEATURES) & set(DRIFT_FEATURES)
    world = {"n_customers": 1_500, "transactions_per_day": 1_200, "seed": 7}
    history = generate_transactions(SyntheticConfig(**world), date(2026, 3, 1), date(2026, 3, 14))
    features = model_features(history, stats_before(history))
    reference = features.iloc[int(len(features) * 0.85) :]  # the time split's test slice
    scores = {}
    for knob in (0.0, 0.3):
        new_days = generate_transactions(SyntheticConfig(**world, drift=knob), date(2026, 3, 15), date(2026, 3, 18))
        both = pd.concat([history, new_days], ignore_index=True)
        current = model_features(both, stats_before(both)).iloc[len(history) :]
        scores[knob] = compute_drift(reference, current, DRIFT_FEATURES)
    assert scores[0.0].drift_score == 0.0 and max(f.score for f in scores[0.0].features) < 0.06
    assert scores[0.3].drift_score > 0.5
    assert {"amount", "amount_to_avg_ratio", "is_online"} <= set(scores[0.3].drifted_features)

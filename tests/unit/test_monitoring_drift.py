"""Drift scores: equal to Evidently's DataDriftPreset and to scipy, on seeded data shaped like the
model's features (heavy-tailed amounts, whole hours, 0/1 flags, category codes with many ties, NaN for
customers without history, a constant column); the categorical features scored with the test Evidently
picks for them, on both sides of its row-count switch."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ml_platform.features.engineering import CATEGORICAL_FEATURES, DRIFT_FEATURES, MODEL_FEATURES
from ml_platform.monitoring.drift import (
    DRIFT_METHODS,
    DriftConfig,
    FeatureDrift,
    compute_drift,
    drift_methods,
    evidently_drift,
    is_drifted,
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
    assert {f.feature: (f.method, f.threshold) for f in ours.features} == {
        f.feature: (f.method, f.threshold) for f in theirs.features
    }
    # numerical columns: the configured method; categorical ones: Evidently's default above 1000 rows
    expected = {name: (method, config.threshold) for name in EDGE_COLUMNS}
    expected.update({name: ("jensenshannon", 0.1) for name in CATEGORICAL_FEATURES})
    assert {f.feature: (f.method, f.threshold) for f in theirs.features} == expected
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
    assert ours.methods == theirs.methods
    assert ours.methods["category_code"] == "chisquare" and ours.methods["is_online"] == "z"
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
    """Every column declared numerical, category codes included (scored as numbers on a line)."""
    for name in ("amount", "avg_order_value", "category_code", "with_infinity"):
        ref = reference[name].to_numpy()
        cur = current[name].to_numpy()
        ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
        wasserstein = compute_drift(reference, current, [name], DriftConfig(categorical=())).scores[name]
        ks = compute_drift(reference, current, [name], DriftConfig("ks", categorical=())).scores[name]
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
    assert list(frame.columns) == ["feature", "score", "threshold", "drifted", "method"]
    assert frame["feature"].tolist() == [f.feature for f in report.features]
    assert frame.set_index("feature")["method"].to_dict() == {
        **dict.fromkeys(MODEL_FEATURES, "wasserstein"),
        **dict.fromkeys(CATEGORICAL_FEATURES, "jensenshannon"),
    }
    as_dict = report.to_dict()
    assert as_dict["reference_rows"] == 12_000 and as_dict["current_rows"] == 11_000
    assert as_dict["drifted_features"] == report.drifted_features
    ks_report = compute_drift(reference, current, MODEL_FEATURES, DriftConfig("ks"))
    p_values = [f.score for f in ks_report.features if f.drifted and f.method == "ks"]
    assert len(p_values) >= 2 and p_values == sorted(p_values)  # smallest p-value (strongest evidence) first


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
    assert DriftConfig().categorical == ("category_code", "is_online")
    assert DriftConfig(categorical=["a"]).categorical == ("a",)
    with pytest.raises(ValueError, match=r"^categorical: expected a list of column names, got 'is_online'"):
        DriftConfig(categorical="is_online")


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
    with pytest.raises(ValueError, match=r"current\['is_online'\]: no finite values"):
        compute_drift(frame, frame.assign(is_online=np.nan), ["is_online"])


def test_html_report_applies_the_checks_rules_and_says_it_is_a_sample(tmp_path, reference, current):
    """500 sampled rows a side: Evidently left to itself would test the categorical columns with
    chi-square and z there, while the check (12,000 reference rows) uses Jensen-Shannon."""
    path = render_drift_html(
        reference,
        current,
        DRIFT_FEATURES,
        DriftConfig(),
        tmp_path / "reports" / "drift.html",
        drift_share=0.15,
        sample_rows=500,
    )
    assert path == tmp_path / "reports" / "drift.html"
    text = path.read_text()
    assert path.stat().st_size > 1_000_000  # Evidently embeds plotly
    assert "<html" in text.lower() and "amount_to_avg_ratio" in text
    assert [p.name for p in path.parent.iterdir()] == ["drift.html"]  # no temporary left behind
    # the dataset drift threshold is the rule's, not Evidently's default 0.5
    assert "Dataset drift detection threshold is 0.15" in text and "Share of Drifted Columns: Less 0.150" in text
    assert "threshold is 0.5" not in text
    # each column's test is the check's
    assert "Jensen-Shannon distance" in text and "Wasserstein distance (normed)" in text
    assert "chi-square p_value" not in text and "Z-test p_value" not in text
    assert "a seeded random sample of 500 of the 12,000 reference rows and 500 of the 11,000 current rows" in text
    assert "category_code: Jensen-Shannon distance, threshold 0.1; " in text
    assert "amount: Wasserstein distance (normed), threshold 0.1" in text


def test_html_report_of_all_rows_says_so(tmp_path):
    reference, current = feature_frame(800, seed=31), feature_frame(600, seed=32, shift=0.3)
    config = DriftConfig("ks", 0.01)
    path = render_drift_html(reference, current, DRIFT_FEATURES, config, tmp_path / "drift.html", drift_share=0.4)
    text = path.read_text()
    assert "Drawn from all rows: 800 reference rows and 600 current rows." in text
    assert "Drawn from a sample" not in text
    assert "Dataset drift detection threshold is 0.4" in text
    # 800 reference rows: Evidently's small-sample tests for the categorical columns, as in the check
    assert drift_methods(reference, current, DRIFT_FEATURES, config) == {
        **{name: ("ks", 0.01) for name in DRIFT_FEATURES},
        "category_code": ("chisquare", 0.05),
        "is_online": ("z", 0.05),
    }
    assert "is_online: Z-test p_value, threshold 0.05" in text and "hour_of_day: K-S p-value, threshold 0.01" in text
    with pytest.raises(ValueError, match=r"^drift_share: expected a share of columns between 0 and 1, got 15"):
        render_drift_html(reference, current, DRIFT_FEATURES, config, tmp_path / "x.html", drift_share=15)


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
    # 3 of the 6: the inflated amounts and the shifted category mix (Jensen-Shannon 0.15); the extra online
    # share moves is_online's Jensen-Shannon distance to 0.08, short of its 0.1
    assert scores[0.3].drift_score == 0.5
    assert set(scores[0.3].drifted_features) == {"amount", "amount_to_avg_ratio", "category_code"}
    assert 0.05 < scores[0.3].scores["is_online"] < 0.1


# ---- categorical columns: Evidently's default test, chosen by its own rule ------------------------------
def categories(rows: int, shares: list[float], seed: int, *, values: list | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.arange(len(shares), dtype=float) if values is None else np.asarray(values, dtype=object)
    return rng.choice(labels, size=rows, p=np.asarray(shares) / np.sum(shares))


def with_missing(values: np.ndarray, every: int) -> np.ndarray:
    values = values.astype(float)
    values[::every] = np.nan
    values[1::every] = np.inf
    return values


ZIPF = [1 / rank for rank in range(1, 41)]
CATEGORICAL_CASES = {
    # name: (reference values, current values, the test Evidently picks)
    "binary, large": (categories(5_000, [0.7, 0.3], 1), categories(4_000, [0.66, 0.34], 2), "jensenshannon"),
    "binary, small": (categories(900, [0.7, 0.3], 3), categories(700, [0.62, 0.38], 4), "z"),
    "40 categories, large": (categories(20_000, ZIPF, 5), categories(15_000, ZIPF[::-1], 6), "jensenshannon"),
    "40 categories, small": (categories(800, ZIPF, 7), categories(600, ZIPF, 8), "chisquare"),
    "a category missing from current, small": (
        categories(900, [3, 2, 2, 1, 1], 9),
        categories(500, [3, 2, 2, 1, 0], 10),
        "chisquare",
    ),
    "a category missing from current, large": (
        categories(3_000, [3, 2, 2, 1, 1], 11),
        categories(500, [3, 2, 2, 1, 0], 12),
        "jensenshannon",
    ),
    "a new category in current, small": (
        categories(600, [3, 2, 2, 1, 0], 13),
        categories(500, [3, 2, 2, 1, 1], 14),
        "chisquare",
    ),
    "a new category in current, large": (
        categories(3_000, [3, 2, 2, 1, 0], 15),
        categories(2_000, [3, 2, 2, 1, 1], 16),
        "jensenshannon",
    ),
    "1000 reference rows": (categories(1_000, [4, 3, 2], 17), categories(300, [3, 3, 3], 18), "chisquare"),
    "1001 reference rows": (categories(1_001, [4, 3, 2], 17), categories(300, [3, 3, 3], 18), "jensenshannon"),
    "1010 rows, 20 of them NaN or infinite": (
        with_missing(categories(1_010, [4, 3, 2], 19), every=101),
        with_missing(categories(400, [4, 3, 3], 20), every=50),
        "chisquare",
    ),
    "one value on both sides": (np.zeros(300), np.zeros(200), "z"),
    "a different single value on each side": (np.zeros(300), np.ones(200), "z"),
    "one value on one side, two on the other": (np.zeros(300), categories(200, [0.9, 0.1], 21), "z"),
    "string labels with missing values": (
        categories(700, [5, 3, 2, 1], 22, values=["grocery", "travel", None, "online"]),
        categories(500, [4, 3, 2, 2], 23, values=["grocery", "travel", "online", "gaming"]),
        "chisquare",
    ),
    "booleans": (categories(500, [7, 3], 24) == 1.0, categories(400, [6, 4], 25) == 1.0, "z"),
}


@pytest.mark.parametrize("case", CATEGORICAL_CASES)
def test_categorical_scores_tests_and_decisions_equal_evidently(case):
    reference_values, current_values, expected_method = CATEGORICAL_CASES[case]
    reference = pd.DataFrame({"c": reference_values, "amount": np.linspace(1, 50, len(reference_values))})
    current = pd.DataFrame({"c": current_values, "amount": np.linspace(2, 60, len(current_values))})
    config = DriftConfig(categorical=["c"])
    ours = compute_drift(reference, current, ["c", "amount"], config)
    theirs = evidently_drift(reference, current, ["c", "amount"], config)
    assert ours.methods == theirs.methods == {"c": expected_method, "amount": "wasserstein"}
    assert abs(ours.scores["c"] - theirs.scores["c"]) < 1e-9
    assert abs(ours.scores["amount"] - theirs.scores["amount"]) < 1e-9
    assert [(f.feature, f.threshold, f.drifted) for f in ours.features] == [
        (f.feature, f.threshold, f.drifted) for f in theirs.features
    ]
    assert drift_methods(reference, current, ["c"], config) == {
        "c": (expected_method, 0.1 if expected_method == "jensenshannon" else 0.05)
    }


def test_categorical_scores_have_the_expected_values():
    """Hand-checkable figures for the three tests (and a category only one side has)."""

    def score(reference_values, current_values) -> FeatureDrift:
        frame = lambda values: pd.DataFrame({"c": np.asarray(values, dtype=float)})  # noqa: E731
        return compute_drift(
            frame(reference_values), frame(current_values), ["c"], DriftConfig(categorical=["c"])
        ).features[0]

    same = score([0, 1] * 300, [0, 1] * 200)
    assert (same.method, same.score, same.drifted) == ("z", 1.0, False)
    one_value = score([3] * 300, [3] * 200)
    assert (one_value.method, one_value.score, one_value.drifted) == ("z", 1.0, False)
    new_category = score([0, 1, 2] * 200, [0, 1, 2, 3] * 100)  # expected count 0 for category 3
    assert (new_category.method, new_category.score, new_category.drifted) == ("chisquare", 0.0, True)
    identical_shares = score([0, 1, 2] * 400, [0, 1, 2] * 100)
    assert (identical_shares.method, identical_shares.score, identical_shares.drifted) == ("jensenshannon", 0.0, False)
    disjoint = score([0] * 1_200, [1] * 100)  # JS distance of disjoint distributions: sqrt(ln 2)
    assert disjoint.method == "jensenshannon" and disjoint.score == pytest.approx(math.sqrt(math.log(2)), abs=1e-12)
    # z-test: shares 0.5 and 0.6 of 400 and 500 rows
    z_case = score([0] * 200 + [1] * 200, [0] * 200 + [1] * 300)
    pooled = (200 + 300) / 900
    z = (0.5 - 0.6) / math.sqrt(pooled * (1 - pooled) * (1 / 400 + 1 / 500))
    assert z_case.method == "z" and z_case.score == pytest.approx(2 * stats.norm.sf(abs(z)), abs=1e-12)
    assert z_case.drifted is (z_case.score < 0.05)


def test_categorical_decisions_at_the_threshold_are_evidentlys():
    """Jensen-Shannon drifts at a score equal to its threshold; chi-square and z do not (strict ``<``)."""
    from evidently.legacy.calculations.stattests import chi_stat_test, jensenshannon_stat_test, z_stat_test
    from evidently.legacy.core import ColumnType

    reference = pd.Series(categories(900, [4, 3, 2], 31))
    current = pd.Series(categories(700, [3, 3, 3], 32))
    binary_reference, binary_current = pd.Series(categories(900, [7, 3], 33)), pd.Series(categories(700, [6, 4], 34))
    cases = [
        (jensenshannon_stat_test, "jensenshannon", reference, current, True),
        (chi_stat_test, "chisquare", reference, current, False),
        (z_stat_test, "z", binary_reference, binary_current, False),
    ]
    for stat_test, method, ref, cur, drifted_at_threshold in cases:
        score = stat_test(ref, cur, ColumnType.Categorical, None).drift_score
        at_threshold = stat_test(ref, cur, ColumnType.Categorical, float(score))
        assert bool(at_threshold.drifted) is drifted_at_threshold, method
        assert is_drifted(method, float(score), float(score)) is drifted_at_threshold, method
    assert is_drifted("ks", 0.05, 0.05) is True and is_drifted("wasserstein", 0.1, 0.1) is True


def test_features_of_different_tests_are_ordered_by_how_far_past_their_threshold():
    features = [
        FeatureDrift("distance", 0.2, 0.1, True, "wasserstein"),  # twice its threshold
        FeatureDrift("p_value", 0.001, 0.05, True, "chisquare"),  # 50 times below its threshold
        FeatureDrift("zero", 0.0, 0.05, True, "z"),
        FeatureDrift("quiet", 0.09, 0.1, False, "jensenshannon"),
    ]
    assert [f.strength for f in features] == [2.0, 50.0, math.inf, pytest.approx(0.9)]
    reference = feature_frame(3_000, seed=41)
    current = feature_frame(3_000, seed=42, shift=0.4).assign(is_online=1.0)  # every transaction online
    report = compute_drift(reference, current, DRIFT_FEATURES)
    # is_online (Jensen-Shannon 0.59, 5.9 times its threshold) between two Wasserstein distances
    assert [(f.feature, f.method) for f in report.features[:3]] == [
        ("amount", "wasserstein"),
        ("is_online", "jensenshannon"),
        ("amount_to_avg_ratio", "wasserstein"),
    ]
    strengths = [f.strength for f in report.features if f.drifted]
    assert len(strengths) >= 3 and strengths == sorted(strengths, reverse=True)

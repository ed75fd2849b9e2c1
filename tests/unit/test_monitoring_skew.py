"""Training/serving skew: logged features against the training set's for the same transactions.

Seeded synthetic days 05-01 .. 05-03; day 05-03 is the "live" day. Served right, its features come from
the snapshot through 05-02 (what the online store holds after the nightly load of 05-02); served from
a stale store (loaded through 05-01 only), every transaction whose customer also shopped on 05-02 differs.
"""

from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest

from ml_platform.data.synthetic import SyntheticConfig, generate_transactions
from ml_platform.features.engineering import MODEL_FEATURES, compute_customer_stats, model_features, stats_before
from ml_platform.features.store import (
    FeatureRepo,
    feature_definitions,
    open_store,
    point_in_time_stats,
    write_offline_table,
)
from ml_platform.monitoring.skew import (
    STORED_COLUMNS,
    SkewReport,
    feature_skew,
    mismatches,
    partition_files,
    read_stored_transactions,
    skew_rule,
)
from ml_platform.monitoring.window import Window, read_predictions
from ml_platform.predictions import PredictionBatch, PredictionLogger
from ml_platform.storage import split_by_day, write_table

REQUEST_TIME = ("amount", "hour_of_day", "is_online", "category_code")
FROM_THE_STORE = ("total_purchases", "lifetime_value", "days_since_last_order")


@pytest.fixture(scope="module")
def history():
    config = SyntheticConfig(seed=5, n_customers=60, transactions_per_day=150)
    return generate_transactions(config, date(2024, 5, 1), date(2024, 5, 4))


@pytest.fixture(scope="module")
def days(history):
    day = history["event_timestamp"].dt.strftime("%Y-%m-%d")
    return {name: history[day == name].reset_index(drop=True) for name in ("2024-05-01", "2024-05-02", "2024-05-03")}


@pytest.fixture(scope="module")
def stored_dir(tmp_path_factory, history):
    """The stored days as the IO manager keeps them, with what else lives in the folder."""
    folder = tmp_path_factory.mktemp("data") / "validated_transactions"
    for day, part in split_by_day(history, "event_timestamp").items():
        write_table(part.reset_index(drop=True), folder / f"{day}.parquet")
    write_table(history.head(3), folder / "rejected" / "batch-20240504T000000Z-abcd1234.parquet")
    (folder / ".2024-05-04.parquet.tmp-123").write_bytes(b"half a file")
    return folder


def logged(transactions, stats, *, customer_ids=None) -> pd.DataFrame:
    """Prediction log rows for ``transactions`` served with ``stats`` (as the server builds them)."""
    features = model_features(transactions, stats)
    return pd.DataFrame(
        {
            "time": pd.Timestamp("2024-05-03 12:00", tz="UTC"),
            "request_id": transactions["transaction_id"].to_numpy(),
            "customer_id": pd.array(
                transactions["customer_id"] if customer_ids is None else customer_ids, dtype="Int64"
            ),
            **{name: features[name].to_numpy() for name in MODEL_FEATURES},
        }
    )


def in_memory(history):
    return lambda transactions: stats_before(transactions, history)


def reader(stored_dir):
    files = partition_files(stored_dir)
    return lambda ids: read_stored_transactions(files, ids)


def stale_mismatches(days) -> int:
    """Day-3 rows whose customer shopped on day 2: a store loaded through day 1 serves them stale stats."""
    return int(days["2024-05-03"]["customer_id"].isin(days["2024-05-02"]["customer_id"]).sum())


# ---- reading the stored transactions -------------------------------------------------------------------
def test_partition_files_are_the_days_only(stored_dir, tmp_path):
    assert [p.name for p in partition_files(stored_dir)] == [
        "2024-05-01.parquet",
        "2024-05-02.parquet",
        "2024-05-03.parquet",
    ]
    assert partition_files(tmp_path / "never-materialized") == []


def test_read_stored_transactions_reads_only_the_wanted_ids_and_columns(stored_dir, history):
    wanted = [history["transaction_id"].iloc[i] for i in (0, 200, len(history) - 1)] + [
        "t20240509-0000001"
    ]  # one not stored
    stored = read_stored_transactions(partition_files(stored_dir), wanted)
    assert list(stored.columns) == list(STORED_COLUMNS)
    assert sorted(stored["transaction_id"]) == sorted(wanted[:3])
    expected = history.set_index("transaction_id").loc[stored["transaction_id"]]
    np.testing.assert_array_equal(stored["amount"].to_numpy(), expected["amount"].to_numpy())
    assert list(stored["event_timestamp"]) == list(expected["event_timestamp"])
    assert str(stored["event_timestamp"].dt.tz) == "UTC"
    nothing = read_stored_transactions(partition_files(stored_dir), [])
    assert nothing.empty and list(nothing.columns) == list(STORED_COLUMNS)


# ---- the comparison ------------------------------------------------------------------------------------
def test_served_from_the_right_snapshot_nothing_differs(stored_dir, history, days):
    today = days["2024-05-03"]
    served = logged(today, stats_before(today, pd.concat([days["2024-05-01"], days["2024-05-02"]])))
    report = feature_skew(served, reader(stored_dir), in_memory(history))
    assert (report.served_rows, report.compared, report.not_stored, report.mismatched) == (len(today), len(today), 0, 0)
    assert report.mismatched_share == 0.0 and report.examples == ()
    assert set(report.mismatches_by_feature.values()) == {0}
    # NaN equals NaN: the customers new on the day carry missing stats on both sides
    assert 0 < served["avg_order_value"].isna().sum() < len(today)


def test_a_stale_store_shows_as_the_rows_whose_customer_moved(stored_dir, history, days):
    today = days["2024-05-03"]
    served = logged(today, stats_before(today, days["2024-05-01"]))  # the online store missed 05-02's load
    report = feature_skew(served, reader(stored_dir), in_memory(history), examples=3)
    expected = stale_mismatches(days)
    assert 0 < expected < len(today)
    assert (report.compared, report.mismatched) == (len(today), expected)
    assert report.mismatched_share == pytest.approx(expected / len(today), rel=1e-12)
    for name in REQUEST_TIME:
        assert report.mismatches_by_feature[name] == 0, name
    for name in FROM_THE_STORE:
        assert report.mismatches_by_feature[name] == expected, name
    moved = set(today.loc[today["customer_id"].isin(days["2024-05-02"]["customer_id"]), "transaction_id"])
    assert len(report.examples) == 3 and set(report.examples) <= moved
    table = report.to_frame().set_index("feature")
    assert list(table.index) == list(MODEL_FEATURES)
    assert table.loc["total_purchases", "mismatched_rows"] == expected
    assert table.loc["total_purchases", "share"] == pytest.approx(expected / len(today))


def test_only_stored_transactions_with_a_customer_are_compared(stored_dir, history, days):
    today = days["2024-05-03"].iloc[:40]
    right = stats_before(today, history)
    served = logged(today, right)
    served.loc[:9, "customer_id"] = pd.NA  # a caller that sent its features: nothing to rebuild
    unknown = served.iloc[10:15].assign(request_id=[f"t20240504-{i:07d}" for i in range(5)])  # not ingested yet
    retried = served.iloc[[20]]  # logged twice: compared twice
    report = feature_skew(
        pd.concat([served, unknown, retried], ignore_index=True), reader(stored_dir), in_memory(history)
    )
    assert (report.served_rows, report.compared, report.not_stored, report.mismatched) == (36, 31, 5, 0)


def test_tolerance_is_relative_and_one_sided_nan_differs():
    served = pd.DataFrame({name: [1.0, 100.0, np.nan, 0.0, np.nan] for name in MODEL_FEATURES})
    offline = served.copy()
    offline.loc[0, "amount"] = 1.0 + 1e-12  # within 1e-9
    offline.loc[1, "amount"] = 100.0 * (1 + 1e-6)  # beyond
    offline.loc[2, "avg_order_value"] = 3.0  # NaN against a value
    offline.loc[3, "lifetime_value"] = 1e-300  # no absolute slack around 0
    differs = mismatches(served, offline)
    assert differs.sum().to_dict() == {
        name: {"amount": 1, "avg_order_value": 1, "lifetime_value": 1}.get(name, 0) for name in MODEL_FEATURES
    }
    assert list(differs.any(axis=1)) == [False, True, True, True, False]


def test_a_transaction_served_for_another_customer_differs(stored_dir, history, days):
    """The log's customer is what was served; the stored one is what the training set joins."""
    today = days["2024-05-03"]
    wrong = today.assign(customer_id=(today["customer_id"] + 1) % 60)
    served = logged(today, stats_before(wrong, history), customer_ids=wrong["customer_id"])
    report = feature_skew(served, reader(stored_dir), in_memory(history))
    assert report.compared == len(today) and report.mismatched > len(today) // 2


def test_nothing_to_compare(stored_dir, history, days):
    empty = feature_skew(
        logged(days["2024-05-03"], stats_before(days["2024-05-03"], history)).iloc[0:0],
        reader(stored_dir),
        in_memory(history),
    )
    assert (empty.served_rows, empty.compared, empty.mismatched_share) == (0, 0, None)

    def never(_):
        raise AssertionError("nothing stored: the offline store must not be asked")

    future = days["2024-05-03"].assign(transaction_id=lambda f: f["transaction_id"].str.replace("20240503", "20240505"))
    report = feature_skew(logged(future, stats_before(future, history)), reader(stored_dir), never)
    assert (report.served_rows, report.compared, report.not_stored) == (len(future), 0, len(future))
    assert report.mismatched_share is None and report.to_frame()["share"].isna().all()


# ---- the rule ------------------------------------------------------------------------------------------
def test_the_rule_warns_above_the_share():
    rule = skew_rule(0.01)
    assert (rule.name, rule.metric, rule.severity, rule.comparison) == ("feature_skew", "mismatched_share", "WARN", ">")
    assert rule.fires(0.0101) and not rule.fires(0.01) and not rule.fires(None)
    for bad in (-0.1, 1.5, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="feature_skew threshold"):
            skew_rule(bad)


def test_share_is_none_without_compared_rows():
    assert SkewReport(served_rows=3, compared=0, not_stored=3, mismatched=0).mismatched_share is None
    assert SkewReport(served_rows=4, compared=4, not_stored=0, mismatched=1).mismatched_share == 0.25


# ---- end to end on the real log and the real Feast join ---------------------------------------------------
def test_the_real_log_and_feast_join_find_the_stale_rows(tmp_path, stored_dir, history, days):
    today = days["2024-05-03"]
    stale = model_features(today, stats_before(today, days["2024-05-01"])).to_numpy(dtype="float64")
    logger = PredictionLogger(tmp_path / "log", flush_rows=10**6, flush_seconds=3600)
    logger.start()
    served_at = datetime(2024, 5, 3, 12, tzinfo=UTC).timestamp()
    for start in range(0, len(today), 50):
        rows = today.iloc[start : start + 50]
        logger.log(
            PredictionBatch(
                time=served_at + start,
                request_ids=rows["transaction_id"].tolist(),
                customer_ids=rows["customer_id"].tolist(),
                features=stale[start : start + 50],
                probabilities=np.full(len(rows), 0.1),
                is_fraud=np.zeros(len(rows), dtype=bool),
                threshold=0.5,
                model_version=1,
                variant="champion",
                latency_ms=1.0,
            )
        )
    assert logger.flush()
    logger.close()
    predictions = read_predictions(
        tmp_path / "log", Window(datetime(2024, 5, 3, tzinfo=UTC), datetime(2024, 5, 4, tzinfo=UTC))
    )
    assert len(predictions) == len(today)

    repo = FeatureRepo(tmp_path / "repo", tmp_path / "offline", "skew")
    write_offline_table(repo, compute_customer_stats(history))
    store = open_store(repo)
    store.apply(feature_definitions(repo))
    report = feature_skew(predictions, reader(stored_dir), lambda t: point_in_time_stats(store, t))
    assert (report.compared, report.mismatched) == (len(today), stale_mismatches(days))

"""Customer stats against a brute-force reference, each transaction's daily snapshot of them (the in-memory
join), and the model's features for known inputs."""

from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from ml_platform.data.schema import CATEGORIES
from ml_platform.features.engineering import (
    MODEL_FEATURES,
    STORED_FEATURES,
    compute_customer_stats,
    epoch_seconds,
    model_features,
    snapshot_time,
    stats_before,
)


def ts(text):
    return pd.Timestamp(text, tz="UTC")


def epoch(text):
    return ts(text).timestamp()


def hand_transactions():
    """Customer 1 has two transactions at the same second (01-02 08:00); customer 3 has two at its
    very first second; customer 2 shares a second with customer 1. Rows are deliberately unsorted."""
    rows = [
        ("c1-e", 1, "2024-01-03 09:15:30", 100.0),
        ("c1-a", 1, "2024-01-01 10:00:00", 10.0),
        ("c2-a", 2, "2024-01-01 11:00:00", 50.0),
        ("c1-d", 1, "2024-01-02 08:00:00", 40.0),
        ("c1-b", 1, "2024-01-01 12:30:00", 30.0),
        ("c3-b", 3, "2024-01-01 09:00:00", 3.0),
        ("c1-c", 1, "2024-01-02 08:00:00", 20.0),
        ("c2-b", 2, "2024-01-02 08:00:00", 5.0),
        ("c3-a", 3, "2024-01-01 09:00:00", 7.0),
    ]
    return pd.DataFrame(
        {
            "transaction_id": [r[0] for r in rows],
            "customer_id": np.array([r[1] for r in rows], dtype="int64"),
            "event_timestamp": pd.to_datetime([r[2] for r in rows], utc=True),
            "amount": [r[3] for r in rows],
        }
    )


def brute_force_stats(transactions):
    """Plain loops: per customer, in time order, the running count/sum/mean/last time after each
    distinct second (ties collapse into the row after the last of them)."""
    history = defaultdict(list)
    for customer, when, amount in zip(
        transactions["customer_id"], transactions["event_timestamp"], transactions["amount"], strict=True
    ):
        history[int(customer)].append((when, float(amount)))
    rows = []
    for customer, items in history.items():
        items.sort(key=lambda item: item[0])
        total = 0.0
        for count, (when, amount) in enumerate(items, start=1):  # count = purchases so far
            total += amount
            last_at_this_time = count == len(items) or items[count][0] != when
            if last_at_this_time:
                rows.append((customer, when, count, total / count, total, when.timestamp()))
    frame = pd.DataFrame(
        rows,
        columns=[
            "customer_id",
            "event_timestamp",
            "total_purchases",
            "avg_order_value",
            "lifetime_value",
            "last_order_ts",
        ],
    )
    return frame.sort_values(["event_timestamp", "customer_id"], kind="stable").reset_index(drop=True)


def assert_stats_equal(actual, expected):
    assert list(actual.columns) == ["customer_id", "event_timestamp", *STORED_FEATURES]
    assert len(actual) == len(expected)
    np.testing.assert_array_equal(actual["customer_id"].to_numpy(), expected["customer_id"].to_numpy())
    assert list(actual["event_timestamp"]) == list(expected["event_timestamp"])
    np.testing.assert_array_equal(actual["total_purchases"].to_numpy(), expected["total_purchases"].to_numpy())
    for column in ("avg_order_value", "lifetime_value", "last_order_ts"):
        np.testing.assert_allclose(actual[column].to_numpy(), expected[column].to_numpy(), rtol=1e-12, err_msg=column)


def test_stats_on_a_hand_made_frame_match_known_values():
    stats = compute_customer_stats(hand_transactions())
    expected = pd.DataFrame(
        [
            (3, ts("2024-01-01 09:00"), 2, 5.0, 10.0, epoch("2024-01-01 09:00")),
            (1, ts("2024-01-01 10:00"), 1, 10.0, 10.0, epoch("2024-01-01 10:00")),
            (2, ts("2024-01-01 11:00"), 1, 50.0, 50.0, epoch("2024-01-01 11:00")),
            (1, ts("2024-01-01 12:30"), 2, 20.0, 40.0, epoch("2024-01-01 12:30")),
            (1, ts("2024-01-02 08:00"), 4, 25.0, 100.0, epoch("2024-01-02 08:00")),  # both 08:00 rows in one
            (2, ts("2024-01-02 08:00"), 2, 27.5, 55.0, epoch("2024-01-02 08:00")),
            (1, ts("2024-01-03 09:15:30"), 5, 40.0, 200.0, epoch("2024-01-03 09:15:30")),
        ],
        columns=["customer_id", "event_timestamp", *STORED_FEATURES],
    )
    assert_stats_equal(stats, expected)
    assert_stats_equal(stats, brute_force_stats(hand_transactions()))
    assert stats["total_purchases"].dtype == np.int64
    assert str(stats["event_timestamp"].dt.tz) == "UTC"


def test_same_second_transactions_collapse_into_one_row():
    stats = compute_customer_stats(hand_transactions())
    assert not stats.duplicated(["customer_id", "event_timestamp"]).any()
    first_second = stats[stats["customer_id"] == 3]
    assert len(first_second) == 1
    assert first_second["total_purchases"].item() == 2 and first_second["lifetime_value"].item() == 10.0


def test_stats_do_not_depend_on_input_order():
    frame = hand_transactions()
    shuffled = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)
    pd.testing.assert_frame_equal(compute_customer_stats(frame), compute_customer_stats(shuffled))


def test_stats_on_generated_data_match_the_brute_force(generated_transactions):
    sample = generated_transactions.iloc[:2_000]
    # add same-second ties: a second transaction of the same customer at the same time for 25 rows
    ties = sample.iloc[::80].assign(
        transaction_id=lambda f: f["transaction_id"] + "-tie", amount=lambda f: f["amount"] + 1.0
    )
    sample = pd.concat([sample, ties], ignore_index=True)
    stats = compute_customer_stats(sample)
    reference = brute_force_stats(sample)
    assert len(reference) == 2_000 and len(sample) == 2_025
    assert_stats_equal(stats, reference)


# ---- the daily snapshot ------------------------------------------------------------------------


def test_snapshot_time_is_midnight_utc_of_the_transactions_day():
    times = pd.Series(
        pd.to_datetime(
            ["2024-01-02 00:00:00", "2024-01-02 23:59:59.999999", "2024-01-02 01:30:00+02:00"], format="ISO8601"
        ),
        index=[7, 8, 9],
    )
    snapshots = snapshot_time(times)
    assert list(snapshots.index) == [7, 8, 9]
    # naive times are UTC; 01:30 at +02:00 is 23:30 UTC of the day before
    assert list(snapshots) == [ts("2024-01-02"), ts("2024-01-02"), ts("2024-01-01")]


def snapshot_of(stats, transactions, transaction_id):
    return tuple(stats.loc[transactions.index[transactions["transaction_id"] == transaction_id][0]])


def test_stats_before_gives_each_transaction_its_days_snapshot():
    transactions = hand_transactions()
    stats = stats_before(transactions)
    assert list(stats.index) == list(transactions.index) and list(stats.columns) == list(STORED_FEATURES)
    # the first day: nobody has an earlier day, whatever happened earlier that day (c1-b after c1-a)
    for first_day in ("c1-a", "c1-b", "c2-a", "c3-a", "c3-b"):
        assert np.isnan(snapshot_of(stats, transactions, first_day)).all(), first_day
    # 01-02: the previous day's transactions, not the same-second twin
    for tied in ("c1-c", "c1-d"):
        assert snapshot_of(stats, transactions, tied) == (2, 20.0, 40.0, epoch("2024-01-01 12:30")), tied
    assert snapshot_of(stats, transactions, "c2-b") == (1, 50.0, 50.0, epoch("2024-01-01 11:00"))
    # 01-03: both previous days
    assert snapshot_of(stats, transactions, "c1-e") == (4, 25.0, 100.0, epoch("2024-01-02 08:00"))


def test_stats_before_leaves_out_same_day_transactions_even_at_midnight():
    history = pd.DataFrame(
        {
            "transaction_id": ["a", "b", "c", "d"],
            "customer_id": np.array([5, 5, 5, 5], dtype="int64"),
            "event_timestamp": [
                ts("2024-01-01 23:59:59"),
                ts("2024-01-02 00:00:00"),
                ts("2024-01-02 13:00"),
                ts("2024-01-03 00:00:00"),
            ],
            "amount": [10.0, 20.0, 30.0, 40.0],
        }
    )
    stats = stats_before(history)
    assert np.isnan(snapshot_of(stats, history, "a")).all()
    assert snapshot_of(stats, history, "b") == (1, 10.0, 10.0, epoch("2024-01-01 23:59:59"))  # its own second: out
    assert snapshot_of(stats, history, "c") == (1, 10.0, 10.0, epoch("2024-01-01 23:59:59"))  # b of 00:00: out
    assert snapshot_of(stats, history, "d") == (3, 20.0, 60.0, epoch("2024-01-02 13:00"))


def test_stats_before_reads_only_earlier_days_of_a_separate_history():
    """Traffic joined to a history holding later days too (a backfill): only the days before each
    transaction's own count; a customer the history does not know has no stats."""
    history = hand_transactions()  # 2024-01-01 .. 01-03
    traffic = pd.DataFrame(
        {
            "customer_id": np.array([1, 1, 2, 99], dtype="int64"),
            "event_timestamp": [
                ts("2024-01-02 23:00"),
                ts("2024-01-04 06:00"),
                ts("2024-01-02 07:00"),
                ts("2024-01-04"),
            ],
        },
        index=["x", "y", "z", "w"],
    )
    stats = stats_before(traffic, history)
    assert list(stats.index) == ["x", "y", "z", "w"]
    assert tuple(stats.loc["x"]) == (2, 20.0, 40.0, epoch("2024-01-01 12:30"))
    assert tuple(stats.loc["y"]) == (5, 40.0, 200.0, epoch("2024-01-03 09:15:30"))
    assert tuple(stats.loc["z"]) == (1, 50.0, 50.0, epoch("2024-01-01 11:00"))
    assert stats.loc["w"].isna().all()


def test_epoch_seconds_does_not_depend_on_the_time_unit():
    times = pd.Series([ts("2024-01-01 00:00:01"), ts("2024-01-02 12:00:00.5")])
    expected = [1_704_067_201.0, 1_704_196_800.5]
    for unit in ("ms", "us", "ns"):
        np.testing.assert_array_equal(epoch_seconds(times.astype(f"datetime64[{unit}, UTC]")), expected, err_msg=unit)


# ---- model features ----------------------------------------------------------------------------


def test_model_features_for_a_known_row():
    transaction = pd.DataFrame(
        {
            "customer_id": [1],
            "amount": [100.0],
            "category": ["electronics"],
            "channel": ["online"],
            "event_timestamp": [ts("2024-01-03 09:15:30")],
        },
        index=[17],
    )
    stats = pd.DataFrame(
        {
            "total_purchases": [4],
            "avg_order_value": [25.0],
            "lifetime_value": [100.0],
            "last_order_ts": [epoch("2024-01-02 08:00:00")],
        },
        index=[17],
    )
    features = model_features(transaction, stats)
    assert tuple(features.columns) == MODEL_FEATURES
    assert list(features.index) == [17]
    row = features.loc[17]
    expected = {
        "amount": 100.0,
        "hour_of_day": 9.25,  # 09:15 (seconds are not part of the hour feature)
        "is_online": 1.0,
        "category_code": float(CATEGORIES.index("electronics")),
        "total_purchases": 4.0,
        "avg_order_value": 25.0,
        "lifetime_value": 100.0,
        "days_since_last_order": (25 * 3600 + 15 * 60 + 30) / 86_400,
        "amount_to_avg_ratio": 4.0,
    }
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, rel=1e-12), name
    assert all(features.dtypes == np.float64)


def test_model_features_for_a_customer_without_history():
    transaction = pd.DataFrame(
        {
            "amount": [12.5, 80.0],
            "category": ["grocery", "gift_cards"],
            "channel": ["in_store", "online"],
            "event_timestamp": [ts("2024-01-01 23:59:59"), ts("2024-01-02 00:00:00")],
        }
    )
    stats = pd.DataFrame({name: [np.nan, np.nan] for name in STORED_FEATURES})
    features = model_features(transaction, stats)
    assert tuple(features.columns) == MODEL_FEATURES
    np.testing.assert_array_equal(features["total_purchases"], [0.0, 0.0])
    np.testing.assert_array_equal(features["lifetime_value"], [0.0, 0.0])
    for name in ("avg_order_value", "days_since_last_order", "amount_to_avg_ratio"):
        assert features[name].isna().all(), name
    np.testing.assert_array_equal(features["hour_of_day"], [23 + 59 / 60, 0.0])
    np.testing.assert_array_equal(features["is_online"], [0.0, 1.0])
    np.testing.assert_array_equal(features["category_code"], [0.0, float(CATEGORIES.index("gift_cards"))])


def test_model_features_accepts_nullable_integer_stats_and_reads_stats_from_the_frame():
    frame = pd.DataFrame(
        {
            "amount": [30.0, 30.0],
            "category": ["fuel", "fuel"],
            "channel": ["in_store", "in_store"],
            "event_timestamp": [ts("2024-01-02 06:30"), ts("2024-01-02 06:30")],
            "total_purchases": pd.array([3, None], dtype="Int64"),
            "avg_order_value": [0.0, np.nan],  # an average of 0 gives no ratio rather than inf
            "lifetime_value": [0.0, np.nan],
            "last_order_ts": [epoch("2024-01-01 06:30"), np.nan],
        }
    )
    features = model_features(frame)
    np.testing.assert_array_equal(features["total_purchases"], [3.0, 0.0])
    assert features["amount_to_avg_ratio"].isna().all()
    assert features["days_since_last_order"].iloc[0] == pytest.approx(1.0)
    assert features["category_code"].iloc[0] == CATEGORIES.index("fuel")

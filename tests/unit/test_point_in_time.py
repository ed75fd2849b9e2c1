"""The real Feast point-in-time join (the offline store open_store configures) against a brute-force
reference, and the online store after a full load. One Feast repo for the module, holding hand-made
customers (ids from 900_001) beside generated ones (ids below 200).

The join gives each transaction its daily snapshot: its customer's stats from every transaction strictly
before 00:00 UTC of its day. The last test holds the platform to its promise: the online store loaded
through day D-1 serves each transaction of day D exactly the stats the training join gives it."""

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from ml_platform.features.engineering import STORED_FEATURES, compute_customer_stats, model_features, stats_before
from ml_platform.features.store import (
    FEATURE_SERVICE,
    FeatureRepo,
    feature_definitions,
    load_online_store,
    open_store,
    point_in_time_stats,
    write_offline_table,
)
from tests.support.feature_loads import expected_online, load_stats

C1, C2, C3, UNKNOWN = 900_001, 900_002, 900_003, 999_999


def ts(text):
    return pd.Timestamp(text, tz="UTC")


def hand_transactions():
    rows = [
        ("c1-a", C1, "2024-03-01 10:00:00", 10.0),
        ("c1-b", C1, "2024-03-01 12:30:00", 30.0),
        ("c1-c", C1, "2024-03-02 08:00:00", 20.0),  # c1-c and c1-d share a second
        ("c1-d", C1, "2024-03-02 08:00:00", 40.0),
        ("c1-e", C1, "2024-03-03 09:15:30", 100.0),
        ("c2-a", C2, "2024-03-01 11:00:00", 50.0),
        ("c2-b", C2, "2024-03-02 08:00:00", 5.0),
        ("c2-c", C2, "2024-03-03 00:00:00", 25.0),  # at midnight exactly: the first instant of its day
        ("c2-d", C2, "2024-03-03 18:00:00", 15.0),
        ("c3-a", C3, "2024-03-01 09:00:00", 7.0),  # c3's first second holds two transactions
        ("c3-b", C3, "2024-03-01 09:00:00", 3.0),
    ]
    return pd.DataFrame(
        {
            "transaction_id": [r[0] for r in rows],
            "customer_id": np.array([r[1] for r in rows], dtype="int64"),
            "event_timestamp": pd.to_datetime([r[2] for r in rows], utc=True),
            "amount": [r[3] for r in rows],
        }
    )


def brute_force_point_in_time(history, events):
    """For each event: the stats of its customer's transactions strictly before 00:00 UTC of the event's day."""
    by_customer = {}
    for c, t, a in zip(history["customer_id"], history["event_timestamp"], history["amount"], strict=True):
        by_customer.setdefault(int(c), []).append((t, float(a)))
    rows = []
    for customer, when in zip(events["customer_id"], events["event_timestamp"], strict=True):
        midnight = pd.Timestamp(when.year, when.month, when.day, tz="UTC")
        earlier = [(t, a) for t, a in by_customer.get(int(customer), []) if t < midnight]
        if not earlier:
            rows.append((np.nan, np.nan, np.nan, np.nan))
            continue
        count = len(earlier)
        total = sum(a for _, a in earlier)
        last = max(t for t, _ in earlier)
        rows.append((count, total / count, total, last.timestamp()))
    return pd.DataFrame(rows, columns=list(STORED_FEATURES), index=events.index)


@pytest.fixture(scope="module")
def history(generated_transactions):
    hand = hand_transactions()
    return pd.concat([generated_transactions[hand.columns], hand], ignore_index=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory, history):
    root = tmp_path_factory.mktemp("feast")
    repo = FeatureRepo(root / "repo", root / "offline", "unit")
    write_offline_table(repo, compute_customer_stats(history))
    feature_store = open_store(repo)
    feature_store.apply(feature_definitions(repo))
    return feature_store


@pytest.fixture(scope="module")
def hand_events():
    """Each hand-made transaction plus an unknown customer and a late lookup, in shuffled order with
    a non-default index, so the output must align with the input by position."""
    events = hand_transactions()[["transaction_id", "customer_id", "event_timestamp"]]
    extra = pd.DataFrame(
        {
            "transaction_id": ["unknown", "c1-late"],
            "customer_id": np.array([UNKNOWN, C1], dtype="int64"),
            "event_timestamp": [ts("2024-03-02 12:00"), ts("2024-03-10 00:00")],
        }
    )
    events = pd.concat([events, extra], ignore_index=True).sample(frac=1.0, random_state=4)
    events.index = [f"e{i}" for i in range(100, 100 + len(events))]
    return events


@pytest.fixture(scope="module")
def hand_result(store, hand_events):
    return point_in_time_stats(store, hand_events)


def stats_of(result, events, transaction_id):
    return result.loc[events.index[events["transaction_id"] == transaction_id][0]]


def test_output_is_aligned_with_the_events(hand_result, hand_events):
    assert len(hand_result) == len(hand_events) == 13
    assert list(hand_result.index) == list(hand_events.index)
    assert list(hand_result.columns) == list(STORED_FEATURES)


def test_first_day_transactions_are_kept_with_missing_stats(hand_result, hand_events):
    # c1-b comes 2.5 hours after c1-a, on the same day: the snapshot both are served with is empty
    for first_day in ("c1-a", "c1-b", "c2-a", "c3-a", "c3-b"):
        assert stats_of(hand_result, hand_events, first_day).isna().all(), first_day


def test_same_day_earlier_transactions_are_not_in_the_stats(hand_result, hand_events):
    # c1-c and c1-d share a second on 03-02; both see the two transactions of 03-01 and neither sees the other
    for tied in ("c1-c", "c1-d"):
        row = stats_of(hand_result, hand_events, tied)
        assert (row["total_purchases"], row["lifetime_value"], row["avg_order_value"]) == (2, 40.0, 20.0), tied
        assert row["last_order_ts"] == ts("2024-03-01 12:30").timestamp()
    # c2-d at 18:00 on 03-03 does not see c2-c of 00:00 the same day
    evening = stats_of(hand_result, hand_events, "c2-d")
    assert (evening["total_purchases"], evening["lifetime_value"], evening["avg_order_value"]) == (2, 55.0, 27.5)
    assert evening["last_order_ts"] == ts("2024-03-02 08:00").timestamp()


def test_previous_days_are_in_the_stats(hand_result, hand_events):
    fifth = stats_of(hand_result, hand_events, "c1-e")  # 03-03: all four of 03-01 and 03-02
    assert (fifth["total_purchases"], fifth["lifetime_value"], fifth["avg_order_value"]) == (4, 100.0, 25.0)
    assert fifth["last_order_ts"] == ts("2024-03-02 08:00").timestamp()
    second = stats_of(hand_result, hand_events, "c2-b")  # 03-02: c2-a of 03-01
    assert (second["total_purchases"], second["lifetime_value"], second["avg_order_value"]) == (1, 50.0, 50.0)
    assert second["last_order_ts"] == ts("2024-03-01 11:00").timestamp()


def test_a_transaction_at_midnight_sees_only_earlier_days(hand_result, hand_events):
    # c2-c at 03-03 00:00:00 has a stats row of its own at that very instant: it is not in its snapshot
    midnight = stats_of(hand_result, hand_events, "c2-c")
    assert (midnight["total_purchases"], midnight["lifetime_value"], midnight["avg_order_value"]) == (2, 55.0, 27.5)
    assert midnight["last_order_ts"] == ts("2024-03-02 08:00").timestamp()


def test_unknown_customer_is_kept_with_missing_stats(hand_result, hand_events):
    assert stats_of(hand_result, hand_events, "unknown").isna().all()


def test_a_lookup_after_the_last_transaction_sees_all_of_it(hand_result, hand_events):
    late = stats_of(hand_result, hand_events, "c1-late")
    assert (late["total_purchases"], late["lifetime_value"], late["avg_order_value"]) == (5, 200.0, 40.0)


def test_hand_made_events_match_the_brute_force(hand_result, hand_events, history):
    reference = brute_force_point_in_time(history, hand_events)
    np.testing.assert_allclose(hand_result.to_numpy(dtype="float64"), reference.to_numpy(), equal_nan=True)


def test_generated_events_match_the_brute_force(store, generated_transactions, history):
    events = generated_transactions
    result = point_in_time_stats(store, events)
    reference = brute_force_point_in_time(history, events)
    assert len(result) == len(events) and list(result.index) == list(events.index)
    first_day = (events["event_timestamp"] < ts("2024-03-02")).sum()  # the snapshot of the first day is empty
    assert first_day < reference["total_purchases"].isna().sum() < len(events) // 2
    for column in STORED_FEATURES:
        np.testing.assert_allclose(
            result[column].to_numpy(dtype="float64"),
            reference[column].to_numpy(),
            rtol=1e-12,
            equal_nan=True,
            err_msg=column,
        )


def test_the_in_memory_join_equals_feasts(store, generated_transactions, history):
    events = generated_transactions
    in_memory = stats_before(events, history)
    feast = point_in_time_stats(store, events)
    assert list(in_memory.index) == list(events.index)
    for column in STORED_FEATURES:
        np.testing.assert_allclose(
            in_memory[column].to_numpy(dtype="float64"),
            feast[column].to_numpy(dtype="float64"),
            rtol=1e-12,
            equal_nan=True,
            err_msg=column,
        )


def test_online_store_holds_each_customers_latest_stats(store, history):
    load_online_store(store, datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC))
    customers = [C1, C2, C3, 5, UNKNOWN]
    online = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE),
        entity_rows=[{"customer_id": customer} for customer in customers],
    ).to_dict()
    assert online["customer_id"] == customers
    latest = compute_customer_stats(history).groupby("customer_id").last()
    expected = {
        C1: (5, 40.0, 200.0, ts("2024-03-03 09:15:30").timestamp()),
        C2: (4, 23.75, 95.0, ts("2024-03-03 18:00").timestamp()),
        C3: (2, 5.0, 10.0, ts("2024-03-01 09:00").timestamp()),
        5: tuple(latest.loc[5, list(STORED_FEATURES)]),
    }
    for position, customer in enumerate(customers[:-1]):
        got = tuple(online[name][position] for name in STORED_FEATURES)
        assert got[0] == expected[customer][0], customer
        np.testing.assert_allclose(got[1:], expected[customer][1:], rtol=1e-12, err_msg=str(customer))
    assert [online[name][-1] for name in STORED_FEATURES] == [None, None, None, None]


def test_online_store_rejects_an_empty_window(store):
    when = datetime(2024, 3, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="empty"):
        load_online_store(store, when, when)


@pytest.mark.parametrize("day", ["2024-03-02", "2024-03-03"])
def test_the_online_store_loaded_through_the_day_before_serves_what_training_joins(tmp_path, store, history, day):
    """The nightly batch loads the online store with every day before D; each transaction of D is then
    served the stats the training join (on the full offline table, D included) gives it, bit for bit."""
    midnight = ts(day)
    earlier_days = history[history["event_timestamp"] < midnight]
    todays = history[
        (history["event_timestamp"] >= midnight) & (history["event_timestamp"] < midnight + pd.Timedelta(days=1))
    ]
    assert len(todays) > 500 and todays["customer_id"].isin(earlier_days["customer_id"]).mean() > 0.5

    repo = FeatureRepo(tmp_path / "repo", tmp_path / "offline", "nightly")
    load_stats(repo, compute_customer_stats(earlier_days))
    served = expected_online(open_store(repo), todays["customer_id"].tolist())

    trained = point_in_time_stats(store, todays)
    np.testing.assert_array_equal(served, trained.to_numpy(dtype="float64"))
    np.testing.assert_array_equal(served, stats_before(todays, history).to_numpy(dtype="float64"))
    assert np.isnan(served[:, 0]).sum() == (~todays["customer_id"].isin(earlier_days["customer_id"])).sum()
    # and so the model's input: the served features equal the training set's
    transactions = todays.assign(category="grocery", channel="online")
    served_features = model_features(
        transactions, pd.DataFrame(served, columns=list(STORED_FEATURES), index=todays.index)
    )
    np.testing.assert_array_equal(served_features.to_numpy(), model_features(transactions, trained).to_numpy())

"""The real Feast point-in-time join (the offline store open_store configures) against a brute-force
reference, and the online store after a full load. One Feast repo for the module, holding hand-made
customers (ids from 900_001) beside generated ones (ids below 200)."""

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from ml_platform.features.engineering import STORED_FEATURES, compute_customer_stats, stats_before
from ml_platform.features.store import (
    FEATURE_SERVICE,
    FeatureRepo,
    feature_definitions,
    load_online_store,
    open_store,
    point_in_time_stats,
)
from ml_platform.storage import write_table

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
    """For each event: the stats of its customer's transactions strictly before the event time."""
    by_customer = {}
    for c, t, a in zip(history["customer_id"], history["event_timestamp"], history["amount"], strict=True):
        by_customer.setdefault(int(c), []).append((t, float(a)))
    rows = []
    for customer, when in zip(events["customer_id"], events["event_timestamp"], strict=True):
        earlier = [(t, a) for t, a in by_customer.get(int(customer), []) if t < when]
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
    write_table(compute_customer_stats(history), repo.offline_table_path)
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
    assert len(hand_result) == len(hand_events) == 11
    assert list(hand_result.index) == list(hand_events.index)
    assert list(hand_result.columns) == list(STORED_FEATURES)


def test_first_transaction_is_kept_with_missing_stats(hand_result, hand_events):
    for first in ("c1-a", "c2-a"):
        assert stats_of(hand_result, hand_events, first).isna().all(), first


def test_later_transaction_sees_only_strictly_earlier_history(hand_result, hand_events):
    second = stats_of(hand_result, hand_events, "c1-b")
    assert second["total_purchases"] == 1
    assert second["lifetime_value"] == 10.0  # not its own 30.0
    assert second["avg_order_value"] == 10.0
    assert second["last_order_ts"] == ts("2024-03-01 10:00").timestamp()
    fifth = stats_of(hand_result, hand_events, "c1-e")
    assert (fifth["total_purchases"], fifth["lifetime_value"], fifth["avg_order_value"]) == (4, 100.0, 25.0)
    assert fifth["last_order_ts"] == ts("2024-03-02 08:00").timestamp()


def test_transactions_at_the_same_second_do_not_see_each_other(hand_result, hand_events):
    # The 08:00 stats row holds both tied transactions (4 purchases, 100.0); each tied event must see
    # only the history before that second. (Feast's dask offline store de-duplicated entity rows on
    # (customer_id, event_timestamp), ignoring the row id, so one of the two came back NaN.)
    for tied in ("c1-c", "c1-d"):
        row = stats_of(hand_result, hand_events, tied)
        assert (row["total_purchases"], row["lifetime_value"], row["avg_order_value"]) == (2, 40.0, 20.0), tied
        assert row["last_order_ts"] == ts("2024-03-01 12:30").timestamp()
    for tied_first in ("c3-a", "c3-b"):  # both at the customer's first second: no history at all
        assert stats_of(hand_result, hand_events, tied_first).isna().all(), tied_first


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
    assert 0 < reference["total_purchases"].isna().sum() < len(events) // 4  # some first transactions
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
        C2: (2, 27.5, 55.0, ts("2024-03-02 08:00").timestamp()),
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

"""The running customer stats day by day: each day continues from the state the day before left, and the
days folded in order give the whole-history table of ``compute_customer_stats`` bit for bit; the online
store loaded day by day (only the customers a day settled) holds what a full load gives."""

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from ml_platform.data.schema import ENTITY_COLUMN, TIMESTAMP_COLUMN
from ml_platform.data.synthetic import SyntheticConfig, generate_transactions
from ml_platform.features.engineering import (
    LIFETIME_COMPENSATION,
    STATE_COLUMNS,
    STORED_FEATURES,
    DayMismatchError,
    advance_customer_stats,
    compute_customer_stats,
    empty_customer_state,
    fold_customer_stats,
)
from ml_platform.features.store import (
    FEATURE_SERVICE,
    FeatureRepo,
    feature_definitions,
    last_changes,
    load_online_store,
    offline_days,
    offline_window,
    open_store,
    state_before,
    store_day,
    write_online_changes,
)

FIRST = date(2026, 3, 1)
DAYS = [FIRST + timedelta(days=n) for n in range(6)]


def transactions(seed: int = 5, customers: int = 150, per_day: int = 400) -> pd.DataFrame:
    config = SyntheticConfig(n_customers=customers, transactions_per_day=per_day, seed=seed)
    frame = generate_transactions(config, DAYS[0], DAYS[-1] + timedelta(days=1))
    # two orders of one customer in the same second (collapsed into one row) on two of the days
    ties = frame.iloc[[3, len(frame) // 2]].copy()
    ties["transaction_id"] = ties["transaction_id"] + "-again"
    ties["amount"] = [12.34, 56.78]
    return pd.concat([frame, ties], ignore_index=True).sample(frac=1.0, random_state=0)


def fold(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the whole offline table, the last state) from the days folded in order."""
    state, parts = empty_customer_state(), []
    for _day, after, rows in fold_customer_stats(empty_customer_state(), DAYS, frame):
        state = after
        parts.append(rows)
    return pd.concat(parts, ignore_index=True), state


def test_days_folded_in_order_equal_the_whole_history_row_for_row():
    frame = transactions()
    whole = compute_customer_stats(frame)
    table, state = fold(frame)
    assert len(whole) == len(frame) - 2  # the two same-second orders collapsed into their customer's row
    pd.testing.assert_frame_equal(table, whole, check_exact=True)
    # the state holds each customer's newest row, plus the running sum's compensation
    newest = whole.drop_duplicates(ENTITY_COLUMN, keep="last").sort_values(ENTITY_COLUMN).reset_index(drop=True)
    assert list(state.columns) == list(STATE_COLUMNS)
    assert state[ENTITY_COLUMN].tolist() == sorted(frame[ENTITY_COLUMN].unique())
    pd.testing.assert_frame_equal(
        state[[ENTITY_COLUMN, *STORED_FEATURES]], newest[[ENTITY_COLUMN, *STORED_FEATURES]], check_exact=True
    )


def test_the_running_sum_continues_exactly_across_days():
    """Ten orders of 0.1, one a day: the whole-history sum is compensated (1.0, not 0.9999999999999999) and
    the day-by-day sum gives the same bits, because the compensation is carried from day to day."""
    days = [FIRST + timedelta(days=n) for n in range(10)]
    orders = pd.DataFrame(
        {
            ENTITY_COLUMN: [7] * 10,
            TIMESTAMP_COLUMN: pd.to_datetime([f"{day}T12:00:00" for day in days], utc=True),
            "transaction_id": [f"t{n}" for n in range(10)],
            "amount": [0.1] * 10,
        }
    )
    whole = compute_customer_stats(orders)
    state, values = empty_customer_state(), []
    for _day, after, rows in fold_customer_stats(empty_customer_state(), days, orders):
        state = after
        values.extend(rows["lifetime_value"])
    assert whole["lifetime_value"].iloc[-1] == 1.0
    assert values == whole["lifetime_value"].tolist()
    assert sum([0.1] * 10) != 1.0  # what carrying the plain sum alone would give on the last day
    assert state[LIFETIME_COMPENSATION].iloc[0] != 0.0


def test_a_day_without_transactions_leaves_the_state_as_it_was():
    frame = transactions()
    _table, state = fold(frame)
    after, rows = advance_customer_stats(state, DAYS[-1] + timedelta(days=1), frame.iloc[:0])
    assert rows.empty
    pd.testing.assert_frame_equal(after, state, check_exact=True)


def test_a_transaction_of_another_day_is_refused_with_the_day_named():
    frame = transactions()
    with pytest.raises(DayMismatchError, match=r"of 2026-03-02 fall on other days"):
        advance_customer_stats(empty_customer_state(), DAYS[1], frame)
    with pytest.raises(DayMismatchError, match=r"outside the days 2026-03-01 \.\. 2026-03-02"):
        list(fold_customer_stats(empty_customer_state(), DAYS[:2], frame))


def stored_days(repo: FeatureRepo, frame: pd.DataFrame, days: list[date]) -> None:
    """The days' results kept as the customer_stats asset keeps them, each day from the stored state."""
    for day in days:
        _, state = state_before(repo, day)
        [(_, after, rows)] = list(fold_customer_stats(state, [day], frame[frame[TIMESTAMP_COLUMN].dt.date == day]))
        store_day(repo, day, after, rows)


def test_stored_days_continue_from_the_newest_state_before_them(tmp_path):
    repo = FeatureRepo(tmp_path / "feast", tmp_path / "offline", "incremental")
    frame = transactions()
    frame[TIMESTAMP_COLUMN] = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True)
    without_day_3 = frame[frame[TIMESTAMP_COLUMN].dt.date != DAYS[2]]
    stored_days(repo, without_day_3, DAYS)
    assert offline_days(repo) == [day for day in DAYS if day != DAYS[2]]  # an empty day keeps no file
    assert state_before(repo, DAYS[3])[0] == DAYS[1]
    table = pd.read_parquet(repo.offline_table_path).sort_values([TIMESTAMP_COLUMN, ENTITY_COLUMN], kind="stable")
    pd.testing.assert_frame_equal(
        table.reset_index(drop=True), compute_customer_stats(without_day_3), check_exact=True, check_dtype=False
    )


def online_values(store, customers: list[int]) -> pd.DataFrame:
    return (
        store.get_online_features(
            features=store.get_feature_service(FEATURE_SERVICE), entity_rows=[{ENTITY_COLUMN: c} for c in customers]
        )
        .to_df()
        .set_index(ENTITY_COLUMN)[list(STORED_FEATURES)]
    )


def test_the_online_store_loaded_day_by_day_equals_a_full_load(tmp_path):
    frame = transactions(customers=120, per_day=150)
    frame[TIMESTAMP_COLUMN] = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True)
    daily = FeatureRepo(tmp_path / "daily", tmp_path / "offline", "incremental")
    full = FeatureRepo(tmp_path / "full", tmp_path / "offline", "incremental")  # the same offline table
    daily_store = open_store(daily)
    written = []
    for day in DAYS[:5]:  # the nightly batch: the day's stats kept, then that day's customers written
        stored_days(daily, frame, [day])
        if day == DAYS[0]:
            daily_store.apply(feature_definitions(daily))
        written.append(write_online_changes(daily_store, last_changes(daily, day, day)))
    full_store = open_store(full)
    full_store.apply(feature_definitions(full))
    load_online_store(full_store, *offline_window(full))

    customers = sorted(frame[ENTITY_COLUMN].unique().tolist()) + [10**9]  # and one never seen
    by_day, whole = online_values(daily_store, customers), online_values(full_store, customers)
    seen = frame[frame[TIMESTAMP_COLUMN].dt.date <= DAYS[4]][ENTITY_COLUMN].nunique()
    assert by_day["total_purchases"].notna().sum() == seen
    assert written[0] == frame[frame[TIMESTAMP_COLUMN].dt.date == DAYS[0]][ENTITY_COLUMN].nunique()
    assert sum(written) > seen  # a customer active on several days is written by each of them
    pd.testing.assert_frame_equal(by_day, whole, check_exact=True)
    newest = compute_customer_stats(frame[frame[TIMESTAMP_COLUMN].dt.date <= DAYS[4]]).drop_duplicates(
        ENTITY_COLUMN, keep="last"
    )
    expected = newest.set_index(ENTITY_COLUMN).reindex(customers)["lifetime_value"].to_numpy()
    np.testing.assert_array_equal(by_day["lifetime_value"].to_numpy(), expected)


def test_loading_the_days_in_any_order_gives_the_same_store(tmp_path):
    """A backfill may load an older day after a newer one: each customer is written by the day of their
    newest row only, so the order does not matter."""
    frame = transactions(customers=80, per_day=120)
    frame[TIMESTAMP_COLUMN] = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True)
    repo = FeatureRepo(tmp_path / "feast", tmp_path / "offline", "incremental")
    stored_days(repo, frame, DAYS)
    parts = [last_changes(repo, day, day) for day in reversed(DAYS)]
    everyone = pd.concat(parts, ignore_index=True)
    assert everyone[ENTITY_COLUMN].is_unique
    pd.testing.assert_frame_equal(
        everyone.sort_values(ENTITY_COLUMN).reset_index(drop=True),
        last_changes(repo, DAYS[0], DAYS[-1]).sort_values(ENTITY_COLUMN).reset_index(drop=True),
        check_exact=True,
    )
    assert len(everyone) == frame[ENTITY_COLUMN].nunique()

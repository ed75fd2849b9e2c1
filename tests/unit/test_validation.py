"""Data checks name the failing check, the column, the row count and the offending ids; the file
source delivers exactly the requested days with UTC timestamps."""

from datetime import date

import numpy as np
import pandas as pd
import pytest

from ml_platform.data.sources import SourceError, load_transactions, read_transactions_file
from ml_platform.data.synthetic import SyntheticConfig, generate_transactions
from ml_platform.data.validation import (
    check_duplicates,
    check_nulls,
    check_ranges,
    check_schema,
    failure_message,
    validate_transactions,
)

CONFIG = SyntheticConfig(seed=21, n_customers=100, transactions_per_day=150)


@pytest.fixture(scope="module")
def clean():
    return generate_transactions(CONFIG, date(2024, 6, 1), date(2024, 6, 3))


@pytest.fixture
def batch(clean):
    return clean.copy()


def by_name(outcomes):
    return {outcome.name: outcome for outcome in outcomes}


def test_a_clean_batch_passes_every_check(clean):
    outcomes = validate_transactions(clean)
    assert [o.name for o in outcomes] == ["schema", "no_nulls", "value_ranges", "unique_ids"]
    assert [o.passed for o in outcomes] == [True, True, True, True]
    assert all(o.failing_rows == 0 and o.columns == () and o.examples == {} for o in outcomes)
    assert failure_message(outcomes).startswith("0 of 4 data checks failed")


def test_missing_column_fails_the_schema_check(batch):
    outcome = check_schema(batch.drop(columns=["merchant_id"]))
    assert not outcome.passed
    assert outcome.columns == ("merchant_id",)
    assert outcome.description == "missing columns: merchant_id"


def test_wrong_dtype_fails_the_schema_check_and_is_skipped_by_ranges(batch):
    batch["amount"] = batch["amount"].map(lambda v: f"{v:.2f}")  # strings, not floats
    outcomes = by_name(validate_transactions(batch))
    schema = outcomes["schema"]
    assert not schema.passed
    assert schema.columns == ("amount",)
    assert "amount (expected float, got object)" in schema.description
    assert outcomes["value_ranges"].passed  # the schema check reports it; no double counting
    assert outcomes["no_nulls"].passed and outcomes["unique_ids"].passed


def test_unexpected_column_fails_the_schema_check(batch):
    batch["note"] = "x"
    outcome = check_schema(batch)
    assert not outcome.passed
    assert outcome.columns == ("note",)
    assert "unexpected columns: note" in outcome.description


def test_nulls_in_amount_are_counted_with_their_ids(batch):
    rows = [3, 10, 42]
    batch.loc[rows, "amount"] = np.nan
    outcomes = by_name(validate_transactions(batch))
    nulls = outcomes["no_nulls"]
    assert not nulls.passed
    assert nulls.failing_rows == 3
    assert nulls.columns == ("amount",)
    assert nulls.description == "amount: 3 null"
    assert nulls.examples == {"amount": list(batch.loc[rows, "transaction_id"])}
    assert [o.name for o in outcomes.values() if not o.passed] == ["no_nulls"]


@pytest.mark.parametrize(
    ("column", "value", "rows"),
    [
        ("amount", -5.0, [1, 7]),
        ("category", "casino", [4]),
        ("is_fraud", 2, [0, 5, 9]),
        ("amount", np.inf, [12]),
        ("amount", -np.inf, [13, 14]),
        ("customer_id", -1, [2]),
    ],
)
def test_out_of_range_values_fail_value_ranges(batch, column, value, rows):
    batch.loc[rows, column] = value
    outcomes = by_name(validate_transactions(batch))
    ranges = outcomes["value_ranges"]
    assert not ranges.passed
    assert ranges.failing_rows == len(rows)
    assert ranges.columns == (column,)
    assert ranges.description.startswith(f"{column}: {len(rows)} rows outside")
    assert ranges.examples == {column: list(batch.loc[rows, "transaction_id"])}
    assert [o.name for o in outcomes.values() if not o.passed] == ["value_ranges"]


def test_value_ranges_counts_a_row_once_and_caps_the_examples(batch):
    batch.loc[[1, 2], "amount"] = -1.0
    batch.loc[[2, 3], "category"] = "casino"
    batch.loc[range(20, 30), "is_fraud"] = 7
    outcome = check_ranges(batch)
    assert outcome.failing_rows == 13  # rows 1, 2, 3 and 20..29; row 2 is bad twice but counts once
    assert outcome.columns == ("category", "amount", "is_fraud")  # schema order
    assert outcome.examples["amount"] == list(batch.loc[[1, 2], "transaction_id"])
    assert outcome.examples["is_fraud"] == list(batch.loc[range(20, 25), "transaction_id"])  # first 5 only


def test_duplicated_ids_fail_unique_ids(batch):
    duplicated_id = batch.loc[6, "transaction_id"]
    batch.loc[20, "transaction_id"] = duplicated_id
    outcomes = by_name(validate_transactions(batch))
    unique = outcomes["unique_ids"]
    assert not unique.passed
    assert unique.failing_rows == 2
    assert unique.columns == ("transaction_id",)
    assert unique.description == "transaction_id: 1 ids appear more than once (2 rows)"
    assert unique.examples == {"transaction_id": [duplicated_id, duplicated_id]}
    assert [o.name for o in outcomes.values() if not o.passed] == ["unique_ids"]


def test_missing_id_column_fails_unique_ids_and_examples_fall_back_to_row_numbers(batch):
    frame = batch.drop(columns=["transaction_id"])
    frame.loc[[4], "amount"] = np.nan
    assert not check_duplicates(frame).passed
    assert check_nulls(frame).examples == {"amount": ["row 4"]}


@pytest.mark.parametrize(
    "column", ["transaction_id", "customer_id", "merchant_id", "category", "amount", "channel", "is_fraud"]
)
def test_a_null_in_any_required_column_fails_no_nulls(batch, column):
    batch[column] = batch[column].astype(object)
    batch.loc[[7, 11], column] = None
    outcome = check_nulls(batch)
    assert not outcome.passed
    assert outcome.description == f"{column}: 2 null"
    assert outcome.columns == (column,) and outcome.failing_rows == 2
    # a row whose id is the missing value is named by its row number
    expected = ["row 7", "row 11"] if column == "transaction_id" else list(batch.loc[[7, 11], "transaction_id"])
    assert outcome.examples == {column: expected}


def test_null_timestamps_fail_no_nulls_with_their_ids(batch):
    rows = [0, 5, 9]
    batch.loc[rows, "event_timestamp"] = pd.NaT
    outcomes = by_name(validate_transactions(batch))
    assert outcomes["schema"].passed  # still a timestamp column
    nulls = outcomes["no_nulls"]
    assert (nulls.passed, nulls.description, nulls.failing_rows) == (False, "event_timestamp: 3 null", 3)
    assert nulls.examples == {"event_timestamp": list(batch.loc[rows, "transaction_id"])}


def test_values_of_the_wrong_kind_are_named_by_the_schema_check(batch):
    batch["event_timestamp"] = batch["event_timestamp"].astype(str)
    batch.loc[[2, 6], "event_timestamp"] = ["yesterday", "2024-13-45 25:61:00"]
    batch["amount"] = batch["amount"].astype(object)
    batch.loc[[3], "amount"] = "12,50"
    outcome = check_schema(batch)
    assert not outcome.passed
    assert outcome.description == (
        "wrong types: amount (expected float, got object; 1 values are not floats), "
        "event_timestamp (expected timestamp, got object; 2 values are not timestamps)"
    )
    assert outcome.columns == ("amount", "event_timestamp")
    assert outcome.failing_rows == 3
    assert outcome.examples == {
        "amount": [batch.loc[3, "transaction_id"]],
        "event_timestamp": list(batch.loc[[2, 6], "transaction_id"]),
    }


def test_failure_message_names_each_failed_check_and_a_row_id(batch):
    batch.loc[[3], "amount"] = np.nan
    batch.loc[[8], "category"] = "casino"
    batch.loc[30, "transaction_id"] = batch.loc[31, "transaction_id"]
    outcomes = validate_transactions(batch)
    message = failure_message(outcomes)
    assert message.startswith("3 of 4 data checks failed:")
    assert "- no_nulls: amount: 1 null" in message
    assert "- value_ranges: category: 1 rows outside" in message
    assert "- unique_ids:" in message
    assert "schema" not in message
    for row in (3, 8, 31):
        assert batch.loc[row, "transaction_id"] in message


# ---- the file source ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_days():
    return generate_transactions(CONFIG, date(2024, 6, 1), date(2024, 6, 4))


def expected_days(frame, start, end):
    lower, upper = pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC")
    keep = (frame["event_timestamp"] >= lower) & (frame["event_timestamp"] < upper)
    return frame.loc[keep].reset_index(drop=True)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_file_source_returns_only_the_requested_days(tmp_path, three_days, suffix):
    path = tmp_path / f"transactions{suffix}"
    if suffix == ".parquet":
        three_days.to_parquet(path, index=False)
    else:
        three_days.to_csv(path, index=False)
    loaded = read_transactions_file(path, date(2024, 6, 2), date(2024, 6, 4))
    expected = expected_days(three_days, date(2024, 6, 2), date(2024, 6, 4))
    assert 0 < len(expected) < len(three_days)
    assert str(loaded["event_timestamp"].dt.tz) == "UTC"
    assert loaded["event_timestamp"].min() >= pd.Timestamp("2024-06-02", tz="UTC")
    assert loaded["event_timestamp"].max() < pd.Timestamp("2024-06-04", tz="UTC")
    pd.testing.assert_frame_equal(loaded, expected)
    assert validate_transactions(loaded)[0].passed  # a CSV round trip still satisfies the schema
    via_loader = load_transactions("file", date(2024, 6, 2), date(2024, 6, 4), path=str(path))
    pd.testing.assert_frame_equal(via_loader, loaded)


def test_file_source_converts_offset_timestamps_to_utc(tmp_path, three_days):
    frame = three_days.head(5).copy()
    frame["event_timestamp"] = frame["event_timestamp"].dt.tz_convert("America/New_York")
    path = tmp_path / "offsets.csv"
    frame.to_csv(path, index=False)
    loaded = read_transactions_file(path, date(2024, 6, 1), date(2024, 6, 2))
    assert str(loaded["event_timestamp"].dt.tz) == "UTC"
    assert list(loaded["event_timestamp"]) == list(three_days.head(5)["event_timestamp"])


def test_missing_file_raises(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        read_transactions_file(tmp_path / "nope.parquet", date(2024, 6, 1), date(2024, 6, 2))


def test_unsupported_suffix_raises(tmp_path):
    path = tmp_path / "transactions.txt"
    path.write_text("event_timestamp\n2024-06-01\n")
    with pytest.raises(SourceError, match=r"must be \.parquet or \.csv, not \.txt"):
        read_transactions_file(path, date(2024, 6, 1), date(2024, 6, 2))


def test_file_without_event_timestamp_raises(tmp_path, three_days):
    path = tmp_path / "no_time.parquet"
    three_days.drop(columns=["event_timestamp"]).to_parquet(path, index=False)
    with pytest.raises(SourceError, match="has no event_timestamp column"):
        read_transactions_file(path, date(2024, 6, 1), date(2024, 6, 2))


@pytest.fixture(scope="module")
def two_hundred():
    """200 transactions of 2024-06-01 and 2024-06-02, in time order."""
    return generate_transactions(CONFIG, date(2024, 6, 1), date(2024, 6, 3)).head(200).reset_index(drop=True)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_rows_with_null_timestamps_reach_validation_and_fail_it(tmp_path, two_hundred, suffix):
    """A file of 200 rows, 50 of them without a timestamp: none may vanish on the way to the checks."""
    frame = two_hundred.copy()
    null_rows = list(range(0, 200, 4))
    frame.loc[null_rows, "event_timestamp"] = pd.NaT
    path = tmp_path / f"null_times{suffix}"
    frame.to_parquet(path, index=False) if suffix == ".parquet" else frame.to_csv(path, index=False)
    days = (date(2024, 6, 1), date(2024, 6, 3))  # every dated row is inside the window

    loaded = read_transactions_file(path, *days)
    assert len(loaded) == 200
    assert str(loaded["event_timestamp"].dt.tz) == "UTC"
    assert loaded["event_timestamp"].isna().sum() == 50
    assert loaded["event_timestamp"].iloc[150:].isna().all()  # undated rows come last
    assert set(loaded["transaction_id"]) == set(frame["transaction_id"])
    outcomes = by_name(validate_transactions(loaded))
    assert [name for name, outcome in outcomes.items() if not outcome.passed] == ["no_nulls"]
    nulls = outcomes["no_nulls"]
    assert (nulls.description, nulls.failing_rows) == ("event_timestamp: 50 null", 50)
    assert nulls.columns == ("event_timestamp",)
    assert nulls.examples == {"event_timestamp": list(frame.loc[null_rows[:5], "transaction_id"])}
    message = failure_message(list(outcomes.values()))
    assert "- no_nulls: event_timestamp: 50 null" in message
    for transaction_id in frame.loc[null_rows[:5], "transaction_id"]:
        assert transaction_id in message


def test_undated_rows_are_kept_whatever_days_are_asked_for(tmp_path, two_hundred):
    frame = two_hundred.copy()
    frame.loc[[3, 4], "event_timestamp"] = pd.NaT
    path = tmp_path / "two_undated.parquet"
    frame.to_parquet(path, index=False)
    loaded = read_transactions_file(path, date(2024, 6, 5), date(2024, 6, 6))  # no dated row on that day
    assert loaded["transaction_id"].tolist() == frame.loc[[3, 4], "transaction_id"].tolist()


def test_unparseable_timestamps_reach_validation_and_fail_the_schema_check(tmp_path, two_hundred):
    frame = two_hundred.copy()
    frame["event_timestamp"] = frame["event_timestamp"].map(lambda t: t.isoformat())
    frame.loc[[10, 20], "event_timestamp"] = ["not a time", "2024-06-31T10:00:00+00:00"]
    frame.loc[[30], "event_timestamp"] = None
    path = tmp_path / "bad_time.csv"
    frame.to_csv(path, index=False)

    loaded = read_transactions_file(path, date(2024, 6, 1), date(2024, 6, 3))
    assert len(loaded) == 200
    # the column stays as read (text), the undated rows last in file order
    assert loaded["event_timestamp"].iloc[0] == frame["event_timestamp"].iloc[0]
    assert loaded["event_timestamp"].iloc[-3:-1].tolist() == ["not a time", "2024-06-31T10:00:00+00:00"]
    assert pd.isna(loaded["event_timestamp"].iloc[-1])
    outcomes = by_name(validate_transactions(loaded))
    schema = outcomes["schema"]
    assert not schema.passed
    assert schema.description == (
        "wrong types: event_timestamp (expected timestamp, got object; 2 values are not timestamps)"
    )
    assert schema.examples == {"event_timestamp": list(frame.loc[[10, 20], "transaction_id"])}
    assert outcomes["no_nulls"].examples == {"event_timestamp": [frame.loc[30, "transaction_id"]]}


def test_load_transactions_rejects_unknown_sources_and_a_file_source_without_path():
    with pytest.raises(SourceError, match="unknown source 'kafka'"):
        load_transactions("kafka", date(2024, 6, 1), date(2024, 6, 2))
    with pytest.raises(SourceError, match="needs a path"):
        load_transactions("file", date(2024, 6, 1), date(2024, 6, 2))

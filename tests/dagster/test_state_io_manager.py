"""The IO manager over a range of daily partitions: one file per day, written as a day's own frame would be
written (days without rows too), and read back as the days' frames concatenated."""

import dagster as dg
import pandas as pd
import pytest

from ml_platform.storage import split_by_day, write_table
from resources.storage import StateIOManager

DAYS = dg.DailyPartitionsDefinition(start_date="2024-01-01")
RANGE = dg.PartitionKeyRange("2024-03-01", "2024-03-04")  # 2024-03-03 has no rows
KEY = dg.AssetKey("raw_transactions")


def range_frame() -> pd.DataFrame:
    """Rows of three of the range's four days, in no order and with a non-default index."""
    return pd.DataFrame(
        {
            "transaction_id": ["t0", "t1", "t2", "t3", "t4", "t5"],
            "customer_id": [3, 1, 4, 1, 5, 9],
            "amount": [10.5, 2.0, float("nan"), 7.25, 1.0, 3.5],
            "event_timestamp": pd.to_datetime(
                [
                    "2024-03-04T08:00:00Z",
                    "2024-03-01T23:59:59Z",
                    "2024-03-02T00:00:00Z",
                    "2024-03-01T00:00:00Z",
                    "2024-03-04T01:00:00Z",
                    "2024-03-02T13:00:00Z",
                ],
                utc=True,
            ),
        },
        index=[8, 6, 7, 5, 3, 0],
    )


def output_context(**partitions) -> dg.OutputContext:
    return dg.build_output_context(
        asset_key=KEY,
        asset_partitions_def=DAYS,
        definition_metadata={"partition_column": "event_timestamp"},
        **(partitions or {"asset_partition_key_range": RANGE}),
    )


def test_a_range_is_stored_as_each_days_frame_would_be_and_read_back_in_day_order(tmp_path):
    frame = range_frame()
    manager = StateIOManager(base_dir=str(tmp_path / "data"))
    manager.handle_output(output_context(), frame)

    # What the IO manager wrote for each day is, byte for byte, write_table of that day's frame; the day
    # without rows gets the empty frame's file.
    expected = {day: part.reset_index(drop=True) for day, part in split_by_day(frame, "event_timestamp").items()}
    expected["2024-03-03"] = frame.iloc[0:0].reset_index(drop=True)
    folder = tmp_path / "data" / "raw_transactions"
    assert sorted(p.name for p in folder.iterdir()) == [f"2024-03-0{d}.parquet" for d in (1, 2, 3, 4)]
    for day, part in expected.items():
        write_table(part, tmp_path / "expected" / f"{day}.parquet")
        assert (folder / f"{day}.parquet").read_bytes() == (tmp_path / "expected" / f"{day}.parquet").read_bytes()
    assert len(pd.read_parquet(folder / "2024-03-03.parquet")) == 0

    loaded = manager.load_input(
        dg.build_input_context(asset_key=KEY, asset_partitions_def=DAYS, asset_partition_key_range=RANGE)
    )
    assert loaded["transaction_id"].tolist() == ["t1", "t3", "t2", "t5", "t0", "t4"]  # by day, each day in order
    pd.testing.assert_frame_equal(
        loaded, frame.iloc[[1, 3, 2, 5, 0, 4]].reset_index(drop=True)
    )  # dtypes, values, a fresh index


def test_rows_outside_the_runs_days_are_refused_and_nothing_is_written(tmp_path):
    frame = range_frame()
    context = output_context(asset_partition_key_range=dg.PartitionKeyRange("2024-03-01", "2024-03-02"))
    outside = "raw_transactions: rows fall on days outside this run's partitions: 2024-03-04"
    with pytest.raises(ValueError, match=outside):
        StateIOManager(base_dir=str(tmp_path)).handle_output(context, frame)
    assert list(tmp_path.rglob("*.parquet")) == []

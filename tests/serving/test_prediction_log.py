"""The batched parquet writer and its reader."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.serving import LOG_COLUMNS, PredictionLogger, read_prediction_log
from ml_platform.serving.prediction_log import PredictionBatch


def batch(n: int, when: datetime, variant: str = "champion", start: int = 0) -> PredictionBatch:
    probabilities = np.linspace(0, 1, n)
    return PredictionBatch(
        time=when.timestamp(),
        request_ids=[f"r{start + i}" for i in range(n)],
        customer_ids=[None if i % 2 else start + i for i in range(n)],
        features=np.arange(n * 9, dtype="float64").reshape(n, 9),
        probabilities=probabilities,
        is_fraud=probabilities >= 0.5,
        threshold=0.5,
        model_version=3,
        variant=variant,
        latency_ms=1.25,
    )


def test_rows_are_written_by_size_time_and_close(tmp_path):
    day_one, day_two = datetime(2026, 3, 14, 23, 59, tzinfo=UTC), datetime(2026, 3, 15, 0, 1, tzinfo=UTC)
    logger = PredictionLogger(tmp_path, flush_rows=10, flush_seconds=0.2)
    logger.start()
    logger.log(batch(12, day_one))  # over flush_rows: written at once
    deadline = time.monotonic() + 5
    while logger.rows_written < 12:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    logger.log(batch(3, day_two, variant="challenger_shadow", start=100))  # written after flush_seconds
    deadline = time.monotonic() + 5
    while logger.rows_written < 15:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    logger.log(batch(4, day_two, start=200))
    logger.close()  # written on close
    assert logger.rows_written == 19 and logger.write_errors == 0

    (tmp_path / "date=2026-03-15" / ".part-x.parquet.tmp-1").write_bytes(b"half a file")  # skipped by the reader
    everything = read_prediction_log(tmp_path)
    assert list(everything.columns) == list(LOG_COLUMNS)
    assert len(everything) == 19
    assert sorted(p.name for p in tmp_path.iterdir()) == ["date=2026-03-14", "date=2026-03-15"]
    first_day = read_prediction_log(tmp_path, day="2026-03-14")
    assert len(first_day) == 12 and first_day["time"].dt.tz is not None
    second_day = read_prediction_log(tmp_path, day=datetime(2026, 3, 15).date())
    assert len(second_day) == 7
    assert (second_day["variant"] == "challenger_shadow").sum() == 3
    row = first_day.iloc[1]
    assert pd.isna(row["customer_id"]) and row["request_id"] == "r1"
    assert row[list(MODEL_FEATURES)].tolist() == list(np.arange(9, 18, dtype="float64"))
    assert row["model_version"] == 3 and row["latency_ms"] == pytest.approx(1.25)
    assert first_day["is_fraud"].dtype == bool


def test_empty_log(tmp_path):
    empty = read_prediction_log(tmp_path / "nothing")
    assert empty.empty and list(empty.columns) == list(LOG_COLUMNS)


def test_files_are_what_pandas_to_parquet_writes(tmp_path):
    """The pyarrow writer keeps the file format: schema, pandas metadata and values as DataFrame.to_parquet."""
    import pyarrow.parquet as pq

    from ml_platform.serving.prediction_log import batches_to_frame

    when = datetime(2026, 3, 14, 12, 30, 15, 123456, tzinfo=UTC)
    batches = [batch(1, when, start=0), batch(5, when, variant="challenger", start=10), batch(1, when, start=20)]
    logger = PredictionLogger(tmp_path / "log", flush_rows=1_000, flush_seconds=60)
    logger.start()
    logger.log(batches[0])
    rows = []
    for index in range(4):  # the fast path's rows, between batches
        features = [None if (index + k) % 4 == 0 else float(index * 9 + k) for k in range(9)]
        row = (when.timestamp() + index, f"row-{index}", None if index % 2 else 100 + index, features,
               index / 10, index >= 2, 0.25, 7, "champion", 0.5 + index)  # fmt: skip
        logger.log_row(*row)
        rows.append(row)
    logger.log(batches[1])
    logger.log(batches[2])
    logger.close()
    assert logger.rows_written == 11 and logger.files_written == 1 and logger.write_errors == 0
    (written,) = (tmp_path / "log" / "date=2026-03-14").glob("part-*.parquet")

    as_batches = [
        batches[0],
        *(
            PredictionBatch(
                time=r[0],
                request_ids=[r[1]],
                customer_ids=[r[2]],
                features=np.array([[np.nan if v is None else v for v in r[3]]]),
                probabilities=np.array([r[4]]),
                is_fraud=np.array([r[5]]),
                threshold=r[6],
                model_version=r[7],
                variant=r[8],
                latency_ms=r[9],
            )  # fmt: skip
            for r in rows
        ),
        batches[1],
        batches[2],
    ]
    reference = tmp_path / "reference.parquet"
    batches_to_frame(as_batches).to_parquet(reference, index=False)
    assert pq.read_schema(written).equals(pq.read_schema(reference), check_metadata=True)
    pd.testing.assert_frame_equal(pd.read_parquet(written), pd.read_parquet(reference))
    frame = read_prediction_log(tmp_path / "log")
    assert sorted(frame["request_id"]) == sorted(
        ["r0", "row-0", "row-1", "row-2", "row-3", "r20"] + [f"r1{i}" for i in range(5)]
    )
    assert (
        str(frame["customer_id"].dtype) == "Int64" and frame["customer_id"].isna().sum() == 4
    )  # r11, r13, row-1, row-3


def test_rows_wait_for_the_writer_without_waking_it(tmp_path):
    """Logging does not wake the writer per row: nothing is written before flush_rows, flush_seconds or flush()."""
    logger = PredictionLogger(tmp_path, flush_rows=50, flush_seconds=60)
    logger.start()
    when = datetime(2026, 3, 14, tzinfo=UTC).timestamp()
    for index in range(49):
        logger.log_row(when, f"r{index}", None, [1.0] * 9, 0.5, True, 0.5, 1, "champion", 1.0)
    time.sleep(0.3)
    assert logger.files_written == 0
    assert logger.flush()
    assert logger.rows_written == 49 and logger.files_written == 1
    for index in range(50):  # reaching flush_rows wakes it
        logger.log_row(when, f"s{index}", None, [1.0] * 9, 0.5, True, 0.5, 1, "champion", 1.0)
    deadline = time.monotonic() + 5
    while logger.rows_written < 99:
        assert time.monotonic() < deadline, "flush_rows did not wake the writer"
        time.sleep(0.01)
    logger.close()
    assert logger.rows_written == 99 and logger.write_errors == 0

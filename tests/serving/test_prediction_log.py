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

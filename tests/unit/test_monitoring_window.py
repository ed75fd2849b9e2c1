"""Windows over the prediction log, and reading exactly a window's rows from the server's log files."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.monitoring.window import Window, read_predictions
from ml_platform.predictions import LOG_COLUMNS, PredictionBatch, PredictionLogger

END = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "length"),
    [
        ("7d", timedelta(days=7)),
        ("24h", timedelta(hours=24)),
        ("90m", timedelta(minutes=90)),
        ("2w", timedelta(weeks=2)),
        (" 3D ", timedelta(days=3)),
    ],
)
def test_parse_good(text, length):
    window = Window.parse(text, end=END)
    assert window.end == END
    assert window.start == END - length
    assert window.seconds == length.total_seconds()


def test_label_and_naive_end_is_utc():
    window = Window.parse("7d", end=datetime(2026, 11, 24, 10, 0))
    assert window.end == END and window.end.tzinfo is not None
    assert window.label == "2026-11-17T10:00Z .. 2026-11-24T10:00Z (7d)"
    assert Window.parse("90m", end=END).label == "2026-11-24T08:30Z .. 2026-11-24T10:00Z (90m)"
    assert Window.parse("36h", end=END).label.endswith("(36h)")


def test_parse_defaults_to_now():
    before = datetime.now(UTC)
    window = Window.parse("1h")
    assert before <= window.end <= datetime.now(UTC)


@pytest.mark.parametrize("text", ["7", "d7", "-1d", "0d", "1.5h", "", "7 days", "7y"])
def test_parse_bad_names_the_text(text):
    with pytest.raises(ValueError, match=r"^window: " + repr(text).replace(".", r"\.")):
        Window.parse(text, end=END)


def test_window_must_not_be_empty():
    with pytest.raises(ValueError, match="window: end .* must be after start"):
        Window(END, END)


def test_days_touched():
    window = Window(datetime(2026, 11, 22, 23, 0, tzinfo=UTC), datetime(2026, 11, 24, 0, 0, tzinfo=UTC))
    assert [d.isoformat() for d in window.days()] == ["2026-11-22", "2026-11-23"]  # end is exclusive


def _batch(moment: datetime, ids: list[str], variant: str = "champion", version: int = 3) -> PredictionBatch:
    n = len(ids)
    return PredictionBatch(
        time=moment.timestamp(),
        request_ids=ids,
        customer_ids=[7] * n,
        features=np.arange(n * len(MODEL_FEATURES), dtype="float64").reshape(n, len(MODEL_FEATURES)),
        probabilities=np.linspace(0.1, 0.9, n),
        is_fraud=np.linspace(0.1, 0.9, n) > 0.5,
        threshold=0.5,
        model_version=version,
        variant=variant,
        latency_ms=4.0,
    )


@pytest.fixture
def log_dir(tmp_path):
    """Predictions over four UTC days, written by the server's own logger."""
    start = Window(datetime(2026, 11, 21, 12, tzinfo=UTC), datetime(2026, 11, 23, 6, tzinfo=UTC))
    logger = PredictionLogger(tmp_path / "predictions", flush_rows=3, flush_seconds=60)
    logger.start()
    for moment, ids, variant in [
        (datetime(2026, 11, 20, 9, 0, tzinfo=UTC), ["old-1", "old-2"], "champion"),  # day before
        (start.start - timedelta(milliseconds=1), ["before"], "champion"),
        (start.start, ["at-start"], "champion"),  # included: the window is [start, end)
        (datetime(2026, 11, 21, 23, 59, 59, tzinfo=UTC), ["late-1", "late-2"], "challenger"),
        (datetime(2026, 11, 22, 0, 0, tzinfo=UTC), ["midnight"], "champion"),
        (datetime(2026, 11, 22, 8, 0, tzinfo=UTC), ["shadow-1"], "challenger_shadow"),
        (datetime(2026, 11, 23, 5, 59, 59, tzinfo=UTC), ["last"], "champion"),
        (start.end, ["at-end"], "champion"),  # excluded
        (datetime(2026, 11, 24, 1, 0, tzinfo=UTC), ["next-day"], "champion"),
    ]:
        logger.log(_batch(moment, ids, variant))
    logger.close()
    assert logger.rows_written == 11 and logger.write_errors == 0
    return tmp_path / "predictions", start


def test_read_predictions_picks_exactly_the_window(log_dir):
    directory, window = log_dir
    frame = read_predictions(directory, window)
    assert frame["request_id"].tolist() == ["at-start", "late-1", "late-2", "midnight", "last"]
    assert list(frame.columns) == list(LOG_COLUMNS)
    assert frame["time"].is_monotonic_increasing
    everything = read_predictions(directory, window, variants=None)
    assert everything["request_id"].tolist() == ["at-start", "late-1", "late-2", "midnight", "shadow-1", "last"]
    only_challenger = read_predictions(directory, window, variants=["challenger"])
    assert only_challenger["request_id"].tolist() == ["late-1", "late-2"]


def test_read_predictions_reads_only_the_days_it_touches(log_dir):
    directory, window = log_dir
    # a corrupt file in a day outside the window would fail the read if that folder were opened
    (directory / "date=2026-11-20" / "part-corrupt.parquet").write_bytes(b"not parquet")
    (directory / "date=2026-11-24" / "part-corrupt.parquet").write_bytes(b"not parquet")
    assert len(read_predictions(directory, window)) == 5


def test_read_predictions_empty_window_keeps_the_columns(log_dir):
    directory, _ = log_dir
    frame = read_predictions(directory, Window.parse("1h", end=datetime(2030, 1, 1, tzinfo=UTC)))
    assert frame.empty and list(frame.columns) == list(LOG_COLUMNS)
    assert isinstance(frame["time"].dtype, pd.DatetimeTZDtype)

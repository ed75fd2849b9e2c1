"""The prediction log: the journal on the request path, its conversion to parquet, recovery after a
crash, quarantine of rows the schema cannot hold, and the reader."""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.predictions import (
    LOG_COLUMNS,
    PredictionBatch,
    PredictionLogger,
    PredictionLogUnavailable,
    RowIds,
    read_prediction_log,
    read_quarantine,
)


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
    # The writer thread writes at once or after 0.2 s; 30 s leaves room for two busy cores.
    deadline = time.monotonic() + 30
    while logger.rows_written < 12:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    logger.log(batch(3, day_two, variant="challenger_shadow", start=100))  # written after flush_seconds
    deadline = time.monotonic() + 30
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["date=2026-03-14", "date=2026-03-15", "journal"]
    assert list((tmp_path / "journal").iterdir()) == []  # every segment converted and deleted
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

    from ml_platform.predictions.writer import batches_to_frame

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


def test_consecutive_batches_are_written_as_pandas_writes_them_and_a_bad_one_costs_only_its_rows(tmp_path):
    """Batches in a row are converted column by column over all of them: the file is still what
    DataFrame.to_parquet writes for them (their own times, versions, variants, ids numbered or listed,
    customer ids or none); a batch the schema cannot hold has its rows quarantined, its neighbours not."""
    import pyarrow.parquet as pq

    from ml_platform.predictions.writer import batches_to_frame

    rng = np.random.default_rng(7)
    when = datetime(2026, 3, 14, 12, 30, 15, 123456, tzinfo=UTC)
    good = []
    for index in range(6):
        n = 2 + index
        probabilities = rng.random(n)
        good.append(
            PredictionBatch(
                time=when.timestamp() + index * 0.001237,
                request_ids=RowIds(f"q{index}", n) if index % 2 else [f"l{index}-{i}" for i in range(n)],
                customer_ids=[None] * n if index % 3 == 0 else [None if i % 2 else 1_000 * index + i for i in range(n)],
                features=np.where(rng.random((n, 9)) < 0.1, np.nan, rng.normal(size=(n, 9))),
                probabilities=probabilities,
                is_fraud=probabilities >= 0.5,
                threshold=0.25 + index / 100,
                model_version=3 + index % 2,
                variant="challenger" if index % 2 else "champion",
                latency_ms=0.5 + index,
            )
        )
    logger = PredictionLogger(tmp_path / "log", flush_rows=1_000, flush_seconds=3600)
    logger.start()
    for item in good:
        logger.log(item)
    assert logger.flush()
    (written,) = (tmp_path / "log" / "date=2026-03-14").glob("part-*.parquet")
    reference = tmp_path / "reference.parquet"
    batches_to_frame(good).to_parquet(reference, index=False)
    assert pq.read_schema(written).equals(pq.read_schema(reference), check_metadata=True)
    pd.testing.assert_frame_equal(pd.read_parquet(written), pd.read_parquet(reference))
    assert pd.read_parquet(written)["request_id"].tolist()[2:5] == ["q1/0", "q1/1", "q1/2"]

    bad = dataclasses.replace(good[2], variant="bad-\ud800", request_ids=RowIds("bad", 4))
    for item in (good[0], good[1], bad, good[3]):
        logger.log(item)
    assert logger.flush()
    logger.close()
    quarantined = read_quarantine(tmp_path / "log")
    assert [json.loads(record["row"])[1] for record in quarantined] == ["bad/0", "bad/1", "bad/2", "bad/3"]
    assert {record["reason"].split(":")[0] for record in quarantined} == {"variant"}
    assert logger.rows_written == 27 + 2 + 3 + 5 and logger.quarantined == 4


def test_times_become_the_nanoseconds_pandas_makes_of_them():
    """The log's times are converted as pd.to_datetime(seconds, unit="s") converts them, to the nanosecond,
    and a time beyond the years the log's timestamps hold is a named row error."""
    from ml_platform.predictions.writer import _nanoseconds, _RowError

    rng = np.random.default_rng(3)
    seconds = np.concatenate(
        [
            1.7e9 + rng.random(50_000) * 1e7,  # now-ish, sub-microsecond fractions
            rng.uniform(-9.1e9, 9.1e9, 50_000),  # the range datetime64[ns] holds, both signs
            rng.uniform(-3.0, 3.0, 50_000),
            [0.0, -0.0, 1e-10, -1e-10, 0.9999999999, -0.9999999995, 1.0000000005, 1773491415.123456789],
        ]
    )
    np.testing.assert_array_equal(_nanoseconds(seconds), pd.to_datetime(seconds, unit="s", utc=True).asi8)
    with pytest.raises(_RowError, match="^time: "):
        _nanoseconds(np.array([1.7e9, 1e11]))


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
    deadline = time.monotonic() + 30  # woken at once; 30 s leaves room for two busy cores
    while logger.rows_written < 99:
        assert time.monotonic() < deadline, "flush_rows did not wake the writer"
        time.sleep(0.01)
    logger.close()
    assert logger.rows_written == 99 and logger.write_errors == 0


# ---- the journal, rotation, recovery, quarantine ------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]
WHEN = datetime(2026, 3, 14, 12, tzinfo=UTC).timestamp()

# A process that logs rows and then dies without closing the logger: it exits ("exit"), waits on stdin
# until the test kills it ("wait"), or hits a file-size limit that makes a journal write fail ("limit").
CHILD = r"""
import json, os, resource, signal, sys
import numpy as np
from ml_platform.predictions import PredictionBatch, PredictionLogger, PredictionLogUnavailable

log_dir, first, step, count, ending = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
logger = PredictionLogger(log_dir, flush_rows=10**6, flush_seconds=3600)
logger.start()
if ending == "limit":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
report = {"acknowledged": 0}
try:
    for index in range(count):
        logger.log_row(first + index * step, f"child-{index}", index, [float(index)] * 9, index / count, index % 2 == 0,
                       0.5, 4, "champion", 1.5)
        report["acknowledged"] += 1
    if ending == "wait":  # and a batch of 3 rows: one missing feature, no customer ids
        features = np.arange(27, dtype="float64").reshape(3, 9)
        features[1, 4] = np.nan
        logger.log(PredictionBatch(first, ["batch-0", "batch-1", "batch-2"], [None, 7, None], features,
                                   np.array([0.1, 0.7, 0.3]), np.array([0, 1, 0]), 0.5, 5, "challenger", 9.5))
except PredictionLogUnavailable as error:
    report.update(status=error.status_code, message=error.message, write_errors=logger.write_errors)
report["journal"] = sorted(path.name for path in logger.journal_dir.iterdir())
print(json.dumps(report), flush=True)
if ending == "wait":
    sys.stdin.read()
os._exit(0)
"""


def run_child(log_dir: Path, first: float, step: float, count: int, ending: str):
    """The child process and its report (rows acknowledged, journal files) once it has logged its rows."""
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(log_dir), repr(first), repr(step), str(count), ending],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    line = process.stdout.readline()
    if not line:
        process.wait(30)
        pytest.fail(f"the child process failed: {process.stderr.read().decode()}")
    return process, json.loads(line)


def end_child(process: subprocess.Popen, sig: int | None = None) -> None:
    if sig is not None and process.poll() is None:
        process.send_signal(sig)
    process.wait(30)
    for stream in (process.stdin, process.stdout, process.stderr):
        stream.close()


def row_args(index: int, *, when: float = WHEN, request_id: str | None = None, customer_id=0, probability=None):
    """log_row's arguments for row ``index`` (distinct values per row)."""
    return (
        when + index,
        f"r{index}" if request_id is None else request_id,
        customer_id,
        [float(index * 9 + k) for k in range(9)],
        index / 100 if probability is None else probability,
        index % 2 == 0,
        0.5,
        2,
        "champion",
        0.25 + index,
    )


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def segments(log_dir: Path) -> list[Path]:
    return sorted((log_dir / "journal").glob("*.jsonl"))


def test_a_row_is_in_the_journal_when_log_row_returns(tmp_path):
    logger = PredictionLogger(tmp_path, flush_rows=1_000, flush_seconds=3600)
    logger.start()
    args = row_args(3, customer_id=None)
    logger.log_row(*args)
    logger.log(batch(2, datetime(2026, 3, 14, 13, tzinfo=UTC), start=50))

    (segment,) = segments(tmp_path)
    first, second = segment.read_bytes().decode("ascii").splitlines()
    assert json.loads(first) == [*args[:3], args[3], *args[4:]]
    written_batch = json.loads(second)
    assert written_batch["request_ids"] == ["r50", "r51"] and written_batch["customer_ids"] == [50, None]

    def column(name: str, dtype: str) -> list:  # a batch's numeric columns: base64 of little-endian bytes
        return np.frombuffer(base64.b64decode(written_batch[name]), dtype=dtype).tolist()

    assert column("features", "<f8") == list(np.arange(18, dtype="float64"))
    assert column("probabilities", "<f8") == [0.0, 1.0] and column("is_fraud", "u1") == [0, 1]
    assert written_batch["time"] == datetime(2026, 3, 14, 13, tzinfo=UTC).timestamp()
    assert read_prediction_log(tmp_path).empty  # readers see parquet parts only
    descriptor = os.open(segment, os.O_RDONLY)  # the segment is locked: its owner is alive
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(descriptor)

    logger.close()
    log = read_prediction_log(tmp_path)
    assert log["request_id"].tolist() == ["r3", "r50", "r51"]
    assert log["customer_id"].isna().tolist() == [True, False, True]
    assert segments(tmp_path) == []


def test_rotation_turns_each_sealed_segment_into_a_part_named_after_it(tmp_path):
    logger = PredictionLogger(tmp_path, flush_rows=10, flush_seconds=3600)
    logger.start()
    names = []
    for first in (0, 10):
        for index in range(first, first + 10):
            logger.log_row(*row_args(index))
            if index == first:
                names.append(segments(tmp_path)[-1].name)
        wait_for(lambda first=first: logger.rows_written == first + 10, "a rotation at flush_rows")
    for index in range(20, 25):
        logger.log_row(*row_args(index))
    (live,) = segments(tmp_path)
    assert live.name not in names and len(live.read_bytes().splitlines()) == 5

    parts = sorted((tmp_path / "date=2026-03-14").glob("part-*.parquet"))
    assert [part.name for part in parts] == [f"part-{name.removesuffix('.jsonl')}.parquet" for name in names]
    assert [pd.read_parquet(part)["request_id"].tolist() for part in parts] == [
        [f"r{i}" for i in range(10)],
        [f"r{i}" for i in range(10, 20)],
    ]
    logger.close()
    assert logger.rows_written == 25 and logger.files_written == 3 and logger.write_errors == 0
    assert read_prediction_log(tmp_path)["request_id"].tolist() == [f"r{i}" for i in range(25)]
    assert segments(tmp_path) == []


def test_rows_of_a_killed_process_are_recovered_by_the_next_logger(tmp_path):
    process, report = run_child(tmp_path, WHEN, 1.0, 300, "wait")
    end_child(process, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    (segment,) = segments(tmp_path)
    assert [segment.name] == report["journal"] and len(segment.read_bytes().splitlines()) == 301
    assert read_prediction_log(tmp_path).empty

    logger = PredictionLogger(tmp_path, flush_rows=1_000, flush_seconds=3600)
    logger.start()
    assert logger.flush()
    assert logger.segments_recovered == 1 and logger.rows_written == 303 and logger.quarantined == 0
    everything = read_prediction_log(tmp_path)
    batch_rows = everything[everything["request_id"].str.startswith("batch-")].reset_index(drop=True)
    assert batch_rows["request_id"].tolist() == ["batch-0", "batch-1", "batch-2"]
    assert batch_rows["customer_id"].tolist() == [pd.NA, 7, pd.NA]
    expected = np.arange(27, dtype="float64").reshape(3, 9)
    expected[1, 4] = np.nan
    np.testing.assert_array_equal(batch_rows[list(MODEL_FEATURES)].to_numpy(), expected)
    assert batch_rows["probability"].tolist() == [0.1, 0.7, 0.3]
    assert batch_rows["is_fraud"].tolist() == [False, True, False]
    assert set(batch_rows["variant"]) == {"challenger"} and set(batch_rows["model_version"]) == {5}
    assert (batch_rows["latency_ms"] == 9.5).all() and (batch_rows["threshold"] == 0.5).all()
    log = everything[everything["request_id"].str.startswith("child-")].reset_index(drop=True)
    assert log["request_id"].tolist() == [f"child-{i}" for i in range(300)]
    assert log["customer_id"].tolist() == list(range(300))
    assert log["probability"].tolist() == [i / 300 for i in range(300)]
    assert log["is_fraud"].tolist() == [i % 2 == 0 for i in range(300)]
    assert (log[list(MODEL_FEATURES)].to_numpy() == np.arange(300, dtype="float64")[:, None]).all()
    assert segments(tmp_path) == []
    logger.close()


def test_a_part_is_written_once_when_its_segment_outlived_it(tmp_path):
    """The crash point between writing a segment's parts and deleting it: recovery writes what is missing only."""
    first = datetime(2026, 3, 14, 22, tzinfo=UTC).timestamp()  # 22:00, 23:00, then 00:00-02:00 of the next day
    process, report = run_child(tmp_path, first, 3600.0, 5, "exit")
    end_child(process)
    (segment,) = segments(tmp_path)
    saved = segment.read_bytes()
    logger = PredictionLogger(tmp_path, flush_rows=1_000, flush_seconds=3600)
    logger.start()
    logger.close()
    assert logger.rows_written == 5 and logger.files_written == 2 and not segment.exists()

    part = f"part-{segment.name.removesuffix('.jsonl')}.parquet"
    first_part, second_part = tmp_path / "date=2026-03-14" / part, tmp_path / "date=2026-03-15" / part
    segment.write_bytes(saved)  # the process died before deleting the segment ...
    second_part.unlink()  # ... and after writing the first day's part only
    before = first_part.stat()

    again = PredictionLogger(tmp_path, flush_rows=1_000, flush_seconds=3600)
    again.start()
    assert again.flush()
    assert again.segments_recovered == 1 and again.files_written == 1 and again.rows_written == 3
    after = first_part.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not written again
    log = read_prediction_log(tmp_path)
    assert log["request_id"].tolist() == [f"child-{i}" for i in range(5)]
    assert len(read_prediction_log(tmp_path, day="2026-03-15")) == 3
    assert segments(tmp_path) == []
    again.close()


def test_a_segment_of_a_live_process_is_left_alone(tmp_path):
    process, report = run_child(tmp_path, WHEN, 1.0, 4, "wait")
    try:
        (segment,) = segments(tmp_path)
        size = segment.stat().st_size
        logger = PredictionLogger(tmp_path, flush_rows=1_000, flush_seconds=0.05, recover_seconds=0.05)
        logger.start()
        assert logger.flush()
        wait_for(lambda: logger.recovery_scans >= 3, "three recovery scans")
        assert logger.segments_recovered == 0 and logger.rows_written == 0
        assert segment.stat().st_size == size and read_prediction_log(tmp_path).empty
    finally:
        end_child(process, signal.SIGKILL)
    wait_for(lambda: logger.rows_written == 7, "the periodic recovery of the killed owner's segment")
    assert logger.segments_recovered == 1 and not segment.exists()
    assert sorted(read_prediction_log(tmp_path)["request_id"]) == [
        *(f"batch-{i}" for i in range(3)),
        *(f"child-{i}" for i in range(4)),
    ]
    logger.close()


def test_a_bad_row_is_quarantined_and_its_neighbours_are_written(tmp_path):
    from ml_platform.serving.metrics import Metrics

    metrics = Metrics()
    events: list[tuple[str, int]] = []

    def on_count(event: str, amount: int) -> None:
        events.append((event, amount))
        metrics.count_prediction_log(event, amount)

    logger = PredictionLogger(tmp_path, flush_rows=1_000, flush_seconds=3600, on_count=on_count)
    logger.start()
    logger.log_row(*row_args(0))
    logger.log_row(*row_args(1, request_id="lone-\ud800"))  # no UTF-8 for it: parquet cannot hold it
    logger.log_row(*row_args(2))
    logger.log_row(*row_args(3, customer_id=2**70))  # beyond int64
    bad_batch = batch(3, datetime(2026, 3, 14, 13, tzinfo=UTC), start=10)
    bad_batch.request_ids[1] = "\udfff"
    logger.log(bad_batch)
    logger.log_row(*row_args(4, probability=float("nan")))  # a NaN probability is stored as it is
    logger.log_row(*row_args(5, probability="0.5"))  # not a number
    logger.log_row(*row_args(6))
    assert logger.flush()

    log = read_prediction_log(tmp_path)
    assert sorted(log["request_id"]) == ["r0", "r10", "r12", "r2", "r4", "r6"]
    assert np.isnan(log.loc[log["request_id"] == "r4", "probability"].item())
    quarantined = read_quarantine(tmp_path)
    assert [record["reason"].split(":")[0] for record in quarantined] == [
        "request_id",
        "customer_id",
        "request_id",
        "probability",
    ]
    assert "surrogates not allowed" in quarantined[0]["reason"]
    assert quarantined[3]["reason"] == 'probability: expected a number, got "0.5"'
    rows = [json.loads(record["row"]) for record in quarantined]
    assert [row[1] for row in rows] == ["lone-\ud800", "r3", "\udfff", "r5"]  # the rows as they were logged
    assert rows[1][2] == 2**70 and rows[2][0] == datetime(2026, 3, 14, 13, tzinfo=UTC).timestamp()
    (segment_name,) = {record["segment"] for record in quarantined}
    stem = segment_name.removesuffix(".jsonl")
    created = datetime.fromtimestamp(int(stem.split("-")[0]) / 1e9, UTC).strftime("%Y-%m-%d")  # the segment's day
    assert [path.name for path in (tmp_path / "quarantine").iterdir()] == [f"quarantine-{created}-{stem}.jsonl"]

    assert logger.rows_written == 6 and logger.quarantined == 4 and logger.write_errors == 0
    assert events == [("quarantined", 4), ("rows_written", 6)]
    sample = metrics.registry.get_sample_value
    assert sample("ml_platform_serving_prediction_log_quarantined_total") == 4
    assert sample("ml_platform_serving_prediction_log_rows_written_total") == 6
    assert sample("ml_platform_serving_prediction_log_write_errors_total") == 0
    logger.close()


def test_torn_bad_and_foreign_lines_of_a_dead_segment_are_quarantined(tmp_path):
    journal = tmp_path / "journal"
    journal.mkdir(parents=True)
    good = [json.dumps(list(row_args(index))).encode() for index in range(2)]
    lone = json.dumps(list(row_args(2, request_id="\ud800"))).encode()  # JSON escapes it; parquet cannot hold it
    dead = journal / f"{time.time_ns():020d}-deadbeef-000000.jsonl"  # nobody holds its lock
    lines = [good[0], b'{"unexpected": 1}', lone, b"not json", good[1]]
    dead.write_bytes(b"\n".join(lines) + b'\n[1773489600.0,"tor')

    logger = PredictionLogger(tmp_path, flush_rows=1_000, flush_seconds=3600)
    logger.start()
    assert logger.flush()
    assert read_prediction_log(tmp_path)["request_id"].tolist() == ["r0", "r1"]
    quarantined = read_quarantine(tmp_path)
    # lines that are not rows first, in order; then rows the schema cannot hold
    assert [record["row"] for record in quarantined[:3]] == ['{"unexpected": 1}', "not json", '[1773489600.0,"tor']
    assert json.loads(quarantined[3]["row"]) == json.loads(lone)
    reasons = [record["reason"] for record in quarantined]
    assert reasons[0] == "expected a row of 10 values or a batch object"
    assert reasons[1].startswith("not a JSON line: ")
    assert reasons[2].startswith("torn line: ")
    assert reasons[3].startswith("request_id: ") and "surrogates not allowed" in reasons[3]
    assert logger.quarantined == 4 and logger.rows_written == 2 and not dead.exists()
    logger.close()


def test_rows_numbered_under_one_id_are_journaled_as_it_and_logged_with_their_own(tmp_path):
    """A batch whose rows are <id>/0, <id>/1, ... (RowIds: a v2 or /invocations request) journals the id
    and the count, not an id per row; the log, converted from memory or from a dead process's segment,
    holds each row's own id. A compact entry that is not an id and a count is quarantined, named."""
    ids = RowIds("req", 3)
    assert len(ids) == 3 and list(ids) == ["req/0", "req/1", "req/2"] and ids[-1] == "req/2"
    assert ids[1:] == ["req/1", "req/2"] and ids == ["req/0", "req/1", "req/2"] and list(RowIds("one", 1)) == ["one"]
    with pytest.raises(IndexError):
        ids[3]
    numbered = dataclasses.replace(batch(3, datetime.fromtimestamp(WHEN, UTC)), request_ids=ids)

    logger = PredictionLogger(tmp_path / "live", flush_rows=1_000, flush_seconds=3600)
    logger.start()
    logger.log(numbered)
    (segment,) = segments(tmp_path / "live")
    line = segment.read_bytes()
    assert json.loads(line)["request_ids"] == {"base": "req", "rows": 3} and b"req/" not in line
    assert logger.flush()
    logger.close()

    journal = tmp_path / "dead" / "journal"
    journal.mkdir(parents=True)
    bad = json.loads(line)
    bad["request_ids"] = {"base": 5, "rows": 3}
    (journal / f"{time.time_ns():020d}-deadbeef-000000.jsonl").write_bytes(line + json.dumps(bad).encode() + b"\n")
    recovering = PredictionLogger(tmp_path / "dead", flush_rows=1_000, flush_seconds=3600)
    recovering.start()
    assert recovering.flush()
    recovering.close()
    for log_dir in (tmp_path / "live", tmp_path / "dead"):
        log = read_prediction_log(log_dir)
        assert log["request_id"].tolist() == ["req/0", "req/1", "req/2"], log_dir
        np.testing.assert_array_equal(log[list(MODEL_FEATURES)].to_numpy(), numbered.features)
        assert log["probability"].tolist() == numbered.probabilities.tolist()
    (quarantined,) = read_quarantine(tmp_path / "dead")
    assert quarantined["reason"].startswith("batch: request_ids: expected a list or {base, rows}, got ")


def test_logging_after_close_is_refused(tmp_path):
    logger = PredictionLogger(tmp_path, flush_rows=1_000, flush_seconds=3600)
    logger.start()
    logger.log_row(*row_args(0))
    logger.close()
    with pytest.raises(PredictionLogUnavailable) as refused:
        logger.log_row(*row_args(1))
    assert refused.value.status_code == 503 and "shutting down" in refused.value.message
    assert read_prediction_log(tmp_path)["request_id"].tolist() == ["r0"]


def test_a_failed_journal_write_is_refused_and_every_acknowledged_row_survives(tmp_path):
    """A journal write that fails (here: past a file-size limit, mid-line) refuses the row with a 503;
    every row acknowledged before it is recovered, and the torn fragment goes to quarantine."""
    process, report = run_child(tmp_path, WHEN, 1.0, 1_000, "limit")
    end_child(process)
    acknowledged = report["acknowledged"]
    assert 0 < acknowledged < 1_000
    assert report["status"] == 503 and "cannot write the journal" in report["message"]
    assert report["write_errors"] == 1

    logger = PredictionLogger(tmp_path, flush_rows=1_000, flush_seconds=3600)
    logger.start()
    assert logger.flush()
    assert read_prediction_log(tmp_path)["request_id"].tolist() == [f"child-{i}" for i in range(acknowledged)]
    (torn,) = read_quarantine(tmp_path)
    refused = acknowledged  # the row whose write failed: only its first bytes reached the file
    line = json.dumps(
        [WHEN + refused, f"child-{refused}", refused, [float(refused)] * 9, refused / 1_000, refused % 2 == 0]
        + [0.5, 4, "champion", 1.5],
        separators=(",", ":"),
    )
    assert torn["reason"].startswith("torn line: ")
    assert 0 < len(torn["row"]) < len(line) and line.startswith(torn["row"])
    logger.close()

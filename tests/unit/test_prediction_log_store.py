"""The prediction log over a URI: a local folder and a real S3-compatible server (moto on loopback),
through the same writer, readers, quarantine and lock-free compaction."""

from __future__ import annotations

import json
import shutil
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.predictions import (
    LogLocationError,
    LogStore,
    PredictionBatch,
    PredictionLogger,
    compact_day,
    log_location,
    read_prediction_log,
    read_quarantine,
    replica_name,
)
from ml_platform.predictions.compaction import REPLACES_KEY, read_day
from tests.support.s3 import s3_bucket

DAY = date(2026, 3, 14)
DAY_START = datetime(2026, 3, 14, 8, tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def bucket():
    with s3_bucket() as started:
        yield started


@pytest.fixture(params=["local", "s3"])
def log(request, tmp_path):
    """A fresh log location: a local folder, or a fresh prefix in the module's bucket."""
    if request.param == "local":
        return str(tmp_path / "log")
    bucket = request.getfixturevalue("bucket")
    return f"{bucket.uri}/{request.node.name.replace('[', '-').rstrip(']')}"


def batch(request_id: str, when: float, probability: float = 0.25, **fields) -> PredictionBatch:
    values = {
        "time": when,
        "request_ids": [request_id],
        "customer_ids": [7],
        "features": np.arange(len(MODEL_FEATURES), dtype="float64").reshape(1, -1),
        "probabilities": np.array([probability]),
        "is_fraud": np.array([probability > 0.5]),
        "threshold": 0.5,
        "model_version": 3,
        "variant": "champion",
        "latency_ms": 1.5,
        **fields,
    }
    return PredictionBatch(**values)


def write_parts(log, tmp_path: Path, parts: int, rows: int, replica: str = "pod-a", offset: float = 0.0) -> list[str]:
    """``parts`` part files of ``rows`` rows each on DAY, written by the real logger; the request ids."""
    logger = PredictionLogger(log, journal_dir=tmp_path / f"journal-{replica}", replica=replica, flush_seconds=3600)
    logger.start()
    ids = []
    for part in range(parts):
        for row in range(rows):
            request_id = f"{replica}-{part}-{row}"
            logger.log(batch(request_id, DAY_START + offset + 60 * (part * rows + row), probability=row / rows))
            ids.append(request_id)
        assert logger.flush()
    logger.close()
    return ids


def part_names(log, day: date = DAY) -> list[str]:
    return [entry.name for entry in LogStore(log).list_files(f"date={day}") if entry.name.startswith("part-")]


# ---- locations -------------------------------------------------------------------------------------------
def test_locations_keep_paths_as_paths_and_uris_as_text(tmp_path):
    assert log_location(str(tmp_path)) == tmp_path
    assert log_location(f"file://{tmp_path}") == tmp_path
    assert log_location("s3://bucket/prefix") == "s3://bucket/prefix"
    assert log_location("gs://bucket/prefix") == "gs://bucket/prefix"
    with pytest.raises(LogLocationError, match="unsupported scheme 'ftp'"):
        log_location("ftp://host/log")
    with pytest.raises(LogLocationError, match="empty"):
        log_location(" ")


def test_replica_name_from_the_environment_sanitized():
    assert replica_name({"ML_PLATFORM_REPLICA_NAME": "pod/a b", "HOSTNAME": "h"}) == "pod_a_b"
    assert replica_name({"HOSTNAME": "model-server-7d9f-x2k4q"}) == "model-server-7d9f-x2k4q"
    assert replica_name({"ML_PLATFORM_REPLICA_NAME": "..."}) == "replica"
    assert len(replica_name({"ML_PLATFORM_REPLICA_NAME": "x" * 200})) == 63


def test_an_object_store_log_needs_a_local_journal(bucket):
    with pytest.raises(LogLocationError, match="journal_dir"):
        PredictionLogger(bucket.uri)


def test_endpoint_override_in_the_uri_works_without_the_variable(bucket, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    uri = f"{bucket.uri}/override?endpoint_override={bucket.endpoint}"
    ids = write_parts(uri, tmp_path, parts=1, rows=3)
    assert read_prediction_log(uri)["request_id"].tolist() == ids
    assert any(key.startswith("override/date=2026-03-14/part-") for key in bucket.object_keys())


# ---- writer and readers ----------------------------------------------------------------------------------
def test_writer_publishes_parts_named_after_the_replica(log, tmp_path):
    ids = write_parts(log, tmp_path, parts=2, rows=5, replica="model-server-0")
    names = part_names(log)
    assert len(names) == 2 and all(name.split("-")[2:4] == ["model", "server"] for name in names), names
    assert all("-model-server-0-" in name for name in names)
    frame = read_prediction_log(log)
    assert frame["request_id"].tolist() == ids
    assert frame["probability"].tolist() == [row / 5 for _ in range(2) for row in range(5)]
    assert frame["customer_id"].dtype == "Int64" and frame["model_version"].unique().tolist() == [3]
    assert read_prediction_log(log, DAY)["request_id"].tolist() == ids
    assert read_prediction_log(log, "2026-03-15").empty
    assert list(read_prediction_log(f"{log}-nothing-here").columns) == list(frame.columns)


def test_two_replicas_write_their_own_parts_to_one_log(log, tmp_path):
    first = write_parts(log, tmp_path, parts=2, rows=3, replica="pod-a")
    second = write_parts(log, tmp_path, parts=3, rows=2, replica="pod-b", offset=1.0)
    names = part_names(log)
    assert sum("-pod-a-" in name for name in names) == 2 and sum("-pod-b-" in name for name in names) == 3
    frame = read_prediction_log(log)
    assert sorted(frame["request_id"]) == sorted(first + second) and frame["request_id"].is_unique
    result = compact_day(log, DAY)
    assert (result.compacted, result.files_before, result.files_after, result.rows) == (True, 5, 1, 12)
    assert sorted(read_prediction_log(log)["request_id"]) == sorted(first + second)


def test_quarantine_holds_the_rows_the_schema_cannot(log, tmp_path):
    logger = PredictionLogger(log, journal_dir=tmp_path / "journal", replica="pod-q", flush_seconds=3600)
    logger.start()
    logger.log(batch("good-0", DAY_START))
    logger.log(batch("bad-0", DAY_START + 1, model_version=2**70))
    logger.log_row(DAY_START + 2, "good-1", None, [1.0] * len(MODEL_FEATURES), 0.1, False, 0.5, 3, "champion", 1.0)
    assert logger.flush()
    logger.close()
    assert read_prediction_log(log)["request_id"].tolist() == ["good-0", "good-1"]
    (quarantined,) = read_quarantine(log)
    assert quarantined["reason"].startswith("model_version:")
    assert "bad-0" in quarantined["row"] and "-pod-q-" in quarantined["segment"]
    assert logger.quarantined == 1 and logger.rows_written == 2


# ---- compaction ------------------------------------------------------------------------------------------
def test_compaction_replaces_the_parts_by_one_file_that_names_them(log, tmp_path):
    ids = write_parts(log, tmp_path, parts=3, rows=4)
    before = read_prediction_log(log, DAY)
    parts = part_names(log)
    result = compact_day(log, DAY)
    assert (result.compacted, result.files_before, result.files_after, result.rows) == (True, 3, 1, 12)
    (compacted,) = part_names(log)
    assert compacted.endswith("-compacted.parquet") and str(result.path).endswith(compacted)
    assert compacted > max(parts)  # sorts after every file it replaces
    store = LogStore(log)
    replaced = json.loads(store.read_metadata(f"date={DAY}/{compacted}").metadata[REPLACES_KEY])
    assert replaced == sorted(parts)
    pd.testing.assert_frame_equal(read_prediction_log(log, DAY), before)
    assert before["request_id"].tolist() == ids

    later = write_parts(log, tmp_path, parts=1, rows=2, replica="pod-b", offset=10_000.0)
    again = compact_day(log, DAY)  # the compacted file and the new part, into one
    (newest,) = part_names(log)
    assert again.files_before == 2 and newest != compacted
    replaced = set(json.loads(store.read_metadata(f"date={DAY}/{newest}").metadata[REPLACES_KEY]))
    assert set(parts) | {compacted} <= replaced  # what it replaced, and what that replaced
    assert read_prediction_log(log, DAY)["request_id"].tolist() == ids + later
    nothing = compact_day(log, DAY)
    assert (nothing.compacted, nothing.files_before, nothing.rows) == (False, 1, 14)


def test_a_crash_at_any_step_of_compaction_leaves_each_row_once(log, tmp_path):
    ids = write_parts(log, tmp_path, parts=3, rows=2)
    store = LogStore(log)
    folder = f"date={DAY}"
    first, second, third = part_names(log)
    table = store.read_table(f"{folder}/{first}")
    import pyarrow as pa

    # Crashed after publishing a file of the first two parts, before deleting either:
    both = pa.concat_tables([table, store.read_table(f"{folder}/{second}")])
    published = "part-99999999999999999990-compacted.parquet"
    store.write_table(f"{folder}/{published}", both, metadata={REPLACES_KEY: json.dumps([first, second]).encode()})
    # ... and a concurrent compaction of the first part alone, also published, also not cleaned up:
    smaller = "part-99999999999999999980-compacted.parquet"
    store.write_table(f"{folder}/{smaller}", table, metadata={REPLACES_KEY: json.dumps([first]).encode()})
    frame = read_prediction_log(log, DAY)
    assert sorted(frame["request_id"]) == sorted(ids) and frame["request_id"].is_unique
    view, _ = read_day(store, DAY)
    assert view.visible == (third, published) and set(view.leftovers) == {first, second, smaller}

    result = compact_day(log, DAY)  # folds the two visible files, deletes the leftovers
    assert result.compacted and result.recovered == {"removed": 3} and result.files_after == 1
    assert sorted(read_prediction_log(log, DAY)["request_id"]) == sorted(ids)
    assert len(part_names(log)) == 1


def test_a_crash_before_publishing_changes_nothing(log, tmp_path, monkeypatch):
    ids = write_parts(log, tmp_path, parts=2, rows=3)
    parts = part_names(log)

    def broken(self, relative, data):
        raise OSError("the store went away")

    monkeypatch.setattr(LogStore, "write_bytes", broken)
    with pytest.raises(OSError, match="went away"):
        compact_day(log, DAY)
    monkeypatch.undo()
    assert part_names(log) == parts
    assert read_prediction_log(log, DAY)["request_id"].tolist() == ids


def test_a_reader_during_compaction_sees_every_row_once(log, tmp_path):
    """While a writer publishes parts and compacts after each, every read succeeds, never counts a row
    twice and never sees fewer rows than were published before it began."""
    write_parts(log, tmp_path, parts=2, rows=3)
    written = [6]
    failures: list[BaseException] = []
    rounds = 12

    def write_and_compact() -> None:
        logger = PredictionLogger(log, journal_dir=tmp_path / "journal-late", replica="late", flush_seconds=3600)
        logger.start()
        try:
            for index in range(rounds):
                logger.log(batch(f"late-{index}", DAY_START + 40_000 + index))
                assert logger.flush()
                written[0] += 1
                compact_day(log, DAY)
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            failures.append(error)
        finally:
            logger.close()

    writer = threading.Thread(target=write_and_compact)
    writer.start()
    seen = []
    while writer.is_alive():
        at_least = written[0]
        frame = read_prediction_log(log, DAY)
        assert frame["request_id"].is_unique, "a row was read twice"
        assert len(frame) >= at_least, f"a read saw {len(frame)} rows while {at_least} were published before it"
        seen.append(len(frame))
    writer.join()
    assert not failures, failures
    assert len(seen) >= 2 and seen == sorted(seen)
    assert len(read_prediction_log(log, DAY)) == 6 + rounds
    assert len(part_names(log)) == 1


def test_a_recovered_segment_already_written_and_compacted_is_not_written_again(log, tmp_path):
    """A process that died after publishing a segment's part but before deleting the segment: the part
    was compacted since, and recovery by the next logger on the journal must not write it again."""
    journal = tmp_path / "journal"
    logger = PredictionLogger(log, journal_dir=journal, replica="pod-r", flush_seconds=3600)
    logger.start()
    for index in range(3):
        logger.log(batch(f"r{index}", DAY_START + index))
    (segment,) = journal.glob("*.jsonl")
    kept = tmp_path / "kept.jsonl"
    shutil.copy(segment, kept)  # the segment as the dead process left it
    assert logger.flush()
    logger.close()
    write_parts(log, tmp_path, parts=1, rows=2, replica="pod-s", offset=100.0)
    assert compact_day(log, DAY).compacted
    shutil.copy(kept, segment)

    again = PredictionLogger(log, journal_dir=journal, replica="pod-r", flush_seconds=3600)
    again.start()
    assert again.flush()
    again.close()
    assert again.segments_recovered == 1 and again.files_written == 0
    assert not list(journal.glob("*.jsonl"))
    frame = read_prediction_log(log, DAY)
    assert sorted(frame["request_id"]) == ["pod-s-0-0", "pod-s-0-1", "r0", "r1", "r2"]

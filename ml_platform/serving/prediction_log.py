"""The prediction log: every answered prediction (and every shadow score), batched into parquet.

Requests append rows to an in-memory queue and return: no I/O, and no wake-up of the writer per
request (waking a thread per request costs the request path a GIL hand-off each time). One background
thread wakes when ``flush_rows`` rows are waiting or ``flush_seconds`` passed, and writes a parquet
file under ``log_dir/date=YYYY-MM-DD/part-<time>-<id>.parquet`` (the UTC day of the prediction),
through a temporary name and a rename so a reader never sees half a file. The table is built with
pyarrow straight from the rows (the columns, types and pandas metadata of ``DataFrame.to_parquet`` on
:func:`batches_to_frame`'s frame, so readers see the same files), which keeps the writer's hold on the
GIL short: it shares the interpreter with the requests. :meth:`PredictionLogger.close` writes whatever
is still queued, so after a graceful shutdown the log holds one row per answer.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.storage import file_lock

_log = logging.getLogger(__name__)

LOG_COLUMNS: tuple[str, ...] = (
    "time",
    "request_id",
    "customer_id",
    *MODEL_FEATURES,
    "probability",
    "is_fraud",
    "threshold",
    "model_version",
    "variant",
    "latency_ms",
)
DAY_PREFIX = "date="
# Readers of a day's part files hold this lock shared; compaction holds it exclusively while it swaps
# the parts for the compacted file (ml_platform.monitoring.compaction), so no reader sees half a swap.
SWAP_LOCK_NAME = ".compaction.swap.lock"


@dataclass(frozen=True)
class PredictionBatch:
    """Rows of one request for one model (arrays aligned by row)."""

    time: float  # unix seconds
    request_ids: list[str]
    customer_ids: list[int | None]
    features: np.ndarray  # (n, 9) float64
    probabilities: np.ndarray
    is_fraud: np.ndarray
    threshold: float
    model_version: int
    variant: str
    latency_ms: float

    def __len__(self) -> int:
        return len(self.request_ids)


# One answered row, as PredictionLogger.log_row queues it (a plain tuple: the cheapest thing to build):
# (time, request_id, customer_id, features, probability, is_fraud, threshold, model_version, variant, latency_ms)
_Row = tuple


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class PredictionLogger:
    def __init__(self, log_dir: Path, *, flush_rows: int = 5_000, flush_seconds: float = 2.0) -> None:
        self.log_dir = Path(log_dir)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._items: collections.deque = collections.deque()  # append/popleft are atomic: no lock needed
        self._queued_rows = 0  # a hint for waking the writer early; the writer counts exactly
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.rows_written = 0
        self.files_written = 0
        self.write_errors = 0

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def log(self, batch: PredictionBatch) -> None:
        if self._closed:
            _log.warning("prediction log is closed; dropping %d rows", len(batch))
            return
        self._items.append(batch)
        self._count(len(batch))

    def log_row(
        self,
        when: float,
        request_id: str,
        customer_id: int | None,
        features: Sequence[float | None],
        probability: float,
        is_fraud: bool,
        threshold: float,
        model_version: int,
        variant: str,
        latency_ms: float,
    ) -> None:
        """One answered row (the single-row fast path): what a one-row :class:`PredictionBatch` holds.

        ``when`` is unix seconds, as :attr:`PredictionBatch.time`.
        ``features`` are the model's inputs in :data:`MODEL_FEATURES` order (None: missing), kept as
        given: the caller must not change the sequence afterwards.
        """
        if self._closed:
            _log.warning("prediction log is closed; dropping 1 row")
            return
        self._items.append(
            (when, request_id, customer_id, features, probability, is_fraud, threshold, model_version, variant,
             latency_ms)
        )  # fmt: skip
        self._count(1)

    def _count(self, rows: int) -> None:
        self._queued_rows += rows
        if self._queued_rows >= self.flush_rows:
            self._queued_rows = 0
            self._wake.set()

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything logged so far; True once it is on disk."""
        if self._thread is None or not self._thread.is_alive():
            return False
        marker = _Flush()
        self._items.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Write everything still queued and stop the writer thread."""
        self._closed = True
        if self._thread is None:
            return
        self._items.append(_STOP)
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            _log.error("prediction log writer did not finish within %.0f s", timeout)
        self._thread = None

    # ---- writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        pending: list = []
        pending_rows = 0
        deadline = time.monotonic() + self.flush_seconds
        while True:
            self._wake.wait(max(0.0, deadline - time.monotonic()))
            self._wake.clear()
            flushes: list[_Flush] = []
            stop = False
            while self._items:
                item = self._items.popleft()
                if type(item) is tuple:
                    pending.append(item)
                    pending_rows += 1
                elif isinstance(item, PredictionBatch):
                    pending.append(item)
                    pending_rows += len(item)
                elif isinstance(item, _Flush):
                    flushes.append(item)
                elif item is _STOP:
                    stop = True
            now = time.monotonic()
            if pending and (stop or flushes or pending_rows >= self.flush_rows or now >= deadline):
                self._write(pending)
                pending, pending_rows = [], 0
            if now >= deadline or not pending:
                deadline = now + self.flush_seconds
            self._queued_rows = pending_rows  # the wake-up hint counts from what is still waiting
            for marker in flushes:
                marker.done.set()
            if stop:
                # anything logged after close() was called is still written
                leftovers = []
                while self._items:
                    item = self._items.popleft()
                    if type(item) is tuple or isinstance(item, PredictionBatch):
                        leftovers.append(item)
                    elif isinstance(item, _Flush):
                        item.done.set()
                if leftovers:
                    self._write(leftovers)
                return

    def _write(self, items: list) -> None:
        import pyarrow.parquet as pq

        try:
            table, days = _items_to_table(items)
            unique_days = np.unique(days)  # sorted, as the groupby of the frame-based writer was
            for day in unique_days:
                part = table if len(unique_days) == 1 else table.filter(days == day)
                folder = self.log_dir / f"{DAY_PREFIX}{np.datetime_as_string(day, unit='D')}"
                folder.mkdir(parents=True, exist_ok=True)
                name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
                tmp = folder / f".{name}.tmp-{os.getpid()}"
                pq.write_table(part, tmp, compression="snappy")
                os.replace(tmp, folder / name)
                self.files_written += 1
            self.rows_written += table.num_rows
        except Exception:  # the writer must outlive a bad disk moment; the rows are reported lost
            self.write_errors += 1
            _log.exception("could not write %d prediction log rows", _count_rows(items))


def _count_rows(items: list) -> int:
    return sum(1 if type(item) is tuple else len(item) for item in items)


def _items_to_table(items: list):
    """Queued rows and batches, in order, as one arrow table with the log's schema, and each row's UTC day."""
    import pyarrow as pa

    segments: list[dict[str, object]] = []
    rows: list[_Row] = []
    for item in items:
        if type(item) is tuple:
            rows.append(item)
            continue
        if len(item) == 1:  # one-row batches (shadow scores, one-row v2 requests) join the rows: far cheaper
            rows.append(_batch_row(item))
            continue
        if rows:
            segments.append(_rows_columns(rows))
            rows = []
        segments.append(_batch_columns(item))
    if rows:
        segments.append(_rows_columns(rows))

    def joined(name: str, dtype: str) -> np.ndarray:
        return np.concatenate([np.asarray(segment[name], dtype=dtype) for segment in segments])

    def listed(name: str) -> list:
        return [value for segment in segments for value in segment[name]]

    seconds = joined("time", "float64")
    stamps = pd.to_datetime(seconds, unit="s", utc=True)  # the same conversion batches_to_frame makes
    features = np.vstack([segment["features"] for segment in segments])
    schema = _log_schema()
    arrays = [
        pa.array(stamps, type=schema.field("time").type),
        pa.array(listed("request_id"), type=pa.string()),
        pa.array(listed("customer_id"), type=pa.int64()),
        *(pa.array(features[:, index], type=pa.float64()) for index in range(len(MODEL_FEATURES))),
        pa.array(joined("probability", "float64"), type=pa.float64()),
        pa.array(joined("is_fraud", "bool"), type=pa.bool_()),
        pa.array(joined("threshold", "float64"), type=pa.float64()),
        pa.array(joined("model_version", "int64"), type=pa.int64()),
        pa.array(listed("variant"), type=pa.string()),
        pa.array(joined("latency_ms", "float64"), type=pa.float64()),
    ]
    days = stamps.asi8.astype("datetime64[ns]").astype("datetime64[D]")  # UTC days
    return pa.Table.from_arrays(arrays, schema=schema), days


def _rows_columns(rows: list[_Row]) -> dict[str, object]:
    (times, request_ids, customer_ids, features, probabilities, is_fraud, thresholds, versions, variants,
     latencies) = zip(*rows, strict=True)  # fmt: skip
    return {
        "time": times,
        "request_id": request_ids,
        "customer_id": customer_ids,
        "features": np.array(features, dtype="float64").reshape(len(rows), len(MODEL_FEATURES)),  # None -> NaN
        "probability": probabilities,
        "is_fraud": is_fraud,
        "threshold": thresholds,
        "model_version": versions,
        "variant": variants,
        "latency_ms": latencies,
    }


def _batch_row(batch: PredictionBatch) -> _Row:
    return (
        batch.time,
        batch.request_ids[0],
        batch.customer_ids[0],
        np.asarray(batch.features, dtype="float64").reshape(len(MODEL_FEATURES)),
        float(np.asarray(batch.probabilities).reshape(-1)[0]),
        bool(np.asarray(batch.is_fraud).reshape(-1)[0]),
        batch.threshold,
        batch.model_version,
        batch.variant,
        batch.latency_ms,
    )


def _batch_columns(batch: PredictionBatch) -> dict[str, object]:
    n = len(batch)
    return {
        "time": np.full(n, batch.time, dtype="float64"),
        "request_id": batch.request_ids,
        "customer_id": batch.customer_ids,
        "features": np.asarray(batch.features, dtype="float64").reshape(n, len(MODEL_FEATURES)),
        "probability": np.asarray(batch.probabilities, dtype="float64").reshape(n),
        "is_fraud": np.asarray(batch.is_fraud, dtype=bool).reshape(n),
        "threshold": np.full(n, batch.threshold, dtype="float64"),
        "model_version": np.full(n, batch.model_version, dtype="int64"),
        "variant": [batch.variant] * n,
        "latency_ms": np.full(n, batch.latency_ms, dtype="float64"),
    }


_SCHEMA = None


def _log_schema():
    """The log file's arrow schema: what ``DataFrame.to_parquet`` writes for :func:`batches_to_frame`'s
    frame, pandas metadata included (it tells pandas readers that ``customer_id`` is a nullable Int64)."""
    global _SCHEMA
    if _SCHEMA is None:
        import pyarrow as pa

        template = PredictionBatch(
            time=0.0,
            request_ids=["r"],
            customer_ids=[None],
            features=np.zeros((1, len(MODEL_FEATURES))),
            probabilities=np.zeros(1),
            is_fraud=np.zeros(1, dtype=bool),
            threshold=0.5,
            model_version=1,
            variant="champion",
            latency_ms=0.0,
        )
        _SCHEMA = pa.Table.from_pandas(batches_to_frame([template]), preserve_index=False).schema
    return _SCHEMA


def batches_to_frame(batches: list[PredictionBatch]) -> pd.DataFrame:
    columns: dict[str, object] = {
        "time": pd.to_datetime(np.concatenate([np.full(len(b), b.time) for b in batches]), unit="s", utc=True),
        "request_id": [rid for b in batches for rid in b.request_ids],
        "customer_id": pd.array([cid for b in batches for cid in b.customer_ids], dtype="Int64"),
    }
    features = np.vstack(
        [np.asarray(b.features, dtype="float64").reshape(len(b), len(MODEL_FEATURES)) for b in batches]
    )
    for index, name in enumerate(MODEL_FEATURES):
        columns[name] = features[:, index]
    columns["probability"] = np.concatenate([np.asarray(b.probabilities, dtype="float64") for b in batches])
    columns["is_fraud"] = np.concatenate([np.asarray(b.is_fraud, dtype=bool) for b in batches])
    columns["threshold"] = np.concatenate([np.full(len(b), b.threshold, dtype="float64") for b in batches])
    columns["model_version"] = np.concatenate([np.full(len(b), b.model_version, dtype="int64") for b in batches])
    columns["variant"] = [b.variant for b in batches for _ in range(len(b))]
    columns["latency_ms"] = np.concatenate([np.full(len(b), b.latency_ms, dtype="float64") for b in batches])
    return pd.DataFrame(columns)[list(LOG_COLUMNS)]


def read_prediction_log(log_dir: str | Path, day: str | date | datetime | None = None) -> pd.DataFrame:
    """Every logged prediction under ``log_dir`` (or of one UTC ``day``), oldest first.

    Files still being written (temporary names) are skipped; an empty log gives an empty frame with
    the log's columns. Each day is listed and read under its swap lock (shared), so a compaction of
    that day is either wholly before the read or wholly after it.
    """
    log_dir = Path(log_dir)
    if day is None:
        folders = sorted(log_dir.glob(f"{DAY_PREFIX}*"))
    else:
        day_text = day.strftime("%Y-%m-%d") if isinstance(day, date | datetime) else str(day)
        folders = [log_dir / f"{DAY_PREFIX}{day_text}"]
    frames = []
    for folder in folders:
        if not folder.is_dir():
            continue
        with ExitStack() as lock:
            # No lock file and no right to create one: a read-only copy of the log, which nothing compacts.
            with suppress(OSError):
                lock.enter_context(file_lock(folder / SWAP_LOCK_NAME, shared=True))
            frames += [pd.read_parquet(path) for path in sorted(folder.glob("part-*.parquet"))]
    if not frames:
        return _empty_frame()
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values("time", kind="stable").reset_index(drop=True)


def _empty_frame() -> pd.DataFrame:
    frame = pd.DataFrame({name: pd.Series(dtype="float64") for name in LOG_COLUMNS})
    frame["time"] = pd.Series(dtype="datetime64[ns, UTC]")
    frame["request_id"] = pd.Series(dtype="object")
    frame["customer_id"] = pd.Series(dtype="Int64")
    frame["is_fraud"] = pd.Series(dtype="bool")
    frame["model_version"] = pd.Series(dtype="int64")
    frame["variant"] = pd.Series(dtype="object")
    return frame

"""The prediction log: every answered prediction (and every shadow score), batched into parquet.

Requests put rows on a queue (no I/O on the request path); one background thread writes a parquet
file whenever ``flush_rows`` rows are waiting or ``flush_seconds`` passed, under
``log_dir/date=YYYY-MM-DD/part-<time>-<id>.parquet`` (the UTC day of the prediction), through a
temporary name and a rename so a reader never sees half a file. :meth:`PredictionLogger.close`
writes whatever is still queued, so after a graceful shutdown the log holds one row per answer.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ml_platform.features.engineering import MODEL_FEATURES

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


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class PredictionLogger:
    def __init__(self, log_dir: Path, *, flush_rows: int = 5_000, flush_seconds: float = 2.0) -> None:
        self.log_dir = Path(log_dir)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
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
        self._queue.put(batch)

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything logged so far; True once it is on disk."""
        if self._thread is None or not self._thread.is_alive():
            return False
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Write everything still queued and stop the writer thread."""
        self._closed = True
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            _log.error("prediction log writer did not finish within %.0f s", timeout)
        self._thread = None

    # ---- writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        pending: list[PredictionBatch] = []
        pending_rows = 0
        deadline = time.monotonic() + self.flush_seconds
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if isinstance(item, PredictionBatch):
                pending.append(item)
                pending_rows += len(item)
                if pending_rows < self.flush_rows:
                    continue
            if pending:
                self._write(pending)
                pending, pending_rows = [], 0
            deadline = time.monotonic() + self.flush_seconds
            if isinstance(item, _Flush):
                item.done.set()
            elif item is _STOP:
                # anything logged after close() was called is still written
                leftovers = []
                while True:
                    try:
                        extra = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(extra, PredictionBatch):
                        leftovers.append(extra)
                    elif isinstance(extra, _Flush):
                        extra.done.set()
                if leftovers:
                    self._write(leftovers)
                return

    def _write(self, batches: list[PredictionBatch]) -> None:
        try:
            frame = batches_to_frame(batches)
            days = frame["time"].dt.strftime("%Y-%m-%d")
            for day, part in frame.groupby(days, sort=True):
                folder = self.log_dir / f"{DAY_PREFIX}{day}"
                folder.mkdir(parents=True, exist_ok=True)
                name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
                tmp = folder / f".{name}.tmp-{os.getpid()}"
                part.to_parquet(tmp, index=False)
                os.replace(tmp, folder / name)
                self.files_written += 1
            self.rows_written += len(frame)
        except Exception:  # the writer must outlive a bad disk moment; the rows are reported lost
            self.write_errors += 1
            _log.exception("could not write %d prediction log rows", sum(len(b) for b in batches))


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
    the log's columns.
    """
    log_dir = Path(log_dir)
    if day is None:
        folders = sorted(log_dir.glob(f"{DAY_PREFIX}*"))
    else:
        day_text = day.strftime("%Y-%m-%d") if isinstance(day, date | datetime) else str(day)
        folders = [log_dir / f"{DAY_PREFIX}{day_text}"]
    files = [path for folder in folders if folder.is_dir() for path in sorted(folder.glob("part-*.parquet"))]
    if not files:
        return _empty_frame()
    frame = pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)
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

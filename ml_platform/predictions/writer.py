"""The prediction log's writer: every answered prediction (and every shadow score), journaled, then parquet.

An answer is sent only once its row has been handed to the operating system. :meth:`PredictionLogger.log`
and :meth:`PredictionLogger.log_row` append the row (a batch: all its rows) to the process's journal
segment, ``<journal>/<stem>.jsonl``, with one ``os.write`` on a descriptor opened ``O_APPEND``,
before they return: a process killed right after still leaves the row in the kernel's hands, so no
answered prediction is lost (no fsync: the data only has to outlive the process, not the machine).
Segments are JSON lines, ASCII only: a row is an array of :meth:`PredictionLogger.log_row`'s 10 values
(floats as their exact repr); a batch is an object of its fields, its float and boolean columns as
base64 of their little-endian bytes, its request ids a list, or, for rows numbered under one request
id (:class:`RowIds`: ``<id>/0``, ``<id>/1``, ...), ``{"base": <id>, "rows": <n>}``; the parquet log
holds each row's own id either way.

A background thread seals the live segment every ``flush_rows`` rows or ``flush_seconds`` (it opens
the next one and swaps the descriptor under the lock the request path holds around its write), turns
each sealed segment into parquet parts, ``<log>/date=YYYY-MM-DD/part-<stem>.parquet`` per UTC day
of its rows, and deletes the segment. It converts its own segments from the rows it keeps in memory
beside each write (the same values, without parsing them back); a segment left by another process is
read from its file. A part is published whole (:mod:`ml_platform.predictions.store`), so a reader never
sees half a file, and its name is the segment's: a process that died after writing a part but before
deleting the segment leaves a part that recovery finds (or finds compacted) and does not write again.

Where: the log ``<log>`` is a local folder or an object-store URI (``s3://bucket/prefix``, ...). The
journal is always a local folder (its locks need one): ``<log>/journal`` for a local log, the
``journal_dir`` given for an object store (on Kubernetes an ``emptyDir``: it outlives a container
restart, and a SIGTERM drains it within the pod's grace period). The segment's stem, and so every
part's name, carries the replica's name (:func:`ml_platform.predictions.layout.replica_name`), so
replicas sharing one log never write the same file.

Recovery: each segment is locked by its owner (:mod:`ml_platform.predictions.locks`). When a logger
starts, and every ``recover_seconds`` after, it converts every segment it can lock without waiting:
their owners died (the kernel released their locks).

One bad row never costs another: a row that cannot be stored in the log's schema (a lone surrogate
in a string, an integer out of int64's range, a value of the wrong type, a line torn by a crash) goes
to ``<log>/quarantine/quarantine-<day>-<stem>.jsonl`` with the reason, and the rest of its segment
is written.
"""

from __future__ import annotations

import base64
import binascii
import collections
import itertools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import c_make_encoder, encode_basestring_ascii
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.predictions.compaction import read_day
from ml_platform.predictions.layout import (
    CREATING_SUFFIX,
    DAY_PREFIX,
    JOURNAL_DIR,
    LOG_COLUMNS,
    QUARANTINE_DIR,
    QUARANTINE_PREFIX,
    QUARANTINE_SUFFIX,
    SEGMENT_SUFFIX,
    replica_name,
    sanitize_replica,
)
from ml_platform.predictions.locks import Segment
from ml_platform.predictions.store import LogLocationError, LogStore

_log = logging.getLogger(__name__)

_CREATING_GRACE_SECONDS = 60.0  # a half-created segment this old was left by a process that died
_ROW_VALUES = 10  # the values of one row: PredictionLogger.log_row's arguments
_BATCH_KEYS = frozenset(
    ("time", "request_ids", "customer_ids", "features", "probabilities", "is_fraud", "threshold", "model_version",
     "variant", "latency_ms")
)  # fmt: skip

# What the logger reports, as (event, amount): rows written to parquet, rows quarantined, failed writes.
ROWS_WRITTEN, QUARANTINED, WRITE_ERRORS = "rows_written", "quarantined", "write_errors"


_ROW_SUFFIXES = [f"/{index}" for index in range(1_024)]  # made once: concatenating is ~2x cheaper than formatting


class RowIds(Sequence[str]):
    """The request ids of a request's rows numbered under its id: ``<base>/0``, ``<base>/1``, ... (one
    row: ``<base>`` itself), held as the base and the count. A batch journals them as those two values,
    not as one string per row; each row's id is made when the journal is converted to parquet."""

    __slots__ = ("base", "rows")

    def __init__(self, base: str, rows: int) -> None:
        self.base = base
        self.rows = rows

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.rows))]
        if index < 0:
            index += self.rows
        if not 0 <= index < self.rows:
            raise IndexError(f"row {index} of {self.rows}")
        return self.base if self.rows == 1 else f"{self.base}/{index}"

    def __iter__(self):
        return iter(self.tolist())

    def tolist(self) -> list[str]:
        if self.rows == 1:
            return [self.base]
        base = self.base
        if self.rows > len(_ROW_SUFFIXES):
            return [f"{base}/{index}" for index in range(self.rows)]
        return [base + suffix for suffix in _ROW_SUFFIXES[: self.rows]]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RowIds):
            return (self.base, self.rows) == (other.base, other.rows)
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RowIds({self.base!r}, {self.rows})"


@dataclass(frozen=True)
class PredictionBatch:
    """Rows of one request for one model (arrays aligned by row)."""

    time: float  # unix seconds
    request_ids: Sequence[str]  # a list, or RowIds
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


# ---- the journal's encoding -----------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """JSON for what the standard encoder does not know: numpy values as Python ones, anything else as
    its repr (which the converter then quarantines, naming the column, instead of failing the request)."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return repr(value)


def _json_encoder() -> Callable[[Any], str]:
    """Compact JSON, ASCII only (a lone surrogate is escaped, never an encoding error), NaN allowed.

    The C encoder is built once: ``JSONEncoder.encode`` builds it anew per call, a third of the cost
    of encoding one row.
    """
    if c_make_encoder is None:
        encoder = json.JSONEncoder(ensure_ascii=True, allow_nan=True, separators=(",", ":"), default=_plain)
        return encoder.encode
    iterencode = c_make_encoder(None, _plain, encode_basestring_ascii, None, ":", ",", False, False, True)
    return lambda value: "".join(iterencode(value, 0))


_encode = _json_encoder()


def _batch_line(batch: PredictionBatch) -> bytes:
    """A batch as one JSON object, its line; its float and boolean columns as base64 of their
    little-endian bytes (exact, and ~50x cheaper than a float's repr per value on a batch of thousands).

    The base64 texts are put in the line as they are: they hold nothing JSON escapes, so the encoder
    need not read them (it would take longer over them than base64 takes to make them).
    """
    n = len(batch)
    head = _encode(
        {
            "time": batch.time,
            "request_ids": _ids_entry(batch.request_ids),
            "customer_ids": list(batch.customer_ids),
            "threshold": batch.threshold,
            "model_version": batch.model_version,
            "variant": batch.variant,
            "latency_ms": batch.latency_ms,
        }
    )
    return b"".join(
        (
            head[:-1].encode("ascii"),  # without its closing brace
            b',"features":"',
            _base64(np.asarray(batch.features, dtype="<f8").reshape(n, len(MODEL_FEATURES))),
            b'","probabilities":"',
            _base64(np.asarray(batch.probabilities, dtype="<f8").reshape(n)),
            b'","is_fraud":"',
            _base64(np.asarray(batch.is_fraud, dtype=bool).reshape(n).view("u1")),
            b'"}\n',
        )
    )


def _ids_entry(request_ids: Sequence[str]) -> list[str] | dict[str, Any]:
    if type(request_ids) is RowIds:
        return {"base": request_ids.base, "rows": request_ids.rows}
    return list(request_ids)


def _ids_of_entry(entry: Any) -> Sequence[str]:
    """The request ids of a batch's journal entry: a list, or ``{"base", "rows"}`` (:class:`RowIds`)."""
    if type(entry) is list:
        return entry
    if type(entry) is dict and entry.keys() == {"base", "rows"}:
        base, rows = entry["base"], entry["rows"]
        if type(base) is str and type(rows) is int and rows >= 1:
            return RowIds(base, rows)
    raise ValueError(f"request_ids: expected a list or {{base, rows}}, got {_short(entry)}")


def _base64(array: np.ndarray) -> bytes:
    return binascii.b2a_base64(np.ascontiguousarray(array), newline=False)  # the array's bytes, not copied


def _unbase64(text: Any, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if type(text) is not str:
        raise ValueError(f"expected base64 text, got {_short(text)}")
    return np.frombuffer(base64.b64decode(text, validate=True), dtype=dtype).reshape(shape)


class PredictionLogUnavailable(RuntimeError):
    """Rows could not be journaled (the log is closed, or the disk refused the write). Their predictions must
    not be answered: the model server turns this into a 503 naming ``message``."""

    status_code = 503

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _unavailable(message: str) -> PredictionLogUnavailable:
    return PredictionLogUnavailable(f"prediction log: {message}")


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.complete = False


# ---- the logger -----------------------------------------------------------------------------------
class PredictionLogger:
    """The journal on the request path, and the writer thread that turns it into parquet.

    ``log_dir`` is the log: a local folder or an object-store URI. ``journal_dir`` is the local journal
    folder: ``<log_dir>/journal`` by default for a local log, required for an object store
    (:class:`~ml_platform.predictions.store.LogLocationError` otherwise). ``replica`` names this replica
    in its files (default: :func:`~ml_platform.predictions.layout.replica_name` from the environment).

    ``on_count(event, amount)``, when given, hears of rows written to parquet (``rows_written``),
    rows quarantined (``quarantined``) and failed writes (``write_errors``); the same totals are kept
    in the attributes of those names.
    """

    def __init__(
        self,
        log_dir: str | Path | LogStore,
        *,
        journal_dir: str | Path | None = None,
        replica: str | None = None,
        flush_rows: int = 5_000,
        flush_seconds: float = 2.0,
        recover_seconds: float = 30.0,
        on_count: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = log_dir if isinstance(log_dir, LogStore) else LogStore(log_dir)
        self.log_dir = self.store.location  # a Path for a local folder, the URI for an object store
        if journal_dir is None:
            if self.store.object_store:
                raise LogLocationError(
                    f"prediction log {self.store}: an object-store log needs a local journal_dir "
                    "(ML_PLATFORM_PREDICTION_JOURNAL_DIR)"
                )
            journal_dir = Path(self.store.root) / JOURNAL_DIR
        self.journal_dir = Path(journal_dir)
        self.replica = sanitize_replica(replica) if replica is not None else replica_name()
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.recover_seconds = recover_seconds
        self.on_count = on_count
        # The request path: the live segment, its descriptor (-1: none yet) and its row count,
        # changed together under the lock.
        self._lock = threading.Lock()
        self._live: Segment | None = None
        self._fd = -1
        self._items: list = []  # the live segment's items
        self._rows = 0
        self._woken = False  # the writer was told that the live segment is full
        self._closed = False
        # The writer thread's own state.
        self._sealed: list[Segment] = []  # oldest first; a segment stays here until it is converted
        self._requests: collections.deque[_Flush | None] = collections.deque()  # None asks the writer to stop
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._token = secrets.token_hex(4)
        self._sequence = itertools.count()
        self.rows_written = 0
        self.files_written = 0
        self.quarantined = 0
        self.write_errors = 0
        self.segments_recovered = 0
        self.recovery_scans = 0

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread; it first converts what dead owners left in the journal."""
        if self._thread is not None:
            return
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything logged so far to parquet; True once it is there."""
        if self._thread is None or not self._thread.is_alive():
            return False
        marker = _Flush()
        self._requests.append(marker)
        self._wake.set()
        return marker.done.wait(timeout) and marker.complete

    def close(self, timeout: float = 60.0) -> None:
        """Write everything logged and stop the writer; logging afterwards is refused (503).

        A segment that could not be converted stays in the journal, and the next logger on this
        directory converts it.
        """
        if self._thread is None:
            self._stop()
            return
        self._requests.append(None)
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            _log.error("prediction log writer did not finish within %.0f s", timeout)
        self._thread = None

    # ---- the request path ----------------------------------------------------------------------
    def log(self, batch: PredictionBatch) -> None:
        """Journal the rows of ``batch`` (one write); raises PredictionLogUnavailable when they could not be."""
        self._append(_batch_line(batch), len(batch), batch)

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

        ``when`` is unix seconds, as :attr:`PredictionBatch.time`; ``features`` are the model's inputs
        in :data:`MODEL_FEATURES` order (None: missing). The row is in the journal when this returns;
        raises PredictionLogUnavailable when it could not be written (then the prediction must not be answered).
        """
        row = [when, request_id, customer_id, features, probability, is_fraud, threshold, model_version, variant,
               latency_ms]  # fmt: skip
        self._append((_encode(row) + "\n").encode(), 1, row)

    def _append(self, data: bytes, rows: int, item: list | PredictionBatch) -> None:
        with self._lock:
            fd = self._fd
            if fd < 0:
                fd = self._open_live()
            try:
                written = os.write(fd, data)
                while written < len(data):  # only on a full disk or the like; one call writes it all
                    written += os.write(fd, data[written:])
            except OSError as error:
                self._failed_append(fd, error)
            self._items.append(item)
            self._rows += rows
            full = self._rows >= self.flush_rows and not self._woken
            if full:
                self._woken = True
        if full:
            self._wake.set()

    def _open_live(self) -> int:
        """A live segment for the first row after start (or after a failed rotation); holds the lock."""
        if self._closed:
            raise _unavailable("closed: the server is shutting down")
        try:
            self.journal_dir.mkdir(parents=True, exist_ok=True)
            self._live = self._new_segment()
        except OSError as error:
            self._count(WRITE_ERRORS, 1)
            _log.exception("could not open a prediction log journal segment")
            raise _unavailable(f"cannot open the journal: {error.strerror or error}") from error
        self._fd = self._live.fd
        self._items = self._live.items
        self._rows = 0
        self._woken = False
        return self._fd

    def _failed_append(self, fd: int, error: OSError) -> None:
        # Whatever part of the line reached the file ends here, so the next row starts a line of its
        # own; the converter quarantines the fragment.
        with suppress(OSError):
            os.write(fd, b"\n")
        self._count(WRITE_ERRORS, 1)
        _log.error("could not append to the prediction log journal: %s", error)
        raise _unavailable(f"cannot write the journal: {error.strerror or error}") from error

    def _new_segment(self) -> Segment:
        stem = f"{time.time_ns():020d}-{self.replica}-{self._token}-{next(self._sequence):06d}"
        return Segment.create(self.journal_dir, stem)

    def _count(self, event: str, amount: int) -> None:
        setattr(self, event, getattr(self, event) + amount)
        if self.on_count is not None and amount:
            self.on_count(event, amount)

    # ---- writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        next_recovery = time.monotonic()  # what dead owners left comes first
        deadline = next_recovery + self.flush_seconds
        requests: list[_Flush | None] = []
        while True:
            stop = None in requests
            if stop:
                complete = self._stop()
            else:
                try:
                    now = time.monotonic()
                    if now >= next_recovery:
                        self._recover()
                        next_recovery = now + self.recover_seconds
                    if requests or self._rows >= self.flush_rows or now >= deadline:
                        self._rotate()
                        deadline = now + self.flush_seconds
                    self._convert_sealed()
                except Exception:  # the writer outlives any one bad moment; the journal keeps the rows
                    self._count(WRITE_ERRORS, 1)
                    _log.exception("prediction log writer failed; retrying")
                complete = not self._sealed
            for marker in requests:
                if marker is not None:
                    marker.complete = complete
                    marker.done.set()
            if stop:
                return
            self._wake.wait(max(0.0, min(deadline, next_recovery) - time.monotonic()))
            self._wake.clear()
            requests = []
            while self._requests:
                requests.append(self._requests.popleft())

    def _rotate(self) -> None:
        """Seal the live segment when it holds rows; the next one is opened first, so the request path
        only ever waits for a descriptor swap."""
        if self._rows == 0:
            return
        try:
            fresh: Segment | None = self._new_segment()
        except OSError:  # the request path opens one itself when it needs it
            _log.exception("could not open the next prediction log journal segment")
            fresh = None
        with self._lock:
            sealed = self._live
            self._live = fresh
            self._fd = fresh.fd if fresh is not None else -1
            self._items = fresh.items if fresh is not None else []
            self._rows = 0
            self._woken = False
        if sealed is not None:
            self._sealed.append(sealed)

    def _stop(self) -> bool:
        """Seal and convert everything, then refuse further rows; True when every segment was converted
        (one that failed stays in the journal, unlocked, for the next logger to recover)."""
        with self._lock:
            self._closed = True
            sealed, rows = self._live, self._rows
            self._live, self._fd, self._items, self._rows = None, -1, [], 0
        if sealed is not None:
            if rows:
                self._sealed.append(sealed)
            else:
                sealed.remove()
        try:
            self._convert_sealed()
        except Exception:
            self._count(WRITE_ERRORS, 1)
            _log.exception("prediction log writer failed while stopping")
        complete = not self._sealed
        for segment in self._sealed:
            segment.release()  # unlocked: the next logger on this directory converts it
        self._sealed.clear()
        return complete

    def _recover(self) -> None:
        """Claim every segment whose owner is gone (including half-created ones) for conversion."""
        self.recovery_scans += 1
        try:
            paths = sorted(self.journal_dir.iterdir())
        except FileNotFoundError:
            return
        own = {segment.path for segment in self._sealed}
        if self._live is not None:
            own.add(self._live.path)
        for path in paths:
            creating = path.name.startswith(".") and path.name.endswith(CREATING_SUFFIX)
            if path in own or not (creating or path.name.endswith(SEGMENT_SUFFIX)):
                continue
            if creating and not _older_than(path, _CREATING_GRACE_SECONDS):
                continue  # its creator may be between creating and locking it
            segment = Segment.claim(path)
            if segment is None:
                continue
            if creating:  # its owner died before writing anything to it
                segment.remove()
                continue
            self.segments_recovered += 1
            _log.info("recovering prediction log journal segment %s left by a stopped process", path.name)
            self._sealed.append(segment)

    def _convert_sealed(self) -> None:
        remaining = []
        for segment in self._sealed:
            if not self._convert(segment):
                remaining.append(segment)
        self._sealed = remaining

    def _convert(self, segment: Segment) -> bool:
        """Write ``segment``'s rows as parquet (and its bad rows to quarantine), then delete it."""
        # A recovered segment, or one whose conversion failed midway, may have parts (and its quarantine
        # file) written already, even compacted since: those are not written again.
        again = segment.items is None or segment.attempted
        segment.attempted = True
        try:
            items, bad = (segment.items, []) if segment.items is not None else _parse(segment.read())
            table, days, unfit = _table(items)
            bad += unfit
            if bad:
                self._quarantine(segment, bad, again)
            if table is not None:
                self._write_parts(segment.stem, table, days, again)
        except Exception:  # the segment stays; the next pass writes what is missing
            self._count(WRITE_ERRORS, 1)
            _log.exception("could not write prediction log segment %s", segment.path.name)
            return False
        segment.remove()
        return True

    def _write_parts(self, stem: str, table, days: np.ndarray, again: bool) -> None:
        """One part per UTC day, named after the segment. When the segment may have been converted
        before (``again``), a day that holds its part, or a compacted file that replaced it, is skipped."""
        unique_days = np.unique(days)
        name = f"part-{stem}.parquet"
        for day in unique_days:
            day_text = np.datetime_as_string(day, unit="D")
            if again:
                view, _ = read_day(self.store, day_text)
                if name in view.visible or name in view.leftovers or name in view.covered:
                    continue
            part = table if len(unique_days) == 1 else table.filter(days == day)
            self.store.write_table(f"{DAY_PREFIX}{day_text}/{name}", part)
            self.files_written += 1
            self._count(ROWS_WRITTEN, part.num_rows)

    def _quarantine(self, segment: Segment, bad: list[tuple[str, str]], again: bool) -> None:
        """The segment's bad rows, each with its reason, in one file named after the segment."""
        day = _segment_day(segment.stem)
        relative = f"{QUARANTINE_DIR}/{QUARANTINE_PREFIX}{day}-{segment.stem}{QUARANTINE_SUFFIX}"
        if again and self.store.exists(relative):
            return
        at = datetime.now(UTC).isoformat()
        text = "".join(
            json.dumps({"reason": reason, "row": raw, "segment": segment.path.name, "quarantined_at": at}) + "\n"
            for raw, reason in bad
        )
        self.store.write_bytes(relative, text.encode("ascii"))
        for raw, reason in bad:
            _log.warning("prediction log row quarantined (%s): %.200s", reason, raw)
        self._count(QUARANTINED, len(bad))


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def _segment_day(stem: str) -> str:
    """The UTC day a segment was created (its name starts with the time in ns); today for other names."""
    digits = stem.split("-", 1)[0]
    seconds = int(digits) / 1e9 if digits.isdigit() and len(digits) <= 20 else time.time()
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")


# ---- conversion: items -> one arrow table (bad rows set aside) -------------------------------------
# An item is a row list (PredictionLogger.log_row's 10 values) or a PredictionBatch.


class _RowError(ValueError):
    """A value that the log's schema cannot hold; the message names the column."""


def _parse(data: bytes) -> tuple[list, list[tuple[str, str]]]:
    """The items of a segment's file, in order, and its unusable lines as (text, reason), in order."""
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the segment ends with a complete line
    lines = [line for line in lines if line]
    try:  # one parse for the whole segment; a bad line sends it line by line
        entries: list[Any] = json.loads(b"[" + b",".join(lines) + b"]")
        if len(entries) != len(lines):
            raise ValueError("a line held more or less than one value")
    except ValueError:
        entries = [_parse_line(line) for line in lines]
    items: list = []
    bad: list[tuple[str, str]] = []
    for line, entry in zip(lines, entries, strict=True):
        if type(entry) is list and len(entry) == _ROW_VALUES:
            items.append(entry)
            continue
        if type(entry) is dict and entry.keys() == _BATCH_KEYS:
            try:
                items.append(_decode_batch(entry))
                continue
            except (ValueError, TypeError) as error:
                problem = f"batch: {error}"
        elif isinstance(entry, _Unparsed):
            problem = entry.reason
        else:
            problem = f"expected a row of {_ROW_VALUES} values or a batch object"
        bad.append((_text(line), problem))
    if tail:
        bad.append((_text(tail), "torn line: the segment ends without a newline (its writer died mid-write)"))
    return items, bad


@dataclass(frozen=True)
class _Unparsed:
    reason: str


def _parse_line(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError as error:
        return _Unparsed(f"not a JSON line: {error}")


def _decode_batch(entry: dict[str, Any]) -> PredictionBatch:
    request_ids, customer_ids = _ids_of_entry(entry["request_ids"]), entry["customer_ids"]
    if type(customer_ids) is not list or len(customer_ids) != len(request_ids):
        raise ValueError("expected request_ids and a list of customer_ids of one length")
    n = len(request_ids)
    return PredictionBatch(
        time=entry["time"],
        request_ids=request_ids,
        customer_ids=customer_ids,
        features=_unbase64(entry["features"], "<f8", (n, len(MODEL_FEATURES))),
        probabilities=_unbase64(entry["probabilities"], "<f8", (n,)),
        is_fraud=_unbase64(entry["is_fraud"], "u1", (n,)).astype(bool),
        threshold=entry["threshold"],
        model_version=entry["model_version"],
        variant=entry["variant"],
        latency_ms=entry["latency_ms"],
    )


def _text(line: bytes) -> str:
    return line.decode("ascii", errors="backslashreplace")


def _table(items: list):
    """The items' rows that the schema takes, as one table (None when there are none) with their UTC
    days, and the others as (text, reason)."""
    if not items:
        return None, None, []
    try:
        return *_items_table(items), []
    except _RowError:
        rows, bad = _rows_of(items)
    good, unfit = _partition(rows) if rows else ([], [])
    bad += unfit
    if not good:
        return None, None, bad
    return *_items_table(good), bad


def _rows_of(items: list) -> tuple[list[list], list[tuple[str, str]]]:
    """Every item as rows, and the batches that cannot even be split into rows as (text, reason)."""
    rows: list[list] = []
    bad: list[tuple[str, str]] = []
    for item in items:
        try:
            rows += _item_rows(item)
        except (TypeError, ValueError) as error:
            bad.append((_encode(repr(item)), f"batch: {error}"))
    return rows, bad


def _item_rows(item: list | PredictionBatch) -> list[list]:
    if type(item) is list:
        return [item]
    n = len(item)
    features = np.asarray(item.features, dtype="float64").reshape(n, len(MODEL_FEATURES)).tolist()
    probabilities = np.asarray(item.probabilities, dtype="float64").reshape(n).tolist()
    is_fraud = np.asarray(item.is_fraud, dtype=bool).reshape(n).tolist()
    return [
        [item.time, request_id, customer_id, row, probability, fraud, item.threshold, item.model_version,
         item.variant, item.latency_ms]
        for request_id, customer_id, row, probability, fraud in zip(
            item.request_ids, item.customer_ids, features, probabilities, is_fraud, strict=True
        )
    ]  # fmt: skip


def _partition(rows: list[list]) -> tuple[list[list], list[tuple[str, str]]]:
    """Rows the schema takes, in order, and the others with their reasons: halves are tried until each
    bad row stands alone (a few bad rows among thousands cost a few dozen tries)."""
    try:
        _items_table(rows)
        return rows, []
    except _RowError as error:
        if len(rows) == 1:
            return [], [(_encode(rows[0]), str(error))]
    middle = len(rows) // 2
    good, bad = _partition(rows[:middle])
    more_good, more_bad = _partition(rows[middle:])
    return good + more_good, bad + more_bad


def _is_number(kind: type) -> bool:
    return issubclass(kind, int | float | np.integer | np.floating) and not issubclass(kind, bool | np.bool_)


def _is_integer(kind: type) -> bool:
    return issubclass(kind, int | np.integer) and not issubclass(kind, bool | np.bool_)


_KINDS: dict[str, tuple[Callable[[type], bool], str]] = {
    "number": (_is_number, "a number"),
    "integer": (_is_integer, "an integer"),
    "bool": (lambda kind: issubclass(kind, bool | np.bool_), "true or false"),
    "string": (lambda kind: issubclass(kind, str), "a string"),
}


def _check(name: str, values: Sequence[Any], kind: str, nullable: bool = False) -> None:
    """:class:`_RowError` naming ``name`` unless every value is of ``kind`` (or None, when ``nullable``)."""
    accepts, expected = _KINDS[kind]
    wrong = {t for t in set(map(type, values)) if not (accepts(t) or (nullable and t is type(None)))}
    if wrong:
        value = next(value for value in values if type(value) in wrong)
        raise _RowError(f"{name}: expected {expected}{' or null' if nullable else ''}, got {_short(value)}")


def _short(value: Any) -> str:
    text = _encode(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _floats(name: str, values: Sequence[Any]) -> np.ndarray:
    _check(name, values, "number")
    try:
        return np.asarray(values, dtype="float64")
    except OverflowError as error:  # an integer beyond float64
        raise _RowError(f"{name}: {error}") from None


def _rows_columns(rows: list[list]) -> dict[str, Any]:
    (times, request_ids, customer_ids, features, probabilities, is_fraud, thresholds, versions, variants,
     latencies) = zip(*rows, strict=True)  # fmt: skip
    try:
        if set(map(len, features)) != {len(MODEL_FEATURES)}:
            raise _RowError(f"features: expected {len(MODEL_FEATURES)} numbers or nulls")
        # one flat list, then one 1-D array: ~2x cheaper than a 2-D array from the rows' lists
        matrix = np.array(list(itertools.chain.from_iterable(features)), dtype="float64")  # None -> NaN
    except (TypeError, ValueError, OverflowError) as error:
        if isinstance(error, _RowError):
            raise
        raise _RowError(f"features: expected {len(MODEL_FEATURES)} numbers or nulls: {error}") from None
    if matrix.shape != (len(rows) * len(MODEL_FEATURES),):
        raise _RowError(f"features: expected {len(MODEL_FEATURES)} numbers or nulls")
    matrix = matrix.reshape(len(rows), len(MODEL_FEATURES))
    _check("is_fraud", is_fraud, "bool")
    return {
        "time": _floats("time", times),
        "request_id": request_ids,
        "customer_id": customer_ids,
        "features": matrix,
        "probability": _floats("probability", probabilities),
        "is_fraud": np.asarray(is_fraud, dtype=bool),
        "threshold": _floats("threshold", thresholds),
        "model_version": versions,
        "variant": variants,
        "latency_ms": _floats("latency_ms", latencies),
    }


def _batches_columns(batches: list[PredictionBatch]) -> dict[str, Any]:
    """The columns of consecutive batches, built column by column over all of them (a few calls per
    column, not per batch): arrays, their strings and integers as arrow arrays (checked here; a row
    chunk's are lists, checked when the table is made). A batch's one time, version, variant, threshold
    and latency are repeated by arrays, never made into a Python value per row, nor its customer ids
    when none has any."""
    import pyarrow as pa

    counts = np.fromiter(map(len, batches), dtype=np.int64, count=len(batches))
    n = int(counts.sum())
    times = _floats("time", [batch.time for batch in batches])
    thresholds = _floats("threshold", [batch.threshold for batch in batches])
    latencies = _floats("latency_ms", [batch.latency_ms for batch in batches])
    versions = [batch.model_version for batch in batches]
    variants = [batch.variant for batch in batches]
    _check("model_version", versions, "integer")
    _check("variant", variants, "string")
    try:
        features = np.concatenate(
            [np.asarray(b.features, dtype="float64").reshape(len(b), len(MODEL_FEATURES)) for b in batches]
        )
        probabilities = np.concatenate([np.asarray(b.probabilities, dtype="float64").reshape(len(b)) for b in batches])
        is_fraud = np.concatenate([np.asarray(b.is_fraud, dtype=bool).reshape(len(b)) for b in batches])
    except (TypeError, ValueError) as error:
        raise _RowError(f"batch: {error}") from None
    request_ids: list = []
    listed: list = []  # the ids given as lists (a RowIds' are strings when its base is one)
    customer_ids: list = []
    for batch in batches:
        ids = batch.request_ids
        if type(ids) is RowIds:
            _check("request_id", [ids.base], "string")  # before its rows' ids are made from it
            request_ids += ids.tolist()
        else:
            listed += ids
            request_ids += ids
        customers = batch.customer_ids
        if len(customers) != len(batch):
            raise _RowError(f"batch: {len(batch)} rows, {len(customers)} customer ids")
        customer_ids += customers
    _check("request_id", listed, "string")
    if customer_ids.count(None) == n:
        customers = pa.nulls(n, pa.int64())
    else:
        _check("customer_id", customer_ids, "integer", nullable=True)
        customers = _arrow_values("customer_id", customer_ids, pa.int64())
    owner = pa.array(np.repeat(np.arange(len(batches)), counts))  # each row's batch
    return {
        "time": np.repeat(times, counts),
        "request_id": _arrow_values("request_id", request_ids, pa.string()),
        "customer_id": customers,
        "features": features,
        "probability": probabilities,
        "is_fraud": is_fraud,
        "threshold": np.repeat(thresholds, counts),
        "model_version": _arrow_values("model_version", versions, pa.int64()).take(owner),
        "variant": _arrow_values("variant", variants, pa.string()).take(owner),
        "latency_ms": np.repeat(latencies, counts),
    }


def _arrow_values(name: str, values: list, arrow_type):
    """``values`` as an arrow array of ``arrow_type``; :class:`_RowError` naming ``name`` for a value it
    cannot hold (a lone surrogate, an integer beyond int64)."""
    import pyarrow as pa

    try:
        return pa.array(values, type=arrow_type)
    except (pa.ArrowException, ValueError, OverflowError) as error:
        raise _RowError(f"{name}: {error}") from None


def _items_table(items: list):
    """Items, in order, as one arrow table with the log's schema, and each row's UTC day;
    :class:`_RowError` names the first column that cannot hold a value."""
    import pyarrow as pa

    # Row entries and one-row batches (shadow scores, one-row v2 requests) are gathered as rows, larger
    # batches as batches; each run of either kind becomes one chunk of columns.
    chunks: list[dict[str, Any]] = []
    rows: list[list] = []
    batches: list[PredictionBatch] = []
    for item in items:
        if type(item) is list or len(item) == 1:
            if batches:
                chunks.append(_batches_columns(batches))
                batches = []
            if type(item) is list:
                rows.append(item)
            else:
                rows += _item_rows(item)
            continue
        if rows:
            chunks.append(_rows_columns(rows))
            rows = []
        batches.append(item)
    if batches:
        chunks.append(_batches_columns(batches))
    if rows:
        chunks.append(_rows_columns(rows))

    def joined(name: str) -> np.ndarray:
        return chunks[0][name] if len(chunks) == 1 else np.concatenate([chunk[name] for chunk in chunks])

    def arrow(name: str, kind: str, arrow_type, nullable: bool = False):
        """The column over the chunks: a batch's is an arrow array already; a row chunk's list is checked."""
        arrays = []
        for chunk in chunks:
            values = chunk[name]
            if not isinstance(values, pa.Array):
                _check(name, values, kind, nullable)
                values = _arrow_values(name, values, arrow_type)
            arrays.append(values)
        return arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)

    seconds = joined("time")
    if not np.isfinite(seconds).all():
        raise _RowError(f"time: expected unix seconds, got {_short(seconds[~np.isfinite(seconds)][0])}")
    nanoseconds = _nanoseconds(seconds)
    features = joined("features")
    schema = _log_schema()
    arrays = [
        pa.array(nanoseconds, type=schema.field("time").type),
        arrow("request_id", "string", pa.string()),
        arrow("customer_id", "integer", pa.int64(), nullable=True),
        *(pa.array(features[:, index], type=pa.float64()) for index in range(len(MODEL_FEATURES))),
        pa.array(joined("probability"), type=pa.float64()),
        pa.array(joined("is_fraud"), type=pa.bool_()),
        pa.array(joined("threshold"), type=pa.float64()),
        arrow("model_version", "integer", pa.int64()),
        arrow("variant", "string", pa.string()),
        pa.array(joined("latency_ms"), type=pa.float64()),
    ]
    days = nanoseconds.astype("datetime64[ns]").astype("datetime64[D]")  # UTC days
    return pa.Table.from_arrays(arrays, schema=schema), days


# Unix seconds within this bound are nanoseconds within int64 (datetime64[ns] ends in 2262).
_SECONDS_BOUND = 9.2e9
_NS = 1_000_000_000


def _nanoseconds(seconds: np.ndarray) -> np.ndarray:
    """Finite unix seconds as int64 nanoseconds, as ``pd.to_datetime(seconds, unit="s")`` makes them
    (the conversion :func:`batches_to_frame` makes), in a few array operations: pandas takes a float
    array one value at a time (~0.25 us a value). Its rule, kept exactly: the whole seconds truncated
    toward zero, the fraction rounded to 9 decimals, each scaled to nanoseconds, the fraction truncated.
    Seconds beyond ``_SECONDS_BOUND`` go to pandas itself, and what it refuses is a :class:`_RowError`."""
    if len(seconds) and np.abs(seconds).max() < _SECONDS_BOUND:
        whole = seconds.astype(np.int64)
        fraction = np.round(seconds - whole, 9)
        return whole * _NS + (fraction * _NS).astype(np.int64)
    try:
        return pd.to_datetime(seconds, unit="s", utc=True).asi8
    except (OverflowError, ValueError) as error:  # beyond the years datetime64[ns] holds
        raise _RowError(f"time: {error}") from None


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

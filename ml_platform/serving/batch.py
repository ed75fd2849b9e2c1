"""Batch scoring: a parquet file of model features in, a parquet file of fraud scores out.

The file is streamed: pyarrow reads ``batch_rows`` rows at a time, ``Booster.inplace_predict``
scores each batch's feature columns as Arrow columns with their null masks (no row-major matrix is
built), and one ``ParquetWriter`` appends the result.

Several workers (one per usable core, up to 8) share the work: each takes the next batch from the reader,
scores it on one thread and writes it when its turn comes, so batches leave in the order they came
and reading, scoring and writing overlap on every core. (XGBoost's own threads would score one batch
on all cores and then leave all but one idle while the batch is read and written: that ran the whole
file at half the speed of ``inplace_predict`` on a matrix already in memory.)

Memory is bounded by ``workers x batch_rows``, not by the number of rows, and not by the source's
row-group size either: the reader neither pre-buffers a whole row group nor loads whole column chunks
(``pre_buffer=False`` and a buffered stream).

The output goes to a temporary name next to ``destination`` and is renamed onto it at the end (the
convention of :mod:`ml_platform.storage`): a reader never sees half a file, and a failed run removes
the temporary file and leaves ``destination`` as it was.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ml_platform.cpus import usable_cpus
from ml_platform.data.schema import ENTITY_COLUMN, ID_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import MODEL_FEATURES

if TYPE_CHECKING:
    import xgboost as xgb

DEFAULT_ID_COLUMNS: tuple[str, ...] = (ID_COLUMN, ENTITY_COLUMN, TIMESTAMP_COLUMN)
OUTPUT_COLUMNS: tuple[str, ...] = ("probability", "is_fraud", "model_version", "scored_at")
SCORED_AT_TYPE = pa.timestamp("us", tz="UTC")

# Read column chunks through a buffer of this size instead of loading each one whole: with a
# single big row group (what pandas.to_parquet writes for up to ~1M rows) the default reader holds
# the whole row group's bytes, and memory grows with the file. What the reader then holds per column
# is about max(this buffer, one page) plus the dictionary page (pages are 1 MiB by default); 64 KiB
# read 1M rows as fast as 1 MiB did.
_READ_BUFFER_BYTES = 1 << 16
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# More workers than this add memory (one batch each) and little speed: the reader and the writer are
# one stream each, so past a few cores they, not scoring, set the pace.
MAX_WORKERS = 8


def default_workers() -> int:
    """One worker per core this process may use (a pod's CPU limit included), at most :data:`MAX_WORKERS`."""
    return min(MAX_WORKERS, usable_cpus())


@dataclass(frozen=True)
class BatchResult:
    rows: int
    seconds: float
    rows_per_second: float
    destination: Path
    model_version: int


def predict_parquet(
    source: Path,
    destination: Path,
    booster: xgb.Booster,
    *,
    model_version: int,
    threshold: float,
    batch_rows: int = 65_536,
    id_columns: tuple[str, ...] = DEFAULT_ID_COLUMNS,
    scored_at: datetime | None = None,
    workers: int | None = None,
) -> BatchResult:
    """Score every row of ``source`` (a parquet file holding :data:`MODEL_FEATURES`) into ``destination``.

    Output columns: the ``id_columns`` that ``source`` has (others are skipped), ``probability``
    (float64, P(fraud)), ``is_fraud`` (bool, ``probability >= threshold``), ``model_version``
    (int32) and ``scored_at`` (timestamp[us, UTC], one value for the whole run: now unless given;
    a naive ``scored_at`` is taken as UTC). Rows keep their order.

    ``workers`` (default :func:`default_workers`) batches are scored at once, each on one thread of a
    copy of ``booster``; with ``workers=1`` the booster scores with its own thread setting.

    Raises ValueError, before anything is written, when a feature column is missing or not numeric.
    """
    started = time.perf_counter()
    source, destination = Path(source), Path(destination)
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not np.iinfo(np.int32).min <= model_version <= np.iinfo(np.int32).max:
        raise ValueError(f"model_version {model_version} does not fit in int32")
    scored_at_us = _epoch_microseconds(scored_at if scored_at is not None else datetime.now(UTC))

    with pq.ParquetFile(source, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES) as parquet:
        schema = parquet.schema_arrow
        ids = _present_id_columns(schema, id_columns)
        _check_features(schema, source)
        output_schema = pa.schema(
            [schema.field(name).remove_metadata() for name in ids]
            + [
                pa.field("probability", pa.float64(), nullable=False),
                pa.field("is_fraud", pa.bool_(), nullable=False),
                pa.field("model_version", pa.int32(), nullable=False),
                pa.field("scored_at", SCORED_AT_TYPE, nullable=False),
            ]
        )
        # The two constant columns, built once at the largest batch size and sliced (zero-copy) per batch.
        longest = min(batch_rows, max(parquet.metadata.num_rows, 1))
        versions = pa.array(np.full(longest, model_version, dtype=np.int32))
        timestamps = pa.array(np.full(longest, scored_at_us, dtype=np.int64)).view(SCORED_AT_TYPE)
        read_columns = list(dict.fromkeys([*ids, *MODEL_FEATURES]))

        scorer = _scorer(booster, workers)

        def score(batch: pa.RecordBatch) -> pa.RecordBatch:
            n = batch.num_rows
            probability = np.asarray(scorer.inplace_predict(_feature_table(batch)), dtype=np.float64)
            return pa.record_batch(
                [
                    *(batch.column(name) for name in ids),
                    pa.array(probability, type=pa.float64()),
                    pa.array(probability >= threshold, type=pa.bool_()),
                    versions.slice(0, n),
                    timestamps.slice(0, n),
                ],
                schema=output_schema,
            )

        destination.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary(destination)
        try:
            # Dictionary-encode only the two constant columns: on unique values (ids, probabilities) the
            # writer tries a dictionary, gives up after 1 MiB, and the try cost ~15-20% of a 1M-row run.
            with pq.ParquetWriter(tmp, output_schema, use_dictionary=["model_version", "scored_at"]) as writer:
                batches = parquet.iter_batches(batch_size=batch_rows, columns=read_columns)
                rows = _OrderedPipeline(batches, score, writer.write_batch, workers).run()
            os.replace(tmp, destination)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    seconds = time.perf_counter() - started
    return BatchResult(
        rows=rows,
        seconds=seconds,
        rows_per_second=rows / seconds if seconds > 0 else 0.0,
        destination=destination,
        model_version=model_version,
    )


def _scorer(booster: xgb.Booster, workers: int) -> xgb.Booster:
    """What each worker scores with: with several workers, a copy of ``booster`` on one thread each
    (``inplace_predict`` is thread-safe, and ``nthread`` is the booster's, so the caller's is left alone)."""
    if workers == 1:
        return booster
    scorer = booster.copy()
    scorer.set_param({"nthread": 1})
    return scorer


def _feature_table(batch: pa.RecordBatch) -> pa.Table:
    """The batch's features as float64 Arrow columns in MODEL_FEATURES order, for ``inplace_predict``.

    XGBoost takes each column with its null mask (a null is missing, as NaN is): one contiguous copy
    per column instead of a row-major matrix built from all of them.
    """
    columns = []
    for name in MODEL_FEATURES:
        column = batch.column(name)
        if column.type != pa.float64():
            column = pc.cast(column, pa.float64())
        columns.append(column)
    return pa.Table.from_arrays(columns, names=list(MODEL_FEATURES))


class _OrderedPipeline:
    """``sink(transform(item))`` for every item of ``source``, ``workers`` items at a time, sunk in order.

    Each worker thread takes the next item (one at a time: ``source`` is a plain iterator), transforms
    it while the others do the same, then waits for its turn and sinks the result. The first error in
    any worker (reading, transforming or sinking) stops the others at their next step and is raised
    by :meth:`run`; so is an interrupt of the calling thread, once the workers have stopped.
    """

    def __init__(
        self,
        source: Iterator[pa.RecordBatch],
        transform: Callable[[pa.RecordBatch], pa.RecordBatch],
        sink: Callable[[pa.RecordBatch], None],
        workers: int,
    ) -> None:
        self._source, self._transform, self._sink, self._workers = source, transform, sink, workers
        self._read_lock = threading.Lock()
        self._turn = threading.Condition()
        self._taken = 0  # items taken from the source
        self._sunk = 0  # items sunk, so the number of the item whose turn it is
        self._rows = 0
        self._error: BaseException | None = None

    def run(self) -> int:
        """Run to the end; the number of rows sunk."""
        if self._workers == 1:
            for item in self._source:
                result = self._transform(item)
                self._sink(result)
                self._rows += result.num_rows
            return self._rows
        threads = [
            threading.Thread(target=self._work, name=f"batch-scoring-{i}", daemon=True) for i in range(self._workers)
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        except BaseException as interrupt:  # e.g. KeyboardInterrupt while joining: stop the workers first
            self._fail(interrupt)
            for thread in threads:
                if thread.is_alive():
                    thread.join()
            raise
        if self._error is not None:
            raise self._error
        return self._rows

    def _work(self) -> None:
        try:
            while True:
                with self._read_lock:
                    if self._error is not None:
                        return
                    item = next(self._source, None)
                    if item is None:
                        return
                    number = self._taken
                    self._taken += 1
                result = self._transform(item)
                with self._turn:
                    while self._sunk != number and self._error is None:
                        self._turn.wait()
                    if self._error is not None:
                        return
                self._sink(result)  # only the worker whose turn it is gets here
                with self._turn:
                    self._sunk += 1
                    self._rows += result.num_rows
                    self._turn.notify_all()
        except BaseException as error:
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        with self._turn:
            if self._error is None:
                self._error = error
            self._turn.notify_all()


def _present_id_columns(schema: pa.Schema, id_columns: tuple[str, ...]) -> list[str]:
    clashes = [name for name in id_columns if name in OUTPUT_COLUMNS]
    if clashes:
        raise ValueError(f"id columns {clashes} clash with the output columns {list(OUTPUT_COLUMNS)}")
    return [name for name in dict.fromkeys(id_columns) if name in schema.names]


def _check_features(schema: pa.Schema, source: Path) -> None:
    missing = [name for name in MODEL_FEATURES if name not in schema.names]
    if missing:
        raise ValueError(f"{source} lacks the model feature column(s) {', '.join(missing)}")
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal)
    wrong = [
        f"{name} ({schema.field(name).type})"
        for name in MODEL_FEATURES
        if not any(check(schema.field(name).type) for check in numeric)
    ]
    if wrong:
        raise ValueError(f"{source} has non-numeric model feature column(s): {', '.join(wrong)}")


def _epoch_microseconds(moment: datetime) -> int:
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")

"""The prediction log: every prediction the model server answered (and every shadow score), one row each.

The server writes it, monitoring reads it, and neither knows the other: both go through this package.

- Append-only journal: before an answer is sent, its row is appended to the serving process's journal
  segment with one ``write`` (a SIGKILL right after still leaves it with the kernel).
- Where: the log is a local folder or an object-store URI (``s3://bucket/prefix``, ``gs://``, ``abfs://``);
  the journal is always on local disk (its locks need one).
- Day folders: a background writer turns each sealed segment into parquet parts, one per UTC day
  (``date=YYYY-MM-DD/part-<stem>.parquet``, the stem naming the replica), then deletes the segment.
- Exactly once: a part is named after its segment and published whole, so a process that restarts
  after a crash (or another process on the same journal) converts what the dead one left, and never twice.
- Quarantine: a row the parquet schema cannot hold goes alone, with its reason, to ``quarantine/``;
  the rest of its segment is written.
- Compaction: a day's many small parts are rewritten as one file that names the parts it replaces, so
  readers never count a row twice or miss one, without any lock (an object store has none).

Modules: ``layout`` (folders, file names, columns, the replica's name), ``store`` (the files, local or
in an object store), ``locks`` (journal ownership), ``writer`` (:class:`PredictionLogger`,
:class:`PredictionBatch`, :class:`RowIds`: journal, conversion, quarantine, recovery), ``reader``
(:func:`read_prediction_log`, :func:`read_quarantine`) and ``compaction`` (:func:`compact_day`, and
the consistent view of a day that readers share).
"""

from ml_platform.predictions.compaction import CompactionResult, PredictionLogReadError, compact_day
from ml_platform.predictions.layout import LOG_COLUMNS, REPLICA_ENV, replica_name
from ml_platform.predictions.reader import read_prediction_log, read_quarantine
from ml_platform.predictions.store import LogLocationError, LogStore, is_object_store, log_location
from ml_platform.predictions.writer import PredictionBatch, PredictionLogger, PredictionLogUnavailable, RowIds

__all__ = [
    "LOG_COLUMNS",
    "REPLICA_ENV",
    "CompactionResult",
    "LogLocationError",
    "LogStore",
    "PredictionBatch",
    "PredictionLogReadError",
    "PredictionLogUnavailable",
    "PredictionLogger",
    "RowIds",
    "compact_day",
    "is_object_store",
    "log_location",
    "read_prediction_log",
    "read_quarantine",
    "replica_name",
]

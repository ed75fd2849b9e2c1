"""The prediction log: every prediction the model server answered (and every shadow score), one row each.

The server writes it, monitoring reads it, and neither knows the other: both go through this package.

- Append-only journal: before an answer is sent, its row is appended to the serving process's journal
  segment with one ``write`` (a SIGKILL right after still leaves it with the kernel).
- Day folders: a background writer turns each sealed segment into parquet parts, one per UTC day
  (``date=YYYY-MM-DD/part-*.parquet``), then deletes the segment.
- Exactly once: a part is named after its segment and published by rename, so a process that restarts
  after a crash (or another process on the same folder) converts what the dead one left, and never twice.
- Quarantine: a row the parquet schema cannot hold goes alone, with its reason, to ``quarantine/``;
  the rest of its segment is written.
- Compaction: a day's many small parts are rewritten as one file, swapped in atomically for readers.

Modules: ``layout`` (folders, file names, columns, lock names), ``locks`` (journal ownership and the
day's swap lock), ``writer`` (:class:`PredictionLogger`, :class:`PredictionBatch`: journal, conversion,
quarantine, recovery), ``reader`` (:func:`read_prediction_log`, :func:`read_quarantine`) and
``compaction`` (:func:`compact_day`).
"""

from ml_platform.predictions.compaction import CompactionResult, compact_day
from ml_platform.predictions.layout import LOG_COLUMNS
from ml_platform.predictions.reader import read_prediction_log, read_quarantine
from ml_platform.predictions.writer import PredictionBatch, PredictionLogger, PredictionLogUnavailable

__all__ = [
    "LOG_COLUMNS",
    "CompactionResult",
    "PredictionBatch",
    "PredictionLogUnavailable",
    "PredictionLogger",
    "compact_day",
    "read_prediction_log",
    "read_quarantine",
]

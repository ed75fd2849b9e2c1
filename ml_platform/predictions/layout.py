"""The prediction log on disk: folders, file names, columns and lock names that writer and readers share.

::

    log_dir/
      journal/<stem>.jsonl                      a writer process's segments (live or sealed), JSON lines
      journal/.<stem>.creating                  a segment being created and locked, not yet visible
      date=YYYY-MM-DD/part-<stem>.parquet       one segment's rows of one UTC day
      date=YYYY-MM-DD/part-<ns>-compacted.parquet   a day's parts, compacted into one
      date=YYYY-MM-DD/.compaction.swap.lock     readers hold it shared, compaction's swap exclusively
      date=YYYY-MM-DD/.compaction.lock          held by one compaction of the day at a time
      quarantine/quarantine-<day>-<stem>.jsonl  rows the schema cannot hold, each with its reason

A segment's ``<stem>`` starts with its creation time in nanoseconds, so names sort oldest first.
Readers see ``date=*/part-*.parquet`` only: never the journal, the quarantine folder or a hidden file.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from ml_platform.features.engineering import MODEL_FEATURES

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
PART_GLOB = "part-*.parquet"
JOURNAL_DIR = "journal"
SEGMENT_SUFFIX = ".jsonl"
CREATING_SUFFIX = ".creating"  # a segment being created and locked, before it gets its visible name
QUARANTINE_DIR = "quarantine"
QUARANTINE_GLOB = "quarantine-*.jsonl"
# Readers of a day's part files hold this lock shared; compaction holds it exclusively while it swaps
# the parts for the compacted file, so no reader sees half a swap.
SWAP_LOCK_NAME = ".compaction.swap.lock"
COMPACTION_LOCK_NAME = ".compaction.lock"


def day_folder(log_dir: str | Path, day: str | date) -> Path:
    """The folder of one UTC ``day`` (``date`` or ``YYYY-MM-DD``) under ``log_dir``."""
    day_text = day.isoformat() if isinstance(day, date) else str(day)
    date.fromisoformat(day_text)  # ValueError naming the text when it is not a day
    return Path(log_dir) / f"{DAY_PREFIX}{day_text}"

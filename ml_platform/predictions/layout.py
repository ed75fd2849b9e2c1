"""The prediction log's layout: folders, file names, columns and the replica's name that writer and readers share.

::

    <log>/                                      a local folder or an object-store URI (see ``store``)
      date=YYYY-MM-DD/part-<stem>.parquet       one journal segment's rows of one UTC day
      date=YYYY-MM-DD/part-<ns>-compacted.parquet   a day's parts compacted into one; its footer names
                                                the files it replaces (see ``compaction``)
      quarantine/quarantine-<day>-<stem>.jsonl  rows the schema cannot hold, each with its reason
    <journal>/<stem>.jsonl                      a writer process's segments (live or sealed), JSON lines,
                                                on local disk: ``<log>/journal`` for a local log
    <journal>/.<stem>.creating                  a segment being created and locked, not yet visible

A segment's ``<stem>`` is ``<ns>-<replica>-<token>-<seq>``: its creation time in nanoseconds (20 digits,
so names sort oldest first), the writing replica's name (:func:`replica_name`), a per-process token
and a sequence number. Readers see ``date=*/part-*.parquet`` only: never the journal, the quarantine
folder or a hidden (temporary) file.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from datetime import date

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
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
COMPACTED_SUFFIX = "-compacted.parquet"  # a segment's stem ends with its sequence number, never with this
JOURNAL_DIR = "journal"
SEGMENT_SUFFIX = ".jsonl"
CREATING_SUFFIX = ".creating"  # a segment being created and locked, before it gets its visible name
QUARANTINE_DIR = "quarantine"
QUARANTINE_PREFIX = "quarantine-"
QUARANTINE_SUFFIX = ".jsonl"

REPLICA_ENV = "ML_PLATFORM_REPLICA_NAME"
_REPLICA_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_REPLICA_MAX = 63  # a Kubernetes pod name's limit


def day_text(day: str | date) -> str:
    """``day`` (a ``date``, a ``datetime`` or ``YYYY-MM-DD``) as ``YYYY-MM-DD``; ValueError naming the text
    when it is not a day."""
    text = day.strftime("%Y-%m-%d") if isinstance(day, date) else str(day)
    date.fromisoformat(text)
    return text


def day_folder_name(day: str | date) -> str:
    return f"{DAY_PREFIX}{day_text(day)}"


def is_part(name: str) -> bool:
    """A visible part file (a segment's or a compacted one), not a hidden temporary file."""
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)


def is_compacted(name: str) -> bool:
    return is_part(name) and name.endswith(COMPACTED_SUFFIX)


def part_time_ns(name: str) -> int:
    """The nanoseconds a part's name starts with (0 when it starts with something else)."""
    digits = name.removeprefix(PART_PREFIX).split("-", 1)[0]
    return int(digits) if digits.isdigit() else 0


def replica_name(environ: Mapping[str, str] | None = None) -> str:
    """This replica's name for part file names: ``ML_PLATFORM_REPLICA_NAME``, else ``HOSTNAME`` (the pod's
    name on Kubernetes), else the host name; characters outside ``[A-Za-z0-9_.-]`` become ``_``."""
    env = os.environ if environ is None else environ
    raw = env.get(REPLICA_ENV) or env.get("HOSTNAME") or socket.gethostname() or "replica"
    return sanitize_replica(raw)


def sanitize_replica(raw: str) -> str:
    """``raw`` reduced to ``[A-Za-z0-9_.-]`` (other runs of characters become ``_``), at most 63 long."""
    name = _REPLICA_UNSAFE.sub("_", raw.strip())[:_REPLICA_MAX]
    return name if name.strip("._-") else "replica"

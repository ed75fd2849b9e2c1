"""Reading the prediction log: the parquet parts of every day (or of one), and the quarantined rows.

Readers see ``date=*/part-*.parquet`` only, never the journal, so a row becomes visible once the writer
has turned its journal segment into parquet (every few seconds, or when the logger is flushed). The
log is a local folder or an object-store URI (:mod:`ml_platform.predictions.store`); each day is read
through :func:`ml_platform.predictions.compaction.read_day`, so a compaction running meanwhile never
makes a row count twice or go missing.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ml_platform.predictions.compaction import read_day
from ml_platform.predictions.layout import DAY_PREFIX, LOG_COLUMNS, QUARANTINE_DIR, QUARANTINE_PREFIX, QUARANTINE_SUFFIX
from ml_platform.predictions.store import LogStore


def read_prediction_log(log_dir: str | Path | LogStore, day: str | date | datetime | None = None) -> pd.DataFrame:
    """Every logged prediction under the log ``log_dir`` (a path or URI), or of one UTC ``day``, oldest first.

    Files still being written (temporary names) are skipped; an empty or missing log gives an empty
    frame with the log's columns.
    """
    store = log_dir if isinstance(log_dir, LogStore) else LogStore(log_dir)
    if day is None:
        days = [name.removeprefix(DAY_PREFIX) for name in store.list_folders() if name.startswith(DAY_PREFIX)]
    else:
        days = [day]
    frames = []
    for each in days:
        _, tables = read_day(store, each, store.read_table)
        frames += [table.to_pandas() for table in tables]
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


def read_quarantine(log_dir: str | Path | LogStore) -> list[dict[str, Any]]:
    """Every quarantined row under the log ``log_dir`` (a path or URI), oldest segment first: ``reason``,
    ``row`` (the row's journal text), ``segment`` (the journal file it came from) and ``quarantined_at``."""
    store = log_dir if isinstance(log_dir, LogStore) else LogStore(log_dir)
    records = []
    for entry in store.list_files(QUARANTINE_DIR):
        if not (entry.name.startswith(QUARANTINE_PREFIX) and entry.name.endswith(QUARANTINE_SUFFIX)):
            continue
        text = store.read_bytes(f"{QUARANTINE_DIR}/{entry.name}").decode("ascii")
        records += [json.loads(line) for line in text.splitlines() if line]
    return records

"""Reading the prediction log: the parquet parts of every day (or of one), and the quarantined rows.

Readers see ``date=*/part-*.parquet`` only, never the journal, so a row becomes visible once the writer
has turned its journal segment into parquet (every few seconds, or when the logger is flushed).
"""

from __future__ import annotations

import json
from contextlib import ExitStack, suppress
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ml_platform.predictions.layout import DAY_PREFIX, LOG_COLUMNS, PART_GLOB, QUARANTINE_DIR, QUARANTINE_GLOB
from ml_platform.predictions.locks import swap_lock


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
                lock.enter_context(swap_lock(folder, shared=True))
            frames += [pd.read_parquet(path) for path in sorted(folder.glob(PART_GLOB))]
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


def read_quarantine(log_dir: str | Path) -> list[dict[str, Any]]:
    """Every quarantined row under ``log_dir``, oldest segment first: ``reason``, ``row`` (the row's
    journal text), ``segment`` (the journal file it came from) and ``quarantined_at``."""
    folder = Path(log_dir) / QUARANTINE_DIR
    records = []
    for path in sorted(folder.glob(QUARANTINE_GLOB)):
        records += [json.loads(line) for line in path.read_text(encoding="ascii").splitlines() if line]
    return records

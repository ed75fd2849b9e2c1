"""Compaction of the prediction log: a day's many small part files rewritten as one.

The server writes a part file every couple of seconds (``date=YYYY-MM-DD/part-<ns>-<id>.parquet``), so
a busy day holds thousands of small files, and every reader pays for opening each. Compaction
rewrites the parts that exist when it starts as one file of the same rows (ordered by time); parts the
server writes meanwhile stay as they are and are folded in next time.

Readers glob ``part-*.parquet`` and must never count a row twice, so the swap goes:
1. the compacted file is written under a hidden temporary name;
2. each consumed part is renamed to a hidden name that records its target
   (``.<part>.into.<compacted>``): from here on readers do not see it;
3. the compacted file is renamed to its visible name;
4. the hidden parts are deleted.
Steps 2 and 3 (and the repair below) run under the day's swap lock, held exclusively; readers
(``read_prediction_log``) hold it shared while they list and read the day, so a reader sees the
parts or the compacted file, never a listing that one of them left, nor neither. Writing the
compacted file (step 1) takes no lock: readers wait for renames only. A crash at any point is
repaired by the next compaction of the day: a hidden part whose compacted file was published is
deleted, one whose compacted file was not is renamed back. A second lock file per day, exclusive
for the whole compaction, keeps two compactions from interleaving.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd

from ml_platform.predictions.layout import DAY_PREFIX, PART_GLOB, day_folder
from ml_platform.predictions.locks import compaction_lock, swap_lock

COMPACTED_MARK = "compacted"
_INTO = ".into."


@dataclass(frozen=True)
class CompactionResult:
    day: str
    folder: Path
    files_before: int  # visible part files when compaction started
    files_after: int  # visible part files when it finished (parts written meanwhile included)
    rows: int  # rows in the files compacted (or in the day's one file, when there was nothing to do)
    compacted: bool  # False when the day had at most one part file
    path: Path | None  # the compacted file (or the day's only file)
    seconds: float
    recovered: dict[str, int] = field(default_factory=dict)  # what a crashed compaction left: restored / removed


def _recover(folder: Path) -> dict[str, int]:
    """Finish or undo what an interrupted compaction left in ``folder``."""
    restored = removed = 0
    for hidden in sorted(folder.glob(f".part-*{_INTO}*")):
        original, target = hidden.name[1:].split(_INTO, 1)
        if (folder / target).exists():  # the compacted file was published: this part is in it
            hidden.unlink(missing_ok=True)
            removed += 1
        else:  # it was not: the part is still the only copy of its rows
            os.replace(hidden, folder / original)
            restored += 1
    for temporary in folder.glob(f".part-*-{COMPACTED_MARK}.parquet.tmp-*"):
        temporary.unlink(missing_ok=True)
    return {"restored": restored, "removed": removed}


def compact_day(log_dir: str | Path, day: str | date) -> CompactionResult:
    """Rewrite the part files of ``day`` under ``log_dir`` as one (see the module docstring)."""
    started = time.perf_counter()
    folder = day_folder(log_dir, day)
    day_text = folder.name.removeprefix(DAY_PREFIX)
    if not folder.is_dir():
        return CompactionResult(day_text, folder, 0, 0, 0, False, None, time.perf_counter() - started)
    with compaction_lock(folder):
        with swap_lock(folder):
            recovered = _recover(folder)
        parts = sorted(folder.glob(PART_GLOB))
        if len(parts) <= 1:
            rows = _rows(parts[0]) if parts else 0
            return CompactionResult(
                day_text,
                folder,
                len(parts),
                len(parts),
                rows,
                False,
                parts[0] if parts else None,
                time.perf_counter() - started,
                recovered,
            )
        frame = pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)
        frame = frame.sort_values("time", kind="stable").reset_index(drop=True)
        name = f"part-{time.time_ns():020d}-{COMPACTED_MARK}.parquet"
        temporary = folder / f".{name}.tmp-{os.getpid()}"
        hidden: list[tuple[Path, Path]] = []
        try:
            frame.to_parquet(temporary, index=False)
            with swap_lock(folder):
                try:
                    for part in parts:
                        target = folder / f".{part.name}{_INTO}{name}"
                        os.replace(part, target)
                        hidden.append((target, part))
                    os.replace(temporary, folder / name)
                except BaseException:
                    for target, part in hidden:  # not published: every part back where it was
                        os.replace(target, part)
                    raise
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        for target, _ in hidden:
            target.unlink(missing_ok=True)
        files_after = len(list(folder.glob(PART_GLOB)))
    return CompactionResult(
        day_text,
        folder,
        len(parts),
        files_after,
        len(frame),
        True,
        folder / name,
        time.perf_counter() - started,
        recovered,
    )


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows

"""Compaction of the prediction log, and the view of a day that readers share with it, with no lock.

The server writes a part file every couple of seconds (``date=YYYY-MM-DD/part-<stem>.parquet``), so
a busy day holds thousands of small files, and every reader pays for opening each. Compaction
rewrites the files of a day that exist when it starts as one file of the same rows (ordered by time);
parts written meanwhile stay as they are and are folded in next time.

The log may live in an object store, which has neither rename nor locks, so the protocol needs only
atomic publication of a whole file and deletion (a local folder gets the same protocol):

1. The compacted file records, in its parquet key-value metadata (``ml_platform.replaces``), the
   names of every file it replaces: the files it read, what they themselves replaced, and whatever
   leftovers of earlier compactions the day still held. Its name starts with a time later than every
   file it replaces, so an object-store listing (in key order) that has passed a replaced part
   before it was deleted still meets the compacted file after it.
2. It is published whole (temporary name + rename locally, one upload on an object store).
3. Only then are the replaced files deleted.

A reader (:func:`day_view`) lists the day, reads the footers of its compacted files, and keeps every
file that no compacted file replaces, less a compacted file whose replaced set is a subset of
another's (two compactions that ran at once: the larger one holds every row of the smaller).
Should a file vanish between listing and reading (a compaction deleted it), or a compacted file
appear in a second listing made after the read, the day is read again. So at any moment, and after
a crash at any step, the day holds each row exactly once: before step 2 the compacted file does not
exist, after it the replaced files are invisible whether or not they are gone yet, and the next
compaction deletes what a crashed one left (and temporaries older than an hour).

The writer uses the same view before it writes a part that may have been written before (a segment
recovered from a dead process, a write retried): a part that exists, or that some compacted file
replaces, is not written again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from ml_platform.predictions.layout import (
    COMPACTED_SUFFIX,
    DAY_PREFIX,
    PART_PREFIX,
    day_folder_name,
    is_compacted,
    is_part,
    part_time_ns,
)
from ml_platform.predictions.store import LogStore

REPLACES_KEY = b"ml_platform.replaces"
_ATTEMPTS = 50  # reads of one day before giving up: each retry means a compaction changed the day meanwhile
_STALE_TEMPORARY_SECONDS = 3600.0


class PredictionLogReadError(RuntimeError):
    """A day of the log could not be read consistently (it changed under every one of many attempts)."""


@dataclass(frozen=True)
class DayView:
    """One consistent look at a day: the files whose rows make the day, and the files that are leftovers
    (replaced by a published compacted file, safe to delete), with every compacted file's replaced set."""

    folder: str
    visible: tuple[str, ...]
    leftovers: tuple[str, ...]
    replaces: dict[str, frozenset[str]]
    temporaries: tuple[str, ...] = ()

    @property
    def covered(self) -> frozenset[str]:
        """Every name some compacted file of the day replaces (whether it still exists or not)."""
        return frozenset().union(*self.replaces.values()) if self.replaces else frozenset()


def _replaces(store: LogStore, relative: str) -> frozenset[str]:
    metadata = store.read_metadata(relative).metadata or {}
    raw = metadata.get(REPLACES_KEY)
    if raw is None:  # a compacted file of an older layout, or a part: replaces nothing
        return frozenset()
    names = json.loads(raw)
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{store.display(relative)}: {REPLACES_KEY.decode()} must be a JSON list of file names")
    return frozenset(names)


def _list_day(store: LogStore, folder: str) -> tuple[list[str], list[str]]:
    """The day's part files and its hidden temporaries (stale ones are compaction's to delete)."""
    entries = store.list_files(folder)
    return [e.name for e in entries if is_part(e.name)], [e.name for e in entries if e.name.startswith(".")]


def _view(store: LogStore, folder: str) -> DayView:
    names, temporaries = _list_day(store, folder)
    replaces = {name: _replaces(store, f"{folder}/{name}") for name in names if is_compacted(name)}
    covered = frozenset().union(*replaces.values()) if replaces else frozenset()
    candidates = [name for name in names if name not in covered]
    # Two compactions that ran at once: drop one whose set is within another's (equal sets: keep the later name).
    dominated = {
        name
        for name in candidates
        if name in replaces
        and any(
            other != name and replaces[name] <= replaces[other] and (replaces[name] < replaces[other] or other > name)
            for other in candidates
            if other in replaces
        )
    }
    visible = tuple(name for name in candidates if name not in dominated)
    leftovers = tuple(name for name in names if name not in visible)
    return DayView(folder, visible, leftovers, replaces, tuple(temporaries))


def read_day(store: LogStore, day: str | date, read: Callable[[str], Any] | None = None) -> tuple[DayView, list]:
    """A consistent :class:`DayView` of ``day`` and, when ``read`` is given, ``read(relative)`` of each of
    its visible files (retried as a whole when the day changed meanwhile; see the module docstring)."""
    folder = day_folder_name(day)
    for _ in range(_ATTEMPTS):
        try:
            view = _view(store, folder)
            contents = [read(f"{folder}/{name}") for name in view.visible] if read is not None else []
        except FileNotFoundError:  # compaction deleted a file between our listing and our read
            continue
        if read is not None and view.visible:
            later = {name for name in _list_day(store, folder)[0] if is_compacted(name)}
            if not later <= set(view.replaces):  # a compaction published meanwhile: our listing may predate it
                continue
        return view, contents
    raise PredictionLogReadError(
        f"{store.display(folder)} changed under each of {_ATTEMPTS} reads (compactions running back to back?)"
    )


@dataclass(frozen=True)
class CompactionResult:
    day: str
    folder: str | Path  # a local Path, or the day's URI on an object store
    files_before: int  # visible part files when compaction started
    files_after: int  # visible part files when it finished (parts written meanwhile included)
    rows: int  # rows in the files compacted (or in the day's one file, when there was nothing to do)
    compacted: bool  # False when the day had at most one part file
    path: str | Path | None  # the compacted file (or the day's only file)
    seconds: float
    recovered: dict[str, int] = field(default_factory=dict)  # leftovers of earlier compactions: removed


def compact_day(log_dir: str | Path | LogStore, day: str | date) -> CompactionResult:
    """Rewrite the visible files of ``day`` under the log ``log_dir`` (a path or URI) as one (see the
    module docstring); delete what earlier compactions left."""
    import pyarrow as pa

    started = time.perf_counter()
    store = log_dir if isinstance(log_dir, LogStore) else LogStore(log_dir)
    folder = day_folder_name(day)
    day_text = folder.removeprefix(DAY_PREFIX)
    view, tables = read_day(store, day, store.read_table)
    stale = _stale_temporaries(store, folder, view.temporaries)
    if len(view.visible) <= 1:
        removed = _delete(store, folder, view.leftovers) + stale
        rows = tables[0].num_rows if tables else 0
        only = store.display(f"{folder}/{view.visible[0]}") if view.visible else None
        return CompactionResult(
            day_text,
            store.display(folder),
            len(view.visible),
            len(view.visible),
            rows,
            False,
            only,
            time.perf_counter() - started,
            {"removed": removed} if removed else {},
        )
    # One table of the day's rows by time (arrow's sort is stable: rows of one time keep their order).
    table = pa.concat_tables(tables, promote_options="permissive").sort_by([("time", "ascending")])
    listed = (*view.visible, *view.leftovers)
    replaced = set(listed).union(*(view.replaces.get(name, frozenset()) for name in listed))
    newest = max(part_time_ns(name) for name in listed)
    name = f"{PART_PREFIX}{max(time.time_ns(), newest + 1):020d}{COMPACTED_SUFFIX}"
    store.write_table(f"{folder}/{name}", table, metadata={REPLACES_KEY: json.dumps(sorted(replaced)).encode()})
    removed = _delete(store, folder, view.leftovers) + stale
    _delete(store, folder, view.visible)
    files_after = len(read_day(store, day)[0].visible)
    return CompactionResult(
        day_text,
        store.display(folder),
        len(view.visible),
        files_after,
        table.num_rows,
        True,
        store.display(f"{folder}/{name}"),
        time.perf_counter() - started,
        {"removed": removed} if removed else {},
    )


def _delete(store: LogStore, folder: str, names: tuple[str, ...]) -> int:
    return sum(store.delete(f"{folder}/{name}") for name in names)


def _stale_temporaries(store: LogStore, folder: str, names: tuple[str, ...]) -> int:
    """Delete the day's hidden temporaries older than an hour (their writers died; live ones are younger)."""
    if store.object_store or not names:  # an object store has no temporaries: an upload is invisible until done
        return 0
    removed = 0
    for name in names:
        path = Path(store.path(f"{folder}/{name}"))
        try:
            if time.time() - path.stat().st_mtime > _STALE_TEMPORARY_SECONDS:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed

"""Where materialized tables and small results live under the state directory.

Tables are parquet, small results JSON; nothing is pickled. Every write goes through a temporary
name and a rename, so a reader never sees half a file and a failed write leaves the old one intact.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: settings (and so every command's start) imports this module
    import numpy as np
    import pandas as pd

TABLE_SUFFIX = ".parquet"
RECORD_SUFFIX = ".json"


def asset_path(base_dir: str | Path, asset_path_parts: list[str], partition: str | None, suffix: str) -> Path:
    path = Path(base_dir).joinpath(*asset_path_parts)
    return path / f"{partition}{suffix}" if partition is not None else path.with_name(path.name + suffix)


def table_path(base_dir: str | Path, asset: str, partition: str | None = None) -> Path:
    """The parquet file of table asset ``asset`` (``prefix/name`` for a prefixed key) or of one of its partitions."""
    return asset_path(base_dir, asset.split("/"), partition, TABLE_SUFFIX)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_table(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_record(record: object, path: Path) -> None:
    write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True, default=str))


@contextmanager
def file_lock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold an advisory lock on ``path`` (created when missing): exclusive, or shared with other
    shared holders. It is released when the block ends, and by the kernel if the process dies.

    The file is opened read-only, so an existing lock file can be locked in a folder this process
    cannot write; creating a missing one there raises OSError.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing the only descriptor releases the lock


# ---- content-addressed files ------------------------------------------------------------------------
_SHA256 = re.compile(r"[0-9a-f]{64}")


def file_digest(path: Path) -> str:
    """The sha256 of the file's bytes, as 64 lowercase hex digits."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def content_path(directory: Path, digest: str, suffix: str = TABLE_SUFFIX) -> Path:
    """``<directory>/<digest><suffix>``; a ``digest`` that is not a sha256 (64 lowercase hex digits) raises
    ValueError naming it, so no other name (``../x``) can be made into a path."""
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ValueError(f"{digest!r} is not a sha256 digest (64 lowercase hex digits)")
    return Path(directory) / f"{digest}{suffix}"


@dataclass(frozen=True)
class StoredContent:
    digest: str  # sha256 of the file's bytes, which is also its name
    path: Path
    created: bool  # False when the same bytes were already stored


def _publish(tmp: Path, directory: Path, suffix: str) -> StoredContent:
    """Name the finished temporary file ``tmp`` after the sha256 of its bytes, unless that name exists.

    A hard link publishes it atomically and, unlike a rename, never replaces an existing file: the
    first writer of some content wins and every later one finds it there (equal bytes, equal name).
    """
    try:
        digest = file_digest(tmp)
        target = content_path(directory, digest, suffix)
        os.chmod(tmp, 0o444)  # read-only: stored content is never edited in place
        try:
            os.link(tmp, target)
            created = True
        except FileExistsError:
            created = False
    finally:
        tmp.unlink(missing_ok=True)
    return StoredContent(digest, target, created)


def _temporary_in(directory: Path, suffix: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=directory, prefix=".incoming-", suffix=suffix)
    os.close(descriptor)
    return Path(name)


def write_table_content_addressed(frame: pd.DataFrame, directory: Path) -> StoredContent:
    """Store ``frame`` as parquet at ``<directory>/<sha256 of the file's bytes>.parquet``, once.

    The digest is that of the bytes written, so ``sha256sum`` of a stored file gives its name back. The
    same frame written again (same values, columns and dtypes, same pandas/pyarrow) gives the same bytes,
    finds its file and writes nothing; a stored file is never overwritten.
    """
    directory = Path(directory)
    tmp = _temporary_in(directory, TABLE_SUFFIX)
    try:
        frame.to_parquet(tmp, index=False)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return _publish(tmp, directory, TABLE_SUFFIX)


def store_file_content_addressed(source: Path, directory: Path, suffix: str = TABLE_SUFFIX) -> StoredContent:
    """Store a copy of the file ``source`` at ``<directory>/<sha256 of its bytes><suffix>``, once."""
    directory = Path(directory)
    tmp = _temporary_in(directory, suffix)
    try:
        shutil.copyfile(source, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return _publish(tmp, directory, suffix)


def read_record(path: Path) -> object:
    return json.loads(path.read_text())


_DAY_NANOSECONDS = 86_400_000_000_000


def _day_numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    """The UTC day of each row's ``column`` as whole days since 1970-01-01: grouping on these integers is cheap
    (formatting a million timestamps as strings costs seconds)."""
    import pandas as pd

    return pd.DatetimeIndex(pd.to_datetime(frame[column], utc=True)).asi8 // _DAY_NANOSECONDS


def _day_name(day_number: int) -> str:
    import pandas as pd

    return pd.Timestamp(int(day_number) * 86_400, unit="s").strftime("%Y-%m-%d")


def split_by_day(frame: pd.DataFrame, column: str) -> dict[str, pd.DataFrame]:
    """Rows grouped by the UTC day of ``column``, keyed like daily partitions (YYYY-MM-DD)."""
    return {_day_name(day): part for day, part in frame.groupby(_day_numbers(frame, column), sort=True)}


def rows_per_day(frame: pd.DataFrame, column: str) -> dict[str, int]:
    """How many rows fall on each UTC day of ``column`` (days with rows only, oldest first), keyed like
    :func:`split_by_day`, without building each day's frame."""
    import numpy as np

    days, counts = np.unique(_day_numbers(frame, column), return_counts=True)
    return {_day_name(day): int(count) for day, count in zip(days, counts, strict=True)}

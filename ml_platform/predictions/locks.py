"""The prediction log's journal ownership, on ``flock`` (the kernel releases a dead process's locks).

A writer process holds an exclusive lock on each of its journal segments, from creation until the
segment is deleted. A new segment is created and locked under a hidden name, then renamed, so nobody
can see it unlocked. A segment that can be locked without waiting therefore has no living owner, and
whoever locks it (:meth:`Segment.claim`) converts it. Several server processes may share one journal
folder, which is always on local disk (an object store has no locks); the log's parquet files need
no lock at all (see :mod:`ml_platform.predictions.compaction`).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import suppress
from pathlib import Path

from ml_platform.predictions.layout import CREATING_SUFFIX, SEGMENT_SUFFIX


class Segment:
    """One journal file and this process's descriptor on it, which holds the file's lock."""

    def __init__(self, path: Path, fd: int, items: list | None) -> None:
        self.path = path
        self.fd = fd
        # What this process wrote to it (row lists and batches), converted from memory; None for a
        # recovered segment, which is read from its file.
        self.items = items
        # False until a conversion was attempted: only then may some of its parts already exist.
        self.attempted = False

    @property
    def stem(self) -> str:
        return self.path.name.removesuffix(SEGMENT_SUFFIX)

    @classmethod
    def create(cls, journal: Path, stem: str) -> Segment:
        """A new, empty segment, locked before anyone can see it under its visible name."""
        creating = journal / f".{stem}{CREATING_SUFFIX}"
        fd = os.open(creating, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path = journal / f"{stem}{SEGMENT_SUFFIX}"
            os.rename(creating, path)
        except BaseException:
            with suppress(OSError):
                os.unlink(creating)
            os.close(fd)
            raise
        return cls(path, fd, [])

    @classmethod
    def claim(cls, path: Path) -> Segment | None:
        """``path`` locked for this process when its owner is gone (no lock held on it), else None."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:  # converted and deleted meanwhile
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The owner (or another recovery) may have deleted it between our open and our lock.
            if os.fstat(fd).st_nlink == 0 or os.stat(path).st_ino != os.fstat(fd).st_ino:
                os.close(fd)
                return None
        except OSError:  # locked: its owner is alive (or another process is recovering it)
            os.close(fd)
            return None
        return cls(path, fd, None)

    def read(self) -> bytes:
        size = os.fstat(self.fd).st_size
        chunks = []
        offset = 0
        while offset < size:
            chunk = os.pread(self.fd, size - offset, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def remove(self) -> None:
        """Delete the file, then let go of it (in this order: the lock guards the file until it is gone)."""
        with suppress(FileNotFoundError):
            os.unlink(self.path)
        self.release()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

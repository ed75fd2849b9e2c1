"""Where the prediction log's files live: a local folder or an object store, through ``pyarrow.fs``.

A log location is a local path (``/var/log/predictions``, ``file:///...``) or an object-store URI:
``s3://bucket/prefix``, ``gs://bucket/prefix`` (also ``gcs://``), ``abfs://container@account.dfs.core.windows.net/prefix``
(also ``abfss://``). ``pyarrow.fs.FileSystem.from_uri`` opens it, so credentials and endpoint come
from each store's standard sources: for S3, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION`` (or ``?region=`` in the URI) and ``AWS_ENDPOINT_URL``
for an S3-compatible server (MinIO, Ceph, moto), which pyarrow 25 honours; ``?endpoint_override=``
in the URI works too. Options of ``from_uri`` may be given as URI query parameters.

Atomic writes: every file is published whole or not at all. On a local folder it is written under a
hidden temporary name in its folder, then renamed. On an object store the bytes are assembled in
memory first and sent as one upload, which the store makes visible only once complete (a single PUT
for small files: ``allow_delayed_open``); a failed upload is aborted, never completed with part of
the data. An object store has no rename and no locks, so the log's protocols never need either:
:mod:`ml_platform.predictions.compaction` says how compaction and readers agree without them.

Paths inside a store are relative to the log's root, ``/``-separated (``date=2026-03-14/part-x.parquet``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

OBJECT_STORE_SCHEMES = frozenset({"s3", "gs", "gcs", "abfs", "abfss"})


class LogLocationError(ValueError):
    """A prediction log location that cannot be used: the message names it and what was expected."""


def is_object_store(location: str | Path, *, what: str = "prediction log location") -> bool:
    """True for an object-store URI (``s3://``, ``gs://``, ...); False for a local path or ``file://``.

    ``what`` names the location in errors (``label store location``, ...)."""
    if isinstance(location, Path):
        return False
    scheme = urlsplit(str(location)).scheme.lower() if "://" in str(location) else ""
    if scheme in ("", "file"):
        return False
    if scheme not in OBJECT_STORE_SCHEMES:
        raise LogLocationError(
            f"{what} {location!r}: unsupported scheme {scheme!r}; expected a local path or "
            f"one of {', '.join(s + '://' for s in sorted(OBJECT_STORE_SCHEMES))}"
        )
    return True


def log_location(location: str | Path, *, what: str = "prediction log location") -> str | Path:
    """``location`` as callers keep it: a :class:`Path` for a local folder, the URI text for an object store.

    Raises :class:`LogLocationError` for an empty location or an unsupported scheme (``what`` names it).
    """
    if isinstance(location, Path):
        return location
    text = str(location).strip()
    if not text:
        raise LogLocationError(f"{what} is empty; expected a local path or an object-store URI")
    if is_object_store(text, what=what):
        return text
    if text.lower().startswith("file://"):
        return Path(urlsplit(text).path)
    return Path(text)


@dataclass(frozen=True)
class FileEntry:
    name: str  # the file's name in its folder
    size: int


class LogStore:
    """The log's files under one root, local or in an object store: list, read, write atomically, delete.

    ``LogStore(location)`` takes what :func:`log_location` takes; ``str(store)`` is the location as
    given (a URI or a path), for messages and metadata. ``what`` names the location in errors: any
    folder of files may live in a store (the label store is one).
    """

    def __init__(self, location: str | Path, *, what: str = "prediction log location") -> None:
        import pyarrow.fs as pafs

        location = log_location(location, what=what)
        self.location = location
        self.object_store = not isinstance(location, Path)
        if self.object_store:
            try:
                self.fs, root = pafs.FileSystem.from_uri(_with_defaults(str(location)))
            except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
                raise LogLocationError(f"{what} {location!r}: {error}") from error
            self.root = root.rstrip("/")
            if not self.root:
                raise LogLocationError(f"{what} {location!r} names no bucket or container")
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = os.path.abspath(location)

    def __str__(self) -> str:
        return str(self.location)

    def __repr__(self) -> str:
        return f"LogStore({str(self.location)!r})"

    def path(self, relative: str) -> str:
        """The store's own path of ``relative`` (what the filesystem calls take)."""
        return f"{self.root}/{relative}" if relative else self.root

    def display(self, relative: str = "") -> str | Path:
        """``relative`` as people see it: a local :class:`Path`, or the URI with the key appended."""
        if not self.object_store:
            return Path(self.path(relative))
        base = str(self.location)
        parts = urlsplit(base)
        joined = parts.path.rstrip("/") + (f"/{relative}" if relative else "")
        return urlunsplit(parts._replace(path=joined, query=""))

    # ---- listing -------------------------------------------------------------------------------
    def list_folders(self, relative: str = "") -> list[str]:
        """Names of the folders directly under ``relative`` (sorted); none when it does not exist."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.path(relative), allow_not_found=True))
        return sorted(_name(info.path) for info in infos if info.type == pafs.FileType.Directory)

    def list_files(self, relative: str = "") -> list[FileEntry]:
        """Files directly under ``relative`` (sorted by name); none when it does not exist."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.path(relative), allow_not_found=True))
        files = [FileEntry(_name(info.path), info.size or 0) for info in infos if info.type == pafs.FileType.File]
        return sorted(files, key=lambda entry: entry.name)

    def exists(self, relative: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(relative)).type == pafs.FileType.File

    # ---- reading -------------------------------------------------------------------------------
    def read_bytes(self, relative: str) -> bytes:
        """The whole file in one read (one GET on an object store); FileNotFoundError when it is gone."""
        with self._gone_as_not_found(relative), self.fs.open_input_stream(self.path(relative)) as stream:
            return stream.read()

    def read_table(self, relative: str):
        """A parquet file as an arrow table; FileNotFoundError when it is gone."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pq.read_table(pa.BufferReader(self.read_bytes(relative)))

    def read_metadata(self, relative: str):
        """A parquet file's footer (``pyarrow.parquet.FileMetaData``) without its data."""
        import pyarrow.parquet as pq

        with self._gone_as_not_found(relative), self.fs.open_input_file(self.path(relative)) as file:
            return pq.read_metadata(file)

    @contextmanager
    def _gone_as_not_found(self, relative: str) -> Iterator[None]:
        """An object deleted between opening and reading it fails the read with a plain OSError on an
        object store (S3 says ``NO_SUCH_KEY`` or ``RESOURCE_NOT_FOUND``): raised as FileNotFoundError when
        the file is indeed gone, as a file missing at open is."""
        try:
            yield
        except FileNotFoundError:
            raise
        except OSError as error:
            if self.exists(relative):
                raise
            raise FileNotFoundError(f"{self.display(relative)} was deleted while it was read: {error}") from error

    # ---- writing -------------------------------------------------------------------------------
    def write_bytes(self, relative: str, data: bytes) -> None:
        """Publish ``data`` at ``relative`` whole or not at all (see the module docstring)."""
        target = self.path(relative)
        if self.object_store:
            stream = self.fs.open_output_stream(target)
            try:
                stream.write(data)
            except BaseException:
                stream.abort()
                raise
            stream.close()
            return
        folder, name = target.rsplit("/", 1)
        os.makedirs(folder, exist_ok=True)
        temporary = f"{folder}/.{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            with open(temporary, "wb") as file:
                file.write(data)
            os.replace(temporary, target)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def write_table(self, relative: str, table, *, metadata: dict[bytes, bytes] | None = None) -> None:
        """``table`` as a snappy parquet file at ``relative``, atomically; ``metadata`` joins the schema's
        key-value metadata (readable from the footer alone)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if metadata:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="snappy")
        self.write_bytes(relative, sink.getvalue().to_pybytes())

    def delete(self, relative: str) -> bool:
        """Remove the file; False when it was already gone."""
        try:
            self.fs.delete_file(self.path(relative))
        except FileNotFoundError:
            return False
        return True

    def make_folder(self, relative: str) -> None:
        """A folder on a local disk (an object store has none to make)."""
        if not self.object_store:
            os.makedirs(self.path(relative), exist_ok=True)


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _with_defaults(uri: str) -> str:
    """S3 URIs get ``allow_delayed_open=true`` unless they say otherwise: a small file is then sent with
    one PUT instead of a three-request multipart upload (both are atomic)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3":
        return uri
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.setdefault("allow_delayed_open", "true")
    return urlunsplit(parts._replace(query=urlencode(query)))

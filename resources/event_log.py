"""The local instance's event log: Dagster's SQLite event log, with its connections kept open.

Dagster's ``SqliteEventLogStorage`` builds a new SQLAlchemy engine and SQLite connection for every event
it stores, and every commit waits for the disk (SQLite's default ``synchronous=FULL``). An asset event is
written twice (its run's shard and the cross-run index shard), so a 30-day range run's ~500 events took
4.4 s of a 28 s run on 2 cores: about 9 ms an event, most of it opening connections.

:class:`LocalEventLogStorage` is that storage with one engine per shard, kept for the process (the
``_connect`` override; everything else, the files and their schema included, is Dagster's), and its
connections in ``synchronous=NORMAL``. The shards are in WAL mode (Dagster sets it when it creates one),
where NORMAL keeps the database consistent through a crash of the process or the machine; a power loss
can lose only the last commits, which the local profile (one developer's machine) accepts for runs
that store their events several times faster. The production profile stores events in PostgreSQL.

The engines of the most recently used shards are kept (``MAX_OPEN_SHARDS``): a long-lived process
(``dagster dev``'s webserver and daemon) reads the shards of many runs, and keeps only a few open. A
process started with ``fork`` opens its own: a connection is never shared with a parent.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as db
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy.engine import Connection, Engine

MAX_OPEN_SHARDS = 8


def _synchronous_normal(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class LocalEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` that keeps an engine (one pooled connection) per shard; same files."""

    def __init__(self, base_dir: str, inst_data=None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_pid = os.getpid()
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> LocalEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        """The shard's engine, created (and its database initialized) on first use; called under the lock."""
        if self._engines_pid != os.getpid():  # a forked child: the parent's connections are not ours
            self._engines = OrderedDict()
            self._engines_pid = os.getpid()
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = db.create_engine(
            self.conn_string_for_shard(shard),
            poolclass=db.pool.QueuePool,
            pool_size=1,
            max_overflow=4,  # extra connections for nested reads (schema checks), closed when returned
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        )
        db.event.listen(engine, "connect", _synchronous_normal)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        while len(self._engines) > MAX_OPEN_SHARDS:
            _, oldest = self._engines.popitem(last=False)
            oldest.dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            with engine.connect() as connection, connection.begin():
                yield connection

    def dispose(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()
        super().dispose()

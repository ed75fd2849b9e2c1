"""Customer stats from the Feast online store, and the model's input built from them.

Feast is imported only when a feature repo is configured (about a second, ``features.store.import_feast``).
The store is opened off the request path (the model watcher thread does it). A lookup goes through Feast's own
lower layer, the online store's ``online_read`` with Feast's entity keys and value decoding: the same
read ``FeatureStore.get_online_features`` makes, without the feature service resolution, response
protos and dict conversion around it (one customer: ~35 us on SQLite, ~85 us on Redis over loopback,
against ~190 us and ~330 us). Nothing is cached: every lookup reads the store, so a materialization is
seen by the next request.

Connections: SQLite gets one connection per thread (a Feast SQLite store object per thread, each with
its own connection), so threads never wait on each other; Redis shares redis-py's thread-safe
connection pool, and its asyncio client for reads awaited on the event loop (Feast's
``online_read_async``; see :meth:`OnlineFeatures.customer_async`). With Redis (the production profile)
the store is opened to fail fast: when Redis is down a lookup raises :class:`FeatureStoreUnavailable`
within milliseconds, naming the store (the server answers 503 for requests that need it and keeps
answering requests that carry their features), and once Redis is back the next lookup reconnects by
itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from ml_platform.data.schema import CATEGORIES, ENTITY_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import STORED_FEATURES, model_features
from ml_platform.features.store import ENTITY, FEATURE_VIEW, FeatureRepo

_log = logging.getLogger(__name__)

# One customer's STORED_FEATURES as floats (NaN: unknown customer or missing value).
Stats = tuple[float, float, float, float]
MISSING_STATS: Stats = (math.nan, math.nan, math.nan, math.nan)


class FeatureStoreUnavailable(RuntimeError):
    """The online store cannot be reached; the message names it (never its password)."""


class OnlineFeatures:
    def __init__(self, repo: FeatureRepo) -> None:
        self.repo = repo
        self.store = None
        self.last_error: str | None = "the feature store is not open yet"
        self._reader: _OnlineReader | None = None

    @property
    def ready(self) -> bool:
        return self._reader is not None

    def open(self) -> None:
        """Open the store and warm it up with one lookup; a no-op once open."""
        if self.ready:
            return
        from ml_platform.features.store import open_store

        try:
            store = open_store(self.repo, fail_fast=True)
            reader = _OnlineReader(self.repo, store)
            reader.read([-1])  # no customer has this id: a full read that finds nothing
        except Exception as error:
            self.last_error = (
                f"feature store at {self.repo.repo_dir} ({self.repo.describe_online_store()}) is unavailable: "
                f"{type(error).__name__}: {error}"
            )
            raise
        self.store, self._reader, self.last_error = store, reader, None

    def read(self, customer_ids: Sequence[int]) -> list[Stats]:
        """:data:`STORED_FEATURES` for each customer, in order (:data:`MISSING_STATS` when unknown)."""
        reader = self._reader
        if reader is None:
            raise RuntimeError(self.last_error or "the feature store is not open")
        unique = list(dict.fromkeys(int(c) for c in customer_ids))
        found = dict(zip(unique, reader.read(unique), strict=True))
        return [found[int(c)] for c in customer_ids]

    def customer(self, customer_id: int) -> Stats:
        """One customer's :data:`STORED_FEATURES` (:data:`MISSING_STATS` when unknown)."""
        reader = self._reader
        if reader is None:
            raise RuntimeError(self.last_error or "the feature store is not open")
        return reader.read([customer_id])[0]

    async def customer_async(self, customer_id: int) -> Stats:
        """:meth:`customer` for the event loop (the fast path of ``/predict``).

        Redis is awaited through Feast's asyncio read (redis-py's asyncio client): while Redis answers,
        the loop serves other requests, and a Redis that hangs holds the requests that wait on it, not
        the server. The customers asked for while a read is in flight go to Redis together in the next
        read (one pipeline of HMGETs): under load each read serves several requests, and an idle
        server's read goes out at once.
        SQLite is read in place, in the loop's next turn, in one query for every customer asked for in
        this one: an in-process read (~35 us) that waits on nothing but the file (while another process
        materialized 20,000 to 100,000 customers, the longest read took 10-50 ms).
        Measured through the app in process, 8 requests at a time (CPU per request, all threads): on
        SQLite ~220 us read in place against ~480 us with the hop to a worker thread and back; on Redis
        ~200 us awaited in batches, ~300 us blocking the loop (which then idles through every round
        trip: under load on 8 connections ~1.5x fewer requests/s, and with Redis on another host each
        network round trip would hold every request) and ~540 us in a worker thread.
        """
        reader = self._reader
        if reader is None:
            raise RuntimeError(self.last_error or "the feature store is not open")
        return await reader.read_one_async(customer_id)

    def stats(self, customer_ids: Sequence[int]) -> pd.DataFrame:
        """:data:`STORED_FEATURES` for each customer, aligned with ``customer_ids`` (NaN when unknown)."""
        rows = np.array(self.read(customer_ids), dtype="float64").reshape(-1, len(STORED_FEATURES))
        return pd.DataFrame(rows, columns=list(STORED_FEATURES))


class _OnlineReader:
    """``online_read`` on the ``customer_stats`` view for a list of customer ids, values as floats.

    The entity key is built as ``get_online_features`` builds it (the entity's join key, the id
    converted by ``feast.type_map`` to the entity's value type) and each value is decoded by
    ``feast.type_map.feast_value_type_to_python_type``, as its ``to_dict`` does.
    """

    def __init__(self, repo: FeatureRepo, store) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values

        entity = store.get_entity(ENTITY)
        self._join_keys = [entity.join_key]
        self._value_type = entity.value_type
        self._entity_key = EntityKey
        self._to_proto = python_values_to_proto_values
        self._to_python = feast_value_type_to_python_type
        self._config = store.config
        self._view = store.get_feature_view(FEATURE_VIEW)
        self._description = repo.describe_online_store()
        self._connection_errors = _connection_errors(repo)
        provider_store = store._get_provider().online_store
        self._awaitable = provider_store.async_supported.read
        self._waiting: list[tuple[int, asyncio.Future]] = []  # customers asked for, not read yet
        self._drainer: asyncio.Task | None = None  # the task reading them, while there are any
        # a store read in place (SQLite): the customers asked for in this turn of each event loop
        self._this_turn: dict[asyncio.AbstractEventLoop, list[tuple[int, asyncio.Future]]] = {}
        if repo.online_store_kind == "sqlite":
            # Feast's SQLite store keeps one connection per store object: one object per thread.
            self._store_class = type(provider_store)
            self._local = threading.local()
            self._local.store = provider_store
            self._shared = None
        else:
            self._shared = provider_store

    def _store(self):
        if self._shared is not None:
            return self._shared
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = self._store_class()
        return store

    def read(self, customer_ids: list[int]) -> list[Stats]:
        keys = self._keys(customer_ids)
        store = self._store()
        for attempt in (1, 2):
            try:
                # a new feature list each time: Feast's Redis store appends its timestamp key to it
                rows = store.online_read(self._config, self._view, keys, list(STORED_FEATURES))
                break
            except self._connection_errors as error:
                self._failed(attempt, error)
        return [MISSING_STATS if found is None else self._decode(found) for _, found in rows]

    async def read_async(self, customer_ids: list[int]) -> list[Stats]:
        """:meth:`read` awaited when the store has an asyncio read (Redis), else :meth:`read` in place."""
        if not self._awaitable:
            return self.read(customer_ids)
        keys = self._keys(customer_ids)
        for attempt in (1, 2):
            try:
                rows = await self._shared.online_read_async(self._config, self._view, keys, list(STORED_FEATURES))
                break
            except self._connection_errors as error:
                self._failed(attempt, error)
        return [MISSING_STATS if found is None else self._decode(found) for _, found in rows]

    async def read_one_async(self, customer_id: int) -> Stats:
        """One customer, awaited on the event loop: batched with the others asked for meanwhile. A store
        without an asyncio read (SQLite) is read in the loop's next turn, once for every customer asked
        for in this turn (one query: Feast's SQLite read selects all its keys at once)."""
        loop = asyncio.get_running_loop()
        if not self._awaitable:
            answer = loop.create_future()
            turn = self._this_turn.get(loop)
            if turn is None:
                turn = self._this_turn[loop] = []
                loop.call_soon(self._read_turn, loop)
            turn.append((customer_id, answer))
            return await answer
        drainer = self._drainer
        if drainer is not None and drainer.get_loop() is not loop:  # another loop than before: start anew
            self._waiting, drainer = [], None
        answer = loop.create_future()
        self._waiting.append((customer_id, answer))
        if drainer is None or drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await answer

    def _read_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read in place every customer asked for in the loop's last turn, and give each waiter its stats."""
        batch = self._this_turn.pop(loop)
        unique = list(dict.fromkeys(customer_id for customer_id, _ in batch))
        try:
            stats = self.read(unique)
        except Exception as error:  # each waiter gets it
            _answer(batch, error=error)
            return
        _answer(batch, dict(zip(unique, stats, strict=True)))

    async def _drain(self) -> None:
        """One read per round for everyone waiting; who asks during a read waits for the next round."""
        while self._waiting:
            batch, self._waiting = self._waiting, []
            unique = list(dict.fromkeys(customer_id for customer_id, _ in batch))
            try:
                stats = await self.read_async(unique)
            except Exception as error:  # each waiter gets it (FeatureStoreUnavailable names the store)
                _answer(batch, error=error)
                continue
            _answer(batch, dict(zip(unique, stats, strict=True)))

    def _keys(self, customer_ids: list[int]) -> list:
        values = self._to_proto(list(customer_ids), self._value_type)
        return [self._entity_key(join_keys=self._join_keys, entity_values=[value]) for value in values]

    def _failed(self, attempt: int, error: Exception) -> None:
        """A pooled connection from before a Redis restart fails once and is dropped: the first failure
        is retried (a new connection, which fails at once as well if Redis is still down); the second
        is :class:`FeatureStoreUnavailable`."""
        if attempt == 2:
            raise FeatureStoreUnavailable(
                f"{self._description} is unreachable ({type(error).__name__}: {error});"
                " requests that carry their 9 features are still served"
            ) from error

    def _decode(self, found: dict) -> Stats:
        decoded = []
        for name in STORED_FEATURES:
            proto = found.get(name)
            if proto is None:
                decoded.append(math.nan)
                continue
            kind = proto.WhichOneof("val")
            if kind in _SCALAR_NUMBERS:  # the stats' own types: the field itself, as Feast's decoder returns it
                decoded.append(float(getattr(proto, kind)))
                continue
            value = self._to_python(proto)  # anything else (none set, another type): Feast's decoder
            decoded.append(math.nan if value is None else float(value))
        return tuple(decoded)  # type: ignore[return-value]


# The value kinds of the stored stats (Int64 and Float64 fields; 32-bit ones too), which
# ``feast_value_type_to_python_type`` returns as the proto's field, unchanged.
_SCALAR_NUMBERS = frozenset(("double_val", "int64_val", "float_val", "int32_val"))


def _answer(
    batch: list[tuple[int, asyncio.Future]], found: dict[int, Stats] | None = None, *, error: Exception | None = None
) -> None:
    """Give each waiter of ``batch`` its customer's stats from ``found``, or ``error`` (not to a waiter whose
    request was cancelled meanwhile)."""
    for customer_id, answer in batch:
        if answer.done():
            continue
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(found[customer_id])  # type: ignore[index]


def _connection_errors(repo: FeatureRepo) -> tuple[type[BaseException], ...]:
    """The errors that mean "the online store cannot be reached" (redis-py's, for a Redis store)."""
    if repo.online_store_kind != "redis":
        return ()
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError)


# ---- the model's input ---------------------------------------------------------------------------
def transaction_frame(transactions: list) -> pd.DataFrame:
    """Requests (``TransactionRequest``) as the transaction table :func:`model_features` expects."""
    now = datetime.now(UTC)
    timestamps = [_utc(t.event_timestamp) if t.event_timestamp is not None else now for t in transactions]
    return pd.DataFrame(
        {
            ENTITY_COLUMN: [t.customer_id for t in transactions],
            "amount": [float(t.amount) for t in transactions],
            "category": [t.category for t in transactions],
            "channel": [t.channel for t in transactions],
            TIMESTAMP_COLUMN: pd.to_datetime(timestamps, utc=True),
        }
    )


def feature_vectors(transactions: pd.DataFrame, stats: pd.DataFrame) -> np.ndarray:
    stats = stats.set_axis(transactions.index)
    return model_features(transactions, stats).to_numpy(dtype="float64")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_CATEGORY_CODES = {name: float(code) for code, name in enumerate(CATEGORIES)}
_SECONDS_PER_DAY = 86_400.0


def transaction_features(stats: Stats, transaction) -> list[float]:
    """:func:`model_features` for one request (``TransactionRequest``) and its customer's stats, in plain
    Python: the same float64 operations in the same order, so the same numbers bit for bit (checked
    against the frame version in tests/serving/test_entity.py), at ~1/200 of its cost for one row.

    Time is taken as :func:`transaction_frame` takes it: the request's ``event_timestamp`` in UTC (a
    naive one is UTC), or now; its unix seconds are its nanoseconds over 1e9, as pandas computes them.
    """
    moment = _utc(transaction.event_timestamp) if transaction.event_timestamp is not None else datetime.now(UTC)
    now = ((moment - _EPOCH) // _MICROSECOND * 1000) / 1e9
    total_purchases, avg_order_value, lifetime_value, last_order_ts = stats
    amount = float(transaction.amount)
    return [
        amount,
        moment.hour + moment.minute / 60.0,
        1.0 if transaction.channel == "online" else 0.0,
        _CATEGORY_CODES.get(transaction.category, math.nan),
        _nan_to_num(total_purchases),
        avg_order_value,
        _nan_to_num(lifetime_value),
        (now - last_order_ts) / _SECONDS_PER_DAY,
        amount / avg_order_value if avg_order_value > 0 else math.nan,
    ]


def _nan_to_num(value: float) -> float:
    """``numpy.nan_to_num(value, nan=0.0)`` for one float: NaN is 0, an infinity the largest float of its sign."""
    if value != value:
        return 0.0
    if math.isinf(value):
        return math.copysign(sys.float_info.max, value)
    return value


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

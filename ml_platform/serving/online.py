"""Customer stats from the Feast online store, and the model's input built from them.

Feast is imported only when a feature repo is configured (``import feast`` costs ~5 s). The store
is opened off the request path (the model watcher thread does it) and each lookup holds a lock: the
SQLite online store shares one connection between threads.

With Redis (the production profile) the store is opened to fail fast: when Redis is down a lookup
raises :class:`FeatureStoreUnavailable` within milliseconds, naming the store (the server answers 503
for requests that need it and keeps answering requests that carry their features), and once Redis is
back the next lookup reconnects by itself.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from ml_platform.data.schema import ENTITY_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import STORED_FEATURES, model_features
from ml_platform.features.store import FEATURE_SERVICE, FeatureRepo

_log = logging.getLogger(__name__)


class FeatureStoreUnavailable(RuntimeError):
    """The online store cannot be reached; the message names it (never its password)."""


class OnlineFeatures:
    def __init__(self, repo: FeatureRepo) -> None:
        self.repo = repo
        self.store = None
        self.service = None
        self.last_error: str | None = "the feature store is not open yet"
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.service is not None

    def open(self) -> None:
        """Open the store and warm it up with one lookup; a no-op once open."""
        if self.ready:
            return
        from ml_platform.features.store import open_store

        try:
            store = open_store(self.repo, fail_fast=True)
            service = store.get_feature_service(FEATURE_SERVICE)
            with self._lock:
                store.get_online_features(features=service, entity_rows=[{ENTITY_COLUMN: -1}]).to_dict()
        except Exception as error:
            self.last_error = (
                f"feature store at {self.repo.repo_dir} ({self.repo.describe_online_store()}) is unavailable: "
                f"{type(error).__name__}: {error}"
            )
            raise
        self.store, self.service, self.last_error = store, service, None

    def stats(self, customer_ids: list[int]) -> pd.DataFrame:
        """:data:`STORED_FEATURES` for each customer, aligned with ``customer_ids`` (NaN when unknown)."""
        if not self.ready:
            raise RuntimeError(self.last_error or "the feature store is not open")
        entity_rows = [{ENTITY_COLUMN: int(c)} for c in customer_ids]
        connection_errors = _connection_errors(self.repo)
        with self._lock:
            for attempt in (1, 2):
                try:
                    values = self.store.get_online_features(features=self.service, entity_rows=entity_rows).to_dict()
                    break
                except connection_errors as error:
                    # A pooled connection from before a Redis restart fails once and is dropped; the second
                    # attempt opens a new one (and fails at once as well if Redis is still down).
                    if attempt == 2:
                        raise FeatureStoreUnavailable(
                            f"{self.repo.describe_online_store()} is unreachable ({type(error).__name__}: {error});"
                            " requests that carry their 9 features are still served"
                        ) from error
        return pd.DataFrame(
            {
                name: pd.array(values[name], dtype="Float64").to_numpy("float64", na_value=np.nan)
                for name in STORED_FEATURES
            }
        )


def _connection_errors(repo: FeatureRepo) -> tuple[type[BaseException], ...]:
    """The errors that mean "the online store cannot be reached" (redis-py's, for a Redis store)."""
    if repo.online_store_kind != "redis":
        return ()
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError)


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


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

"""Feast's online store on the Redis that CI runs (127.0.0.1:6379, a database index of its own), and the
model server's view of it: values round-trip, unknown customers come back empty, a Redis that is down
fails at once with a message naming it."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from ml_platform.data.schema import ENTITY_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import STORED_FEATURES
from ml_platform.features.store import FEATURE_VIEW, FeatureRepo, feature_definitions, open_store
from ml_platform.serving.online import OnlineFeatures
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration
CI_REDIS_PORT, REDIS_DB = 6379, 13  # db 13: this test's alone, flushed first


@pytest.fixture
def ci_redis():
    import redis

    client = redis.Redis(host="127.0.0.1", port=CI_REDIS_PORT, db=REDIS_DB, socket_connect_timeout=2, retry=None)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as error:
        pytest.fail(
            f"Redis is not answering on 127.0.0.1:{CI_REDIS_PORT} ({error}). Start it: `redis-server --daemonize yes "
            '--bind 127.0.0.1 --port 6379 --save "" --appendonly no` (.ci/run does)'
        )
    client.flushdb()
    yield client
    client.flushdb()


def stats_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            ENTITY_COLUMN: [11, 12, 13],
            TIMESTAMP_COLUMN: pd.to_datetime(["2026-03-01T10:00", "2026-03-02T11:30", "2026-03-03T12:45"], utc=True),
            "total_purchases": [3, 1, 12],
            "avg_order_value": [20.5, 310.0, 44.25],
            "lifetime_value": [61.5, 310.0, 531.0],
            "last_order_ts": [1772359200.0, 1772451000.0, 1772541900.0],
        }
    )


def test_online_features_round_trip_through_redis(ci_redis, tmp_path):
    repo = FeatureRepo(tmp_path, tmp_path / "offline", "it_redis", f"127.0.0.1:{CI_REDIS_PORT},db={REDIS_DB}")
    store = open_store(repo)
    store.apply(feature_definitions(repo))
    rows = stats_rows()
    store.write_to_online_store(FEATURE_VIEW, rows)
    assert ci_redis.dbsize() == 3  # one hash per customer
    assert (tmp_path / "feature_store.yaml").read_text().count("type: redis") == 1

    features = OnlineFeatures(repo)
    features.open()
    assert features.ready and features.last_error is None
    got = features.stats([13, 999, 11])
    expected = rows.set_index(ENTITY_COLUMN).loc[[13, 11], list(STORED_FEATURES)].to_numpy("float64")
    np.testing.assert_allclose(got.loc[[0, 2]].to_numpy(), expected)
    assert got.loc[1].isna().all()  # an unknown customer: no stats, not an error


def test_a_redis_that_is_down_fails_at_once_naming_it(tmp_path):
    port = free_port()  # nothing listens there
    registered = FeatureRepo(tmp_path, tmp_path / "offline", "it_down")  # the definitions, in the file registry
    open_store(registered).apply(feature_definitions(registered))
    repo = FeatureRepo(tmp_path, tmp_path / "offline", "it_down", f"127.0.0.1:{port},db=0")
    features = OnlineFeatures(repo)
    started = time.monotonic()
    with pytest.raises(Exception, match="Connection refused"):
        features.open()
    assert time.monotonic() - started < 5.0  # fail-fast options: no redis-py back-off
    assert not features.ready
    assert f"Redis online store at 127.0.0.1:{port} (db 0)" in features.last_error

"""Feast's online store on the Redis that CI runs (127.0.0.1:6379, a database index per test), and the
model server's view of it: values round-trip, unknown customers come back empty, a Redis that is down
fails at once with a message naming it and is read again once it is back (blocking and asyncio reads);
the stats read are what ``get_online_features`` returns, also right after a materialization; and
``/predict`` with a ``customer_id`` on Redis answers alike on the fast path and the route, 422 for an
event time out of range."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pandas as pd
import pytest

from ml_platform.data.schema import ENTITY_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import MODEL_FEATURES, STORED_FEATURES
from ml_platform.features.store import FEATURE_VIEW, FeatureRepo, feature_definitions, open_store
from ml_platform.predictions import read_prediction_log
from ml_platform.serving.online import MISSING_STATS, FeatureStoreUnavailable, OnlineFeatures
from tests.support.feature_loads import FIRST_LOAD, SECOND_LOAD, expected_features, expected_online, materialize
from tests.support.servers import LATENCY, counted_fast_reads, free_port, make_config, post_both, serve
from tests.support.serving_world import ServingWorld, build_serving_world

pytestmark = pytest.mark.integration
CI_REDIS_PORT = 6379
# A database index per test, each flushed before and after it: the two xdist workers may run these tests at
# the same time, and a shared index would let one test's rows show up in another's count.
REDIS_DBS = {
    "test_online_features_round_trip_through_redis": 13,
    "test_reads_are_get_online_features_after_each_materialization": 14,
    "test_entity_predict_on_redis_answers_alike_and_follows_materializations": 15,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> ServingWorld:
    """A champion to serve, in a state directory of its own (the Redis stores are each test's own)."""
    return build_serving_world(tmp_path_factory.mktemp("redis_world"))


@pytest.fixture
def ci_redis(request):
    """A client on this test's own database of CI's Redis (``REDIS_DBS``), empty."""
    import redis

    db = REDIS_DBS[request.node.originalname]
    client = redis.Redis(host="127.0.0.1", port=CI_REDIS_PORT, db=db, socket_connect_timeout=2, retry=None)
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


def address(client) -> str:
    """Feast's connection string for the database ``client`` is on."""
    return f"127.0.0.1:{CI_REDIS_PORT},db={client.connection_pool.connection_kwargs['db']}"


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
    repo = FeatureRepo(tmp_path, tmp_path / "offline", "it_redis", address(ci_redis))
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
    np.testing.assert_array_equal(got.to_numpy(), expected_online(store, [13, 999, 11]))

    async def awaited():
        return [await features.customer_async(c) for c in (13, 999, 11)]

    np.testing.assert_array_equal(np.array(asyncio.run(awaited())), got.to_numpy())


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


def test_reads_are_get_online_features_after_each_materialization(ci_redis, tmp_path):
    repo = FeatureRepo(tmp_path, tmp_path / "offline", "it_reload", address(ci_redis))
    materialize(repo, FIRST_LOAD)
    features = OnlineFeatures(repo)
    features.open()
    store = open_store(repo)
    customers = [101, 102, 103, 104]
    before = np.array(features.read(customers))
    np.testing.assert_array_equal(before, expected_online(store, customers))
    assert before[0, 0] == 3 and np.isnan(before[2:]).all()

    materialize(repo, FIRST_LOAD + SECOND_LOAD)  # 101 ordered again, 103 is new
    after = np.array(features.read(customers))
    np.testing.assert_array_equal(after, expected_online(store, customers))
    assert after[0, 0] == 4 and after[2, 0] == 2 and np.isnan(after[3]).all()
    np.testing.assert_array_equal(after[1], before[1])

    async def awaited():
        one_by_one = [await features.customer_async(c) for c in customers]
        together = await asyncio.gather(*(features.customer_async(c) for c in customers * 5))  # read in batches
        return one_by_one, together

    one_by_one, together = asyncio.run(awaited())
    np.testing.assert_array_equal(np.array(one_by_one), after)
    np.testing.assert_array_equal(np.array(together), np.vstack([after] * 5))


def test_a_restarted_redis_is_read_again_blocking_and_awaited(redis_server, tmp_path):
    """Reads fail at once, naming the store, while Redis is down, and the first read after its restart
    succeeds on both clients (pooled connections from before the restart are dropped and reopened)."""
    repo = FeatureRepo(tmp_path, tmp_path / "offline", "it_restart", f"127.0.0.1:{redis_server.port},db=5")
    store = open_store(repo)
    store.apply(feature_definitions(repo))
    store.write_to_online_store(FEATURE_VIEW, stats_rows())
    features = OnlineFeatures(repo)
    features.open()
    expected = tuple(stats_rows().set_index(ENTITY_COLUMN).loc[12, list(STORED_FEATURES)].astype("float64"))

    async def scenario():  # one event loop throughout, as in the server
        assert await features.customer_async(12) == expected == features.customer(12)
        assert await features.customer_async(999) == MISSING_STATS
        redis_server.stop()
        try:
            together = await asyncio.gather(
                *(features.customer_async(c) for c in (11, 12, 13, 12)), return_exceptions=True
            )
            assert [type(error) for error in together] == [FeatureStoreUnavailable] * 4  # every waiter is told
            for read in (features.customer_async, features.customer):
                started = time.monotonic()
                with pytest.raises(FeatureStoreUnavailable) as failure:
                    answer = read(12)
                    if asyncio.iscoroutine(answer):
                        await answer
                assert time.monotonic() - started < 2.0
                assert f"Redis online store at 127.0.0.1:{redis_server.port} (db 5) is unreachable" in str(
                    failure.value
                )
        finally:
            redis_server.start()
        assert await features.customer_async(12) == expected
        assert features.customer(12) == expected
        assert (await asyncio.gather(features.customer_async(12), features.customer_async(999))) == [
            expected,
            MISSING_STATS,
        ]

    asyncio.run(scenario())


def test_entity_predict_on_redis_answers_alike_and_follows_materializations(ci_redis, world, tmp_path):
    """The small world's champion served with a Redis online store: fast path and route (two servers) answer
    the same bytes and log the same rows, before and after a materialization, and both refuse an
    event time out of range with 422."""
    repo = FeatureRepo(tmp_path / "feast", tmp_path / "offline", "it_entity", address(ci_redis))
    materialize(repo, FIRST_LOAD)
    bodies = [
        {"customer_id": c, "amount": a, "category": k, "channel": h, "event_timestamp": "2026-03-05T08:00:00+01:00"}
        for c, a, k, h in [(101, 80.0, "electronics", "online"), (102, 12, "grocery", "in_store"),
                           (103, 999.99, "gift_cards", "online")]
    ]  # fmt: skip
    fast_config = make_config(world.settings, tmp_path / "fast", feast=repo)
    route_config = make_config(world.settings, tmp_path / "route", feast=repo, fast_path=False)
    with serve(fast_config) as fast, serve(route_config) as route:
        with counted_fast_reads(fast) as reads:
            for round_ in (1, 2):
                if round_ == 2:
                    materialize(repo, FIRST_LOAD + SECOND_LOAD)
                for index, body in enumerate(bodies):
                    answers = post_both(fast, route, {**body, "request_id": f"redis-{round_}-{index}"})
                    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
                    first, second = (LATENCY.sub(b'"latency_ms":0', a.content) for a in answers)
                    assert first == second
        assert reads == [101, 102, 103] * 2  # the fast path answered every one
        for moment in ("3000-01-01T00:00:00Z", "9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00"):
            answers = post_both(fast, route, json.dumps({**bodies[0], "event_timestamp": moment}))
            assert [a.status_code for a in answers] == [422, 422], [a.text for a in answers]
            assert answers[0].json() == answers[1].json()
            assert answers[0].json()["field"] == "event_timestamp"
            assert "2200-01-01T00:00:00Z" in answers[0].json()["error"]

    logs = [
        read_prediction_log(config.log_dir).set_index("request_id").sort_index()
        for config in (fast_config, route_config)
    ]
    same = [c for c in logs[0].columns if c not in ("time", "latency_ms")]
    assert len(logs[0]) == 6 and logs[0][same].equals(logs[1][same])
    for round_, loaded in ((1, FIRST_LOAD), (2, FIRST_LOAD + SECOND_LOAD)):
        for index, body in enumerate(bodies):
            np.testing.assert_array_equal(
                logs[0].loc[f"redis-{round_}-{index}", list(MODEL_FEATURES)].to_numpy("float64"),
                expected_features(loaded, body),
            )
    assert logs[0].loc["redis-1-0", "total_purchases"] == 3 and logs[0].loc["redis-2-0", "total_purchases"] == 4
    assert logs[0].loc["redis-1-2", "total_purchases"] == 0 and logs[0].loc["redis-2-2", "total_purchases"] == 2

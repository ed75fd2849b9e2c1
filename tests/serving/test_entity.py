"""/predict with a ``customer_id``, the request a payment system sends: stats from the online store.

- The fast path (the store read in the ASGI layer, :func:`transaction_features`) answers the bytes the
  route answers (the store read in a thread, :func:`model_features` over pandas frames) and logs the
  same rows, for known and unknown customers, every category and channel, every way to write the time.
- The stats read are the ones ``FeatureStore.get_online_features`` returns, also right after a
  materialization: the next request uses the new stats (nothing is cached).
- Event times out of the accepted range, and the other edge cases of a transaction, get a 4xx naming
  the field from both paths (never the 503 of a failed lookup).
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from ml_platform.data.schema import CATEGORIES, CHANNELS, TIMESTAMP_COLUMN
from ml_platform.features.engineering import MODEL_FEATURES, STORED_FEATURES
from ml_platform.features.store import FeatureRepo, open_store
from ml_platform.predictions import read_prediction_log
from ml_platform.serving.online import (
    FeatureStoreUnavailable,
    OnlineFeatures,
    feature_vectors,
    transaction_features,
    transaction_frame,
)
from ml_platform.serving.schemas import TransactionRequest
from tests.support.bodies import TRANSACTION
from tests.support.feature_loads import FIRST_LOAD, SECOND_LOAD, expected_features, expected_online, materialize
from tests.support.servers import LATENCY, counted_fast_reads, make_config, post_both, serve
from tests.support.serving_world import UNKNOWN_CUSTOMER

INT64_MAX = 2**63 - 1
TIME_FEATURES = ["hour_of_day", "days_since_last_order"]


@pytest.fixture(scope="module")
def route_server(settings, champion_version, tmp_path_factory):
    """The session's model and feature store, every request through the FastAPI route."""
    config = make_config(settings, tmp_path_factory.mktemp("entity_route"), fast_path=False)
    with serve(config) as running:
        yield running


@pytest.fixture(scope="module")
def latest_stats(world) -> pd.DataFrame:
    """Each customer's latest row of the offline feature table (what the online store holds)."""
    return world.latest_stats()


def time_text(moment: pd.Timestamp, style: int) -> str:
    """The same instant written as callers write it: Z, +00:00, an offset, naive (UTC), microseconds."""
    utc = moment.tz_convert("UTC").to_pydatetime()
    if style == 0:
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if style == 1:
        return utc.isoformat()
    if style == 2:
        return utc.astimezone(datetime.now().astimezone().tzinfo).isoformat()  # the machine's offset
    if style == 3:
        return utc.replace(tzinfo=None).isoformat()  # naive: taken as UTC
    offset = timedelta(hours=5, minutes=30) if style == 4 else timedelta(hours=-9)
    return utc.astimezone(timezone(offset)).isoformat()


def entity_bodies(latest: pd.DataFrame, *, seed: int, n_known: int = 30, with_time: bool = True) -> list[dict]:
    """Bodies for known customers (a while after their last order) and unknown ones, covering every
    category and channel, integer and float amounts, the extremes of the amount, many time spellings."""
    rng = np.random.default_rng(seed)
    known = rng.choice(latest.index.to_numpy(), size=n_known, replace=False).tolist()
    customers = [*known, UNKNOWN_CUSTOMER, INT64_MAX, 0]
    bodies = []
    for index, customer in enumerate(customers):
        last = latest[TIMESTAMP_COLUMN].get(customer, pd.Timestamp("2026-03-15T03:30:00", tz="UTC"))
        moment = last + pd.Timedelta(
            minutes=int(rng.integers(1, 60 * 24 * 20)), microseconds=int(rng.integers(0, 10**6))
        )
        amount = [0.01, 100_000.0, 7, float(np.round(rng.lognormal(3.5, 1.2), 2))][index % 4]
        body = {
            "customer_id": int(customer),
            "amount": amount,
            "category": CATEGORIES[index % len(CATEGORIES)],
            "channel": CHANNELS[(index // 3) % len(CHANNELS)],
            "request_id": f"entity-{seed}-{index}",
        }
        if with_time:
            body["event_timestamp"] = time_text(moment, index % 6)
        if index % 7 == 3:
            body["merchant_id"] = 12  # other keys are ignored by both paths
        bodies.append(body)
    return bodies


def logged(running, prefix: str) -> pd.DataFrame:
    running.flush_log()
    log = read_prediction_log(running.config.log_dir)
    rows = log[log["request_id"].str.startswith(prefix)]
    return rows.sort_values("request_id").reset_index(drop=True)


# ---- the fast path answers as the route --------------------------------------------------------------
def test_fast_path_answers_and_logs_what_the_route_does(main_server, route_server, latest_stats):
    bodies = entity_bodies(latest_stats, seed=1)
    assert {b["category"] for b in bodies} == set(CATEGORIES) and {b["channel"] for b in bodies} == set(CHANNELS)
    with counted_fast_reads(main_server) as reads:
        for body in bodies:
            answers = post_both(main_server, route_server, body)
            assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
            assert answers[0].headers["content-type"] == answers[1].headers["content-type"] == "application/json"
            first, second = (LATENCY.sub(b'"latency_ms":0', a.content) for a in answers)
            assert first == second, body
            assert answers[0].json()["request_id"] == body["request_id"]
    assert reads == [body["customer_id"] for body in bodies]  # every one answered by the fast path

    fast_rows, route_rows = logged(main_server, "entity-1-"), logged(route_server, "entity-1-")
    assert len(fast_rows) == len(route_rows) == len(bodies)
    assert list(fast_rows.dtypes) == list(route_rows.dtypes)
    same = [c for c in fast_rows.columns if c not in ("time", "latency_ms")]
    assert fast_rows[same].equals(route_rows[same])  # bit for bit, NaN where the customer has no history
    unknown = fast_rows["customer_id"] == UNKNOWN_CUSTOMER
    assert (fast_rows.loc[unknown, "total_purchases"] == 0).all()
    assert fast_rows.loc[~unknown & (fast_rows["customer_id"] != INT64_MAX) & (fast_rows["customer_id"] != 0),
                         "total_purchases"].gt(0).all()  # fmt: skip


def test_without_event_timestamp_the_time_is_now_on_both_paths(main_server, route_server, latest_stats):
    bodies = entity_bodies(latest_stats, seed=2, n_known=8, with_time=False)
    before = datetime.now(UTC)
    with counted_fast_reads(main_server) as reads:
        for body in bodies:
            assert [a.status_code for a in post_both(main_server, route_server, body)] == [200, 200]
    after = datetime.now(UTC)
    assert len(reads) == len(bodies)
    fast_rows, route_rows = logged(main_server, "entity-2-"), logged(route_server, "entity-2-")
    timeless = [c for c in MODEL_FEATURES if c not in TIME_FEATURES]
    assert fast_rows[timeless].equals(route_rows[timeless])
    hours = [before.hour + before.minute / 60.0, after.hour + after.minute / 60.0]
    for rows in (fast_rows, route_rows):
        assert rows["hour_of_day"].between(min(hours), max(hours)).all() or before.day != after.day
    np.testing.assert_allclose(fast_rows["days_since_last_order"], route_rows["days_since_last_order"], atol=1e-3)


def test_one_instant_written_every_way_gets_one_answer(main_server, route_server, latest_stats):
    customer = int(latest_stats.index[3])
    moment = latest_stats.loc[customer, TIMESTAMP_COLUMN] + pd.Timedelta(hours=30, microseconds=123_456)
    spellings = sorted({time_text(moment, style) for style in range(6)})
    assert len(spellings) >= 5
    probabilities = set()
    body = {"customer_id": customer, "amount": 250.0, "category": "jewelry", "channel": "online"}
    for index, spelling in enumerate(spellings):
        request = {**body, "event_timestamp": spelling, "request_id": f"entity-instant-{index}"}
        for answer in post_both(main_server, route_server, request):
            assert answer.status_code == 200, answer.text
            probabilities.add(answer.json()["probability"])
    assert len(probabilities) == 1
    utc = moment.tz_convert("UTC")
    for running in (main_server, route_server):
        rows = logged(running, "entity-instant-")
        assert len(rows) == len(spellings)
        assert rows["hour_of_day"].tolist() == [utc.hour + utc.minute / 60.0] * len(spellings)
        assert rows[list(MODEL_FEATURES)].drop_duplicates().shape[0] == 1  # every feature the same


def test_transaction_features_are_model_features_bit_for_bit():
    """The fast path's one-row features against model_features over frames, on stats and times well
    beyond what the store holds: missing values, zero and tiny averages, infinities, extreme times."""
    rng = np.random.default_rng(7)
    specials = [math.nan, 0.0, -0.0, 5e-324, 1e-300, 1e300, math.inf, -math.inf, 1.0, 3.0]
    times = ["1970-01-01T00:00:00Z", "2199-12-31T23:59:59.999999Z", "2026-03-10T23:59:59.999999-05:00",
             "2024-02-29T12:34:56.789012", "2026-06-30T00:00:00.000001+14:00"]  # fmt: skip
    checked = 0
    for index in range(600):
        if index < 200:
            stats = tuple(float(rng.choice(specials)) for _ in STORED_FEATURES)
        else:
            stats = (
                float(rng.integers(0, 500)) if rng.random() > 0.1 else math.nan,
                float(rng.lognormal(3, 1.5)) if rng.random() > 0.1 else math.nan,
                float(rng.lognormal(6, 2)) if rng.random() > 0.1 else math.nan,
                float(rng.uniform(0, 4.1e9)) if rng.random() > 0.1 else math.nan,
            )
        if index % 3:
            seconds = rng.uniform(0, 7.25e9)  # 1970 .. 2199
            event_time = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=float(seconds))).isoformat()
        else:
            event_time = times[index % len(times)]
        transaction = TransactionRequest.model_validate(
            {
                "customer_id": int(rng.integers(0, 2**40)),
                "amount": float(rng.choice([0.01, 100_000.0, np.round(rng.lognormal(3.5, 1.5), 2)])),
                "category": CATEGORIES[index % len(CATEGORIES)],
                "channel": CHANNELS[index % 2],
                "event_timestamp": event_time,
            }
        )
        frame_stats = pd.DataFrame([stats], columns=list(STORED_FEATURES))
        with np.errstate(all="ignore"):
            expected = feature_vectors(transaction_frame([transaction]), frame_stats)[0]
        got = np.array(transaction_features(stats, transaction), dtype="float64")
        np.testing.assert_array_equal(got, expected, err_msg=f"stats {stats}, time {event_time}")
        assert np.array_equal(np.signbit(got), np.signbit(expected))  # -0.0 stays -0.0
        checked += int(np.isfinite(expected).sum())
    assert checked > 3_000  # most compared values are numbers, not NaN against NaN


# ---- the stats are Feast's ------------------------------------------------------------------------
def test_stats_are_what_get_online_features_returns(main_server, latest_stats):
    features: OnlineFeatures = main_server.server.features
    known = latest_stats.index[::7][:300].tolist()
    customer_ids = [*known, UNKNOWN_CUSTOMER, INT64_MAX, known[0], 0]
    got = np.array(features.read(customer_ids))
    expected = expected_online(features.store, customer_ids)
    np.testing.assert_array_equal(got, expected)
    assert np.isfinite(got[: len(known)]).all()  # the known customers have every stat
    np.testing.assert_array_equal(got[: len(known)], latest_stats.loc[known, list(STORED_FEATURES)].to_numpy("float64"))
    assert np.isnan(got[len(known) : len(known) + 2]).all()

    one_by_one = [asyncio.run(features.customer_async(c)) for c in customer_ids[:20]]
    np.testing.assert_array_equal(np.array(one_by_one), expected[:20])
    np.testing.assert_array_equal(np.array([features.customer(c) for c in customer_ids[:20]]), expected[:20])
    pd.testing.assert_frame_equal(
        features.stats(customer_ids[:20]), pd.DataFrame(expected[:20], columns=list(STORED_FEATURES))
    )


def test_the_customers_of_one_loop_turn_are_read_in_one_query(main_server, latest_stats, monkeypatch):
    """SQLite is read in the loop's next turn for every customer asked for in this one: one read for all
    (repeats and unknown customers included), each waiter with its own customer's stats."""
    features: OnlineFeatures = main_server.server.features
    known = latest_stats.index[::11][:40].tolist()
    customer_ids = [*known, UNKNOWN_CUSTOMER, known[3], known[3], 0]
    expected = expected_online(features.store, customer_ids)
    # a reader of this test's own: the server's, on its own loop, keeps serving the other tests
    reader = type(features._reader)(features.repo, features.store)
    reads: list[list[int]] = []
    read = reader.read
    monkeypatch.setattr(reader, "read", lambda ids: reads.append(list(ids)) or read(ids))

    async def one_turn():
        return await asyncio.gather(*(reader.read_one_async(c) for c in customer_ids))

    np.testing.assert_array_equal(np.array(asyncio.run(one_turn())), expected)
    assert reads == [list(dict.fromkeys(customer_ids))]  # one read, each customer once

    def unreachable(ids):
        raise FeatureStoreUnavailable("the online store (test) is unreachable")

    monkeypatch.setattr(reader, "read", unreachable)

    async def failing_turn():
        return await asyncio.gather(*(reader.read_one_async(c) for c in known[:3]), return_exceptions=True)

    errors = asyncio.run(failing_turn())
    assert [type(error) for error in errors] == [FeatureStoreUnavailable] * 3  # every waiter gets the error


# ---- a materialization is seen by the next request ------------------------------------------------
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "route"])
def test_the_next_request_after_a_materialization_uses_the_new_stats(
    settings, champion_version, offline, tmp_path, fast_path
):
    repo = FeatureRepo(tmp_path / "feast", tmp_path / "feast" / "offline", "entity_reload")
    materialize(repo, FIRST_LOAD)
    config = make_config(settings, tmp_path, feast=repo, fast_path=fast_path)
    predict, _ = offline
    body = {"customer_id": 101, "amount": 80.0, "category": "electronics", "channel": "online",
            "event_timestamp": "2026-03-05T08:00:00Z"}  # fmt: skip
    new_customer = {**body, "customer_id": 103}
    with serve(config) as running, running.client() as client:
        store = open_store(repo)

        def ask(request: dict, request_id: str) -> dict:
            answer = client.post("/predict", json={**request, "request_id": request_id})
            assert answer.status_code == 200, answer.text
            return answer.json()

        first, unknown_yet = ask(body, "reload-1"), ask(new_customer, "reload-2")
        np.testing.assert_array_equal(
            np.array(running.server.features.read([101, 103])), expected_online(store, [101, 103])
        )
        materialize(repo, FIRST_LOAD + SECOND_LOAD)
        np.testing.assert_array_equal(
            np.array(running.server.features.read([101, 102, 103])), expected_online(store, [101, 102, 103])
        )
        second, known_now = ask(body, "reload-3"), ask(new_customer, "reload-4")

    log = read_prediction_log(config.log_dir).set_index("request_id")
    expectations = {
        "reload-1": expected_features(FIRST_LOAD, body),
        "reload-2": expected_features(FIRST_LOAD, new_customer),
        "reload-3": expected_features(FIRST_LOAD + SECOND_LOAD, body),
        "reload-4": expected_features(FIRST_LOAD + SECOND_LOAD, new_customer),
    }
    for request_id, features in expectations.items():
        np.testing.assert_array_equal(log.loc[request_id, list(MODEL_FEATURES)].to_numpy("float64"), features)
    assert log.loc["reload-1", "total_purchases"] == 3 and log.loc["reload-3", "total_purchases"] == 4
    assert log.loc["reload-2", "total_purchases"] == 0 and log.loc["reload-4", "total_purchases"] == 2
    answered = [first, unknown_yet, second, known_now]
    offline_probabilities = predict(pd.DataFrame(list(expectations.values()), columns=list(MODEL_FEATURES)))
    assert [a["probability"] for a in answered] == pytest.approx(offline_probabilities.tolist(), abs=1e-7)


# ---- edge cases: a 4xx naming the field, or an answer; never a 5xx ---------------------------------
RANGE_WORDS = ["1970-01-01T00:00:00Z", "2200-01-01T00:00:00Z"]
EDGE_CASES = [
    # (name, fields over TRANSACTION, status, field at fault (None for 200), words the message must contain)
    ("year 3000", {"event_timestamp": "3000-01-01T00:00:00Z"}, 422, "event_timestamp", [*RANGE_WORDS, "3000-01-01"]),
    ("year 9999 behind UTC", {"event_timestamp": "9999-12-31T23:00:00-05:00"}, 422, "event_timestamp",
     [*RANGE_WORDS, "9999-12-31T23:00:00-05:00"]),
    ("year 1 ahead of UTC", {"event_timestamp": "0001-01-01T00:00:00+05:00"}, 422, "event_timestamp",
     [*RANGE_WORDS, "0001-01-01T00:00:00+05:00"]),
    ("year 1 naive", {"event_timestamp": "0001-01-01T00:00:00"}, 422, "event_timestamp", RANGE_WORDS),
    ("before 1970", {"event_timestamp": "1969-12-31T23:59:59.999999Z"}, 422, "event_timestamp", RANGE_WORDS),
    ("2200 exactly", {"event_timestamp": "2200-01-01T00:00:00Z"}, 422, "event_timestamp", RANGE_WORDS),
    ("naive 2200", {"event_timestamp": "2200-01-01T00:00:00"}, 422, "event_timestamp", RANGE_WORDS),
    ("an offset past 2200", {"event_timestamp": "2199-12-31T23:00:00-05:00"}, 422, "event_timestamp", RANGE_WORDS),
    ("pandas' last day", {"event_timestamp": "2262-04-11T23:47:16Z"}, 422, "event_timestamp", RANGE_WORDS),
    ("unix time past 9999", {"event_timestamp": 10**20}, 422, "event_timestamp", ["ISO 8601"]),
    ("a negative unix time", {"event_timestamp": -86_400}, 422, "event_timestamp", RANGE_WORDS),
    ("huge amount", {"amount": 1e308}, 422, "amount", ["less than or equal to 100000"]),
    ("amount over the maximum", {"amount": 100_000.01}, 422, "amount", ["less than or equal"]),
    ("customer past int64", {"customer_id": 2**63}, 422, "customer_id", ["less than or equal"]),
    ("negative customer", {"customer_id": -1}, 422, "customer_id", ["greater than or equal to 0"]),
    ("boolean customer", {"customer_id": True}, 422, "customer_id", ["integer"]),
    ("float customer", {"customer_id": 5.0}, 422, "customer_id", ["integer"]),
    ("string amount", {"amount": "10"}, 422, "amount", ["number"]),
    ("boolean amount", {"amount": False}, 422, "amount", ["number"]),
    ("null category", {"category": None}, 422, "category", ["string"]),
    ("the first moment", {"event_timestamp": "1970-01-01T00:00:00Z"}, 200, None, []),
    ("the last moment", {"event_timestamp": "2199-12-31T23:59:59.999999Z"}, 200, None, []),
    ("an offset back into range", {"event_timestamp": "2200-01-01T03:00:00+05:00"}, 200, None, []),
    ("a date alone", {"event_timestamp": "2026-03-01"}, 200, None, []),
    ("unix seconds", {"event_timestamp": 1_772_359_200}, 200, None, []),
    ("null time", {"event_timestamp": None}, 200, None, []),
    ("customer at int64's maximum", {"customer_id": INT64_MAX}, 200, None, []),
    ("customer 0", {"customer_id": 0}, 200, None, []),
    ("the largest amount", {"amount": 100_000}, 200, None, []),
    ("the smallest amount", {"amount": 0.01}, 200, None, []),
]  # fmt: skip


@pytest.mark.parametrize(("name", "fields", "status", "field", "words"), EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_edge_cases_get_the_same_4xx_or_answer_on_both_paths(
    main_server, route_server, name, fields, status, field, words
):
    body = {**TRANSACTION, **fields}
    single = post_both(main_server, route_server, body)
    batch = post_both(main_server, route_server, {"instances": [TRANSACTION, body]})
    for answers, prefix in ((single, ""), (batch, "instances[1].")):
        assert [a.status_code for a in answers] == [status, status], [a.text for a in answers]
        if status == 200:
            continue
        error = answers[0].json()
        assert answers[1].json() == error
        assert error["field"] == prefix + field
        assert error["error"].startswith(f"{prefix}{field}: ")
        for word in words:
            assert word in error["error"], error["error"]
    if status == 200:
        # without a time the two paths score at two moments; with one they answer alike
        differ = ("request_id", "latency_ms") + (
            ("probability", "is_fraud") if body.get("event_timestamp") is None else ()
        )
        first, second = ({k: v for k, v in a.json().items() if k not in differ} for a in single)
        assert first == second

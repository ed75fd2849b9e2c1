"""The one-row fast path of /predict gives exactly what the general path gives.

- :class:`InplacePredictor` (XGBoost's C entry point with its config and array interface prebuilt)
  answers bit for bit what ``booster.inplace_predict`` answers, missing values included.
- A server with the fast path and one without it answer the same bytes (but ``latency_ms``) for the
  same good bodies, the same status and error for every bad one, and log the same rows.
- :meth:`ModelServer.score_one_soon` routes, answers and logs a row alone as :meth:`ModelServer.score` does.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading

import numpy as np
import pytest

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.predictions import read_prediction_log
from ml_platform.serving.models import Deployment, InplacePredictor, ModelHandle
from ml_platform.serving.protocol.predict import _plain_features
from ml_platform.serving.server import ModelServer, Routing, _RequestIds
from tests.support.bodies import CASES, GOOD
from tests.support.servers import LATENCY, make_config, serve


def random_rows(n: int, seed: int) -> np.ndarray:
    """Rows over the features' real ranges and far outside them, ~15% missing, a few special values."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, len(MODEL_FEATURES))) * rng.choice([0.1, 1.0, 30.0, 1_000.0, 1e6], size=(n, 9))
    rows[rng.random(rows.shape) < 0.15] = np.nan
    rows[0] = np.nan  # every value missing
    rows[1] = 0.0
    rows[2] = -0.0
    rows[3] = [1e300, -1e300, 5e-324, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    rows[4] = np.round(rows[4])  # integer-valued (sent as JSON integers below)
    return rows


def as_json_row(row: np.ndarray) -> list:
    return [None if np.isnan(v) else (int(v) if float(v).is_integer() and abs(v) < 2**53 else float(v)) for v in row]


@pytest.fixture(scope="module")
def champion_booster(registry, champion_version):
    booster = registry.load_booster(champion_version)
    booster.set_param({"nthread": 1})  # as the server loads it
    return booster


def test_predictions_are_bit_identical_to_inplace_predict(champion_booster):
    predictor = InplacePredictor(champion_booster)
    rows = random_rows(3_000, seed=5)
    expected = np.asarray(champion_booster.inplace_predict(rows), dtype="float64")
    assert expected.shape == (3_000,) and np.isfinite(expected).all()
    assert len(np.unique(expected)) > 100  # the rows reach many leaves: the comparison means something

    np.testing.assert_array_equal(predictor.predict(rows), expected)
    one_by_one = [predictor.predict_row(as_json_row(row)) for row in rows]
    np.testing.assert_array_equal(np.array(one_by_one), expected)
    # not C-contiguous input, and a single row as an array
    np.testing.assert_array_equal(predictor.predict(np.asfortranarray(rows[::3])), expected[::3])
    np.testing.assert_array_equal(predictor.predict(rows[7:8]), expected[7:8])
    assert predictor.predict(rows[:0]).shape == (0,)
    with pytest.raises(ValueError, match="expected rows of 9 features"):
        predictor.predict(rows[:, :8])


def test_predictions_from_many_threads_stay_exact(champion_booster):
    predictor = InplacePredictor(champion_booster)
    rows = random_rows(400, seed=6)
    expected = np.asarray(champion_booster.inplace_predict(rows), dtype="float64")
    mismatches: list[int] = []

    def work(offset: int) -> None:
        for rep in range(20):
            index = (offset + rep * 7) % len(rows)
            if predictor.predict_row(as_json_row(rows[index])) != expected[index]:
                mismatches.append(index)
            if not np.array_equal(predictor.predict(rows[index : index + 50]), expected[index : index + 50]):
                mismatches.append(-index)

    threads = [threading.Thread(target=work, args=(offset,)) for offset in range(0, 400, 50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mismatches == []


@pytest.fixture(scope="module")
def slow_server(settings, champion_version, tmp_path_factory):
    """The session's model with the feature store, as main_server, but every request through the route."""
    config = make_config(settings, tmp_path_factory.mktemp("slow"), fast_path=False)
    with serve(config) as running:
        yield running


def good_bodies() -> list[dict]:
    rows = random_rows(12, seed=8)
    bodies = [{"features": as_json_row(row), "request_id": f"same-{index}"} for index, row in enumerate(rows)]
    bodies[1]["customer_id"] = 42  # used for routing and the log only
    bodies[2]["customer_id"] = -(2**63)
    bodies[3]["request_id"] = 'tricky "quoted" \\ é ü 漢 /'  # printable: control characters get a 422
    bodies[4]["request_id"] = "x" * 200
    bodies[5].update({"amount": "ignored", "category": 3})  # other keys are ignored by both paths
    bodies[6] = {"features": GOOD, "request_id": "same-6", "customer_id": None}
    return bodies


def test_fast_and_slow_paths_answer_the_same_bytes(main_server, slow_server):
    bodies = good_bodies()
    with main_server.client() as fast, slow_server.client() as slow:
        for body in bodies:
            assert _plain_features(body) is not None, body  # this body does take the fast path
            text = json.dumps(body)
            answers = [
                client.post("/predict", content=text, headers={"Content-Type": "application/json"})
                for client in (fast, slow)
            ]
            assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
            assert answers[0].headers["content-type"] == answers[1].headers["content-type"] == "application/json"
            assert int(answers[0].headers["content-length"]) == len(answers[0].content)
            first, second = (LATENCY.sub(b'"latency_ms":0', a.content) for a in answers)
            assert first == second
            assert answers[0].json()["request_id"] == body["request_id"]


def test_made_up_request_ids(main_server):
    with main_server.client() as client:
        ids = [client.post("/predict", json={"features": GOOD}).json()["request_id"] for _ in range(5)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in ids)
    assert len(set(ids)) == 5 and len({rid[:16] for rid in ids}) == 1  # one process prefix, a counter after it

    generator = _RequestIds()
    made = [generator.new() for _ in range(10_000)]
    assert len(set(made)) == 10_000
    assert int(made[-1][16:], 16) - int(made[0][16:], 16) == 9_999
    prefix = made[0][:16]
    generator.reset()  # what a forked child does
    assert generator.new()[:16] != prefix


NEAR_MISSES = [
    # valid bodies the fast path leaves to pydantic, and invalid ones close to a valid body
    {"features": [2**60, *GOOD[1:]]},
    {"features": [-(2**53) - 1, *GOOD[1:]]},
    {"features": GOOD, "customer_id": 2**63},
    {"features": GOOD, "customer_id": True},
    {"features": GOOD, "customer_id": 4.0},
    {"features": GOOD, "request_id": ""},
    {"features": GOOD, "request_id": "x" * 201},
    {"features": GOOD, "request_id": 17},
    {"features": [*GOOD[:8], [1.5]]},
    {"features": (GOOD * 2)[:9], "instances": [{"features": GOOD}]},
    {"features": GOOD, "customer_id": -(2**63) - 1},
]


def without_made_up(answer: dict) -> dict:
    """An answer without what differs between two servers: latency, and request ids they made up."""
    if "predictions" in answer:
        return {"predictions": [without_made_up(p) for p in answer["predictions"]]}
    return {k: v for k, v in answer.items() if k not in ("latency_ms", "request_id")}


@pytest.mark.parametrize("body", [case[1] for case in CASES] + NEAR_MISSES)
def test_every_other_body_gets_the_same_answer(main_server, slow_server, body):
    text = body if isinstance(body, str) else json.dumps(body)
    with main_server.client() as fast, slow_server.client() as slow:
        answers = [
            client.post("/predict", content=text.encode(), headers={"Content-Type": "application/json"})
            for client in (fast, slow)
        ]
    assert answers[0].status_code == answers[1].status_code, [a.text for a in answers]
    if answers[0].status_code == 200:
        assert without_made_up(answers[0].json()) == without_made_up(answers[1].json())
    else:
        assert 400 <= answers[0].status_code < 500
        assert answers[0].json() == answers[1].json()


def test_fast_path_logs_what_the_route_logs(main_server, slow_server):
    rows = random_rows(6, seed=9)
    sent = []
    with main_server.client() as fast, slow_server.client() as slow:
        for index, row in enumerate(rows):
            body = {"features": as_json_row(row), "customer_id": index if index % 2 else None}
            assert fast.post("/predict", json={**body, "request_id": f"log-fast-{index}"}).status_code == 200
            assert slow.post("/predict", json={**body, "request_id": f"log-slow-{index}"}).status_code == 200
            sent.append(body)
    main_server.flush_log()
    slow_server.flush_log()
    fast_log = read_prediction_log(main_server.config.log_dir)
    slow_log = read_prediction_log(slow_server.config.log_dir)
    fast_rows = fast_log[fast_log["request_id"].str.startswith("log-fast-")].reset_index(drop=True)
    slow_rows = slow_log[slow_log["request_id"].str.startswith("log-slow-")].reset_index(drop=True)
    assert len(fast_rows) == len(slow_rows) == 6
    assert list(fast_rows.dtypes) == list(slow_rows.dtypes)
    same = [c for c in fast_rows.columns if c not in ("time", "request_id", "latency_ms")]
    assert fast_rows[same].equals(slow_rows[same])
    np.testing.assert_array_equal(fast_rows[list(MODEL_FEATURES)].to_numpy(), rows)  # NaN where null was sent
    assert fast_rows["customer_id"].isna().tolist() == [body["customer_id"] is None for body in sent]


@pytest.mark.parametrize(
    ("routing", "answering"),
    [
        (Routing(0.0, "split", True), {"champion"}),
        (Routing(0.3, "split", True), {"champion", "challenger"}),
        (Routing(0.5, "split", False), {"champion", "challenger"}),
        (Routing(1.0, "split", True), {"challenger"}),
        (Routing(0.3, "shadow", True), {"champion"}),
    ],
    ids=["champion-only", "sticky-0.3", "random-0.5", "all-challenger", "shadow"],
)
def test_a_row_alone_is_routed_answered_and_logged_as_score_does(settings, ab_model, tmp_path, routing, answering):
    config = make_config(settings, tmp_path, model_name=ab_model.model_name, feast=None)
    handles = []
    for version in (1, 2):
        booster = ab_model.load_booster(version)
        booster.set_param({"nthread": 1})
        handles.append(ModelHandle(version, booster, ab_model.threshold(version) + 0.01 * version))
    deployment = Deployment(*handles)
    server = ModelServer(config)
    server.routing = routing
    rows = random_rows(200, seed=10)
    customers = [None if index % 5 == 0 else index * 7919 for index in range(len(rows))]

    server._random = random.Random(3)

    async def one_by_one() -> list[dict]:  # each row alone in its loop turn: the one-row buffer
        return [
            await server.score_one_soon(deployment, as_json_row(row), customer_id=c, request_id=f"one-{i}", started=0.0)
            for i, (row, c) in enumerate(zip(rows, customers, strict=True))
        ]

    single = asyncio.run(one_by_one())
    server._random = random.Random(3)
    general = [
        server.score(deployment, row[None, :], customer_ids=[c], request_ids=[f"gen-{i}"], started=0.0)[0]
        for i, (row, c) in enumerate(zip(rows, customers, strict=True))
    ]
    for one, other in zip(single, general, strict=True):
        assert one.keys() == other.keys()
        assert {k: v for k, v in one.items() if k not in ("request_id", "latency_ms")} == {
            k: v for k, v in other.items() if k not in ("request_id", "latency_ms")
        }
    assert {answer["variant"] for answer in single} == answering

    server.logger.start()
    server.logger.close()
    log = read_prediction_log(config.log_dir)
    ones = log[log["request_id"].str.startswith("one-")].sort_values(["request_id", "variant"]).reset_index(drop=True)
    gens = log[log["request_id"].str.startswith("gen-")].sort_values(["request_id", "variant"]).reset_index(drop=True)
    assert len(ones) == len(gens) == len(rows) * (2 if routing.mode == "shadow" else 1)
    assert ones["request_id"].str.removeprefix("one-").tolist() == gens["request_id"].str.removeprefix("gen-").tolist()
    same = [c for c in log.columns if c not in ("time", "request_id", "latency_ms")]
    assert ones[same].equals(gens[same])

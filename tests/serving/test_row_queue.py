"""The one-row requests of one event-loop turn are scored in one XGBoost call (:class:`RowQueue`), and
each gets exactly what it would get alone.

- :meth:`ModelServer.score_one_soon` answers and logs rows of one turn scored together as it does each
  row alone (tests/serving/test_fast_path.py: alone, as :meth:`ModelServer.score`), routing and
  shadow included, bit for bit.
- The rows of one turn make one call per model; a row alone goes through the one-row buffer.
- A row whose log write fails gets that error and no answer; the other rows of its turn are answered.
- Over HTTP, concurrent one-row requests on every protocol get the probability of their own row.
"""

from __future__ import annotations

import asyncio
import json
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.predictions import PredictionLogUnavailable, read_prediction_log
from ml_platform.serving.models import Deployment, ModelHandle
from ml_platform.serving.server import ModelServer, Routing
from tests.support.servers import make_config, serve


def random_rows(n: int, seed: int) -> np.ndarray:
    """Rows over a wide range of values, ~15% missing, one row all missing."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, len(MODEL_FEATURES))) * rng.choice([0.1, 1.0, 30.0, 1_000.0], size=(n, 9))
    rows[rng.random(rows.shape) < 0.15] = np.nan
    rows[0] = np.nan
    rows[1] = np.round(rows[1] * 100)
    return rows


def as_json_row(row: np.ndarray) -> list:
    return [None if np.isnan(v) else (int(v) if float(v).is_integer() and abs(v) < 2**53 else float(v)) for v in row]


class Calls:
    """Counts the model's calls into XGBoost (the real ones run): matrices and their sizes, single rows."""

    def __init__(self, monkeypatch, handle: ModelHandle) -> None:
        self.matrices: list[int] = []
        self.rows = 0
        predictor = handle.predictor
        predict, predict_row = predictor.predict, predictor.predict_row

        def counted_predict(features):
            self.matrices.append(len(features))
            return predict(features)

        def counted_row(values):
            self.rows += 1
            return predict_row(values)

        monkeypatch.setattr(predictor, "predict", counted_predict)
        monkeypatch.setattr(predictor, "predict_row", counted_row)


@pytest.fixture(scope="module")
def handles(ab_model) -> list[ModelHandle]:
    loaded = []
    for version in (1, 2):
        booster = ab_model.load_booster(version)
        booster.set_param({"nthread": 1})  # as the server loads it
        loaded.append(ModelHandle(version, booster, ab_model.threshold(version) + 0.01 * version))
    return loaded


def new_server(settings, ab_model, tmp_path, routing: Routing) -> ModelServer:
    server = ModelServer(make_config(settings, tmp_path, model_name=ab_model.model_name, feast=None))
    server.routing = routing
    return server


async def in_one_turn(server: ModelServer, deployment, rows, customers, prefix: str) -> list:
    """Every row submitted before the loop turns once more: one turn's rows."""
    pending = [
        server.score_one_soon(deployment, as_json_row(row), customer_id=c, request_id=f"{prefix}{i}", started=0.0)
        for i, (row, c) in enumerate(zip(rows, customers, strict=True))
    ]
    return await asyncio.gather(*pending, return_exceptions=True)


@pytest.mark.parametrize(
    ("routing", "answering"),
    [
        (Routing(0.0, "split", True), {"champion"}),
        (Routing(0.3, "split", True), {"champion", "challenger"}),
        (Routing(1.0, "split", True), {"challenger"}),
        (Routing(0.3, "shadow", True), {"champion"}),
    ],
    ids=["champion-only", "sticky-0.3", "all-challenger", "shadow"],
)
def test_one_turn_answers_and_logs_what_each_row_alone_gets(
    settings, ab_model, handles, tmp_path, monkeypatch, routing, answering
):
    deployment = Deployment(*handles)
    server = new_server(settings, ab_model, tmp_path, routing)
    rows = random_rows(150, seed=21)
    customers = [None if index % 4 == 0 else index * 7919 for index in range(len(rows))]

    async def one_by_one() -> list[dict]:  # each row alone in its turn
        return [
            await server.score_one_soon(
                deployment, as_json_row(row), customer_id=c, request_id=f"alone-{i}", started=0.0
            )
            for i, (row, c) in enumerate(zip(rows, customers, strict=True))
        ]

    server._random = random.Random(3)  # the split's draws for rows without a customer: the same both times
    alone = asyncio.run(one_by_one())
    champion_calls, challenger_calls = Calls(monkeypatch, handles[0]), Calls(monkeypatch, handles[1])
    server._random = random.Random(3)
    together = asyncio.run(in_one_turn(server, deployment, rows, customers, "turn-"))

    for one, other in zip(alone, together, strict=True):
        assert {k: v for k, v in one.items() if k not in ("request_id", "latency_ms")} == {
            k: v for k, v in other.items() if k not in ("request_id", "latency_ms")
        }  # the probabilities equal as floats: bit for bit
    assert [answer["request_id"] for answer in together] == [f"turn-{i}" for i in range(len(rows))]
    assert {answer["variant"] for answer in together} == answering
    # one call per model that answered (the shadow model scores every row once more, in one call)
    by_champion = sum(answer["variant"] == "champion" for answer in together)
    assert champion_calls.matrices == ([by_champion] if by_champion else []) and champion_calls.rows == 0
    by_challenger = len(rows) - by_champion if routing.mode == "split" else len(rows)
    assert challenger_calls.matrices == ([by_challenger] if by_challenger else []) and challenger_calls.rows == 0

    server.logger.start()
    server.logger.close()
    log = read_prediction_log(server.config.log_dir)
    alones = log[log["request_id"].str.startswith("alone-")]
    turns = log[log["request_id"].str.startswith("turn-")]
    alones = alones.assign(key=alones["request_id"].str.removeprefix("alone-").astype(int))
    turns = turns.assign(key=turns["request_id"].str.removeprefix("turn-").astype(int))
    alones = alones.sort_values(["key", "variant"]).reset_index(drop=True)
    turns = turns.sort_values(["key", "variant"]).reset_index(drop=True)
    assert len(alones) == len(turns) == len(rows) * (2 if routing.mode == "shadow" else 1)
    same = [c for c in log.columns if c not in ("time", "request_id", "latency_ms")]
    assert alones[same].equals(turns[same])


def test_a_row_alone_takes_the_one_row_buffer_and_turns_do_not_mix(settings, ab_model, handles, tmp_path, monkeypatch):
    server = new_server(settings, ab_model, tmp_path, Routing(0.0, "split", True))
    handle = handles[0]
    calls = Calls(monkeypatch, handle)
    rows = random_rows(5, seed=22)
    expected = [handle.predictor.booster.inplace_predict(row[None, :])[0].item() for row in rows]

    async def turns() -> list[float]:
        first = await server.score_row_soon(handle, "champion", as_json_row(rows[0]), request_id="a", started=0.0)
        rest = await asyncio.gather(
            *(
                server.score_row_soon(handle, "champion", as_json_row(row), request_id=f"b{i}", started=0.0)
                for i, row in enumerate(rows[1:])
            )
        )
        return [first, *rest]

    assert asyncio.run(turns()) == expected
    assert calls.rows == 1 and calls.matrices == [4]
    assert server.row_queue._waiting == {}  # nothing left waiting for a turn


def test_a_row_whose_log_write_fails_gets_the_error_and_the_others_their_answers(
    settings, ab_model, handles, tmp_path, monkeypatch
):
    server = new_server(settings, ab_model, tmp_path, Routing(0.0, "split", True))
    deployment = Deployment(handles[0], None)
    log_row = server.logger.log_row

    def failing_for_one(when, request_id, *rest):
        if request_id == "row-2":
            raise PredictionLogUnavailable("cannot write the journal: No space left on device")
        return log_row(when, request_id, *rest)

    monkeypatch.setattr(server.logger, "log_row", failing_for_one)
    rows = random_rows(5, seed=23)
    answers = asyncio.run(in_one_turn(server, deployment, rows, [None] * 5, "row-"))
    assert isinstance(answers[2], PredictionLogUnavailable)
    answered = [answer for i, answer in enumerate(answers) if i != 2]
    assert [answer["request_id"] for answer in answered] == ["row-0", "row-1", "row-3", "row-4"]
    counted = server.metrics.registry.get_sample_value("ml_platform_serving_predictions_total", {"variant": "champion"})
    assert counted == 4  # the refused row is not counted as a prediction

    server.logger.start()
    server.logger.close()
    log = read_prediction_log(server.config.log_dir)
    assert sorted(log["request_id"]) == ["row-0", "row-1", "row-3", "row-4"]
    np.testing.assert_array_equal(
        log.sort_values("request_id")["probability"].to_numpy(), [answer["probability"] for answer in answered]
    )


def test_concurrent_one_row_requests_get_their_own_rows_on_every_protocol(settings, champion_version, tmp_path):
    """32 clients at once, each with its own row, on /predict, v2 infer and /invocations: under load the
    server scores rows of several requests together; each answer must still be its own row's."""
    rows = random_rows(96, seed=24)
    config = make_config(settings, tmp_path, feast=None)
    with serve(config) as running:
        booster = running.server.deployment.champion.predictor.booster
        expected = np.asarray(booster.inplace_predict(rows), dtype="float64")
        name = config.model_name
        f = list(MODEL_FEATURES)

        def ask(index: int) -> float:
            row = as_json_row(rows[index])
            protocol = index % 3
            with running.client() as client:
                if protocol == 0:
                    answer = client.post("/predict", json={"features": row, "request_id": f"c-{index}"})
                    assert answer.status_code == 200, answer.text
                    return answer.json()["probability"]
                if protocol == 1:
                    tensor = {"name": "input-0", "shape": [1, 9], "datatype": "FP64", "data": row}
                    answer = client.post(f"/v2/models/{name}/infer", json={"id": f"c-{index}", "inputs": [tensor]})
                    assert answer.status_code == 200, answer.text
                    return answer.json()["outputs"][0]["data"][0]
                body = json.dumps({"dataframe_split": {"columns": f, "data": [row]}})
                answer = client.post(
                    "/invocations",
                    content=body,
                    headers={"content-type": "application/json", "x-request-id": f"c-{index}"},
                )
                assert answer.status_code == 200, answer.text
                return answer.json()["predictions"][0]

        order = list(range(len(rows)))
        random.Random(5).shuffle(order)
        with ThreadPoolExecutor(32) as pool:
            got = dict(zip(order, pool.map(ask, order), strict=True))
        assert [got[index] for index in range(len(rows))] == expected.tolist()
        running.flush_log()
        log = read_prediction_log(config.log_dir)
    logged = log[log["request_id"].str.startswith("c-")]
    assert len(logged) == len(rows)
    by_id = dict(zip(logged["request_id"], logged["probability"], strict=True))
    assert [by_id[f"c-{index}"] for index in range(len(rows))] == expected.tolist()

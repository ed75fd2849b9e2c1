"""Bad input is answered 4xx (never 500) with a message naming the field; auth; body and batch limits."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.conftest import make_config, serve

GOOD = [120.0, 13.5, 1.0, 8.0, 4.0, 80.0, 320.0, 2.5, 1.5]
TRANSACTION = {"customer_id": 5, "amount": 10.0, "category": "fuel", "channel": "online"}
TOKEN = "s3cret-token"


def raw(client, path: str, text: str):
    return client.post(path, content=text.encode(), headers={"Content-Type": "application/json"})


CASES = [
    # (name, body (dict or raw JSON text), status, field, words the message must contain)
    (
        "too few features",
        {"features": GOOD[:7]},
        422,
        "features",
        ["expected 9 numbers", "amount, hour_of_day", "got 7"],
    ),
    ("too many features", {"features": GOOD + [1.0]}, 422, "features", ["expected 9", "got 10"]),
    ("string feature", {"features": [*GOOD[:3], "x", *GOOD[4:]]}, 422, "features[3]", ["expected a number"]),
    ("bool feature", {"features": [True, *GOOD[1:]]}, 422, "features[0]", ["expected a number"]),
    ("features not a list", {"features": "1,2,3"}, 422, "features", ["expected a list"]),
    ("NaN literal", '{"features": [NaN, 13.5, 1, 8, 4, 80, 320, 2.5, 1.5]}', 422, "features[0]", ["finite"]),
    ("Infinity literal", '{"features": [1, 13.5, 1, 8, 4, 80, 320, Infinity, 1.5]}', 422, "features[7]", ["finite"]),
    (
        "-Infinity amount",
        '{"customer_id": 5, "amount": -Infinity, "category": "fuel", "channel": "online"}',
        422,
        "amount",
        ["finite"],
    ),
    ("unknown category", {**TRANSACTION, "category": "toys"}, 422, "category", ["'toys'", "grocery", "gift_cards"]),
    ("unknown channel", {**TRANSACTION, "channel": "web"}, 422, "channel", ["'web'", "in_store, online"]),
    ("missing amount", {k: v for k, v in TRANSACTION.items() if k != "amount"}, 422, "amount", ["required"]),
    ("string customer", {**TRANSACTION, "customer_id": "5"}, 422, "customer_id", ["integer"]),
    ("negative amount", {**TRANSACTION, "amount": -3.0}, 422, "amount", ["greater than or equal"]),
    ("bad timestamp", {**TRANSACTION, "event_timestamp": "yesterday"}, 422, "event_timestamp", ["ISO 8601"]),
    ("neither shape", {"amount": 3.0}, 422, "features", ["'features'", "'customer_id'"]),
    ("not an object", "[1, 2, 3]", 422, "body", ["JSON object"]),
    ("invalid JSON", '{"features": [1, 2', 400, "body", ["not valid JSON"]),
    ("empty body", "", 400, "body", ["empty"]),
    ("instances not a list", {"instances": {"features": GOOD}}, 422, "instances", ["list"]),
    ("empty instances", {"instances": []}, 422, "instances", ["at least one"]),
    (
        "bad instance",
        {"instances": [{"features": GOOD}, {**TRANSACTION, "category": "x"}]},
        422,
        "instances[1].category",
        ["grocery"],
    ),
    ("instance not an object", {"instances": [{"features": GOOD}, 3]}, 422, "instances[1]", ["expected an object"]),
]


@pytest.mark.parametrize(("name", "body", "status", "field", "words"), CASES, ids=[case[0] for case in CASES])
def test_bad_predict_requests(main_server, name, body, status, field, words):
    with main_server.client() as client:
        answer = raw(client, "/predict", body) if isinstance(body, str) else client.post("/predict", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert set(error) == {"error", "field"}
    assert error["field"] == field
    assert error["error"].startswith(f"{field}: ")
    for word in words:
        assert word in error["error"], error["error"]


V2_CASES = [
    ({"inputs": [{"name": "input-0", "shape": [1, 7], "datatype": "FP64", "data": [1.0] * 7}]}, "inputs[0].shape"),
    ({"inputs": [{"name": "input-0", "shape": [2, 9], "datatype": "FP64", "data": [1.0] * 9}]}, "inputs[0].data"),
    ({"inputs": [{"name": "input-0", "shape": [1, 9], "datatype": "FP64", "data": ["a"] * 9}]}, "inputs[0].data"),
    ({"inputs": [{"name": "input-0", "shape": [1, 9], "datatype": "BYTES", "data": [1] * 9}]}, "inputs[0].datatype"),
    ({"inputs": []}, "inputs"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1]}] * 2}, "inputs"),
    (
        {
            "inputs": [{"name": "input-0", "shape": [1, 9], "datatype": "FP64", "data": [1] * 9}],
            "outputs": [{"name": "x"}],
        },
        "outputs[0].name",
    ),
    ({"inputs": [{"name": "input-0", "datatype": "FP64", "data": [1] * 9}]}, "inputs[0].shape"),
]


@pytest.mark.parametrize(("body", "field"), V2_CASES)
def test_bad_v2_requests(main_server, settings, body, field):  # noqa: F811
    with main_server.client() as client:
        answer = client.post(f"/v2/models/{settings.model_name}/infer", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert answer.json()["error"].startswith(f"{field}: ")


def test_bad_v2_nan(main_server, settings):  # noqa: F811
    body = (
        '{"inputs": [{"name": "input-0", "shape": [1, 9], "datatype": "FP64", "data": [NaN, 1, 1, 1, 1, 1, 1, 1, 1]}]}'
    )
    with main_server.client() as client:
        answer = raw(client, f"/v2/models/{settings.model_name}/infer", body)
    assert answer.status_code == 422 and "finite" in answer.json()["error"]


def test_bad_routing_updates(main_server):
    with main_server.client() as client:
        weight = client.put("/admin/routing", json={"challenger_weight": 1.5})
        mode = client.put("/admin/routing", json={"mode": "canary"})
        unknown = client.put("/admin/routing", json={"weight": 0.1})
        routing = client.get("/admin/routing").json()
    assert weight.status_code == 422 and weight.json()["field"] == "challenger_weight"
    assert mode.status_code == 422 and mode.json()["field"] == "mode" and "'split'" in mode.json()["error"]
    assert unknown.status_code == 422 and unknown.json()["field"] == "weight"
    assert routing["challenger_weight"] == 0.0 and routing["mode"] == "split"


def test_garbage_never_gets_a_500(main_server, settings):  # noqa: F811
    bodies = ["null", "1", '"x"', "{}", '{"features": null}', '{"features": [[1,2]]}', '{"instances": [null]}',
              '{"customer_id": 1e400}', '{"features": [1e999, 1, 1, 1, 1, 1, 1, 1, 1]}', '{"customer_id": true}',
              '{"customer_id": -1, "amount": 1, "category": "fuel", "channel": "online"}', "\xff\xfe"]  # fmt: skip
    paths = ["/predict", f"/v2/models/{settings.model_name}/infer", "/invocations"]
    with main_server.client() as client:
        for path in paths:
            for body in bodies:
                answer = raw(client, path, body)
                assert 400 <= answer.status_code < 500, (path, body, answer.status_code, answer.text)
        assert client.post("/invocations", content=b"amount\n1").status_code == 415  # no content type


@pytest.fixture(scope="module")
def strict_server(settings, tmp_path_factory):  # noqa: F811
    """No feature store, a token, a small body limit and a small batch limit."""
    config = make_config(
        settings,
        tmp_path_factory.mktemp("strict"),
        feast=None,
        auth_token=TOKEN,
        max_body_bytes=4_000,
        max_batch_rows=10,
    )
    with serve(config) as running:
        yield running


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_auth_required_when_a_token_is_set(strict_server, settings):  # noqa: F811
    with strict_server.client() as client:
        for path in ("/health", "/ping", "/v2/health/live", "/v2/health/ready", "/metrics"):
            assert client.get(path).status_code == 200, path
        missing = client.post("/predict", json={"features": GOOD})
        wrong = client.post("/predict", json={"features": GOOD}, headers=auth("nope"))
        right = client.post("/predict", json={"features": GOOD}, headers=auth())
        for method, path in (
            ("GET", "/admin/routing"),
            ("PUT", "/admin/routing"),
            ("POST", "/invocations"),
            ("GET", f"/v2/models/{settings.model_name}"),
            ("POST", f"/v2/models/{settings.model_name}/infer"),
        ):
            assert client.request(method, path, json={}).status_code == 401, path
        assert client.get("/admin/routing", headers=auth()).status_code == 200
    assert missing.status_code == 401 and missing.json()["field"] == "authorization"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert right.status_code == 200 and 0 <= right.json()["probability"] <= 1


def test_no_auth_when_no_token(main_server):
    with main_server.client() as client:
        assert client.post("/predict", json={"features": GOOD}).status_code == 200
        assert client.get("/admin/routing").status_code == 200


def test_body_and_batch_limits(strict_server):
    with strict_server.client(headers=auth()) as client:
        big = client.post("/predict", content=json.dumps({"features": GOOD, "pad": "x" * 5_000}).encode())

        def chunks():
            yield b'{"features": ['
            for _ in range(1_000):
                yield b"1.0, "
            yield b"1.0]}"

        streamed = client.post("/predict", content=chunks())  # chunked: no Content-Length to check first
        too_many = client.post("/predict", json={"instances": [{"features": GOOD}] * 11})
        just_enough = client.post("/predict", json={"instances": [{"features": GOOD}] * 10})
    assert big.status_code == 413 and big.json()["field"] == "body" and "4000" in big.json()["error"]
    assert streamed.status_code == 413 and streamed.json()["field"] == "body"
    assert too_many.status_code == 413 and too_many.json()["field"] == "instances"
    assert "11 rows" in too_many.json()["error"] and "10" in too_many.json()["error"]
    assert just_enough.status_code == 200 and len(just_enough.json()["predictions"]) == 10


def test_customer_id_without_feature_store_is_400(strict_server):
    with strict_server.client(headers=auth()) as client:
        single = client.post("/predict", json=TRANSACTION)
        batch = client.post("/predict", json={"instances": [{"features": GOOD}, TRANSACTION]})
    assert single.status_code == 400 and single.json()["field"] == "customer_id"
    assert "features must be given" in single.json()["error"]
    assert batch.status_code == 400 and batch.json()["field"] == "instances[1].customer_id"


def metric_samples(client) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_requests(main_server):
    predict_ok = (
        "ml_platform_serving_requests_total",
        (("route", "/predict"), ("status_code", "200"), ("variant", "champion")),
    )
    predict_422 = (
        "ml_platform_serving_requests_total",
        (("route", "/predict"), ("status_code", "422"), ("variant", "none")),
    )
    latency = (
        "ml_platform_serving_request_duration_seconds_count",
        (("route", "/predict"), ("status_code", "200"), ("variant", "champion")),
    )
    predictions = ("ml_platform_serving_predictions_total", (("variant", "champion"),))
    with main_server.client() as client:
        before = metric_samples(client)
        for _ in range(7):
            assert client.post("/predict", json={"features": GOOD}).status_code == 200
        assert client.post("/predict", json={"instances": [{"features": GOOD}] * 5}).status_code == 200
        for _ in range(3):
            assert client.post("/predict", json={"features": GOOD[:2]}).status_code == 422
        after = metric_samples(client)
    assert after[predict_ok] - before.get(predict_ok, 0) == 8
    assert after[latency] - before.get(latency, 0) == 8
    assert after[predict_422] - before.get(predict_422, 0) == 3
    assert after[predictions] - before.get(predictions, 0) == 12
    assert after[("ml_platform_serving_model_version", (("variant", "champion"),))] >= 1

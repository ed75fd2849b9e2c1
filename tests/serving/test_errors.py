"""Bad input is answered 4xx (never 500) with a message naming the field; auth; body and batch limits."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from urllib.parse import urlparse

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.bodies import CASES, GOOD, TRANSACTION
from tests.support.servers import make_config, serve

TOKEN = "s3cret-token"
ADMIN_TOKEN = "adm1n-token"


def raw(client, path: str, text: str):
    return client.post(path, content=text.encode(), headers={"Content-Type": "application/json"})


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
def test_bad_v2_requests(main_server, settings, body, field):
    with main_server.client() as client:
        answer = client.post(f"/v2/models/{settings.model_name}/infer", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert answer.json()["error"].startswith(f"{field}: ")


def test_bad_v2_nan(main_server, settings):
    body = (
        '{"inputs": [{"name": "input-0", "shape": [1, 9], "datatype": "FP64", "data": [NaN, 1, 1, 1, 1, 1, 1, 1, 1]}]}'
    )
    with main_server.client() as client:
        answer = raw(client, f"/v2/models/{settings.model_name}/infer", body)
    assert answer.status_code == 422 and "finite" in answer.json()["error"]


def test_bad_routing_updates(strict_server):
    with strict_server.client(headers=auth(ADMIN_TOKEN)) as client:
        weight = client.put("/admin/routing", json={"challenger_weight": 1.5})
        mode = client.put("/admin/routing", json={"mode": "canary"})
        unknown = client.put("/admin/routing", json={"weight": 0.1})
        routing = client.get("/admin/routing").json()
    assert weight.status_code == 422 and weight.json()["field"] == "challenger_weight"
    assert mode.status_code == 422 and mode.json()["field"] == "mode" and "'split'" in mode.json()["error"]
    assert unknown.status_code == 422 and unknown.json()["field"] == "weight"
    assert routing["challenger_weight"] == 0.0 and routing["mode"] == "split"


def test_garbage_never_gets_a_500(main_server, settings):
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
def strict_server(settings, tmp_path_factory):
    """No feature store, a scoring and an admin token, a small body limit and a small batch limit."""
    config = make_config(
        settings,
        tmp_path_factory.mktemp("strict"),
        feast=None,
        auth_token=TOKEN,
        admin_token=ADMIN_TOKEN,
        max_body_bytes=4_000,
        max_batch_rows=10,
    )
    with serve(config) as running:
        yield running


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_auth_required_when_a_token_is_set(strict_server, settings):
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
        assert client.get("/admin/routing", headers=auth(ADMIN_TOKEN)).status_code == 200
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


# ---- what every protocol shares: reading the body ------------------------------------------------------
DEEP_ARRAYS = b'{"features": ' + b"[" * 1_500 + b"]" * 1_500 + b"}"
DEEP_OBJECTS = b'{"a": ' * 1_500 + b"1" + b"}" * 1_500
HUGE_INTEGER = b'{"features": [' + b"7" * 5_000 + b", 1, 1, 1, 1, 1, 1, 1, 1]}"
BODY_CASES = [
    # (name, body, content type, status, message of /predict and v2 infer (the server's error body))
    ("deep arrays", DEEP_ARRAYS, "application/json", 400, "body: not valid JSON: nested deeper than 64 levels"),
    ("deep objects", DEEP_OBJECTS, "application/json", 400, "body: not valid JSON: nested deeper than 64 levels"),
    ("unclosed deep", b"[" * 20_000, "application/json", 400, "body: not valid JSON: nested deeper than 64 levels"),
    (
        "huge integer",
        HUGE_INTEGER,
        "application/json",
        400,
        "body: not valid JSON: a number with more than 4300 digits",
    ),
    (
        "not UTF-8",
        b'{"features": [1, 2, 3\xff]}',
        "application/json",
        400,
        "body: not valid JSON: not UTF-8 text (invalid start byte at byte 21)",
    ),
    ("empty body", b"", "application/json", 400, "body: expected a JSON object, got an empty body"),
    (
        "wrong content type",
        b"amount,hour_of_day\n1,2\n",
        "text/csv",
        400,
        "body: not valid JSON: Expecting value: line 1 column 1 (char 0)",
    ),
]


@pytest.mark.parametrize(
    ("name", "body", "content_type", "status", "message"), BODY_CASES, ids=[case[0] for case in BODY_CASES]
)
def test_unreadable_bodies_on_every_protocol(main_server, settings, name, body, content_type, status, message):
    headers = {"Content-Type": content_type}
    with main_server.client() as client:
        predict = client.post("/predict", content=body, headers=headers)
        v2 = client.post(f"/v2/models/{settings.model_name}/infer", content=body, headers=headers)
        invocations = client.post("/invocations", content=body, headers=headers)
    for answer in (predict, v2):
        assert answer.status_code == status, answer.text
        assert answer.json() == {"error": message, "field": "body"}
    # MLflow's protocol answers in MLflow's shape; a CSV body is CSV there, and its header lacks columns
    assert invocations.status_code == 400, invocations.text
    error = invocations.json()
    assert set(error) == {"error_code", "message"}
    if content_type == "text/csv":
        assert error["error_code"] == "INVALID_PARAMETER_VALUE"
        assert error["message"].startswith("text/csv header: missing columns"), error["message"]
    else:
        assert error["error_code"] == "BAD_REQUEST"
        assert error["message"].startswith("body: not valid JSON"), error["message"]


def test_a_content_type_mlflow_does_not_read_is_415(main_server):
    with main_server.client() as client:
        xml = client.post("/invocations", content=b"<row/>", headers={"Content-Type": "application/xml"})
        none = client.post("/invocations", content=b"amount\n1")
    for answer in (xml, none):
        assert answer.status_code == 415
        assert answer.headers["content-type"].startswith("text/plain")
    assert "application/json and text/csv" in xml.text and "'application/xml'" in xml.text


def test_the_depth_limit_is_64_levels(main_server, settings):
    """64 levels are read as JSON and then judged as a request (422 naming the field); 65 are not read."""

    def nested(levels: int) -> bytes:
        return b"[" * levels + b"1" + b"]" * levels

    v2_head = b'{"inputs": [{"name": "input-0", "shape": [1, 9], "datatype": "FP64", "data": '
    with main_server.client() as client:
        predict = [client.post("/predict", content=b'{"features": ' + nested(n) + b"}") for n in (63, 64)]
        v2 = [
            client.post(f"/v2/models/{settings.model_name}/infer", content=v2_head + nested(n) + b"}]}")
            for n in (61, 62)
        ]
    for inside, outside, field in ((*predict, "features[0]"), (*v2, "inputs[0].data")):
        assert inside.status_code == 422 and inside.json()["field"] == field, inside.text
        assert outside.status_code == 400, outside.text
        assert outside.json() == {"error": "body: not valid JSON: nested deeper than 64 levels", "field": "body"}


LONE_SURROGATES = [
    # (route, body: JSON text with a \ud800-style escape, field)
    ("/predict", '{"features": [1, 2, 3, 4, 5, 6, 7, 8, 9], "request_id": "ab\\ud800"}', "request_id"),
    ("/predict", '{"instances": [{"features": [1, 2, 3, 4, 5, 6, 7, 8, 9], "x\\udfff": 1}]}', "instances[0].x\\udfff"),
    ("v2", '{"id": "\\udbff", "inputs": []}', "id"),
    (
        "v2",
        '{"inputs": [{"name": "input-0\\ud800", "shape": [1, 9], "datatype": "FP64", "data": []}]}',
        "inputs[0].name",
    ),
]


@pytest.mark.parametrize(("route", "body", "field"), LONE_SURROGATES)
def test_lone_surrogates_are_422_naming_the_field(main_server, settings, route, body, field):
    path = f"/v2/models/{settings.model_name}/infer" if route == "v2" else route
    with main_server.client() as client:
        answer = raw(client, path, body)
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert error["field"] == field
    assert error["error"].startswith(f"{field}: expected Unicode text (valid UTF-8), got a lone surrogate in '")


def test_valid_surrogate_pairs_are_text(main_server):
    with main_server.client() as client:
        answer = raw(client, "/predict", '{"features": [1, 2, 3, 4, 5, 6, 7, 8, 9], "request_id": "\\ud83d\\ude00"}')
    assert answer.status_code == 200 and answer.json()["request_id"] == "\U0001f600"


def test_a_client_hanging_up_mid_body_is_no_server_error(main_server, settings):
    """The client announces a body, sends part of it and closes: nobody gets an answer, and the request is
    counted as 499 (client closed request), not 5xx, so hang-ups cannot move the error rate."""
    paths = {"/predict": "/predict", "/invocations": "/invocations"}
    paths[f"/v2/models/{settings.model_name}/infer"] = "/v2/models/{name}/infer"
    address = urlparse(main_server.url)
    with main_server.client() as client:
        before = request_counts(client, set(paths.values()))
        for path in paths:
            with socket.create_connection((address.hostname, address.port), timeout=30) as connection:
                head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
                connection.sendall(head.encode() + b'{"features": [1, 2')
                connection.shutdown(socket.SHUT_WR)
                assert connection.recv(1024) == b""
        # A hang-up is counted once the server noticed it; 30 s is ample even when the event loop shares two
        # busy cores with other tests (past it, the assertion below shows what was counted).
        deadline = time.monotonic() + 30
        while sum((new := request_counts(client, set(paths.values())) - before).values()) < len(paths):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert new == Counter({(label, "499"): 1 for label in paths.values()}), new


def request_counts(client, routes: set[str]) -> Counter:
    """(route, status) -> requests answered so far, on ``routes``."""
    counts = Counter()
    for (name, labels), value in metric_samples(client).items():
        labels = dict(labels)
        if name == "ml_platform_serving_requests_total" and labels["route"] in routes:
            counts[(labels["route"], labels["status_code"])] += int(value)
    return counts

"""Bad input cannot force a rollback: 10,000 malformed requests, every one answered 4xx, none counted 5xx.

The `error_rate` check of the monitoring graph (assets/monitoring.py `serving_metrics`) fails the model
when more than 1% of the scoring routes' answers are 5xx. Anyone who can reach the server can send
garbage; if garbage could be answered 5xx, anyone could fail a good model. So: a thread pool sends
10,000 malformed requests of many kinds (and 100 valid ones, the control) over keep-alive connections
to /predict, /invocations and both v2 infer routes, plus clients that hang up mid-body; then the serving
metrics are computed exactly as the monitoring asset computes them (a scrape of /metrics before and
after, the prediction log over the window) and the `error_rate` rule must pass with 0 errors.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import httpx
import pytest

from assets.monitoring import rule_check
from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.monitoring.alerts import DEFAULT_RULES
from ml_platform.monitoring.serving_metrics import scrape_metrics, serving_metrics
from ml_platform.monitoring.window import Window, read_predictions
from tests.support.servers import make_config, serve

TOKEN = "load-scoring-token"
MALFORMED = 10_000
VALID = 100
HANG_UPS = 30
THREADS = 4
MAX_BODY = 32_000
MAX_ROWS = 10
GOOD = [120.0, 13.5, 1.0, 8.0, 4.0, 80.0, 320.0, 2.5, 1.5]
JSON = "application/json"


@pytest.fixture(scope="module")
def load_server(settings, champion_version, tmp_path_factory):
    config = make_config(
        settings,
        tmp_path_factory.mktemp("malformed"),
        auth_token=TOKEN,
        max_body_bytes=MAX_BODY,
        max_batch_rows=MAX_ROWS,
    )
    with serve(config) as running:
        yield running


# ---- the malformed requests ----------------------------------------------------------------------------
# Each kind builds (body, content type or None, headers) for a route family ("predict", "mlflow", "v2")
# and names the statuses it may get: an exact one where every route must agree, else any 4xx.
ANY_4XX = frozenset(range(400, 500))


def _row_body(family: str, row: str) -> str:
    """A body of the family's one-row form around ``row`` (JSON text of a list of 9 values)."""
    if family == "predict":
        return '{"features": ' + row + "}"
    if family == "mlflow":
        return '{"dataframe_split": {"columns": ' + _columns() + ', "data": [' + row + "]}}"
    return '{"inputs": [{"name": "input-0", "shape": [1, 9], "datatype": "FP64", "data": ' + row + "}]}"


def _columns() -> str:
    return "[" + ", ".join(f'"{name}"' for name in MODEL_FEATURES) + "]"


def _good_row() -> str:
    return "[" + ", ".join(map(str, GOOD)) + "]"


def _with_value(rng: random.Random, value: str) -> str:
    values = [str(v) for v in GOOD]
    values[rng.randrange(len(values))] = value
    return "[" + ", ".join(values) + "]"


def invalid_syntax(rng, family):
    body = _row_body(family, _good_row())
    cut = rng.randrange(1, len(body) - 1)
    # a cut body, closed or not, then a character no JSON text has there: never valid JSON
    return body[:cut] + rng.choice(["", "}", "]", ",", "'"]) + "#", JSON, {}, {400}


def deep_arrays(rng, family):
    depth = rng.choice([65, 200, 1_500, 15_000])
    return _row_body(family, "[" * depth + "]" * depth), JSON, {}, {400}


def deep_objects(rng, family):
    depth = rng.choice([65, 1_500, 4_000])
    return '{"a": ' * depth + "1" + "}" * depth, JSON, {}, {400}


def unbalanced_deep(rng, family):
    return "[" * rng.choice([1_500, 20_000]), JSON, {}, {400}


def huge_integer(rng, family):
    digits = rng.choice([4_301, 5_000, 20_000])
    return _row_body(family, _with_value(rng, "7" * digits)), JSON, {}, {400}


def not_utf8(rng, family):
    prefix = _row_body(family, _good_row()).encode()
    return prefix[:10] + bytes([rng.choice([0xFF, 0xFE, 0xC3, 0x80, 0xED])]) + prefix[10:], JSON, {}, {400}


def empty_body(rng, family):
    return "", JSON, {}, {400}


def not_an_object(rng, family):
    return rng.choice(["null", "1", '"x"', "[]", "[1, 2]", "true"]), JSON, {}, ANY_4XX


def lone_surrogate(rng, family):
    escape = rng.choice(["\\ud800", "\\udfff", "\\udbff x", "a\\udc00"])
    if family == "predict":
        body = '{"features": ' + _good_row() + ', "request_id": "' + escape + '"}'
    elif family == "mlflow":
        body = '{"dataframe_split": {"columns": ["' + escape + '"], "data": [[1.0]]}}'
    else:
        body = '{"id": "' + escape + '", ' + _row_body(family, _good_row())[1:]
    return body, JSON, {}, ANY_4XX


def surrogate_key(rng, family):
    if family == "mlflow":  # MLflow's protocol ignores keys besides its forms: this one is the only key
        return '{"\\ud800": ' + _row_body(family, _good_row()) + "}", JSON, {}, ANY_4XX
    return '{"\\ud800": 1, ' + _row_body(family, _good_row())[1:], JSON, {}, ANY_4XX


def wrong_types(rng, family):
    # MLflow's protocol converts true and "1e3" to numbers (so does /invocations): not wrong there
    value = rng.choice(['"abc"', "{}", "[1, 2]"] if family == "mlflow" else ['"abc"', "true", "{}", "[1, 2]", '"1e3"'])
    return _row_body(family, _with_value(rng, value)), JSON, {}, ANY_4XX


def non_finite(rng, family):
    value = rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
    if family == "mlflow":  # MLflow's protocol reads NaN as a missing value: a valid request there
        return _row_body(family, _with_value(rng, '"x"')), JSON, {}, ANY_4XX
    return _row_body(family, _with_value(rng, value)), JSON, {}, {422}


def wrong_shapes(rng, family):
    if family == "predict":
        body = rng.choice(['{"features": [1, 2, 3]}', '{"features": []}', '{"instances": [[1, 2]]}', '{"amount": 3}'])
    elif family == "mlflow":
        body = rng.choice(
            [
                '{"dataframe_split": {"columns": [{}], "data": []}}',
                '{"dataframe_split": {"columns": ["amount"], "data": [[1, 2, 3]]}}',
                '{"dataframe_records": [1, 2]}',
                '{"inputs": [[1, 2]]}',
                '{"columns": ["amount"], "data": [[1]]}',
            ]
        )
    else:
        shape = rng.choice(["[0, 9]", "[2, 9]", "[-1, 9]", "[4611686018427387904, 4611686018427387904]", "[1, 9, 1]"])
        body = '{"inputs": [{"name": "input-0", "shape": ' + shape + ', "datatype": "FP64", "data": []}]}'
    return body, JSON, {}, ANY_4XX


def too_many_rows(rng, family):
    rows = MAX_ROWS + rng.randrange(1, 40)
    if family == "predict":
        body = '{"instances": [' + ", ".join(['{"features": ' + _good_row() + "}"] * rows) + "]}"
    elif family == "mlflow":
        body = '{"dataframe_split": {"columns": ' + _columns() + ', "data": [' + ", ".join([_good_row()] * rows) + "]}}"
    else:
        data = ", ".join([_good_row()] * rows)
        body = '{"inputs": [{"name": "input-0", "shape": [' + str(rows) + ', 9], "datatype": "FP64", "data": [' + data
        body += "]}]}"
    return body, JSON, {}, ANY_4XX


def over_the_body_limit(rng, family):
    body = _row_body(family, _good_row())[:-1] + ', "pad": "' + "x" * (MAX_BODY + rng.randrange(1, 5_000)) + '"}'
    return body, JSON, {}, {413}


def wrong_content_type(rng, family):
    content_type = rng.choice(["text/plain", "application/xml", "application/x-www-form-urlencoded", "image/png"])
    body = rng.choice(["<features>1</features>", "features=1,2,3", "\x89PNG\r\n"])
    return body, content_type, {}, ({415} if family == "mlflow" else {400})


def no_content_type(rng, family):
    return "amount\n1", None, {}, ({415} if family == "mlflow" else {400})


def bad_binary_header(rng, family):
    if family != "v2":
        return invalid_syntax(rng, family)
    value = rng.choice(["-1", "abc", "999999", "1e3", "", "5"])
    return (
        _row_body(family, _good_row()),
        "application/octet-stream",
        {"Inference-Header-Content-Length": value},
        {
            400,
            422,
        },
    )


def bad_token(rng, family):
    token = rng.choice(["", "Bearer", "Bearer wrong", "Basic abc", TOKEN, "Bearer " + TOKEN + "x"])
    return _row_body(family, _good_row()), JSON, {"Authorization": token}, {401}


KINDS = [
    invalid_syntax,
    deep_arrays,
    deep_objects,
    unbalanced_deep,
    huge_integer,
    not_utf8,
    empty_body,
    not_an_object,
    lone_surrogate,
    surrogate_key,
    wrong_types,
    non_finite,
    wrong_shapes,
    too_many_rows,
    over_the_body_limit,
    wrong_content_type,
    no_content_type,
    bad_binary_header,
    bad_token,
]


def malformed_requests(model_name: str, version: int, count: int, seed: int = 7):
    """``count`` (kind, path, headers, body, expected statuses), the kinds and routes in turn, seeded."""
    routes = [
        ("predict", "/predict"),
        ("mlflow", "/invocations"),
        ("v2", f"/v2/models/{model_name}/infer"),
        ("v2", f"/v2/models/{model_name}/versions/{version}/infer"),
    ]
    rng = random.Random(seed)
    requests = []
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        family, path = routes[(index // len(KINDS)) % len(routes)]
        body, content_type, headers, expected = kind(rng, family)
        headers = {"Authorization": f"Bearer {TOKEN}", **headers}
        if content_type is not None:
            headers["Content-Type"] = content_type
        content = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        requests.append((kind.__name__, path, headers, content, frozenset(expected)))
    return requests


def valid_requests(model_name: str, count: int):
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": JSON}
    bodies = [
        ("/predict", '{"features": ' + _good_row() + "}"),
        ("/invocations", _row_body("mlflow", _good_row())),
        (f"/v2/models/{model_name}/infer", _row_body("v2", _good_row())),
    ]
    return [("valid", path, auth, body.encode(), frozenset({200})) for path, body in bodies * (count // 3 + 1)][:count]


def send_all(url: str, requests) -> list[int]:
    """Every request's status, in order; POSTs from a thread pool, one keep-alive client per thread."""
    local = threading.local()
    clients = []

    def send(request) -> int:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=url, timeout=60.0)
            clients.append(client)
        _, path, headers, content, _ = request
        return client.post(path, content=content, headers=headers).status_code

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            return list(pool.map(send, requests))
    finally:
        for client in clients:
            client.close()


def hang_up_mid_body(url: str, path: str) -> None:
    """A client that announces a body, sends part of it and closes the connection."""
    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as connection:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {address.hostname}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {JSON}\r\nContent-Length: 1000\r\n\r\n"
        )
        connection.sendall(head.encode() + b'{"features": [1, 2')
        connection.shutdown(socket.SHUT_WR)
        assert connection.recv(1024) == b""  # no answer: the server saw the hang-up


def test_malformed_load_cannot_force_a_rollback(load_server, settings, champion_version, caplog):
    server = load_server.server
    caplog.set_level(logging.WARNING)
    malformed = malformed_requests(settings.model_name, champion_version, MALFORMED)
    valid = valid_requests(settings.model_name, VALID)
    mixed = malformed[:]
    for position, request in zip(range(0, MALFORMED, MALFORMED // VALID), valid, strict=True):
        mixed.insert(position, request)
    start = datetime.now(UTC) - timedelta(seconds=1)
    before = scrape_metrics(load_server.url, token=TOKEN)
    assert before is not None, "the server's /metrics did not answer"

    statuses = send_all(load_server.url, mixed)
    hang_ups = ["/predict", "/invocations", f"/v2/models/{settings.model_name}/infer"] * (HANG_UPS // 3)
    for path in hang_ups:
        hang_up_mid_body(load_server.url, path)

    # every malformed request answered 4xx, with the status its kind calls for
    by_kind: dict[str, Counter] = {}
    unexpected = Counter()
    for (kind, path, _, _, expected), status in zip(mixed, statuses, strict=True):
        by_kind.setdefault(kind, Counter())[status] += 1
        if status not in expected:
            unexpected[(kind, path, status)] += 1
    assert not unexpected, "\n".join(
        f"{kind} {path}: {status} x{count}" for (kind, path, status), count in unexpected.items()
    )
    answered = Counter(statuses)
    # no fast handler raised (the middleware would have sent the request to the route and logged it)
    raised = [record.getMessage() for record in caplog.records if "fast handler" in record.getMessage()]
    assert raised == []
    assert sum(count for status, count in answered.items() if status >= 500) == 0, answered
    assert by_kind["valid"] == Counter({200: VALID})
    assert sum(answered.values()) == MALFORMED + VALID
    assert sum(count for status, count in answered.items() if 400 <= status < 500) == MALFORMED
    assert set(by_kind) == {kind.__name__ for kind in KINDS} | {"valid"}

    # the serving metrics as the monitoring asset computes them, and its error_rate check
    load_server.flush_log()
    deadline = time.monotonic() + 30
    while True:  # the hang-ups are counted when their (unread) answer is sent
        after = scrape_metrics(load_server.url, token=TOKEN)
        window = Window(start=start, end=datetime.now(UTC) + timedelta(seconds=1))
        metrics = serving_metrics(read_predictions(server.config.log_dir, window), window, scrape=after,
                                  previous_scrape=before)  # fmt: skip
        if metrics.requests >= MALFORMED + VALID + len(hang_ups) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert metrics.scraped
    assert metrics.requests == MALFORMED + VALID + len(hang_ups)
    assert metrics.errors == 0
    assert metrics.error_rate == 0.0
    # only the valid requests were scored and logged: no malformed body reached the model
    assert metrics.rows == VALID
    rule = DEFAULT_RULES["error_rate"]
    assert rule.threshold == 0.01 and not rule.fires(metrics.error_rate)
    check = rule_check(rule, metrics.error_rate, window, describe=f"{metrics.errors} of {metrics.requests}")
    assert check.passed, check.description

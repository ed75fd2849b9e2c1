"""Open Inference Protocol v2: health, metadata, infer (JSON and binary tensors); liveness versus readiness.

- Infer answers what the champion's booster answers, bit for bit, for every way of sending the rows:
  one [N, 9] tensor (flat or nested data, shape [9] or [N, 9]) or 9 tensors named after the features,
  FP64, FP32 (rounded to float32, as the datatype holds them) and INT64, missing values as null in
  JSON and NaN in binary data, in JSON or in binary (the binary tensor data extension) both ways.
- The fast path (the ASGI layer) and the route (a server with ``fast_path=False``) answer the same
  bytes for the same body, the same 4xx for every bad one, and log the same rows: the rows answered.
- Every malformed body (binary framing included) is a 4xx naming the field, never a 5xx.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.predictions import read_prediction_log
from ml_platform.registry import CHAMPION
from ml_platform.serving.protocol import v2
from ml_platform.serving.protocol.common import INLINE_ROWS, json_object
from ml_platform.serving.schemas import ApiError
from tests.support.servers import copy_model, make_config, serve

HEADER = "Inference-Header-Content-Length"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def rows(transactions, offline):
    _, features = transactions
    known = features.dropna().head(3).reset_index(drop=True)
    predict, _ = offline
    return known, predict(known)


@pytest.fixture(scope="module")
def route_server(settings, champion_version, tmp_path_factory):
    """The session's model served with every request through the FastAPI route (no fast path)."""
    config = make_config(settings, tmp_path_factory.mktemp("v2_route"), fast_path=False, feast=None)
    with serve(config) as running:
        yield running


@pytest.fixture(scope="module")
def booster_predict(offline):
    predict, _ = offline
    return lambda matrix: predict(pd.DataFrame(matrix, columns=list(MODEL_FEATURES)))


# ---- building requests ---------------------------------------------------------------------------
def sample_rows(n: int, seed: int, missing: float = 0.15) -> np.ndarray:
    """Rows over plausible ranges, full float64 precision, ~``missing`` of the values NaN."""
    rng = np.random.default_rng(seed)
    scale = np.array([400.0, 24.0, 7.0, 90.0, 60.0, 150.0, 8_000.0, 30.0, 5.0])
    matrix = np.abs(rng.normal(size=(n, len(MODEL_FEATURES)))) * scale
    matrix[rng.random(matrix.shape) < missing] = np.nan
    return matrix


def json_values(matrix: np.ndarray) -> list:
    """Values for JSON: nested like ``matrix``, None where NaN, integers kept integers."""
    return (
        [None if np.isnan(v) else v for v in matrix.tolist()]
        if matrix.ndim == 1
        else [json_values(row) for row in matrix]
    )


def flat(matrix: np.ndarray) -> list:
    return json_values(np.asarray(matrix).ravel())


@dataclass
class Case:
    """A request (body and headers) and the rows the server must score for it (float64, NaN: missing)."""

    label: str
    body: bytes
    headers: dict[str, str]
    expected: np.ndarray
    id: str | None = None
    binary_output: bool = False


def json_case(label: str, request: dict, expected: np.ndarray, binary_output: bool = False) -> Case:
    return Case(label, json.dumps(request).encode(), JSON, expected, request.get("id"), binary_output)


def binary_case(label: str, request: dict, tensors: list, expected: np.ndarray, binary_output: bool = False) -> Case:
    """The binary tensor data extension: JSON header, then each binary input's bytes in input order."""
    arrays = iter(tensors)
    for tensor in request["inputs"]:
        if "data" not in tensor:
            tensor.setdefault("parameters", {})["binary_data_size"] = next(arrays).nbytes
    head = json.dumps(request).encode()
    body = head + b"".join(np.ascontiguousarray(t).tobytes() for t in tensors)
    return Case(label, body, {HEADER: str(len(head))}, expected, request.get("id"), binary_output)


def tensor(matrix: np.ndarray, datatype: str = "FP64", name: str = "input-0", **extra) -> dict:
    return {"name": name, "shape": list(matrix.shape), "datatype": datatype, **extra}


def good_cases(prefix: str) -> list[Case]:
    """One of each way of asking, each with its own id (so that two servers answer the same bytes)."""
    one = sample_rows(1, seed=1, missing=0.0)
    gaps = sample_rows(1, seed=2, missing=0.4)
    three = sample_rows(3, seed=3)
    batch64 = sample_rows(64, seed=4)
    batch100 = sample_rows(100, seed=5)
    batch300 = sample_rows(INLINE_ROWS + 44, seed=7)  # more rows than the event loop scores: the route's thread
    whole = np.round(sample_rows(2, seed=6, missing=0.0))
    fp32 = sample_rows(2, seed=7, missing=0.0)
    fp32_widened = fp32.astype("float32").astype("float64")

    def rid(label: str) -> str:
        return f"{prefix}-{label}"

    amount = MODEL_FEATURES.index("amount")
    columnar = [  # shapes [N] and [N, 1]; amount as FP32
        {
            **tensor(three[:, [i]] if i % 2 else three[:, i], "FP32" if i == amount else "FP64", name),
            "data": flat(three[:, i]),
        }
        for i, name in enumerate(MODEL_FEATURES)
    ]
    columnar_expected = three.copy()
    columnar_expected[:, amount] = three[:, amount].astype("float32")
    cases = [
        json_case("one", {"id": rid("one"), "inputs": [{**tensor(one), "data": flat(one)}]}, one),
        json_case("shape9", {"id": rid("shape9"), "inputs": [{**tensor(one[0]), "data": flat(one)}]}, one),
        json_case("nested", {"id": rid("nested"), "inputs": [{**tensor(three), "data": json_values(three)}]}, three),
        json_case("nulls", {"id": rid("nulls"), "inputs": [{**tensor(gaps), "data": flat(gaps)}]}, gaps),
        json_case(
            "ints", {"id": rid("ints"), "inputs": [{**tensor(whole), "data": [int(v) for v in whole.ravel()]}]}, whole
        ),
        json_case(
            "int64",
            {"id": rid("int64"), "inputs": [{**tensor(whole, "INT64"), "data": [int(v) for v in whole.ravel()]}]},
            whole,
        ),
        json_case("fp32", {"id": rid("fp32"), "inputs": [{**tensor(fp32, "FP32"), "data": flat(fp32)}]}, fp32_widened),
        json_case(
            "columnar",
            {"id": rid("columnar"), "inputs": list(reversed(columnar))},
            columnar_expected,
        ),
        json_case("batch64", {"id": rid("batch64"), "inputs": [{**tensor(batch64), "data": flat(batch64)}]}, batch64),
        json_case(
            "batch100", {"id": rid("batch100"), "inputs": [{**tensor(batch100), "data": flat(batch100)}]}, batch100
        ),
        json_case(
            "batch300", {"id": rid("batch300"), "inputs": [{**tensor(batch300), "data": flat(batch300)}]}, batch300
        ),
        json_case(
            "json-in-binary-out",
            {
                "id": rid("json-in-binary-out"),
                "inputs": [{**tensor(three), "data": flat(three)}],
                "outputs": [{"name": "probability", "parameters": {"binary_data": True}}],
            },
            three,
            binary_output=True,
        ),
        binary_case("bin-fp64", {"id": rid("bin-fp64"), "inputs": [tensor(one)]}, [one], one),
        binary_case("bin-nan", {"id": rid("bin-nan"), "inputs": [tensor(three)]}, [three], three),
        binary_case(
            "bin-fp32",
            {"id": rid("bin-fp32"), "inputs": [tensor(fp32, "FP32")]},
            [fp32.astype("<f4")],
            fp32_widened,
        ),
        binary_case(
            "bin-int64",
            {"id": rid("bin-int64"), "inputs": [tensor(whole, "INT64")]},
            [whole.astype("<i8")],
            whole,
        ),
        binary_case(
            "bin-binary-out",
            {"id": rid("bin-binary-out"), "inputs": [tensor(three)], "parameters": {"binary_data_output": True}},
            [three],
            three,
            binary_output=True,
        ),
        binary_case(
            "bin-json-out",  # the output's own flag wins over the request's
            {
                "id": rid("bin-json-out"),
                "inputs": [tensor(one)],
                "parameters": {"binary_data_output": True},
                "outputs": [{"name": "probability", "parameters": {"binary_data": False}}],
            },
            [one],
            one,
        ),
        binary_case(
            "bin-columnar-mixed",  # some tensors in binary, some in JSON, one datatype each
            {
                "id": rid("bin-columnar-mixed"),
                "inputs": [
                    {**tensor(three[:, i], "FP64", name), "data": flat(three[:, i])}
                    if i % 3 == 0
                    else tensor(three[:, i], "FP64", name)
                    for i, name in enumerate(MODEL_FEATURES)
                ],
            },
            [three[:, i].copy() for i in range(len(MODEL_FEATURES)) if i % 3],
            three,
        ),
        binary_case("bin-batch100", {"id": rid("bin-batch100"), "inputs": [tensor(batch100)]}, [batch100], batch100),
    ]
    return cases


def probabilities_of(answer) -> np.ndarray:
    """The probabilities an infer answer holds, in JSON or after its JSON header (binary)."""
    length = answer.headers.get(HEADER)
    if length is None:
        assert answer.headers["content-type"] == "application/json"
        (output,) = answer.json()["outputs"]
        assert "parameters" not in output
        return np.array(output["data"], dtype="float64")
    assert answer.headers["content-type"] == "application/octet-stream"
    header = json.loads(answer.content[: int(length)])
    (output,) = header["outputs"]
    assert "data" not in output
    size = output["parameters"]["binary_data_size"]
    assert len(answer.content) == int(length) + size, "the body is the JSON header and the output's bytes, no more"
    return np.frombuffer(answer.content[int(length) :], dtype="<f8").reshape(output["shape"])


def answer_header(answer) -> dict:
    length = answer.headers.get(HEADER)
    return answer.json() if length is None else json.loads(answer.content[: int(length)])


def post(client, path: str, case: Case):
    return client.post(path, content=case.body, headers=case.headers)


# ---- metadata and the plain infer ----------------------------------------------------------------
def test_metadata(main_server, settings, champion_version):
    with main_server.client() as client:
        server = client.get("/v2").json()
        body = client.get(f"/v2/models/{settings.model_name}").json()
        versioned = client.get(f"/v2/models/{settings.model_name}/versions/{champion_version}")
        ready = client.get(f"/v2/models/{settings.model_name}/ready")
    assert server["name"] == "ml-platform" and server["extensions"] == ["binary_tensor_data"]
    assert body["name"] == settings.model_name
    assert str(champion_version) in body["versions"]
    assert body["platform"] == "xgboost"
    assert body["inputs"] == [
        {
            "name": "input-0",
            "datatype": "FP64",
            "shape": [-1, 9],
            "parameters": {"feature_names": list(MODEL_FEATURES)},
        }
    ]
    assert body["outputs"] == [{"name": "probability", "datatype": "FP64", "shape": [-1]}]
    assert versioned.status_code == 200 and versioned.json()["versions"] == [str(champion_version)]
    assert ready.status_code == 200


def test_infer_one_tensor(main_server, settings, champion_version, rows):
    features, expected = rows
    request = {
        "id": "req-42",
        "inputs": [
            {"name": "input-0", "shape": [len(features), 9], "datatype": "FP64", "data": features.to_numpy().tolist()}
        ],
    }
    flat_request = {**request, "inputs": [{**request["inputs"][0], "data": features.to_numpy().ravel().tolist()}]}
    with main_server.client() as client:
        nested_answer = client.post(f"/v2/models/{settings.model_name}/infer", json=request)
        flat_answer = client.post(
            f"/v2/models/{settings.model_name}/versions/{champion_version}/infer", json=flat_request
        )
    assert nested_answer.status_code == 200, nested_answer.text
    body = nested_answer.json()
    assert body["model_name"] == settings.model_name
    assert body["model_version"] == str(champion_version)
    assert body["id"] == "req-42"
    (output,) = body["outputs"]
    assert output["name"] == "probability" and output["datatype"] == "FP64" and output["shape"] == [len(features)]
    np.testing.assert_array_equal(output["data"], expected)
    assert flat_answer.json()["outputs"] == body["outputs"]


def test_infer_one_tensor_per_feature(main_server, settings, rows):
    features, expected = rows
    inputs = [
        {
            "name": name,
            "shape": [len(features)],
            "datatype": "FP32" if name == "amount" else "FP64",
            "data": features[name].tolist(),
        }
        for name in reversed(MODEL_FEATURES)
    ]
    with main_server.client() as client:
        answer = client.post(f"/v2/models/{settings.model_name}/infer", json={"inputs": inputs})
    assert answer.status_code == 200, answer.text
    # XGBoost compares float32 values: amount rounded to float32 scores exactly as the float64 value did
    np.testing.assert_array_equal(answer.json()["outputs"][0]["data"], expected)
    assert len(answer.json()["id"]) == 32


# ---- every way of asking: the booster's answer; the fast path and the route: the same bytes ---------
def test_every_way_of_asking_answers_what_the_booster_answers(main_server, route_server, settings, booster_predict):
    path = f"/v2/models/{settings.model_name}/infer"
    fast = v2.fast_routes(main_server.server)[path]
    with main_server.client() as fast_client, route_server.client() as route_client:
        for case in good_cases(f"same-{uuid.uuid4().hex[:8]}"):
            answers = [post(client, path, case) for client in (fast_client, route_client)]
            assert [a.status_code for a in answers] == [200, 200], (case.label, [a.text for a in answers])
            first, second = answers
            assert first.content == second.content, case.label
            for name in ("content-type", HEADER.lower()):
                assert first.headers.get(name) == second.headers.get(name), (case.label, name)
            assert int(first.headers["content-length"]) == len(first.content)
            assert (HEADER in first.headers) == case.binary_output, case.label

            header = answer_header(first)
            assert header["id"] == case.id and header["model_name"] == settings.model_name
            probabilities = probabilities_of(first)
            assert probabilities.shape == (len(case.expected),)
            np.testing.assert_array_equal(probabilities, booster_predict(case.expected), err_msg=case.label)

            # bodies of up to INLINE_ROWS rows are answered by the fast path (probed with an id of its own)
            probe = Case(**{**case.__dict__, "body": case.body.replace(case.id.encode(), b"probe-" + case.id.encode())})
            if HEADER in case.headers:
                grown = len(b"probe-")
                probe.headers = {HEADER: str(int(case.headers[HEADER]) + grown)}
            raw_headers = [(key.lower().encode(), value.encode()) for key, value in probe.headers.items()]
            taken = fast(probe.body, time.perf_counter(), {"headers": raw_headers})
            if inspect.isawaitable(taken):  # one plain row: scored in the next loop turn with that turn's rows
                taken = asyncio.run(taken)
            assert (taken is not None) == (len(case.expected) <= INLINE_ROWS), case.label
            if taken is not None:
                assert probabilities_of_fast(taken).tolist() == probabilities.tolist()


def test_one_plain_row_takes_the_short_way_and_nothing_else_does(settings):
    """One FP64 row in JSON (KServe's and Triton's clients' request) is read without the request models;
    every near miss goes the general way (the test above: the same bytes and log rows either way)."""
    plain = [case for case in good_cases("plain") if case.label in ("one", "shape9", "nulls")]
    assert len(plain) == 3
    for case in plain:
        values, request_id = v2._plain_row(v2._fast_payload(case.body))
        assert request_id == "plain-" + case.label
        np.testing.assert_array_equal(np.array(values, dtype="float64"), case.expected[0])
    assert v2._plain_row(one_tensor()) == (ROW, None)
    assert v2._plain_row({**one_tensor(), "id": None}) == (ROW, None)
    near_misses = [
        one_tensor(datatype="FP32"),
        one_tensor(data=[ROW]),  # nested
        one_tensor(shape=[1.0, 9]),
        one_tensor(shape=[True, 9]),
        one_tensor(shape=[2, 9]),
        one_tensor(data=[True, *ROW[1:]]),
        one_tensor(data=[2**53 + 1, *ROW[1:]]),
        one_tensor(data=ROW[:8]),
        one_tensor(name=""),
        one_tensor(parameters={"binary_data_size": 72}),
        {**one_tensor(), "outputs": [{"name": "probability"}]},
        {**one_tensor(), "parameters": {}},
        {**one_tensor(), "id": ""},
        {**one_tensor(), "id": 17},
        {**one_tensor(), "id": "a\nb"},
        {"inputs": one_tensor()["inputs"] * 2},
    ]
    for body in near_misses:
        assert v2._plain_row(body) is None, body
    assert v2._plain_row(one_tensor(data=[float("nan"), *ROW[1:]])) is None
    assert v2._plain_row(one_tensor(data=[float("inf"), *ROW[1:]])) is None


def probabilities_of_fast(answer: v2.FastAnswer) -> np.ndarray:
    headers = dict(answer.headers)
    length = headers.get(HEADER.lower().encode())
    if length is None:
        return np.array(json.loads(answer.content)["outputs"][0]["data"])
    return np.frombuffer(answer.content[int(length) :], dtype="<f8")


def test_fast_answers_are_counted_under_the_route_template(main_server, settings):
    registry = main_server.server.metrics.registry
    path = f"/v2/models/{settings.model_name}/infer"

    def count(route: str) -> float:
        labels = {"route": route, "status_code": "200", "variant": "champion"}
        return registry.get_sample_value("ml_platform_serving_requests_total", labels) or 0.0

    before = count(v2.INFER_ROUTE)
    with main_server.client() as client:
        for index in range(3):
            body = {
                "id": f"counted-{index}",
                "inputs": [{"name": "input-0", "shape": [9], "datatype": "FP64", "data": ROW}],
            }
            assert client.post(path, json=body).status_code == 200
    assert count(v2.INFER_ROUTE) - before == 3
    assert count(path) == 0.0  # never under the path itself


def test_logged_rows_are_the_answered_rows(main_server, route_server, settings, booster_predict):
    path = f"/v2/models/{settings.model_name}/infer"
    prefix = f"log-{uuid.uuid4().hex[:8]}"
    logged_labels = ("one", "nulls", "fp32", "columnar", "batch100", "bin-nan", "bin-fp32")
    cases = [case for case in good_cases(prefix) if case.label in logged_labels]
    extra = sample_rows(2, seed=9)
    no_id = json_case("no-id", {"inputs": [{**tensor(extra), "data": flat(extra)}]}, extra)
    answered = {}
    for running in (main_server, route_server):
        with running.client() as client:
            for case in [*cases, no_id]:
                answer = post(client, path, case)
                assert answer.status_code == 200, answer.text
                answered[(running.url, case.label)] = (answer_header(answer)["id"], probabilities_of(answer))
        running.flush_log()
    for running in (main_server, route_server):
        log = read_prediction_log(running.config.log_dir)
        for case in [*cases, no_id]:
            request_id, probabilities = answered[(running.url, case.label)]
            n = len(case.expected)
            ids = [request_id] if n == 1 else [f"{request_id}/{index}" for index in range(n)]
            logged = log[log["request_id"].isin(ids)].set_index("request_id").loc[ids]
            assert len(logged) == n, case.label
            np.testing.assert_array_equal(logged[list(MODEL_FEATURES)].to_numpy(), case.expected, err_msg=case.label)
            np.testing.assert_array_equal(logged["probability"].to_numpy(), probabilities, err_msg=case.label)
            np.testing.assert_array_equal(probabilities, booster_predict(case.expected), err_msg=case.label)
            assert (logged["is_fraud"] == (logged["probability"] >= logged["threshold"])).all()
            assert set(logged["variant"]) == {"champion"} and logged["customer_id"].isna().all()


# ---- bad requests: a 4xx naming the field, the same from the fast path and the route --------------
ROW = [120.0, 13.5, 1.0, 8.0, 4.0, 80.0, 320.0, 2.5, 1.5]


def one_tensor(**changes) -> dict:
    return {"inputs": [{"name": "input-0", "shape": [1, 9], "datatype": "FP64", "data": ROW, **changes}]}


def raw_binary(request: dict, payload: bytes, header: str | None = None) -> tuple[bytes, dict]:
    head = json.dumps(request).encode()
    return head + payload, {HEADER: str(len(head)) if header is None else header}


BINARY_ROW = np.array([ROW], dtype="<f8")
BINARY_REQUEST = {
    "inputs": [{"name": "input-0", "shape": [1, 9], "datatype": "FP64", "parameters": {"binary_data_size": 72}}]
}

BAD = [
    # (label, body: dict | str | (bytes, headers), status, field, words in the message)
    ("no rows", one_tensor(shape=[0, 9], data=[]), 422, "inputs[0].shape", ["at least one row", "[0, 9]"]),
    (
        "no rows, columnar",
        {"inputs": [{"name": n, "shape": [0], "datatype": "FP64", "data": []} for n in MODEL_FEATURES]},
        422,
        "inputs[0].shape",
        ["at least one row"],
    ),
    ("huge shape", one_tensor(shape=[2**62, 9]), 413, "inputs", ["4611686018427387904 rows", "limit"]),
    ("huge dims", one_tensor(shape=[2**40, 2**40, 9]), 422, "inputs[0].shape", ["expected [N, 9]"]),
    ("negative dim", one_tensor(shape=[-1, 9]), 422, "inputs[0].shape[0]", ["greater than or equal to 0"]),
    ("fewer values", one_tensor(shape=[2, 9]), 422, "inputs[0].data", ["needs 18 values, got 9"]),
    ("ragged rows", one_tensor(shape=[2, 9], data=[ROW, ROW[:8]]), 422, "inputs[0].data", ["2 lists of 9"]),
    ("nested for [9]", one_tensor(shape=[9], data=[ROW]), 422, "inputs[0].data", ["flat list of 9"]),
    ("bool values", one_tensor(data=[True, *ROW[1:]]), 422, "inputs[0].data", ["got True at position 0"]),
    ("string values", one_tensor(data=["a"] * 9), 422, "inputs[0].data", ["got 'a'"]),
    ("object values", one_tensor(data=[{}, *ROW[1:]]), 422, "inputs[0].data", ["got {}"]),
    ("BOOL tensor", one_tensor(datatype="BOOL", data=[True] * 9), 422, "inputs[0].datatype", ["'BOOL'", "FP64"]),
    ("BYTES tensor", one_tensor(datatype="BYTES", data=["1"] * 9), 422, "inputs[0].datatype", ["BYTES", "numbers"]),
    ("NaN literal", json.dumps(one_tensor(data=[float("nan"), *ROW[1:]])), 422, "inputs[0].data", ["finite"]),
    ("FP32 overflow", one_tensor(datatype="FP32", data=[1e300, *ROW[1:]]), 422, "inputs[0].data", ["range", "FP32"]),
    ("INT8 overflow", one_tensor(datatype="INT8", data=[300] + [1] * 8), 422, "inputs[0].data", ["range", "INT8"]),
    ("UINT8 negative", one_tensor(datatype="UINT8", data=[-1] + [1] * 8), 422, "inputs[0].data", ["range", "UINT8"]),
    ("INT64 float", one_tensor(datatype="INT64", data=[1.5] + [1] * 8), 422, "inputs[0].data", ["integers"]),
    ("INT64 null", one_tensor(datatype="INT64", data=[None] + [1] * 8), 422, "inputs[0].data", ["integers"]),
    ("huge int", json.dumps(one_tensor(data=[10**400, *ROW[1:]])), 422, "inputs[0].data", ["range"]),
    # read as floats by orjson, as integers by json.loads: the error is json.loads' (the request is read again)
    ("INT64 past 64 bits", one_tensor(datatype="INT64", data=[2**64] + [1] * 8), 422, "inputs[0].data", ["range"]),
    ("UINT64 past 64 bits", one_tensor(datatype="UINT64", data=[2**64] + [1] * 8), 422, "inputs[0].data", ["range"]),
    ("INT64 below", one_tensor(datatype="INT64", data=[-(2**63) - 1] + [1] * 8), 422, "inputs[0].data", ["range"]),
    ("no data", one_tensor(data=None), 422, "inputs[0].data", ["required", "binary_data_size"]),
    ("empty id", {**one_tensor(), "id": ""}, 422, "id", ["1 to 200"]),
    ("long id", {**one_tensor(), "id": "x" * 201}, 422, "id", ["at most 200"]),
    ("control id", {**one_tensor(), "id": "a\nb"}, 422, "id", ["printable"]),
    ("number id", {**one_tensor(), "id": 17}, 422, "id", ["string"]),
    ("surrogate id", '{"id": "\\ud800", ' + json.dumps(one_tensor())[1:], 422, "id", ["surrogate"]),
    ("unknown output", {**one_tensor(), "outputs": [{"name": "x"}]}, 422, "outputs[0].name", ["'probability'"]),
    ("output twice", {**one_tensor(), "outputs": [{"name": "probability"}] * 2}, 422, "outputs[1].name", ["twice"]),
    (
        "classification",
        {**one_tensor(), "outputs": [{"name": "probability", "parameters": {"classification": 2}}]},
        422,
        "outputs[0].parameters.classification",
        ["not supported"],
    ),
    (
        "binary_data not bool",
        {**one_tensor(), "outputs": [{"name": "probability", "parameters": {"binary_data": "yes"}}]},
        422,
        "outputs[0].parameters.binary_data",
        ["true or false"],
    ),
    (
        "binary_data_output not bool",
        {**one_tensor(), "parameters": {"binary_data_output": 1}},
        422,
        "parameters.binary_data_output",
        ["true or false"],
    ),
    # the binary tensor data extension's framing
    (
        "header past the body",
        raw_binary(BINARY_REQUEST, BINARY_ROW.tobytes(), "5000"),
        400,
        "inference-header-content-length",
        ["5000", "whole body"],
    ),
    (
        "negative header",
        raw_binary(BINARY_REQUEST, BINARY_ROW.tobytes(), "-3"),
        400,
        "inference-header-content-length",
        ["'-3'"],
    ),
    (
        "header not an int",
        raw_binary(BINARY_REQUEST, BINARY_ROW.tobytes(), "1e2"),
        400,
        "inference-header-content-length",
        ["'1e2'"],
    ),
    ("header cuts the JSON", raw_binary(BINARY_REQUEST, BINARY_ROW.tobytes(), "40"), 400, "body", ["not valid JSON"]),
    (
        "size disagrees with shape",
        raw_binary(
            {"inputs": [{**BINARY_REQUEST["inputs"][0], "parameters": {"binary_data_size": 36}}]},
            BINARY_ROW.tobytes()[:36],
        ),
        422,
        "inputs[0].parameters.binary_data_size",
        ["takes 72 bytes, got 36"],
    ),
    (
        "FP32 size of FP64 bytes",
        raw_binary({"inputs": [{**BINARY_REQUEST["inputs"][0], "datatype": "FP32"}]}, BINARY_ROW.tobytes()),
        422,
        "inputs[0].parameters.binary_data_size",
        ["FP32", "takes 36 bytes, got 72"],
    ),
    (
        "negative size",
        raw_binary(
            {"inputs": [{**BINARY_REQUEST["inputs"][0], "parameters": {"binary_data_size": -72}}]}, BINARY_ROW.tobytes()
        ),
        422,
        "inputs[0].parameters.binary_data_size",
        ["-72"],
    ),
    (
        "size not an int",
        raw_binary(
            {"inputs": [{**BINARY_REQUEST["inputs"][0], "parameters": {"binary_data_size": "72"}}]},
            BINARY_ROW.tobytes(),
        ),
        422,
        "inputs[0].parameters.binary_data_size",
        ["'72'"],
    ),
    (
        "missing binary_data_size",
        raw_binary({"inputs": [{**BINARY_REQUEST["inputs"][0], "parameters": {}}]}, BINARY_ROW.tobytes()),
        422,
        "inputs[0].data",
        ["required", "binary_data_size"],
    ),
    ("trailing bytes", raw_binary(BINARY_REQUEST, BINARY_ROW.tobytes() + b"\0\0\0"), 400, "body", ["3 bytes after"]),
    (
        "binary part short",
        raw_binary(BINARY_REQUEST, BINARY_ROW.tobytes()[:50]),
        400,
        "inputs[0].parameters.binary_data_size",
        ["50 bytes"],
    ),
    ("binary size without the header", BINARY_REQUEST, 400, "inputs[0].parameters.binary_data_size", [HEADER.lower()]),
    (
        "data and binary",
        raw_binary({"inputs": [{**BINARY_REQUEST["inputs"][0], "data": ROW}]}, BINARY_ROW.tobytes()),
        422,
        "inputs[0].data",
        ["not both"],
    ),
    (
        "BYTES in binary",
        raw_binary({"inputs": [{**BINARY_REQUEST["inputs"][0], "datatype": "BYTES"}]}, BINARY_ROW.tobytes()),
        422,
        "inputs[0].datatype",
        ["BYTES"],
    ),
    (
        "Infinity in binary",
        raw_binary(BINARY_REQUEST, np.array([[np.inf, *ROW[1:]]], dtype="<f8").tobytes()),
        422,
        "inputs[0]",
        ["finite", "position 0"],
    ),
    ("binary header, no JSON", (b"\x00" * 72, {HEADER: "0"}), 400, "body", ["empty"]),
    ("nested 70 deep", '{"inputs": ' + "[" * 70 + "]" * 70 + "}", 400, "body", ["nested deeper than 64"]),
]


@pytest.mark.parametrize(("label", "body", "status", "field", "words"), BAD, ids=[case[0] for case in BAD])
def test_bad_requests_get_the_same_4xx_both_ways(
    main_server, route_server, settings, label, body, status, field, words
):
    if isinstance(body, tuple):
        content, headers = body
    else:
        content, headers = (body if isinstance(body, str) else json.dumps(body)).encode(), JSON
    path = f"/v2/models/{settings.model_name}/infer"
    with main_server.client() as fast, route_server.client() as route:
        answers = [client.post(path, content=content, headers=headers) for client in (fast, route)]
    assert [a.status_code for a in answers] == [status, status], [a.text for a in answers]
    assert answers[0].json() == answers[1].json()
    error = answers[0].json()
    assert error["field"] == field, error
    assert error["error"].startswith(f"{field}: "), error
    for word in words:
        assert word in error["error"], error["error"]


JSON_BODIES = [
    b'{"a": [1, 2.5, -0.0, 1e-320, 1.7976931348623157e308, 0.1000000000000000055511151231257827]}',
    b'{"a": NaN, "b": Infinity, "c": -Infinity, "d": 1e400}',
    b'{"a": 123456789012345678901234567890, "b": -9223372036854775809}',
    b'{"a": 1, "a": 2}',
    b'{"id": "caf\\u00e9 \\ud83d\\ude00", "x": "\xc3\xa9"}',
    b'{"id": "\\ud800"}',
    b"\xef\xbb\xbf{}",
    '{"a": 1}'.encode("utf-16"),
    b'{"a": [' + b"9" * 5000 + b"]}",
    b'{"a": ' + b"[" * 64 + b"]" * 64 + b"}",
    b'{"a": ' + b"[" * 65 + b"]" * 65 + b"}",
    b'{"a": 1} x',
    b"[1]",
    b"",
    b'{"a": "\xff"}',
]


def beyond_64_bits_as_floats(value):
    """``value`` with every integer outside int64 and uint64 as the float orjson reads it as."""
    if type(value) is int and not -(2**63) <= value < 2**64:
        return float(value)
    if type(value) is list:
        return [beyond_64_bits_as_floats(item) for item in value]
    if type(value) is dict:
        return {key: beyond_64_bits_as_floats(item) for key, item in value.items()}
    return value


@pytest.mark.parametrize("body", JSON_BODIES)
def test_the_fast_json_reader_reads_what_json_object_reads(body):
    """v2 reads bodies with orjson: the values the platform's reader gives (integers beyond 64 bits as
    floats of the same value), or None for every body that reader refuses or reads otherwise (it then
    reads the body itself and answers as it always did)."""
    fast = v2._fast_payload(body)
    try:
        reference = json_object(body)
    except ApiError:
        assert fast is None
        return
    if fast is not None:  # repr: NaN equals itself, -0.0 differs from 0.0
        assert repr(fast) == repr(beyond_64_bits_as_floats(reference))


def test_the_fast_json_reader_takes_the_common_bodies():
    """orjson reads the bodies clients send (None would send every request to json.loads, 9x slower)."""
    body = json.dumps(one_tensor(id="caf\u00e9 \U0001f600")).encode()
    assert v2._fast_payload(body) == json_object(body)
    assert v2._fast_payload(JSON_BODIES[0]) == {"a": [1, 2.5, -0.0, 1e-320, 1.7976931348623157e308, 0.1]}
    assert v2._fast_payload(JSON_BODIES[2]) == {"a": 1.2345678901234568e29, "b": -9.223372036854776e18}


def test_duplicate_header_is_refused(main_server, settings):
    content, headers = raw_binary(BINARY_REQUEST, BINARY_ROW.tobytes())
    with main_server.client() as client:
        answer = client.post(
            f"/v2/models/{settings.model_name}/infer",
            content=content,
            headers=[(HEADER, headers[HEADER]), (HEADER, headers[HEADER])],
        )
    assert answer.status_code == 400
    assert answer.json() == {
        "error": f"{HEADER.lower()}: the header was sent 2 times; send it once",
        "field": HEADER.lower(),
    }


def test_batch_over_the_row_limit_is_413(settings, champion_version, tmp_path):
    config = make_config(settings, tmp_path, feast=None, max_batch_rows=5)
    matrix = sample_rows(6, seed=12)
    case = binary_case("six", {"inputs": [tensor(matrix)]}, [matrix], matrix)
    with serve(config) as running, running.client() as client:
        answer = post(client, f"/v2/models/{settings.model_name}/infer", case)
        five = binary_case("five", {"inputs": [tensor(matrix[:5])]}, [matrix[:5]], matrix[:5])
        accepted = post(client, f"/v2/models/{settings.model_name}/infer", five)
    assert answer.status_code == 413
    assert answer.json() == {"error": "inputs: 6 rows is more than this server's limit of 5", "field": "inputs"}
    assert accepted.status_code == 200 and len(accepted.json()["outputs"][0]["data"]) == 5


def test_unknown_model_is_404(main_server, settings):
    with main_server.client() as client:
        metadata = client.get("/v2/models/nope")
        infer = client.post("/v2/models/nope/infer", json={"inputs": []})
        version = client.get(f"/v2/models/{settings.model_name}/versions/999")
    for answer in (metadata, infer):
        assert answer.status_code == 404
        assert "'nope'" in answer.json()["error"] and settings.model_name in answer.json()["error"]
    assert version.status_code == 404 and "999" in version.json()["error"]


def test_live_before_ready_and_ready_once_a_champion_exists(settings, registry, champion_version, tmp_path):
    name = f"serving_late_{uuid.uuid4().hex[:6]}"
    late = copy_model(settings, registry, name, versions=1)  # registered, but no champion alias yet
    config = make_config(settings, tmp_path, model_name=name, feast=None, poll_seconds=0.1)
    infer = {"inputs": [{"name": "input-0", "shape": [1, 9], "datatype": "FP64", "data": ROW}]}
    with serve(config, wait_ready=False) as running, running.client() as client:
        assert client.get("/v2/health/live").status_code == 200
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503 and "champion" in ready.json()["reason"]
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert "champion" in health.json()["reason"]
        assert client.get("/ping").status_code == 503
        refused = client.post("/predict", json={"features": [1.0] * 9})
        assert refused.status_code == 503 and "no model loaded" in refused.json()["error"]
        not_yet = client.post(f"/v2/models/{name}/infer", json=infer)  # the fast path leaves it to the route
        assert not_yet.status_code == 503 and "no model loaded" in not_yet.json()["error"]

        late.set_alias(CHAMPION, 1)
        # Polled every 0.1 s, loaded in a moment on an idle machine; 30 s for two busy cores.
        deadline = time.monotonic() + 30
        while client.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.05)
        assert client.get("/health").json()["model_version"] == 1
        assert client.post("/predict", json={"features": [1.0] * 9}).status_code == 200
        assert client.post(f"/v2/models/{name}/infer", json=infer).json()["model_version"] == "1"

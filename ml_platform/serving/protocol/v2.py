"""The Open Inference Protocol v2 (``/v2/...``), so KServe and Triton clients work.

Health (``/v2/health/live``: the process answers; ``/v2/health/ready``: a model is loaded and warmed up),
server and model metadata, and infer on the champion or on a loaded version by number. Infer takes its
tensors in JSON or as raw bytes after the JSON (the binary tensor data extension, what Triton's clients
send by default; framing in :mod:`.v2_binary`) and answers each output in JSON or in binary, as asked.

One function reads an infer request (:func:`_read_infer`: every check, every 4xx) and one answers it
(:func:`_answer`: one call into XGBoost for the whole matrix, every row logged, the bytes sent). The
FastAPI route calls both; so does :func:`fast_routes`' handler, which answers ``POST
/v2/models/<served model>/infer`` in the ASGI layer before FastAPI's routing, and leaves to the route
every request it would refuse, and those too large to score on the event loop. Both ways give the same
bytes for the same body.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.serving.middleware import FastAnswer, FastHandler
from ml_platform.serving.models import Deployment, ModelHandle
from ml_platform.serving.protocol import v2_binary
from ml_platform.serving.protocol.common import (
    INLINE_ROWS,
    encode_json,
    json_object,
    nested_deeper_than,
    plain_numbers,
    plain_request_id,
)
from ml_platform.serving.schemas import FEATURE_ORDER_TEXT, ApiError, RequestId, validate
from ml_platform.serving.server import CHALLENGER_VARIANT, ModelServer, new_request_id

V2_INPUT_NAME = "input-0"
V2_OUTPUT_NAME = "probability"
INFER_ROUTE = "/v2/models/{name}/infer"  # the route template requests are counted under in /metrics
N_FEATURES = len(MODEL_FEATURES)
# Bodies up to this size are read by the fast path (256 rows of JSON are ~50 KB); larger ones hold more
# rows than are scored on the event loop, so they go to the route without a look.
FAST_BODY_BYTES = 65_536

_DATATYPES_TEXT = ", ".join(v2_binary.NUMPY_TYPES)
_FLOAT_DATATYPES = frozenset({"FP64", "FP32", "FP16"})
_NONE_TYPE = type(None)


def router(server: ModelServer) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v2")
    async def v2_server_metadata():
        return {"name": "ml-platform", "version": _platform_version(), "extensions": ["binary_tensor_data"]}

    @routes.get("/v2/health/live")
    async def v2_live():
        return {"live": True}

    @routes.get("/v2/health/ready")
    async def v2_ready():
        reason = server.not_ready_reason()
        if reason is not None:
            return JSONResponse({"ready": False, "reason": reason}, status_code=503)
        return {"ready": True}

    @routes.get("/v2/models/{name}")
    async def v2_metadata(name: str):
        return _v2_metadata(server, name, None)

    @routes.get("/v2/models/{name}/versions/{version}")
    async def v2_version_metadata(name: str, version: str):
        return _v2_metadata(server, name, version)

    @routes.get("/v2/models/{name}/ready")
    async def v2_model_ready(name: str):
        _v2_handle(server, name, None)
        return {"name": name, "ready": True}

    @routes.get("/v2/models/{name}/versions/{version}/ready")
    async def v2_version_ready(name: str, version: str):
        _v2_handle(server, name, version)
        return {"name": name, "ready": True}

    @routes.post(INFER_ROUTE)
    async def v2_infer(name: str, request: Request):
        return await _v2_infer(server, request, name, None)

    @routes.post("/v2/models/{name}/versions/{version}/infer")
    async def v2_version_infer(name: str, version: str, request: Request):
        return await _v2_infer(server, request, name, version)

    return routes


def fast_routes(server: ModelServer) -> dict[str, FastHandler]:
    """``POST /v2/models/<served model>/infer`` answered in the ASGI layer, before FastAPI's routing.

    The handler reads the request as the route does (:func:`_read_infer`) and answers it as the route
    does (:func:`_answer`), so the bytes are the same. It returns None, and the route answers, for
    everything else: any request the route refuses (it then says why), no model loaded yet, and
    batches of more than ``INLINE_ROWS`` rows (the route scores those in a worker thread).

    The commonest request, one FP64 row in JSON as KServe's and Triton's clients send it, is first
    looked at by :func:`_plain_row`: when it is trivially valid it is scored and answered without the
    request models and arrays (~1/4 of the handler's cost for one row), with the route's bytes.
    """
    name = server.config.model_name

    async def answer_row(handle: ModelHandle, values: list, request_id: str, started: float) -> FastAnswer:
        variant = server.primary_variant
        # scored with the other one-row requests of this loop turn, as one matrix (bit for bit the same)
        probability = await server.score_row_soon(handle, variant, values, request_id=request_id, started=started)
        content = encode_json(_json_answer(name, handle, request_id, [probability]))
        return FastAnswer(content, variant, b"application/json", (), INFER_ROUTE)

    def fast_infer(body: bytes, started: float, scope) -> FastAnswer | None | Awaitable[FastAnswer]:
        deployment = server.deployment
        if deployment is None or len(body) > FAST_BODY_BYTES:
            return None
        headers = scope["headers"]
        # the guard layer sends a fast handler no body nested too deep: not looked for again
        payload = None if v2_binary.header_sent(headers) else _fast_payload(body, nesting_checked=True)
        plain = None if payload is None else _plain_row(payload)
        if plain is not None:
            values, request_id = plain
            return answer_row(deployment.champion, values, request_id or new_request_id(), started)
        try:
            infer = _read_infer(server, body, headers, name, None, nesting_checked=True, payload=payload)
        except ApiError:
            return None
        if len(infer.features) == 1:
            return answer_one(infer, started)
        if len(infer.features) > INLINE_ROWS:
            return None
        content, media_type, headers = _answer(server, infer, started)
        return FastAnswer(content, infer.variant, media_type, headers, INFER_ROUTE)

    async def answer_one(infer: _Infer, started: float) -> FastAnswer:
        request_id = infer.request_id or new_request_id()
        values = infer.features[0].tolist()
        probability = await server.score_row_soon(
            infer.handle, infer.variant, values, request_id=request_id, started=started
        )
        content, media_type, headers = _rendered(infer, request_id, np.array([probability]))
        return FastAnswer(content, infer.variant, media_type, headers, INFER_ROUTE)

    return {f"/v2/models/{name}/infer": fast_infer}


def _platform_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ml-platform")
    except PackageNotFoundError:
        return "unknown"


# ---- request bodies ------------------------------------------------------------------------------
class InferTensor(BaseModel):
    """One input tensor: values in ``data`` (flat row-major, or nested as the shape), or as binary data."""

    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, Field(min_length=1)]
    shape: list[Annotated[int, Field(strict=True, ge=0)]]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None

    @field_validator("datatype")
    @classmethod
    def _numeric(cls, value: str) -> str:
        if value not in v2_binary.NUMPY_TYPES:
            what = "BYTES (string) tensors are not accepted" if value == "BYTES" else f"unsupported datatype {value!r}"
            raise ValueError(f"{what}: this model takes numbers; expected one of {_DATATYPES_TEXT}")
        return value


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: RequestId | None = None
    inputs: Annotated[list[InferTensor], Field(min_length=1)]
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class _Infer:
    """A request that passed every check: what :func:`_answer` needs."""

    name: str
    handle: ModelHandle
    variant: str
    features: np.ndarray  # (rows, 9) float64, NaN where a value is missing
    request_id: str | None
    binary_output: bool


# ---- the Open Inference Protocol v2 helpers ------------------------------------------------------
def _v2_handle(server: ModelServer, name: str, version: str | None) -> tuple[Deployment, ModelHandle]:
    if name != server.config.model_name:
        raise ApiError(
            404, f"model {name!r} is not served here; this server serves {server.config.model_name!r}", "name"
        )
    deployment = server.require_deployment()
    if version is None:
        return deployment, deployment.champion
    for handle in (deployment.champion, deployment.challenger):
        if handle is not None and str(handle.version) == version:
            return deployment, handle
    loaded = ", ".join(
        f"{handle.version} ({role})"
        for handle, role in ((deployment.champion, "champion"), (deployment.challenger, "challenger"))
        if handle is not None
    )
    raise ApiError(404, f"version {version!r} of model {name!r} is not loaded; loaded: {loaded}", "version")


def _v2_metadata(server: ModelServer, name: str, version: str | None) -> dict[str, Any]:
    """Model metadata in the Open Inference Protocol's shape.

    The input is ONE tensor ``input-0``, FP64, shape ``[-1, 9]``, columns in :data:`MODEL_FEATURES`
    order (listed in the tensor's ``parameters.feature_names``). That is what KServe clients send to
    tabular models: KServe's own sklearn/xgboost/lightgbm servers and Triton's FIL backend take a single
    2-D ``[batch, n_features]`` tensor (named ``input-0`` by KServe, ``input__0`` by Triton), and a
    client that builds its request from this metadata (``InferInput(name, shape, datatype)``) gets one
    array per batch without knowing the feature names. Infer also accepts 9 tensors named after the
    features (shape ``[N]`` or ``[N, 1]``), for columnar clients, and any numeric datatype (values are
    taken as that datatype holds them: FP32 values are rounded to float32, integers must fit). A missing
    value is ``null`` in JSON and NaN in binary data; NaN and Infinity literals in JSON, and infinities
    in binary data, are refused.
    """
    deployment, handle = _v2_handle(server, name, version)
    versions = [str(h.version) for h in (deployment.champion, deployment.challenger) if h is not None]
    return {
        "name": name,
        "versions": versions if version is None else [str(handle.version)],
        "platform": "xgboost",
        "inputs": [
            {
                "name": V2_INPUT_NAME,
                "datatype": "FP64",
                "shape": [-1, N_FEATURES],
                "parameters": {"feature_names": list(MODEL_FEATURES)},
            }
        ],
        "outputs": [{"name": V2_OUTPUT_NAME, "datatype": "FP64", "shape": [-1]}],
        "parameters": {"threshold": handle.threshold, "model_version": str(handle.version), "pinned": server.pinned},
    }


async def _v2_infer(server: ModelServer, request: Request, name: str, version: str | None) -> Response:
    started = time.perf_counter()
    infer = _read_infer(server, await request.body(), request.headers.raw, name, version)
    request.state.variant = infer.variant
    if len(infer.features) <= INLINE_ROWS:
        content, media_type, headers = _answer(server, infer, started)
    else:
        content, media_type, headers = await run_in_threadpool(_answer, server, infer, started)
    return Response(
        content, media_type=media_type.decode(), headers={key.decode(): value.decode() for key, value in headers}
    )


def _read_infer(
    server: ModelServer,
    body: bytes,
    headers,
    name: str,
    version: str | None,
    *,
    nesting_checked: bool = False,
    payload: dict[str, Any] | None = None,
) -> _Infer:
    """An infer request (body and raw request headers) checked completely, or the :class:`ApiError` at fault.

    The JSON part is read by orjson (:func:`_fast_payload`), ~9x faster than ``json.loads`` on numeric
    tensors, and the request is taken from those values when every check passes them. orjson reads
    what ``json.loads`` reads into the same values but for integers beyond 64 bits (floats of the same
    value to orjson), which no check lets through as integers; so a request it refuses is read again
    with :func:`json_object` (``json.loads``), and refused as it always was, with the same error.

    ``nesting_checked``: the caller knows that the body is not nested deeper than :data:`MAX_JSON_DEPTH`
    (the guard layer checked it: :func:`refused_before_parsing`). ``payload``: the body's JSON as
    :func:`_fast_payload` read it, when the caller already did (a body without binary data).
    """
    json_part, binary = v2_binary.split_body(body, v2_binary.header_length(headers))
    if payload is None:
        payload = _fast_payload(json_part, nesting_checked)
    if payload is not None:
        try:
            return _checked_infer(server, payload, binary, name, version)
        except ApiError:
            pass  # the error comes from the values json.loads reads
    return _checked_infer(server, json_object(json_part), binary, name, version)


def _checked_infer(
    server: ModelServer, payload: dict[str, Any], binary: memoryview | None, name: str, version: str | None
) -> _Infer:
    deployment, handle = _v2_handle(server, name, version)
    request = validate(InferRequest, payload)
    binary_output = _binary_output(request)
    features = _features(request.inputs, binary, server.config.max_batch_rows)
    variant = server.primary_variant if handle is deployment.champion else CHALLENGER_VARIANT
    return _Infer(name, handle, variant, features, request.id, binary_output)


def _answer(server: ModelServer, infer: _Infer, started: float) -> tuple[bytes, bytes, tuple[tuple[bytes, bytes], ...]]:
    """Score the rows as one matrix, log every row, and render the answer: (body, content type, headers)."""
    request_id = infer.request_id or new_request_id()
    probabilities = server.score_pinned(
        infer.handle, infer.variant, infer.features, request_id=request_id, started=started
    )
    return _rendered(infer, request_id, probabilities)


def _rendered(
    infer: _Infer, request_id: str, probabilities: np.ndarray
) -> tuple[bytes, bytes, tuple[tuple[bytes, bytes], ...]]:
    """The answer to ``infer`` with these probabilities: (body, content type, headers)."""
    handle = infer.handle
    if infer.binary_output:
        raw = probabilities.astype("<f8", copy=False).tobytes()
        answer = _json_answer(infer.name, handle, request_id, None, len(probabilities))
        answer["outputs"][0]["parameters"] = {"binary_data_size": len(raw)}
        content, header_length = v2_binary.encode_answer(answer, [raw])
        return content, b"application/octet-stream", ((v2_binary.HEADER.encode(), str(header_length).encode()),)
    return encode_json(_json_answer(infer.name, handle, request_id, probabilities)), b"application/json", ()


def _json_answer(
    name: str, handle: ModelHandle, request_id: str, data: np.ndarray | list[float] | None, rows: int = 0
) -> dict[str, Any]:
    """The answer's JSON: its one output's ``data`` (None: the output's values are sent in binary, ``rows`` of them)."""
    output: dict[str, Any] = {
        "name": V2_OUTPUT_NAME,
        "datatype": "FP64",
        "shape": [rows if data is None else len(data)],
    }
    if data is not None:
        output["data"] = data
    return {
        "model_name": name,
        "model_version": str(handle.version),
        "id": request_id,
        "parameters": {"threshold": handle.threshold},
        "outputs": [output],
    }


_PLAIN_KEYS = frozenset(("id", "inputs"))
_PLAIN_TENSOR_KEYS = frozenset(("name", "shape", "datatype", "data"))


def _plain_row(payload: dict[str, Any]) -> tuple[list[float | int | None], str | None] | None:
    """The one row and the id of a trivially valid JSON request for one FP64 row (its JSON object as
    :func:`_fast_payload` reads it), else None (then :func:`_read_infer` decides).

    Trivially valid: a JSON object with ``inputs`` and optionally ``id`` (absent, null, or 1 to 200
    printable characters), nothing else; ``inputs`` one tensor with a non-empty string ``name``,
    ``datatype`` FP64, ``shape`` [1, 9] or [9] (integers) and ``data`` a flat list of 9 finite floats,
    integers within +-2**53 or nulls; nothing else. :func:`_read_infer` accepts exactly these values
    for such a body and scores them as float64 (null: NaN), as :meth:`ModelServer.score_row` does.
    """
    if not payload.keys() <= _PLAIN_KEYS:
        return None
    inputs = payload.get("inputs")
    if type(inputs) is not list or len(inputs) != 1:
        return None
    tensor = inputs[0]
    if type(tensor) is not dict or tensor.keys() != _PLAIN_TENSOR_KEYS or tensor["datatype"] != "FP64":
        return None
    name, shape, data = tensor["name"], tensor["shape"], tensor["data"]
    if type(name) is not str or not name or type(shape) is not list or type(data) is not list:
        return None
    if not (shape == [1, N_FEATURES] or shape == [N_FEATURES]) or not all(type(dim) is int for dim in shape):
        return None
    if len(data) != N_FEATURES:
        return None
    if not plain_numbers(data):
        return None
    request_id = payload.get("id")
    if not plain_request_id(request_id):
        return None
    return data, request_id


def _fast_payload(body: bytes, nesting_checked: bool = False) -> dict[str, Any] | None:
    """The body's JSON object as orjson reads it; None when orjson refuses it (NaN and Infinity literals,
    a number beyond a double, a lone surrogate, a byte-order mark, text that is not JSON), when it is
    not an object, and when it is nested deeper than :func:`json_object` takes (orjson reads up to 1024
    levels): :func:`json_object` then says what it says of it."""
    if not nesting_checked and nested_deeper_than(body):
        return None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return payload if type(payload) is dict else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _flag(parameters: dict[str, Any] | None, key: str, where: str) -> bool | None:
    value = None if parameters is None else parameters.get(key)
    if value is None or type(value) is bool:
        return value
    raise ApiError(422, f"{where}.{key}: expected true or false, got {_short(value)}", f"{where}.{key}")


def _binary_output(request: InferRequest) -> bool:
    """Whether the output goes in binary: its own ``binary_data``, else the request's ``binary_data_output``."""
    default = bool(_flag(request.parameters, "binary_data_output", "parameters"))
    chosen = None
    for index, output in enumerate(request.outputs or []):
        where = f"outputs[{index}]"
        if output.name != V2_OUTPUT_NAME:
            raise ApiError(
                422,
                f"{where}.name: unknown output {output.name!r}; this model has {V2_OUTPUT_NAME!r}",
                f"{where}.name",
            )
        if index > 0:
            raise ApiError(422, f"{where}.name: output {output.name!r} is requested twice", f"{where}.name")
        if output.parameters and "classification" in output.parameters:
            raise ApiError(
                422,
                f"{where}.parameters.classification: not supported; the output is P(fraud) per row",
                f"{where}.parameters.classification",
            )
        chosen = _flag(output.parameters, "binary_data", f"{where}.parameters")
    return default if chosen is None else chosen


def _features(inputs: list[InferTensor], binary: memoryview | None, max_rows: int) -> np.ndarray:
    """The rows to score, (rows, 9) float64, from one [N, 9] tensor or 9 tensors named after the features."""
    sources = _sources(inputs, binary)
    if len(inputs) == 1:
        tensor = inputs[0]
        shape = tensor.shape
        if not ((len(shape) == 2 and shape[1] == N_FEATURES) or shape == [N_FEATURES]):
            raise ApiError(
                422,
                f"inputs[0].shape: expected [N, {N_FEATURES}] (features in the order {FEATURE_ORDER_TEXT}),"
                f" got {shape}",
                "inputs[0].shape",
            )
        rows = shape[0] if len(shape) == 2 else 1
        _check_rows(rows, shape, max_rows)
        return _values(tensor, sources[0], "inputs[0]").reshape(rows, N_FEATURES)
    names = [tensor.name for tensor in inputs]
    if sorted(names) != sorted(MODEL_FEATURES):
        raise ApiError(
            422,
            f"inputs: expected one tensor of shape [N, {N_FEATURES}] or {N_FEATURES} tensors named"
            f" {FEATURE_ORDER_TEXT}; got tensors {names}",
            "inputs",
        )
    rows = None
    for index, tensor in enumerate(inputs):
        where = f"inputs[{index}].shape"
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise ApiError(422, f"{where}: expected [N] or [N, 1], got {shape}", where)
        if rows is not None and shape[0] != rows:
            raise ApiError(422, f"{where}: every tensor needs the same N, got {shape[0]} and {rows}", where)
        rows = shape[0]
    _check_rows(rows, inputs[0].shape, max_rows)
    columns = {
        tensor.name: _values(tensor, source, f"inputs[{index}]")
        for index, (tensor, source) in enumerate(zip(inputs, sources, strict=True))
    }
    return np.column_stack([columns[name] for name in MODEL_FEATURES])


def _check_rows(rows: int, shape: list[int], max_rows: int) -> None:
    if rows == 0:
        raise ApiError(422, f"inputs[0].shape: expected at least one row, got shape {shape}", "inputs[0].shape")
    if rows > max_rows:
        raise ApiError(413, f"inputs: {rows} rows is more than this server's limit of {max_rows}", "inputs")


def _sources(inputs: list[InferTensor], binary: memoryview | None) -> list[list | memoryview]:
    """Each input's values: its JSON ``data``, or its bytes of the binary part (checked against its shape)."""
    sources: list[list | memoryview] = []
    offset = 0
    for index, tensor in enumerate(inputs):
        where = f"inputs[{index}]"
        size = None if tensor.parameters is None else tensor.parameters.get("binary_data_size")
        if size is None:
            if tensor.data is None:
                raise ApiError(
                    422,
                    f"{where}.data: field required (or parameters.binary_data_size, with the tensor's bytes after"
                    " the JSON)",
                    f"{where}.data",
                )
            sources.append(tensor.data)
            continue
        field = f"{where}.parameters.binary_data_size"
        if type(size) is not int or size < 0:
            raise ApiError(
                422, f"{field}: expected the tensor's size in bytes (an integer >= 0), got {_short(size)}", field
            )
        if tensor.data is not None:
            raise ApiError(
                422,
                f"{where}.data: give the values either in data or as binary data (parameters.binary_data_size),"
                " not both",
                f"{where}.data",
            )
        if binary is None:
            raise ApiError(
                400,
                f"{field}: binary data announced, but the request has none: send the header"
                f" {v2_binary.HEADER} with the length of the JSON part in bytes, the tensors' bytes after it",
                field,
            )
        expected = v2_binary.tensor_bytes(tensor.datatype, tensor.shape)
        if size != expected:
            message = f"a {tensor.datatype} tensor of shape {tensor.shape} takes {expected} bytes, got {size}"
            raise ApiError(422, f"{field}: {message}", field)
        if offset + size > len(binary):
            raise ApiError(
                400,
                f"{field}: the tensor's {size} bytes would end at byte {offset + size} of the binary part, which"
                f" has {len(binary)} bytes",
                field,
            )
        sources.append(binary[offset : offset + size])
        offset += size
    if binary is not None and offset != len(binary):
        raise ApiError(
            400,
            f"body: {len(binary) - offset} bytes after the inputs' binary data (the binary part has {len(binary)}"
            f" bytes, the inputs' parameters.binary_data_size {offset})",
            "body",
        )
    return sources


def _values(tensor: InferTensor, source: list | memoryview, where: str) -> np.ndarray:
    """A tensor's values, flat, as float64 (NaN: missing), taken as its datatype holds them."""
    datatype = tensor.datatype
    if isinstance(source, memoryview):
        array = v2_binary.decode(source, datatype)
        if datatype in _FLOAT_DATATYPES:
            infinite = np.flatnonzero(np.isinf(array))
            if len(infinite):
                position = int(infinite[0])
                raise ApiError(
                    422,
                    f"{where}: binary data: expected finite numbers (NaN for a missing value), got {array[position]}"
                    f" at position {position}",
                    where,
                )
        return array.astype("float64")
    return _json_values(source, tensor, f"{where}.data")


def _json_values(data: list, tensor: InferTensor, field: str) -> np.ndarray:
    shape = tensor.shape
    datatype = tensor.datatype
    flat = data
    kinds = set(map(type, data))
    if list in kinds:  # nested: one list per row, as the shape says
        rows_fit = len(shape) == 2 and len(data) == shape[0]
        if not rows_fit or any(type(row) is not list or len(row) != shape[1] for row in data):
            rows_text = f", or {shape[0]} lists of {shape[1]} values" if len(shape) == 2 else ""
            message = f"expected a flat list of {math.prod(shape)} values{rows_text} (shape {shape})"
            raise ApiError(422, f"{field}: {message}", field)
        flat = list(itertools.chain.from_iterable(data))
        kinds = set(map(type, flat))
    expected = math.prod(shape)
    if len(flat) != expected:
        raise ApiError(422, f"{field}: shape {shape} needs {expected} values, got {len(flat)}", field)
    floating = datatype in _FLOAT_DATATYPES
    allowed = (float, int, _NONE_TYPE) if floating else (int,)
    if not kinds.issubset(allowed):
        position, value = next((i, v) for i, v in enumerate(flat) if type(v) not in allowed)
        expectation = "numbers (null for a missing value)" if floating else "integers"
        message = f"expected {expectation} for datatype {datatype}, got {_short(value)} at position {position}"
        raise ApiError(422, f"{field}: {message}", field)
    numpy_type = v2_binary.NUMPY_TYPES[datatype]
    try:
        if not floating:
            return np.array(flat, dtype=numpy_type).astype("float64")
        array = np.array(flat, dtype="float64")  # null -> NaN
    except OverflowError:
        raise ApiError(422, f"{field}: a value is out of the range of datatype {datatype}", field) from None
    if not np.isfinite(array).all():
        for position in np.flatnonzero(~np.isfinite(array)):
            if flat[position] is not None:
                raise ApiError(
                    422,
                    f"{field}: expected finite numbers (NaN and Infinity are not accepted; null marks a missing"
                    f" value), got {flat[position]} at position {position}",
                    field,
                )
    if numpy_type.itemsize < 8:
        with np.errstate(over="ignore"):
            narrowed = array.astype(numpy_type)
        if np.isinf(narrowed).any():
            position = int(np.flatnonzero(np.isinf(narrowed))[0])
            message = f"{flat[position]} at position {position} is out of the range of datatype {datatype}"
            raise ApiError(422, f"{field}: {message}", field)
        array = narrowed.astype("float64")
    return array

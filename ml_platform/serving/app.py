"""The FastAPI app: one predictor, three faces.

- ``POST /predict`` and ``GET /health``: the platform's own shapes (features or a customer id). The
  common request, one valid row of ``features``, is answered by a fast path in the ASGI layer in front
  of FastAPI's routing (same answer, same log row; see :func:`_fast_predict`).
- ``POST /invocations`` and ``GET /ping``: MLflow's scoring protocol for the champion, answered by
  MLflow's own ``scoring_server.invocations`` over the champion's pyfunc, so parsing, schema
  enforcement, answers and errors are those of ``mlflow models serve`` by construction.
- The Open Inference Protocol v2 (``/v2/...``) for KServe and Triton clients.

Plus ``GET /metrics`` (Prometheus) and ``GET|PUT /admin/routing`` (challenger weight and mode,
changed without a restart).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.serving.config import ServerConfig
from ml_platform.serving.online import feature_vectors, transaction_frame
from ml_platform.serving.schemas import (
    FEATURE_ORDER_TEXT,
    INT64_MAX,
    INT64_MIN,
    ApiError,
    FeaturesRequest,
    PredictBatchResponse,
    PredictResponse,
    RoutingUpdate,
    TransactionRequest,
    V2InferRequest,
    V2Tensor,
    validate,
    validation_error,
)
from ml_platform.serving.server import CHALLENGER_VARIANT, ModelServer, new_request_id, row_ids

_log = logging.getLogger(__name__)

# Routes open without a token (probes and scrapers carry none).
PUBLIC_PATHS = frozenset({"/health", "/ping", "/v2/health/live", "/v2/health/ready", "/metrics"})
# Up to this many rows are scored on the event loop (a single row takes ~0.3 ms); more go to a thread.
INLINE_ROWS = 64
V2_INPUT_NAME = "input-0"
V2_OUTPUT_NAME = "probability"
N_FEATURES = len(MODEL_FEATURES)
# Integers above this are not all exactly floats; the fast path leaves them to pydantic's conversion.
_EXACT_INT = 2**53


def create_app(config: ServerConfig) -> FastAPI:
    """The server app for ``config``; models load in the background once the app starts (lifespan).

    ``app.state.server`` is the :class:`~ml_platform.serving.server.ModelServer` behind the routes.
    Liveness (``/v2/health/live``) answers at once; readiness (``/v2/health/ready``, ``/health``) once
    the champion is loaded and warmed up (and the feature store is open, when one is configured).
    """
    server = ModelServer(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.start()
        try:
            yield
        finally:
            # uvicorn calls this after it stopped accepting and the requests in flight finished
            await run_in_threadpool(server.stop)

    app = FastAPI(
        title="ml-platform model server",
        summary=f"Serves the registered model {config.model_name!r} (champion/challenger).",
        lifespan=lifespan,
        # FastAPI's OpenTelemetry bridge looks up the global OTel providers on every request (~6 us,
        # environment reads included) even when none is configured; this server reports through
        # /metrics and the prediction log, so the bridge is on only when asked for.
        telemetry=None if config.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.server = server
    fast_predict = _fast_predict(server) if config.fast_path else None
    app.add_middleware(_GuardMiddleware, server=server, fast_predict=fast_predict)
    _add_error_handlers(app)

    # ---- health --------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        reason = server.not_ready_reason()
        deployment = server.deployment
        body = {
            "status": "ok" if reason is None else "unavailable",
            "model_name": config.model_name,
            "model_version": deployment.champion.version if deployment else None,
            "challenger_version": deployment.challenger.version if deployment and deployment.challenger else None,
            "uptime_seconds": round(time.monotonic() - server.started_at, 3),
        }
        if reason is not None:
            body["reason"] = reason
            return JSONResponse(body, status_code=503)
        return body

    # ---- /predict ------------------------------------------------------------------------------
    @app.post("/predict", response_model=PredictResponse | PredictBatchResponse)
    async def predict(request: Request):
        started = time.perf_counter()
        payload = _json_object(await request.body())
        batch = "instances" in payload
        if batch:
            items = payload["instances"]
            if not isinstance(items, list):
                raise ApiError(422, "instances: expected a list of objects", "instances")
            if not items:
                raise ApiError(422, "instances: expected at least one instance, got an empty list", "instances")
            if len(items) > config.max_batch_rows:
                raise ApiError(
                    413,
                    f"instances: {len(items)} rows is more than this server's limit of {config.max_batch_rows}"
                    " per request; split the batch",
                    "instances",
                )
            parsed = [_parse_instance(item, ("instances", index)) for index, item in enumerate(items)]
        else:
            parsed = [_parse_instance(payload, ())]
        deployment = server.require_deployment()

        n = len(parsed)
        features = np.full((n, len(MODEL_FEATURES)), np.nan, dtype="float64")
        transactions = []
        for index, item in enumerate(parsed):
            if isinstance(item, FeaturesRequest):
                features[index] = [np.nan if value is None else value for value in item.features]
            else:
                transactions.append(index)
        if transactions:
            if server.features is None:
                raise ApiError(
                    400,
                    "customer_id: this server has no feature store configured, so features must be given: send"
                    f" 'features' (9 numbers in the order {FEATURE_ORDER_TEXT})",
                    _field(("instances", transactions[0]) if batch else (), "customer_id"),
                )
            if not server.features.ready:
                raise ApiError(503, f"feature store not ready: {server.features.last_error}", None)
            rows = [parsed[index] for index in transactions]
            try:
                features[transactions] = await run_in_threadpool(_lookup, server, rows)
            except ApiError:
                raise
            except Exception as error:
                _log.exception("online feature lookup failed")
                raise ApiError(503, f"feature store lookup failed: {type(error).__name__}: {error}", None) from error

        base_id = payload.get("request_id") if batch and isinstance(payload.get("request_id"), str) else None
        default_ids = row_ids(base_id, n)
        request_ids = [item.request_id or default_ids[index] for index, item in enumerate(parsed)]
        customer_ids = [item.customer_id for item in parsed]

        def work():
            return server.score(
                deployment, features, customer_ids=customer_ids, request_ids=request_ids, started=started
            )

        results = work() if n <= INLINE_ROWS else await run_in_threadpool(work)
        variants = {result["variant"] for result in results}
        request.state.variant = variants.pop() if len(variants) == 1 else "mixed"
        if batch:
            return json_response({"predictions": results})
        return json_response(results[0])

    # ---- MLflow scoring protocol ---------------------------------------------------------------
    @app.get("/ping")
    async def ping():
        if server.deployment is None:
            return Response(content="\n", status_code=503, media_type="application/json")
        return Response(content="\n", status_code=200, media_type="application/json")

    @app.post("/invocations")
    async def invocations(request: Request):
        started = time.perf_counter()
        deployment = server.require_deployment()
        champion = deployment.champion
        content_type = request.headers.get("content-type")
        if not content_type:
            return Response(
                content="This predictor only supports the following content types: Types:"
                " ['text/csv', 'application/json', 'application/vnd.apache.parquet']. Got no Content-Type.",
                status_code=415,
                media_type="text/plain",
            )
        data = await request.body()
        request.state.variant = server.primary_variant

        def work():
            from mlflow.pyfunc import scoring_server

            capture = _CapturingModel(champion.pyfunc)
            result = scoring_server.invocations(
                data, content_type, capture, champion.pyfunc.metadata.get_input_schema()
            )
            return result, capture

        from mlflow.exceptions import MlflowException

        try:
            result, capture = await run_in_threadpool(work)
        except MlflowException as error:
            return Response(
                content=error.serialize_as_json(),
                status_code=error.get_http_status_code(),
                media_type="application/json",
            )
        if result.status == 200 and capture.predictions is not None:
            _log_invocation(server, champion, capture, request.headers.get("x-request-id"), started)
        return Response(content=result.response, status_code=result.status, media_type=result.mimetype)

    # ---- Open Inference Protocol v2 ------------------------------------------------------------
    @app.get("/v2")
    async def v2_server_metadata():
        return {"name": "ml-platform", "version": _platform_version(), "extensions": []}

    @app.get("/v2/health/live")
    async def v2_live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready():
        reason = server.not_ready_reason()
        if reason is not None:
            return JSONResponse({"ready": False, "reason": reason}, status_code=503)
        return {"ready": True}

    @app.get("/v2/models/{name}")
    async def v2_metadata(name: str):
        return _v2_metadata(server, name, None)

    @app.get("/v2/models/{name}/versions/{version}")
    async def v2_version_metadata(name: str, version: str):
        return _v2_metadata(server, name, version)

    @app.get("/v2/models/{name}/ready")
    async def v2_model_ready(name: str):
        _v2_handle(server, name, None)
        return {"name": name, "ready": True}

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def v2_version_ready(name: str, version: str):
        _v2_handle(server, name, version)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request):
        return await _v2_infer(server, request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def v2_version_infer(name: str, version: str, request: Request):
        return await _v2_infer(server, request, name, version)

    # ---- operations ----------------------------------------------------------------------------
    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/admin/routing")
    async def get_routing():
        return server.routing_state()

    @app.put("/admin/routing")
    async def put_routing(update: RoutingUpdate):
        server.set_routing(challenger_weight=update.challenger_weight, mode=update.mode, sticky=update.sticky)
        return server.routing_state()

    return app


def _platform_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ml-platform")
    except PackageNotFoundError:
        return "unknown"


# ---- answers -------------------------------------------------------------------------------------
# FastAPI's own rendering of a returned dict (jsonable_encoder, then JSONResponse's json.dumps) gives
# the same bytes for the plain values /predict answers with, at several times the cost.
_encode_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode


def json_response(content: Any, status_code: int = 200) -> Response:
    """``content`` (plain JSON values) as the JSON answer FastAPI would render, rendered directly."""
    return Response(_encode_json(content).encode(), status_code=status_code, media_type="application/json")


# ---- the /predict fast path ----------------------------------------------------------------------
# A one-row body is ~150-400 bytes; a body larger than this goes to the route without a look.
FAST_BODY_BYTES = 4_096


def _fast_predict(server: ModelServer):
    """``POST /predict`` for the common request, answered before FastAPI's routing: (answer, variant) or None.

    The common request is one row of ``features`` that is trivially valid (:func:`_plain_features`).
    It is scored by :meth:`ModelServer.score_one` (one C call into XGBoost, the row logged as a tuple)
    and answered with the bytes the route would send. Everything else (batches, customer ids, every
    invalid body, no model loaded yet) returns None and goes through the FastAPI route, which answers
    it completely, errors included. Measured in-process, the route costs ~2.5x the fast path per
    request (routing, request object, dependency solving), and the fast path is most of the traffic.
    """

    def fast_predict(body: bytes, started: float) -> tuple[bytes, str] | None:
        deployment = server.deployment
        if deployment is None or len(body) > FAST_BODY_BYTES:
            return None
        try:
            payload = json.loads(body, parse_constant=_reject_constant)
        except ValueError:  # not JSON, or not UTF-8: the route says what was wrong
            return None
        if type(payload) is not dict:
            return None
        single = _plain_features(payload)
        if single is None:
            return None
        features, customer_id, request_id = single
        result = server.score_one(
            deployment, features, customer_id=customer_id, request_id=request_id or new_request_id(), started=started
        )
        return _encode_json(result).encode(), result["variant"]

    return fast_predict


# ---- request parsing -----------------------------------------------------------------------------
def _plain_features(payload: dict[str, Any]) -> tuple[list[float | int | None], int | None, str | None] | None:
    """The single-row ``features`` body when it is trivially valid, else None (then pydantic decides).

    Trivially valid: ``features`` a list of exactly 9 finite floats, integers within +-2**53 or nulls;
    ``customer_id`` absent, null or an int64 integer; ``request_id`` absent, null or a string of 1 to
    200 characters; no ``instances``. For such a body :class:`FeaturesRequest` would accept the same
    values unchanged (other keys are ignored by both), so the answer is the same; anything else,
    including every invalid body, takes the pydantic path and gets its exact error message.
    """
    features = payload.get("features")
    if type(features) is not list or len(features) != N_FEATURES or "instances" in payload:
        return None
    for value in features:
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                return None
        elif kind is int:
            if not -_EXACT_INT <= value <= _EXACT_INT:
                return None
        elif value is not None:  # bool, str, list, ... : pydantic names the problem
            return None
    customer_id = payload.get("customer_id")
    if customer_id is not None and (type(customer_id) is not int or not INT64_MIN <= customer_id <= INT64_MAX):
        return None
    request_id = payload.get("request_id")
    if request_id is not None and (type(request_id) is not str or not 0 < len(request_id) <= 200):
        return None
    return features, customer_id, request_id


def _reject_constant(name: str) -> float:
    return float(name)  # NaN/Infinity are parsed, then refused by validation naming the field


def _json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise ApiError(400, "body: expected a JSON object, got an empty body", "body")
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"body: not valid JSON: {error}", "body") from None
    if not isinstance(payload, dict):
        raise ApiError(422, f"body: expected a JSON object, got {type(payload).__name__}", "body")
    return payload


def _field(prefix: tuple, name: str) -> str:
    from ml_platform.serving.schemas import field_path

    return field_path((*prefix, name))


def _parse_instance(item: Any, prefix: tuple) -> FeaturesRequest | TransactionRequest:
    if not isinstance(item, dict):
        from ml_platform.serving.schemas import field_path

        where = field_path(prefix)
        raise ApiError(422, f"{where}: expected an object, got {type(item).__name__}", where)
    if "features" in item:
        return validate(FeaturesRequest, item, prefix)
    if "customer_id" in item:
        return validate(TransactionRequest, item, prefix)
    field = _field(prefix, "features")
    raise ApiError(
        422,
        f"{field}: field required: send either 'features' (9 numbers in the order {FEATURE_ORDER_TEXT}) or"
        " 'customer_id' with 'amount', 'category', 'channel' and optionally 'event_timestamp'",
        field,
    )


def _lookup(server: ModelServer, rows: list[TransactionRequest]) -> np.ndarray:
    frame = transaction_frame(rows)
    unique = list(dict.fromkeys(int(c) for c in frame["customer_id"]))
    stats = server.features.stats(unique)
    stats.index = unique
    return feature_vectors(frame, stats.loc[frame["customer_id"].tolist()].reset_index(drop=True))


class _CapturingModel:
    """The champion's pyfunc, as MLflow's ``invocations`` calls it, keeping what it scored for the log."""

    def __init__(self, model) -> None:
        self._model = model
        self.metadata = model.metadata
        self.data = None
        self.predictions = None

    def predict(self, data, params=None):
        self.data = data
        self.predictions = self._model.predict(data, params=params)
        return self.predictions


def _log_invocation(server: ModelServer, champion, capture: _CapturingModel, request_id, started: float) -> None:
    import pandas as pd

    try:
        probabilities = np.asarray(capture.predictions, dtype="float64").reshape(-1)
        n = len(probabilities)
        try:
            frame = capture.data if isinstance(capture.data, pd.DataFrame) else pd.DataFrame(capture.data)
            features = frame[list(MODEL_FEATURES)].to_numpy(dtype="float64").reshape(n, len(MODEL_FEATURES))
        except Exception:  # inputs in a shape we cannot re-read: the scores are still logged
            features = np.full((n, len(MODEL_FEATURES)), np.nan)
        latency_ms = (time.perf_counter() - started) * 1000.0
        ids = row_ids(request_id, n)
        server.log_external(champion, server.primary_variant, features, probabilities, ids, latency_ms)
    except Exception:
        _log.exception("could not log an /invocations answer")


# ---- Open Inference Protocol v2 helpers ----------------------------------------------------------
def _v2_handle(server: ModelServer, name: str, version: str | None):
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
    features (shape ``[N]`` or ``[N, 1]``), for columnar clients, and any numeric datatype.
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
                "shape": [-1, len(MODEL_FEATURES)],
                "parameters": {"feature_names": list(MODEL_FEATURES)},
            }
        ],
        "outputs": [{"name": V2_OUTPUT_NAME, "datatype": "FP64", "shape": [-1]}],
        "parameters": {"threshold": handle.threshold, "model_version": str(handle.version)},
    }


def _v2_array(tensor: V2Tensor, where: str) -> np.ndarray:
    try:
        array = np.asarray(tensor.data)
    except ValueError:
        raise ApiError(
            422, f"{where}.data: expected a (nested) list of numbers of equal lengths", f"{where}.data"
        ) from None
    if array.dtype.kind not in "biuf":
        raise ApiError(422, f"{where}.data: expected numbers for datatype {tensor.datatype}", f"{where}.data")
    expected = math.prod(tensor.shape)
    if array.size != expected:
        raise ApiError(
            422,
            f"{where}.data: shape {tensor.shape} needs {expected} values, got {array.size}",
            f"{where}.data",
        )
    array = array.astype("float64").reshape(tensor.shape)
    if not np.isfinite(array).all():
        raise ApiError(
            422, f"{where}.data: expected finite numbers (NaN and Infinity are not accepted)", f"{where}.data"
        )
    return array


def _v2_features(request: V2InferRequest) -> np.ndarray:
    n_features = len(MODEL_FEATURES)
    inputs = request.inputs
    if len(inputs) == 1:
        tensor = inputs[0]
        shape = tensor.shape
        if not ((len(shape) == 2 and shape[1] == n_features) or (len(shape) == 1 and shape[0] == n_features)):
            raise ApiError(
                422,
                f"inputs[0].shape: expected [N, {n_features}] (features in the order {FEATURE_ORDER_TEXT}),"
                f" got {shape}",
                "inputs[0].shape",
            )
        return _v2_array(tensor, "inputs[0]").reshape(-1, n_features)
    names = [tensor.name for tensor in inputs]
    if sorted(names) != sorted(MODEL_FEATURES):
        raise ApiError(
            422,
            f"inputs: expected one tensor of shape [N, {n_features}] or {n_features} tensors named"
            f" {FEATURE_ORDER_TEXT}; got tensors {names}",
            "inputs",
        )
    columns = {}
    rows = None
    for index, tensor in enumerate(inputs):
        where = f"inputs[{index}]"
        if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)):
            raise ApiError(422, f"{where}.shape: expected [N] or [N, 1], got {tensor.shape}", f"{where}.shape")
        column = _v2_array(tensor, where).reshape(-1)
        if rows is not None and len(column) != rows:
            raise ApiError(
                422, f"{where}.shape: every tensor needs the same N, got {len(column)} and {rows}", f"{where}.shape"
            )
        rows = len(column)
        columns[tensor.name] = column
    return np.column_stack([columns[name] for name in MODEL_FEATURES])


async def _v2_infer(server: ModelServer, request: Request, name: str, version: str | None):
    started = time.perf_counter()
    payload = _json_object(await request.body())
    deployment, handle = _v2_handle(server, name, version)
    infer = validate(V2InferRequest, payload)
    for index, output in enumerate(infer.outputs or []):
        if output.name != V2_OUTPUT_NAME:
            raise ApiError(
                422,
                f"outputs[{index}].name: unknown output {output.name!r}; this model has {V2_OUTPUT_NAME!r}",
                f"outputs[{index}].name",
            )
    features = _v2_features(infer)
    if len(features) > server.config.max_batch_rows:
        raise ApiError(
            413,
            f"inputs: {len(features)} rows is more than this server's limit of {server.config.max_batch_rows}",
            "inputs",
        )
    request_id = infer.id
    n = len(features)

    def work():
        return server.score(
            deployment,
            features,
            customer_ids=[None] * n,
            request_ids=row_ids(request_id, n),
            started=started,
            handle=handle,
        )

    results = work() if n <= INLINE_ROWS else await run_in_threadpool(work)
    request.state.variant = server.primary_variant if handle is deployment.champion else CHALLENGER_VARIANT
    return {
        "model_name": name,
        "model_version": str(handle.version),
        "id": request_id or results[0]["request_id"].split("/")[0],
        "parameters": {"threshold": handle.threshold},
        "outputs": [
            {
                "name": V2_OUTPUT_NAME,
                "datatype": "FP64",
                "shape": [n],
                "data": [result["probability"] for result in results],
            }
        ],
    }


# ---- errors --------------------------------------------------------------------------------------
def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(request: Request, error: RequestValidationError):
        converted = validation_error(list(error.errors()))
        return JSONResponse(converted.body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return JSONResponse(
            {"error": str(error.detail), "field": None}, status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        _log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": f"internal error: {type(error).__name__}", "field": None}, status_code=500)


# ---- auth, body limit, request metrics and the /predict fast path (one plain ASGI layer) ----------
_FAST_HEADERS_TYPE = (b"content-type", b"application/json")


class _GuardMiddleware:
    """Auth, the body limit and request metrics for every route, then the fast path or the app.

    A plain ASGI layer (no per-request task). The fast path, when given, answers the common
    ``POST /predict`` itself once auth and the body limit passed (see :func:`_fast_predict`); the
    headers it sends are those of the route's answer (content-length, content-type).
    """

    def __init__(self, app, server: ModelServer, fast_predict=None) -> None:
        self.app = app
        self.server = server
        token = server.config.auth_token
        self.expected = f"Bearer {token}".encode() if token else None
        self.max_body = server.config.max_body_bytes
        self.fast_predict = fast_predict

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status = {"code": 500}
        fast_label = None

        async def send_recording(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            rejection = self._check_auth(scope)
            if rejection is None and scope["method"] in ("POST", "PUT", "PATCH"):
                rejection, body, receive = await self._buffer_body(scope, receive)
                fast = self.fast_predict
                if rejection is None and fast is not None and scope["path"] == "/predict" and body is not None:
                    answer = fast(body, started) if scope["method"] == "POST" else None
                    if answer is not None:
                        content, state["variant"] = answer
                        fast_label, status["code"] = "/predict", 200
                        await _send_json(send, content)
                        return
            if rejection is not None:
                await rejection(scope, receive, send_recording)
            else:
                await self.app(scope, receive, send_recording)
        finally:
            label = fast_label or getattr(scope.get("route"), "path", None) or self._route_label(scope)
            self.server.metrics.observe_request(
                label, status["code"], state.get("variant", "none"), time.perf_counter() - started
            )

    def _check_auth(self, scope):
        if self.expected is None or scope["path"] in PUBLIC_PATHS:
            return None
        for key, value in scope["headers"]:
            if key == b"authorization" and hmac.compare_digest(value, self.expected):
                return None
        return JSONResponse(
            {
                "error": "authorization: missing or wrong bearer token; send 'Authorization: Bearer <token>'",
                "field": "authorization",
            },
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def _buffer_body(self, scope, receive):
        limit = self.max_body
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    return _too_large(declared, limit), None, receive
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None, None, _replay([message], receive)  # a disconnect: let the app see it
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return _too_large(size, limit, at_least=True), None, receive
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return None, body, _replay([{"type": "http.request", "body": body, "more_body": False}], receive)

    def _route_label(self, scope) -> str:
        from starlette.routing import Match

        app = scope.get("app")
        for route in getattr(app, "routes", []):
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "unmatched")
        return "unmatched"


async def _send_json(send, content: bytes) -> None:
    """A 200 JSON answer, with the headers (and their order) Starlette's Response would send."""
    headers = [(b"content-length", str(len(content)).encode()), _FAST_HEADERS_TYPE]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def _too_large(size: int, limit: int, at_least: bool = False) -> JSONResponse:
    amount = f"more than {limit}" if at_least else str(size)
    return JSONResponse(
        {"error": f"body: {amount} bytes is over this server's limit of {limit} bytes", "field": "body"},
        status_code=413,
    )


def _replay(messages: list, receive):
    pending = list(messages)

    async def replay():
        if pending:
            return pending.pop(0)
        return await receive()

    return replay

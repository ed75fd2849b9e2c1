"""``POST /predict`` and ``GET /health``: the platform's own shapes.

``/predict`` takes ``{"features": [9 numbers]}`` or a transaction with a ``customer_id`` (the
customer's stats read from the online feature store), or ``{"instances": [...]}`` of either. The
common requests, one valid row of ``features`` or one valid transaction, are answered by
:func:`fast_routes`'s handler in the ASGI layer (same answer, same log row).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.serving.middleware import FastAnswer, FastHandler
from ml_platform.serving.online import feature_vectors, transaction_features, transaction_frame
from ml_platform.serving.protocol.common import (
    INLINE_ROWS,
    encode_json,
    json_object,
    json_response,
    plain_numbers,
    plain_request_id,
    reject_constant,
)
from ml_platform.serving.schemas import (
    FEATURE_ORDER_TEXT,
    INT64_MAX,
    INT64_MIN,
    ApiError,
    FeaturesRequest,
    PredictBatchResponse,
    PredictResponse,
    TransactionRequest,
    check_request_id,
    field_path,
    validate,
)
from ml_platform.serving.server import ModelServer, new_request_id, row_ids

_log = logging.getLogger(__name__)

N_FEATURES = len(MODEL_FEATURES)
# A one-row body is ~150-400 bytes; a body larger than this goes to the route without a look.
FAST_BODY_BYTES = 4_096


def router(server: ModelServer) -> APIRouter:
    config = server.config
    routes = APIRouter()

    @routes.get("/health")
    async def health():
        reason = server.not_ready_reason()
        deployment = server.deployment
        body = {
            "status": "ok" if reason is None else "unavailable",
            "model_name": config.model_name,
            "model_version": deployment.champion.version if deployment else None,
            "challenger_version": deployment.challenger.version if deployment and deployment.challenger else None,
            **server.pin_state(),
            "uptime_seconds": round(time.monotonic() - server.started_at, 3),
        }
        refused = sorted(server.manager.refused.items())
        if refused:
            body["refused"] = [{"version": version, "reason": why} for version, why in refused]
        if reason is not None:
            body["reason"] = reason
            return JSONResponse(body, status_code=503)
        return body

    @routes.post("/predict", response_model=PredictResponse | PredictBatchResponse)
    async def predict(request: Request):
        started = time.perf_counter()
        payload = json_object(await request.body())
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
        features = np.full((n, N_FEATURES), np.nan, dtype="float64")
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

        base_id = payload.get("request_id") if batch else None
        if base_id is not None:  # the batch's own id, logged as <request_id>/<row>: checked as any request id
            check_request_id(base_id, "request_id")
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

    return routes


# ---- the fast path -------------------------------------------------------------------------------
def fast_routes(server: ModelServer) -> dict[str, FastHandler]:
    """``POST /predict`` for the common requests, answered before FastAPI's routing.

    The common requests are one row: ``features`` that are trivially valid (:func:`_plain_features`),
    or a transaction with a ``customer_id`` that :class:`TransactionRequest` accepts (the request a
    payment system sends; :func:`_plain_transaction`), whose customer stats are read from the online
    store (:meth:`OnlineFeatures.customer_async`) into :func:`transaction_features`, the one-row twin of
    :func:`model_features` the route uses. Each is scored by :meth:`ModelServer.score_one_soon` (with
    the other one-row requests of the loop turn, in one C call into XGBoost; the row logged as a tuple)
    and answered with the bytes the route would send. Everything else (batches, every invalid body, no
    model loaded yet, no feature store or one that failed the read) returns None and goes through the
    FastAPI route, which answers it completely, errors included. Measured in-process, the route costs
    ~2.5x the fast path per request for features (routing, request object, dependency solving) and ~11x
    for a transaction (CPU per request: pandas frames around the store read, a thread hop), and the fast
    path is most of the traffic.
    """

    def fast_predict(body: bytes, started: float, scope) -> FastAnswer | None | Awaitable[FastAnswer | None]:
        deployment = server.deployment
        if deployment is None or len(body) > FAST_BODY_BYTES:
            return None
        try:
            payload = json.loads(body, parse_constant=reject_constant)
        except Exception:  # not JSON, not UTF-8, too deep, a huge integer: the route says what was wrong
            return None
        if type(payload) is not dict:
            return None
        single = _plain_features(payload)
        if single is None:
            transaction = _plain_transaction(server, payload)
            return None if transaction is None else answer_transaction(deployment, transaction, started)
        features, customer_id, request_id = single
        return answer_row(deployment, features, customer_id, request_id or new_request_id(), started)

    async def answer_row(deployment, features, customer_id, request_id: str, started: float) -> FastAnswer:
        result = await server.score_one_soon(
            deployment, features, customer_id=customer_id, request_id=request_id, started=started
        )
        return FastAnswer(encode_json(result), result["variant"])

    async def answer_transaction(deployment, transaction: TransactionRequest, started: float) -> FastAnswer | None:
        try:
            stats = await server.features.customer_async(transaction.customer_id)
        except Exception:  # the store is down or failed: the route reads again and answers 503 saying why
            return None
        result = await server.score_one_soon(
            deployment,
            transaction_features(stats, transaction),
            customer_id=transaction.customer_id,
            request_id=transaction.request_id or new_request_id(),
            started=started,
        )
        return FastAnswer(encode_json(result), result["variant"])

    return {"/predict": fast_predict}


def _plain_features(payload: dict[str, Any]) -> tuple[list[float | int | None], int | None, str | None] | None:
    """The single-row ``features`` body when it is trivially valid, else None (then pydantic decides).

    Trivially valid: ``features`` a list of exactly 9 finite floats, integers within +-2**53 or nulls;
    ``customer_id`` absent, null or an int64 integer; ``request_id`` absent, null or a string of 1 to
    200 printable characters; no ``instances``. For such a body :class:`FeaturesRequest` would accept the same
    values unchanged (other keys are ignored by both), so the answer is the same; anything else,
    including every invalid body, takes the pydantic path and gets its exact error message.
    """
    features = payload.get("features")
    if type(features) is not list or len(features) != N_FEATURES or "instances" in payload:
        return None
    if not plain_numbers(features):  # bool, str, list, NaN, ... : pydantic names the problem
        return None
    customer_id = payload.get("customer_id")
    if customer_id is not None and (type(customer_id) is not int or not INT64_MIN <= customer_id <= INT64_MAX):
        return None
    request_id = payload.get("request_id")
    if not plain_request_id(request_id):
        return None  # the route names the problem
    return features, customer_id, request_id


def _plain_transaction(server: ModelServer, payload: dict[str, Any]) -> TransactionRequest | None:
    """The single-row transaction body when :class:`TransactionRequest` accepts it and the feature store
    is open, else None (then the route decides, and names what is wrong).

    A body is a transaction for the route when it has ``customer_id`` and neither ``features`` nor
    ``instances``; it is validated here by the same model, so both accept and reject the same bodies.
    """
    if "customer_id" not in payload or "features" in payload or "instances" in payload:
        return None
    features_store = server.features
    if features_store is None or not features_store.ready:
        return None
    try:
        return TransactionRequest.model_validate(payload)
    except ValidationError:
        return None


# ---- the validated route's helpers ---------------------------------------------------------------
def _field(prefix: tuple, name: str) -> str:
    return field_path((*prefix, name))


def _parse_instance(item: Any, prefix: tuple) -> FeaturesRequest | TransactionRequest:
    if not isinstance(item, dict):
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
    """The model's input for transactions: each customer read once, :func:`model_features` over the frame."""
    stats = server.features.stats([row.customer_id for row in rows])
    return feature_vectors(transaction_frame(rows), stats)

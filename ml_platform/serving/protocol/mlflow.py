"""``POST /invocations`` and ``GET /ping``: MLflow's scoring protocol for the champion.

Bodies are read by the project's own parser (:mod:`.mlflow_parser`: every form ``mlflow models serve``
reads for this model, JSON and CSV, with the status codes it answers) and scored by the same predictor
as ``/predict`` (:meth:`ModelServer.score_pinned` on the champion), so every answered row is logged.
The answer is ``{"predictions": [P(fraud), ...]}``, byte for byte what ``mlflow models serve`` sends
for the same version; an error is MLflow's ``{"error_code": ..., "message": ...}`` (415: plain text,
as MLflow sends it). The ``X-Request-Id`` header, when sent, is the logged request id.

A JSON body of up to :data:`FAST_MAX_ROWS` rows is answered by :func:`fast_routes`'s handler in the
ASGI layer: the same parser and scorer, the same bytes; any body it does not answer goes to the route.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ml_platform.predictions import PredictionLogUnavailable
from ml_platform.serving.middleware import FastAnswer, FastHandler
from ml_platform.serving.protocol.mlflow_parser import BAD_REQUEST, JSON, parse_invocation
from ml_platform.serving.schemas import ApiError
from ml_platform.serving.server import ModelServer, new_request_id

# A body larger than this is read and scored on a worker thread (it is a batch, CSV most likely).
INLINE_BODY_BYTES = 16_384
# The fast path takes JSON bodies up to this size and this many rows (a 100-row batch is ~25 kB).
FAST_BODY_BYTES = 65_536
FAST_MAX_ROWS = 128
REQUEST_ID_MAX = 200
_ERROR_CODES = {503: "TEMPORARILY_UNAVAILABLE"}


def router(server: ModelServer) -> APIRouter:
    routes = APIRouter()

    @routes.get("/ping")
    async def ping():
        if server.deployment is None:
            return Response(content="\n", status_code=503, media_type="application/json")
        return Response(content="\n", status_code=200, media_type="application/json")

    @routes.post("/invocations")
    async def invocations(request: Request):
        started = time.perf_counter()
        request.state.variant = server.primary_variant
        body = await request.body()
        try:
            request_id = checked_request_id(request.headers.get("x-request-id"))
            content_type = request.headers.get("content-type")
            if len(body) <= INLINE_BODY_BYTES:
                content = answer(server, body, content_type, request_id, started)
            else:
                content = await run_in_threadpool(answer, server, body, content_type, request_id, started)
        except ApiError as error:
            return error_response(error)
        except PredictionLogUnavailable as error:  # answers not logged are not sent; MLflow's error body
            return error_response(ApiError(error.status_code, error.message, None))
        return Response(content=content, status_code=200, media_type="application/json")

    return routes


def answer(server: ModelServer, body: bytes, content_type: str | None, request_id: str | None, started: float) -> bytes:
    """The 200 answer's bytes for an ``/invocations`` body: parsed, scored by the champion, logged."""
    features = parse_invocation(body, content_type)
    limit = server.config.max_batch_rows
    if len(features) > limit:  # the server's per-request bound, as on /predict and v2 infer
        raise ApiError(413, f"body: {len(features)} rows is more than this server's limit of {limit}; split the batch")
    return score(server, server.require_deployment(), features, request_id, started)


def score(server: ModelServer, deployment, features, request_id: str | None, started: float) -> bytes:
    """Rows scored by the champion (no routing, no shadow) and logged; the answer's bytes."""
    probabilities = server.score_pinned(
        deployment.champion,
        server.primary_variant,
        features,
        request_id=request_id or new_request_id(),
        started=started,
    )
    return encode_predictions(probabilities.tolist())


def encode_predictions(predictions: list[float]) -> bytes:
    """``{"predictions": [...]}`` as ``mlflow models serve`` writes it (``json.dump``'s default separators)."""
    return json.dumps({"predictions": predictions}).encode()


def checked_request_id(value: str | None) -> str | None:
    """The X-Request-Id header as the logged request id: 1 to 200 printable characters (422 otherwise)."""
    if value is None:
        return None
    if not 0 < len(value) <= REQUEST_ID_MAX or not value.isprintable():
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise ApiError(
            422,
            f"x-request-id: expected 1 to {REQUEST_ID_MAX} printable characters; got {len(value)} characters"
            f" ({shown!r})",
            "x-request-id",
        )
    return value


def error_response(error: ApiError) -> Response:
    if error.status_code == 415:  # MLflow answers an unreadable content type in plain text
        return Response(content=error.message, status_code=415, media_type="text/plain")
    code = getattr(error, "error_code", None) or _ERROR_CODES.get(error.status_code, BAD_REQUEST)
    return Response(
        content=json.dumps({"error_code": code, "message": error.message}),
        status_code=error.status_code,
        media_type="application/json",
    )


# ---- the fast path -------------------------------------------------------------------------------
def fast_routes(server: ModelServer) -> dict[str, FastHandler]:
    """``POST /invocations`` for JSON bodies of up to :data:`FAST_MAX_ROWS` rows, before FastAPI's routing.

    It runs the route's own parser and scorer (:func:`answer`), so the bytes are the route's. A body
    that is not JSON, too large, has more rows, carries an X-Request-Id the route would refuse, or that
    the parser refuses returns None: the route answers it, errors included.
    """

    def fast_invocations(
        body: bytes, started: float, scope: Mapping[str, Any]
    ) -> FastAnswer | None | Awaitable[FastAnswer]:
        deployment = server.deployment
        if deployment is None or len(body) > FAST_BODY_BYTES:
            return None
        content_type = request_id = None
        for key, value in scope["headers"]:  # the first of each, as Starlette's headers.get gives it
            if key == b"content-type" and content_type is None:
                content_type = value.decode("latin-1")
            elif key == b"x-request-id" and request_id is None:
                request_id = value.decode("latin-1")
        if content_type is None or not content_type.startswith(JSON):
            return None
        try:
            request_id = checked_request_id(request_id)
            features = parse_invocation(body, content_type)
        except ApiError:
            return None
        if len(features) > min(FAST_MAX_ROWS, server.config.max_batch_rows):  # the route answers 413 over the limit
            return None
        if len(features) == 1:
            return answer_row(deployment, features[0].tolist(), request_id or new_request_id(), started)
        return FastAnswer(score(server, deployment, features, request_id, started), server.primary_variant)

    async def answer_row(deployment, values: list[float], request_id: str, started: float) -> FastAnswer:
        # scored with the other one-row requests of this loop turn, in one call: the same probability
        variant = server.primary_variant
        probability = await server.score_row_soon(
            deployment.champion, variant, values, request_id=request_id, started=started
        )
        return FastAnswer(encode_predictions([probability]), variant)

    return {"/invocations": fast_invocations}

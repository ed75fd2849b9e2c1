"""The FastAPI app: one predictor, three faces, assembled.

The routes live one protocol per module under :mod:`ml_platform.serving.protocol` (``predict``,
``mlflow``, ``v2``, ``feedback``, ``admin``); auth, the body limit, request metrics and the fast paths are one ASGI
layer, :mod:`ml_platform.serving.middleware`; the served OpenAPI document is completed by
:mod:`ml_platform.serving.openapi`. This module puts them together with the error handlers: every
refusal is a 4xx with the error body; a 500 is left only for a bug (an exception nothing expected).
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ml_platform.predictions import PredictionLogUnavailable
from ml_platform.serving import openapi
from ml_platform.serving.config import ServerConfig
from ml_platform.serving.middleware import GuardMiddleware
from ml_platform.serving.protocol import admin, feedback, mlflow, predict, v2
from ml_platform.serving.schemas import ApiError, validation_error
from ml_platform.serving.server import ModelServer

_log = logging.getLogger(__name__)

# The status recorded for a request whose client hung up before sending its whole body (nginx's 499).
CLIENT_CLOSED_REQUEST = 499


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

    app = _GuardedApp(
        title="ml-platform model server",
        summary=f"Serves the registered model {config.model_name!r} (champion/challenger).",
        lifespan=lifespan,
        # FastAPI's OpenTelemetry bridge looks up the global OTel providers on every request (~6 us,
        # environment reads included) even when none is configured; this server reports through
        # /metrics and the prediction log, so the bridge is on only when asked for.
        telemetry=None if config.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.server = server
    fast_routes = {}
    if config.fast_path:
        fast_routes.update(predict.fast_routes(server))
        fast_routes.update(mlflow.fast_routes(server))
        fast_routes.update(v2.fast_routes(server))
    app.guard = {"server": server, "fast_routes": fast_routes}
    _add_error_handlers(app)
    for protocol in (predict, mlflow, v2, feedback, admin):
        app.include_router(protocol.router(server))
    openapi.install(app, config)
    return app


class _GuardedApp(FastAPI):
    """FastAPI with :class:`GuardMiddleware` outermost, before FastAPI's own layers (its error handling,
    body limit and telemetry, ~10 us per request for the fast paths, which need none of them: the guard
    enforces the body limit and a fast handler that raises leaves the request to the route). Requests
    the guard passes on go through all of them to the routes, errors to the handlers below (a 500 from
    FastAPI's error layer passes the guard, which counts it)."""

    guard: dict[str, Any]

    def build_middleware_stack(self):
        return GuardMiddleware(super().build_middleware_stack(), **self.guard)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return _error_response(error.body(), error.status_code)

    @app.exception_handler(PredictionLogUnavailable)
    async def log_unavailable(request: Request, error: PredictionLogUnavailable):
        # An answer whose rows are not in the log is never sent: the client may retry elsewhere.
        return _error_response({"error": error.message, "field": None}, error.status_code)

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(request: Request, error: RequestValidationError):
        converted = validation_error(list(error.errors()))
        return _error_response(converted.body(), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return _error_response({"error": str(error.detail), "field": None}, error.status_code, error.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_disconnect(request: Request, error: ClientDisconnect):
        # The client went away before its body arrived: nobody reads this answer, but the request metrics
        # record its status, and a client's hang-up is no server error (499, as nginx records it).
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        _log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": f"internal error: {type(error).__name__}", "field": None}, status_code=500)


def _error_response(body: dict, status_code: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """The error body as JSON; a message quoting a string that is not Unicode text (a lone surrogate in a
    field name, say) is sent with that character escaped rather than failing to encode."""
    try:
        return JSONResponse(body, status_code=status_code, headers=headers)
    except UnicodeEncodeError:
        return Response(
            json.dumps(body, ensure_ascii=True), status_code=status_code, headers=headers, media_type="application/json"
        )

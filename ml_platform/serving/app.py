"""The FastAPI app: one predictor, three faces, assembled.

The routes live one protocol per module under :mod:`ml_platform.serving.protocol` (``predict``,
``mlflow``, ``v2``, ``admin``); auth, the body limit, request metrics and the fast paths are one ASGI
layer, :mod:`ml_platform.serving.middleware`. This module puts them together with the error handlers.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ml_platform.serving.config import ServerConfig
from ml_platform.serving.middleware import GuardMiddleware
from ml_platform.serving.protocol import admin, mlflow, predict, v2
from ml_platform.serving.schemas import ApiError, validation_error
from ml_platform.serving.server import ModelServer

_log = logging.getLogger(__name__)


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
    fast_routes = {}
    if config.fast_path:
        fast_routes.update(predict.fast_routes(server))
    app.add_middleware(GuardMiddleware, server=server, fast_routes=fast_routes)
    _add_error_handlers(app)
    for protocol in (predict, mlflow, v2, admin):
        app.include_router(protocol.router(server))
    return app


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

"""``POST /invocations`` and ``GET /ping``: MLflow's scoring protocol for the champion.

Answered by MLflow's own ``scoring_server.invocations`` over the champion's pyfunc, so parsing, schema
enforcement, answers and errors are those of ``mlflow models serve`` by construction.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.serving.server import ModelServer, row_ids

_log = logging.getLogger(__name__)


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

    return routes


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

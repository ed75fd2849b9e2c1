"""The Open Inference Protocol v2 (``/v2/...``), so KServe and Triton clients work.

Health (``/v2/health/live``: the process answers; ``/v2/health/ready``: a model is loaded and warmed up),
server and model metadata, and infer on the champion or on a loaded version by number.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.serving.protocol.common import INLINE_ROWS, json_object
from ml_platform.serving.schemas import FEATURE_ORDER_TEXT, ApiError, V2InferRequest, V2Tensor, validate
from ml_platform.serving.server import CHALLENGER_VARIANT, ModelServer, row_ids

V2_INPUT_NAME = "input-0"
V2_OUTPUT_NAME = "probability"


def router(server: ModelServer) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v2")
    async def v2_server_metadata():
        return {"name": "ml-platform", "version": _platform_version(), "extensions": []}

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

    @routes.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request):
        return await _v2_infer(server, request, name, None)

    @routes.post("/v2/models/{name}/versions/{version}/infer")
    async def v2_version_infer(name: str, version: str, request: Request):
        return await _v2_infer(server, request, name, version)

    return routes


def _platform_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ml-platform")
    except PackageNotFoundError:
        return "unknown"


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
    payload = json_object(await request.body())
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

"""The served OpenAPI document (``GET /openapi.json``): FastAPI's generated schema, completed.

The scoring routes read their bodies themselves (one route takes several shapes, MLflow's forms or
CSV, v2's JSON or binary tensors), so FastAPI documents neither their request bodies nor the answers
they give besides 200. :func:`install` completes the schema once, on first request: the request body
of every route that takes one (the pydantic models of :mod:`ml_platform.serving.schemas`, through
their JSON schemas, and the protocol forms that have no model) and every status each route answers,
each with the schema of its body. The statuses are those the code gives:

- every route but the probes and ``/metrics``: 401 (no or wrong bearer token) and 403 (a token that
  does not open that route, or an admin write on a server without an admin token);
- every route that reads a body: 413 (over ``max_body_bytes``, or too many rows);
- ``/invocations``: MLflow's error body (``error_code``, ``message``) for its own refusals and 503, and
  415 as plain text, as ``mlflow models serve`` answers;
- the rest: the server's error body ``{"error": "<field>: <what was wrong>", "field": <field or null>}``.

The security requirement (bearer) is declared for the routes this server's configuration guards.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from ml_platform.data.schema import CATEGORIES, CHANNELS
from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.serving.config import ServerConfig
from ml_platform.serving.middleware import PUBLIC_PATHS
from ml_platform.serving.protocol import v2, v2_binary
from ml_platform.serving.schemas import (
    FeaturesRequest,
    PredictBatchResponse,
    PredictResponse,
    RoutingUpdate,
    TransactionRequest,
)

JSON = "application/json"
N_FEATURES = len(MODEL_FEATURES)
ADMIN_PATHS = frozenset({"/admin/routing"})
INFER_PATHS = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")


def install(app: FastAPI, config: ServerConfig) -> None:
    """Serve :func:`build_openapi`'s document at ``app.openapi_url`` (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, config)
        return app.openapi_schema

    app.openapi = openapi


def build_openapi(app: FastAPI, config: ServerConfig) -> dict[str, Any]:
    """FastAPI's schema of ``app``, completed with every route's request body and answers."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body; this server answers ErrorBody
        schemas.pop(name, None)
    schemas.update(_component_schemas(config))
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <token>"}
    }
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            _complete(operation, method.upper(), path, config)
    return document


# ---- the bodies ---------------------------------------------------------------------------------------
def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _component_schemas(config: ServerConfig) -> dict[str, Any]:
    """The pydantic models' JSON schemas, tightened where a validator checks what the schema cannot say,
    and the bodies that have no model."""
    _, generated = models_json_schema(
        [
            (FeaturesRequest, "validation"),
            (TransactionRequest, "validation"),
            (v2.InferRequest, "validation"),
            (RoutingUpdate, "validation"),
            (PredictResponse, "serialization"),
            (PredictBatchResponse, "serialization"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = deepcopy(generated["$defs"])
    features = schemas["FeaturesRequest"]["properties"]["features"]
    features.update(minItems=N_FEATURES, maxItems=N_FEATURES)
    features["description"] = f"{N_FEATURES} numbers (null: missing) in the order {', '.join(MODEL_FEATURES)}"
    transaction = schemas["TransactionRequest"]["properties"]
    transaction["category"]["enum"] = list(CATEGORIES)
    transaction["channel"]["enum"] = list(CHANNELS)
    # what pydantic reads as a datetime: ISO 8601 text (RFC 3339 and looser forms) or Unix time
    transaction["event_timestamp"] = {
        "anyOf": [
            {"type": "string", "description": "ISO 8601, e.g. 2026-03-15T03:30:00Z (UTC when no offset is given)"},
            {"type": "number", "description": "Unix time"},
            {"type": "null"},
        ],
        "default": None,
        "description": "when the transaction happened (default: now), from 1970 up to (not including) 2200",
    }
    schemas["InferTensor"]["properties"]["datatype"]["enum"] = sorted(v2_binary.NUMPY_TYPES)

    row = {"anyOf": [_ref("FeaturesRequest"), _ref("TransactionRequest")]}
    schemas["PredictInstances"] = {
        "title": "PredictInstances",
        "description": "Many rows in one request, answered in order.",
        "type": "object",
        "properties": {
            "instances": {"type": "array", "items": row, "minItems": 1, "maxItems": config.max_batch_rows},
            "request_id": {
                "anyOf": [{"type": "string", "minLength": 1, "maxLength": 200}, {"type": "null"}],
                "description": "rows are logged as <request_id>/<row> (null or absent: one is made)",
            },
        },
        "required": ["instances"],
    }
    schemas["PredictRequest"] = {
        "title": "PredictRequest",
        "description": "One row given by its features, one transaction (its customer's stats read from the "
        "online feature store) or many rows of either.",
        "anyOf": [_ref("FeaturesRequest"), _ref("TransactionRequest"), _ref("PredictInstances")],
    }
    label_id = {
        "anyOf": [{"type": "string", "maxLength": 200}, {"type": "integer"}, {"type": "null"}],
        "description": "printable text (an integer is read as its decimal text); empty or null: not given",
    }
    schemas["FeedbackLabel"] = {
        "title": "FeedbackLabel",
        "description": "The ground truth of one answered request: request_id or transaction_id (both only when "
        "equal), the label and when it was given.",
        "type": "object",
        "properties": {
            "request_id": {**label_id, "description": "the request id the answer carried; " + label_id["description"]},
            "transaction_id": {
                **label_id,
                "description": "a transaction's id, when its request sent it as the request id; "
                + label_id["description"],
            },
            "label": {
                "anyOf": [
                    {"enum": [0, 1]},
                    {"type": "boolean"},
                    {"type": "string", "description": "1/0, true/false or fraud/legit, in any case"},
                ],
                "description": "fraud (1, true, fraud) or not (0, false, legit)",
            },
            "labelled_at": {
                "anyOf": [
                    {"type": "string", "description": "ISO 8601, e.g. 2026-05-10T14:00:00Z (UTC when no offset)"},
                    {"type": "null"},
                ],
                "default": None,
                "description": "when the label was given (default: now), from 1970 to no later than a few minutes "
                "from now",
            },
        },
        "required": ["label"],
        "anyOf": [{"required": ["request_id"]}, {"required": ["transaction_id"]}],
    }
    schemas["FeedbackRequest"] = {
        "title": "FeedbackRequest",
        "description": "Labels for answered requests, appended to the label store live monitoring reads; the latest "
        "label of a request (by labelled_at, then arrival) wins. All rows are written or none.",
        "type": "object",
        "properties": {
            "labels": {
                "type": "array",
                "items": _ref("FeedbackLabel"),
                "minItems": 1,
                "maxItems": config.max_batch_rows,
            }
        },
        "required": ["labels"],
    }
    schemas["FeedbackResult"] = {
        "title": "FeedbackResult",
        "description": "rows written; of the requests they label: new (no label known before), changed (the label "
        "known is now the other one), positives (labelled fraud)",
        "type": "object",
        "properties": {
            name: {"type": "integer", "minimum": 0} for name in ("rows", "requests", "new", "changed", "positives")
        },
        "required": ["rows", "requests", "new", "changed", "positives"],
        "additionalProperties": False,
    }
    schemas["ErrorBody"] = {
        "title": "ErrorBody",
        "description": "Every error of this server: the field at fault (null when none) and what was wrong.",
        "type": "object",
        "properties": {
            "error": {"type": "string", "description": "<field>: <what was wrong>"},
            "field": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["error", "field"],
        "additionalProperties": False,
    }
    schemas["MlflowError"] = {
        "title": "MlflowError",
        "description": "MLflow's scoring server error body, as `mlflow models serve` answers.",
        "type": "object",
        "properties": {
            "error_code": {"type": "string", "examples": ["BAD_REQUEST", "INVALID_PARAMETER_VALUE"]},
            "message": {"type": "string"},
            "stack_trace": {"type": "string"},
        },
        "required": ["error_code", "message"],
    }
    # A value as MLflow converts it to a double: a number, a boolean (1/0), a number as text, or null (missing).
    mlflow_value = {
        "anyOf": [{"type": "number"}, {"type": "boolean"}, {"type": "string"}, {"type": "null"}],
        "description": "a number (also true/false or a number as text, as MLflow converts them); null: missing",
    }
    record = {
        "type": "object",
        "properties": {name: mlflow_value for name in MODEL_FEATURES},
        "required": list(MODEL_FEATURES),
    }
    params = {"description": "inference parameters: this model takes none, and ignores them as MLflow does"}
    column = {"anyOf": [mlflow_value, {"type": "array", "items": mlflow_value}]}
    columns = {
        "type": "object",
        "description": "one value or one list of values per feature (a single value is one row)",
        "properties": dict.fromkeys(MODEL_FEATURES, column),
        "required": list(MODEL_FEATURES),
    }
    records_or_columns = {"anyOf": [{"type": "array", "items": record}, columns]}
    schemas["MlflowRequest"] = {
        "title": "MlflowRequest",
        "description": "MLflow's scoring protocol: exactly one of dataframe_split, dataframe_records, "
        "instances or inputs (columns named after the model's features), and optional params.",
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "dataframe_split": {
                        "type": "object",
                        "properties": {
                            "columns": {"type": "array", "items": {"type": "string", "enum": list(MODEL_FEATURES)}},
                            "data": {"type": "array", "items": {"type": "array", "items": mlflow_value}},
                            "index": {"anyOf": [{"type": "array"}, {"type": "null"}]},
                        },
                        "required": ["columns", "data"],
                    },
                    "params": params,
                },
                "required": ["dataframe_split"],
            },
            {
                "type": "object",
                "properties": {"dataframe_records": {"type": "array", "items": record}, "params": params},
                "required": ["dataframe_records"],
            },
            {
                "type": "object",
                "properties": {"instances": records_or_columns, "params": params},
                "required": ["instances"],
            },
            {
                "type": "object",
                "properties": {"inputs": records_or_columns, "params": params},
                "required": ["inputs"],
            },
        ],
    }
    schemas["MlflowPredictions"] = {
        "title": "MlflowPredictions",
        "type": "object",
        "properties": {"predictions": {"type": "array", "items": {"type": "number"}, "description": "P(fraud)"}},
        "required": ["predictions"],
    }
    schemas["Health"] = {
        "title": "Health",
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "model_name": {"type": "string"},
            "model_version": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "challenger_version": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "pinned": {
                "type": "boolean",
                "description": "true: the server serves pinned_version and ignores alias moves (Kubernetes); "
                "false: it follows the registry alias",
            },
            "pinned_version": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "uptime_seconds": {"type": "number"},
            "reason": {"type": "string", "description": "why the server is not ready (503 only)"},
        },
        "required": ["status", "model_name", "model_version", "challenger_version", "uptime_seconds"],
    }
    schemas["Routing"] = {
        "title": "Routing",
        "type": "object",
        "properties": {
            "challenger_weight": {"type": "number", "minimum": 0, "maximum": 1},
            "mode": {"type": "string", "enum": ["split", "shadow"]},
            "sticky": {"type": "boolean"},
            "champion_version": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "challenger_version": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        },
        "required": ["challenger_weight", "mode", "sticky", "champion_version", "challenger_version"],
    }
    tensor_metadata = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "parameters": {"type": "object"},
        },
        "required": ["name", "datatype", "shape"],
    }
    schemas["V2ServerMetadata"] = {
        "title": "V2ServerMetadata",
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "version", "extensions"],
    }
    schemas["V2Live"] = {
        "title": "V2Live",
        "type": "object",
        "properties": {"live": {"type": "boolean"}},
        "required": ["live"],
    }
    schemas["V2Ready"] = {
        "title": "V2Ready",
        "type": "object",
        "properties": {"ready": {"type": "boolean"}, "reason": {"type": "string"}},
        "required": ["ready"],
    }
    schemas["V2ModelReady"] = {
        "title": "V2ModelReady",
        "type": "object",
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
        "required": ["name", "ready"],
    }
    schemas["V2ModelMetadata"] = {
        "title": "V2ModelMetadata",
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": tensor_metadata},
            "outputs": {"type": "array", "items": tensor_metadata},
            "parameters": {"type": "object"},
        },
        "required": ["name", "platform", "inputs", "outputs"],
    }
    schemas["V2InferResponse"] = {
        "title": "V2InferResponse",
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "datatype": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "data": {"type": "array", "items": {"type": "number"}},
                        "parameters": {"type": "object"},
                    },
                    "required": ["name", "datatype", "shape"],
                },
            },
        },
        "required": ["model_name", "outputs"],
    }
    return schemas


# ---- the operations -----------------------------------------------------------------------------------
def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("ErrorBody")}}}


def _json(description: str, schema_name: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema_name)}}}


def _mlflow_error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("MlflowError")}}}


_BINARY_HEADER = "Inference-Header-Content-Length"
_BINARY_FORM = {
    "schema": {
        "type": "string",
        "format": "binary",
        "description": f"The binary tensor data extension: the first {_BINARY_HEADER} bytes are the JSON request "
        "(each input's parameters.binary_data_size says how many bytes it has), the rest the tensors' raw "
        "little-endian bytes in input order.",
    }
}

_EXAMPLE_ROW = [120.0, 13.5, 1.0, 8.0, 4.0, 80.0, 320.0, 2.5, 1.5]
_EXAMPLE_TRANSACTION = {"customer_id": 42, "amount": 310.5, "category": "electronics", "channel": "online"}


def _examples(**bodies: Any) -> dict[str, Any]:
    return {name: {"value": value} for name, value in bodies.items()}


def _request_body(method: str, path: str) -> dict[str, Any] | None:
    if path == "/predict":
        content = {
            JSON: {
                "schema": _ref("PredictRequest"),
                "examples": _examples(
                    features={"features": _EXAMPLE_ROW},
                    transaction=_EXAMPLE_TRANSACTION,
                    instances={"instances": [{"features": _EXAMPLE_ROW}, _EXAMPLE_TRANSACTION]},
                ),
            }
        }
    elif path == "/invocations":
        content = {
            JSON: {
                "schema": _ref("MlflowRequest"),
                "examples": _examples(
                    dataframe_split={"dataframe_split": {"columns": list(MODEL_FEATURES), "data": [_EXAMPLE_ROW]}},
                    dataframe_records={"dataframe_records": [dict(zip(MODEL_FEATURES, _EXAMPLE_ROW, strict=True))]},
                ),
            },
            "text/csv": {
                "schema": {
                    "type": "string",
                    "description": f"a header row naming the {N_FEATURES} features, then one row per prediction",
                },
                "example": ",".join(MODEL_FEATURES) + "\n" + ",".join(map(str, _EXAMPLE_ROW)) + "\n",
            },
        }
    elif path in INFER_PATHS:
        one_row = {"name": "input-0", "shape": [1, N_FEATURES], "datatype": "FP64", "data": _EXAMPLE_ROW}
        content = {
            JSON: {"schema": _ref("InferRequest"), "examples": _examples(one_row={"inputs": [one_row]})},
            "application/octet-stream": _BINARY_FORM,
        }
    elif path == "/feedback":
        content = {
            JSON: {
                "schema": _ref("FeedbackRequest"),
                "examples": _examples(
                    chargebacks={
                        "labels": [
                            {"transaction_id": "tx-000123", "label": 1, "labelled_at": "2026-05-10T14:00:00Z"},
                            {"request_id": "7f3c9a0e", "label": "legit"},
                        ]
                    }
                ),
            }
        }
    elif (method, path) == ("PUT", "/admin/routing"):
        content = {
            JSON: {
                "schema": _ref("RoutingUpdate"),
                "examples": _examples(canary={"challenger_weight": 0.1, "mode": "split", "sticky": True}),
            }
        }
    else:
        return None
    return {"required": True, "content": content}


def _answers(method: str, path: str) -> dict[str, dict[str, Any]]:
    """The answers of ``method path`` other than the guard's (401/403/413), status -> response object."""
    not_loaded = _error("no model loaded yet (or the feature store is not ready, for transactions)")
    if path == "/health":
        return {"200": _json("ready", "Health"), "503": _json("not ready, with the reason", "Health")}
    if path == "/ping":
        return {
            "200": {"description": "a model is loaded (MLflow's /ping: an empty body)"},
            "503": {"description": "no model loaded yet"},
        }
    if path == "/predict":
        return {
            "200": {
                "description": "one prediction, or {predictions: [...]} for instances",
                "content": {JSON: {"schema": {"anyOf": [_ref("PredictResponse"), _ref("PredictBatchResponse")]}}},
            },
            "400": _error(
                "not JSON (syntax, encoding, nesting, a huge integer), or a transaction on a server "
                "without a feature store"
            ),
            "422": _error("valid JSON that is not a valid request: the field and what was wrong"),
            "503": not_loaded,
        }
    if path == "/invocations":
        return {
            "200": _json("MLflow's answer", "MlflowPredictions"),
            "400": _mlflow_error("a body MLflow's scoring protocol refuses"),
            "415": {
                "description": "a content type other than application/json and text/csv (MLflow: plain text)",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            "422": _mlflow_error("an X-Request-Id header that is not 1 to 200 printable characters"),
            "503": _mlflow_error("no model loaded yet"),
        }
    if path in INFER_PATHS:
        return {
            "200": {
                "description": "the outputs; binary outputs when the request asks for them",
                "headers": {
                    _BINARY_HEADER: {
                        "description": "with binary outputs: the length of the JSON part of the answer",
                        "schema": {"type": "integer", "minimum": 0},
                    }
                },
                "content": {
                    JSON: {"schema": _ref("V2InferResponse")},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "400": _error("not JSON (syntax, encoding, nesting, a huge integer), or a malformed binary body"),
            "404": _error("no such model, or that version is not loaded"),
            "422": _error("a request the model cannot take: the field and what was wrong"),
            "503": not_loaded,
        }
    if path == "/feedback":
        return {
            "200": _json("every row written: the counts", "FeedbackResult"),
            "400": _error("not JSON (syntax, encoding, nesting, a huge integer)"),
            "422": _error("a bad row, none written: each bad row named (labels[3].label: ...) with the reason"),
            "503": _error("no label store configured, or it cannot be written"),
        }
    if path == "/v2":
        return {"200": _json("the server", "V2ServerMetadata")}
    if path == "/v2/health/live":
        return {"200": _json("the process answers", "V2Live")}
    if path == "/v2/health/ready":
        return {"200": _json("ready", "V2Ready"), "503": _json("not ready, with the reason", "V2Ready")}
    if path.startswith("/v2/models/"):
        found = "V2ModelReady" if path.endswith("/ready") else "V2ModelMetadata"
        return {
            "200": _json("the model", found),
            "404": _error("no such model, or that version is not loaded"),
            "503": not_loaded,
        }
    if path == "/metrics":
        return {
            "200": {
                "description": "Prometheus text exposition",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        }
    if path == "/admin/routing":
        answers = {"200": _json("the routing now in force", "Routing")}
        if method == "PUT":
            answers["400"] = _error("a body that is not JSON")
            answers["422"] = _error("an invalid update: the field and what was wrong")
        return answers
    return {}


def _complete(operation: dict[str, Any], method: str, path: str, config: ServerConfig) -> None:
    body = _request_body(method, path)
    if body is not None:
        operation["requestBody"] = body
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path" and parameter["name"] == "name":
            parameter["description"] = f"the served model's registered name: {config.model_name!r}"
            parameter["example"] = config.model_name
    if path in INFER_PATHS:
        operation.setdefault("parameters", []).append(
            {
                "name": _BINARY_HEADER,
                "in": "header",
                "required": False,
                "description": "the length of the JSON part of a binary tensor request",
                "schema": {"type": "integer", "minimum": 0},
            }
        )
    if path == "/invocations":
        operation.setdefault("parameters", []).append(
            {
                "name": "X-Request-Id",
                "in": "header",
                "required": False,
                "description": "logged as the rows' request id (printable, 1 to 200 characters)",
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
            }
        )
    answers = _answers(method, path)
    if path not in PUBLIC_PATHS:
        answers["401"] = {
            **_error("no bearer token, or a wrong one, where this server requires one"),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
        }
        answers["403"] = _error(
            "a token that does not open this route (the admin token on a scoring route, the scoring token "
            "on /admin), or an admin write on a server without an admin token"
        )
    if body is not None:
        answers["413"] = _error("a body over this server's limit, or more rows than it takes per request")
        if path == "/invocations":  # over the byte limit: the guard (ErrorBody); too many rows: the route (MLflow)
            answers["413"]["content"][JSON]["schema"] = {"anyOf": [_ref("ErrorBody"), _ref("MlflowError")]}
    operation["responses"] = dict(sorted(answers.items()))
    if _guarded(method, path, config):
        operation["security"] = [{"bearer": []}]


def _guarded(method: str, path: str, config: ServerConfig) -> bool:
    """Whether this server's configuration asks a token of ``method path``."""
    if path in PUBLIC_PATHS:
        return False
    if path in ADMIN_PATHS:
        if config.admin_token is not None:
            return True
        return method == "GET" and config.auth_token is not None
    return config.auth_token is not None

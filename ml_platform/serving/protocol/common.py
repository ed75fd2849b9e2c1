"""What every protocol shares: reading a JSON body, rendering a JSON answer, the inline-scoring bound."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import Response

from ml_platform.serving.schemas import ApiError

# Up to this many rows are scored on the event loop (a single row takes ~0.03 ms); more go to a thread.
INLINE_ROWS = 64

# FastAPI's own rendering of a returned dict (jsonable_encoder, then JSONResponse's json.dumps) gives
# the same bytes for the plain values the routes answer with, at several times the cost.
encode_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode


def json_response(content: Any, status_code: int = 200) -> Response:
    """``content`` (plain JSON values) as the JSON answer FastAPI would render, rendered directly."""
    return Response(encode_json(content).encode(), status_code=status_code, media_type="application/json")


def reject_constant(name: str) -> float:
    return float(name)  # NaN/Infinity are parsed, then refused by validation naming the field


def json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or an :class:`ApiError` (400/422) saying what is wrong with it."""
    if not body:
        raise ApiError(400, "body: expected a JSON object, got an empty body", "body")
    try:
        payload = json.loads(body, parse_constant=reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"body: not valid JSON: {error}", "body") from None
    if not isinstance(payload, dict):
        raise ApiError(422, f"body: expected a JSON object, got {type(payload).__name__}", "body")
    return payload

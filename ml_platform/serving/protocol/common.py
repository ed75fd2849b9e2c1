"""What every protocol shares: reading a JSON body, rendering a JSON answer, the inline-scoring bound.

Answers are rendered by orjson (:func:`encode_json`). Reading a body never raises anything but an
:class:`ApiError` (4xx): :func:`parse_json` turns every way
``json.loads`` can fail on bytes (syntax, encoding, a nesting deep enough to exhaust the recursion limit,
an integer past Python's int-string conversion limit) into a 400 that names the problem, refuses
bodies nested deeper than :data:`MAX_JSON_DEPTH` before parsing them at all, and refuses strings that
are not Unicode text (lone surrogate escapes such as ``"\\ud800"``) with a 422 naming the field.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

import orjson
from fastapi.responses import Response

from ml_platform.serving.schemas import ApiError, field_path

# Up to this many rows are scored on the event loop; more go to a worker thread. A batch this size is
# parsed, scored (~0.1 ms in XGBoost for 256 rows of a small model) and journaled in well under a
# millisecond, less than a thread hop costs here: the worker needs the GIL the loop holds, and worker
# threads queue on the journal's lock around a write that releases the GIL (measured with 100-row v2
# requests under 8 connections: 640 req/s through the threads, against ~2,000 inline).
INLINE_ROWS = 256

# The deepest nesting of arrays and objects a body may have. Every request this server takes is at most
# 5 levels deep (a v2 tensor's rows); the limit only has to stop bodies that would make json.loads or
# anything walking the parsed value (validation, repr in an error message) recurse without bound.
MAX_JSON_DEPTH = 64

_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_OBJECTS_AS_ARRAYS = bytes.maketrans(b"{}", b"[]")
# A JSON escape of a UTF-16 surrogate (\uD800-\uDFFF); a lone one decodes to a str that is not Unicode text.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def encode_json(value: Any) -> bytes:
    """``value`` (plain JSON values, numpy arrays of numbers among them) as compact UTF-8 JSON text.

    What FastAPI's own rendering (``jsonable_encoder``, then ``json.dumps``) gives for the values the
    routes answer with, the same values in the same order, at a fraction of the cost: a float is written
    as the shortest text that reads back as the same float, as ``json.dumps`` writes it, though in
    exponent notation orjson writes ``1e-5`` where ``json.dumps`` writes ``1e-05``; a float64 array's
    values are written as its floats. Every route and fast path renders its answers here, so the two
    ways to one answer give the same bytes. (A NaN or an infinity, which no answer holds, would be
    written as null where ``json.dumps(allow_nan=False)`` raises.)
    """
    return orjson.dumps(value, option=_ORJSON_OPTIONS)


# Integers above this are not all exactly floats; a fast path leaves them to the route's conversion.
_EXACT_INT = 2**53


def plain_numbers(values: list) -> bool:
    """True when every value is a finite float, an integer within +-2**53 (exactly a float) or null: the
    values a fast path may score as float64 as they are (null: missing), since the validated route
    accepts exactly these unchanged. Anything else (bool, str, list, NaN, a huge integer) is the route's
    to judge and name."""
    for value in values:
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                return False
        elif kind is int:
            if not -_EXACT_INT <= value <= _EXACT_INT:
                return False
        elif value is not None:
            return False
    return True


def plain_request_id(value: Any) -> bool:
    """True for an absent request id (None) or a string of 1 to 200 printable characters: what the routes
    accept as given (a lone surrogate or a control character is not printable; the route names those)."""
    return value is None or (type(value) is str and 0 < len(value) <= 200 and value.isprintable())


def json_response(content: Any, status_code: int = 200) -> Response:
    """``content`` (plain JSON values) as the JSON answer FastAPI would render, rendered directly."""
    return Response(encode_json(content), status_code=status_code, media_type="application/json")


def reject_constant(name: str) -> float:
    return float(name)  # NaN/Infinity are parsed, then refused by validation naming the field


def nested_deeper_than(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when the JSON text ``body`` nests arrays/objects more than ``limit`` levels deep.

    Decided without parsing and without recursion, in a few passes of C-level bytes operations: the
    body is cut down to its quotes and brackets (escaped backslashes and quotes removed first, so every
    quote left opens or closes a string), the strings' contents are dropped, and innermost ``[]`` pairs
    are removed once per level. Bodies with at most ``limit`` brackets (nearly all) are not looked at.
    Unbalanced brackets are not judged here: json.loads reports them.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = b"".join(body.translate(None, _NOT_STRUCTURE).split(b'"')[::2]).translate(_OBJECTS_AS_ARRAYS)
    for _ in range(limit):
        shorter = structure.replace(b"[]", b"")
        if len(shorter) == len(structure):
            return False
        structure = shorter
    return b"[]" in structure


def refused_before_parsing(body: bytes) -> bool:
    """Whether :func:`parse_json` may refuse ``body`` for what ``json.loads`` alone accepts: nesting deeper
    than :data:`MAX_JSON_DEPTH`, or an escape of a UTF-16 surrogate (a lone one is refused; pairs are
    fine, but telling them apart needs the parsed strings). A fast handler that parses with json.loads
    must leave such a body to its route, so both answer it alike. A few bytes operations, no parsing."""
    # a backslash is looked for first: one memchr, where looking for the two bytes walks the body slowly
    if b"\\" in body and _SURROGATE_ESCAPE.search(body) is not None:
        return True
    return body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and nested_deeper_than(body)


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body``, or an :class:`ApiError` saying what is wrong with it.

    400 (field ``body``) for an empty body, a body nested deeper than :data:`MAX_JSON_DEPTH`, text that
    is not JSON or not UTF-8, and an integer with more digits than Python converts
    (``sys.get_int_max_str_digits()``); 422 naming the field for a string that holds a lone surrogate.
    NaN and Infinity are parsed (to floats) so that validation can name the field that holds them.
    """
    if not body:
        raise ApiError(400, "body: expected a JSON object, got an empty body", "body")
    if nested_deeper_than(body):
        raise ApiError(400, f"body: not valid JSON: nested deeper than {MAX_JSON_DEPTH} levels", "body")
    try:
        payload = json.loads(body, parse_constant=reject_constant)
    except RecursionError:  # unbalanced brackets deep enough to exhaust the recursion limit
        raise ApiError(400, f"body: not valid JSON: nested deeper than {MAX_JSON_DEPTH} levels", "body") from None
    except json.JSONDecodeError as error:
        raise ApiError(400, f"body: not valid JSON: {error}", "body") from None
    except UnicodeDecodeError as error:
        raise ApiError(
            400,
            f"body: not valid JSON: not UTF-8 text ({error.reason} at byte {error.start})",
            "body",
        ) from None
    except ValueError as error:  # int('1' * 5000) in the decoder: the int-string conversion limit
        digits = sys.get_int_max_str_digits()
        problem = f"a number with more than {digits} digits" if "digits" in str(error) else str(error)
        raise ApiError(400, f"body: not valid JSON: {problem}", "body") from None
    if b"\\" in body and _SURROGATE_ESCAPE.search(body) is not None:
        _refuse_lone_surrogates(payload)
    return payload


def json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or an :class:`ApiError` (400/422) saying what is wrong with it."""
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise ApiError(422, f"body: expected a JSON object, got {type(payload).__name__}", "body")
    return payload


def _refuse_lone_surrogates(value: Any) -> None:
    """A 422 naming the first string (value or key) of ``value`` that cannot be encoded as UTF-8."""
    found = _lone_surrogate(value, ())
    if found is not None:
        path, text = found
        field = field_path(path)
        shown = repr(text)  # repr escapes a surrogate as \ud800: it is not printable
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise ApiError(422, f"{field}: expected Unicode text (valid UTF-8), got a lone surrogate in {shown}", field)


def _lone_surrogate(value: Any, path: tuple) -> tuple[tuple, str] | None:
    if isinstance(value, str):
        return None if _is_text(value) else (path, value)
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _lone_surrogate(item, (*path, index))
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            if not _is_text(key):
                return (*path, key.encode("utf-8", "backslashreplace").decode("utf-8")), key
            found = _lone_surrogate(item, (*path, key))
            if found is not None:
                return found
    return None


def _is_text(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

"""Auth, the body limit, request metrics and the fast paths: one plain ASGI layer in front of FastAPI.

The fast paths: a protocol module may answer its common request (one valid row, say) itself, before
FastAPI's routing, request object and dependency solving (~2.5x the cost of the answer). It registers a
:data:`FastHandler` for an exact path; the handler gets the buffered body and returns a
:class:`FastAnswer`, or None to let the FastAPI route answer, which it always can, errors included.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

from fastapi.responses import JSONResponse

from ml_platform.serving.config import TOKEN_VARIABLES
from ml_platform.serving.protocol.common import refused_before_parsing
from ml_platform.serving.server import ModelServer

_log = logging.getLogger(__name__)

# Routes open without a token (probes and scrapers carry none).
PUBLIC_PATHS = frozenset({"/health", "/ping", "/v2/health/live", "/v2/health/ready", "/metrics"})
# Operations (``/admin/*``): only the admin token opens them; the scoring token never does.
ADMIN_PREFIX = "/admin"
_READ_METHODS = frozenset({"GET", "HEAD"})
_BEARER = b"bearer"
_SCORING_VARIABLE, _ADMIN_VARIABLE = TOKEN_VARIABLES["auth_token"], TOKEN_VARIABLES["admin_token"]


class FastAnswer(NamedTuple):
    """A 200 answer made by a fast handler: the body, the variant that answered, its content type, any
    extra headers (name, value) as bytes, and the route template its metrics are counted under (the
    route's, e.g. ``/v2/models/{name}/infer``; None: the path, for a route without parameters)."""

    content: bytes
    variant: str
    media_type: bytes = b"application/json"
    headers: tuple[tuple[bytes, bytes], ...] = ()
    route: str | None = None


# (body, started (perf_counter), ASGI scope) -> the answer, or None to let the route answer; or an
# awaitable of either, for a handler that waits first (a feature store read, the loop turn's other rows)
FastHandler = Callable[[bytes, float, Mapping[str, Any]], FastAnswer | None | Awaitable[FastAnswer | None]]


class GuardMiddleware:
    """Auth, the body limit and request metrics for every route, then a fast handler or the app.

    A plain ASGI layer (no per-request task). A fast handler, registered for ``POST <path>`` in
    ``fast_routes``, answers once auth and the body limit passed; the headers it sends are those of
    the route's answer (content-length, content-type) plus the handler's own.
    """

    def __init__(self, app, server: ModelServer, fast_routes: Mapping[str, FastHandler] | None = None) -> None:
        self.app = app
        self.server = server
        config = server.config
        self.scoring_token = config.auth_token.encode() if config.auth_token else None
        self.admin_token = config.admin_token.encode() if config.admin_token else None
        # The header as clients almost always send it, matched whole first (one comparison per request);
        # other spellings the RFC allows (scheme in any case, more spaces) go through the parser.
        self.scoring_header = b"Bearer " + self.scoring_token if self.scoring_token else None
        self.max_body = server.config.max_body_bytes
        self.fast_routes = dict(fast_routes or {})

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
                fast = self.fast_routes.get(scope["path"]) if scope["method"] == "POST" else None
                if rejection is None and fast is not None and body is not None:
                    answer = await _answer_fast(fast, body, started, scope)
                    if answer is not None:
                        state["variant"] = answer.variant
                        fast_label, status["code"] = answer.route or scope["path"], 200
                        await _send_answer(send, answer)
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
        """None when the request may go on, else the refusal (401: no or wrong credentials; 403: the
        credentials are right but do not open this route, or the route is switched off)."""
        path = scope["path"]
        if path.startswith(ADMIN_PREFIX) and (len(path) == len(ADMIN_PREFIX) or path[len(ADMIN_PREFIX)] == "/"):
            return self._check_admin(scope)
        if self.scoring_token is None or path in PUBLIC_PATHS:
            return None
        return self._check_scoring(scope)

    def _check_scoring(self, scope):
        for key, value in scope["headers"]:
            if key == b"authorization" and hmac.compare_digest(value, self.scoring_header):
                return None
        presented = _bearer_tokens(scope["headers"])
        if _matches(presented, self.scoring_token):
            return None
        if self.admin_token is not None and _matches(presented, self.admin_token):
            return _refusal(
                403,
                f"the admin token opens /admin/* only; scoring routes need the scoring token ({_SCORING_VARIABLE})",
            )
        return _unauthorized(scope["headers"], presented, f"the scoring token ({_SCORING_VARIABLE})")

    def _check_admin(self, scope):
        if self.admin_token is None:
            if scope["method"] in _READ_METHODS:
                # Reading the routing changes nothing and shows little that /health and every answer do
                # not already show (the versions served; here also the weight, mode and stickiness), so
                # without an admin token it is guarded like a scoring route: open when the server has no
                # scoring token, else behind it. Once an admin token is set, it alone opens /admin.
                return None if self.scoring_token is None else self._check_scoring(scope)
            return _refusal(
                403,
                f"{scope['method']} {scope['path']} is switched off: this server has no admin token; set "
                f"{_ADMIN_VARIABLE} and send it as 'Authorization: Bearer <admin token>'",
            )
        presented = _bearer_tokens(scope["headers"])
        if _matches(presented, self.admin_token):
            return None
        if self.scoring_token is not None and _matches(presented, self.scoring_token):
            return _refusal(403, f"the scoring token does not open /admin/*; send the admin token ({_ADMIN_VARIABLE})")
        return _unauthorized(scope["headers"], presented, f"the admin token ({_ADMIN_VARIABLE})")

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
        """The route template of a request answered here (auth, body limit), as the route would label it."""
        from fastapi.routing import iter_route_contexts
        from starlette.routing import Match

        app = scope.get("app")
        # FastAPI keeps an included router's routes behind one entry of app.routes: iterate them all
        for route in iter_route_contexts(getattr(app, "routes", [])):
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path or "unmatched"
        return "unmatched"


async def _answer_fast(fast: FastHandler, body: bytes, started: float, scope) -> FastAnswer | None:
    """The fast handler's answer; None (the route answers) when it has none or when it raised.

    A handler is a shortcut, never the only way to an answer: whatever it raises (a bug, an input it
    did not foresee) is logged and the request goes to the route, which answers it, errors included.
    A body the routes' JSON reading refuses although json.loads takes it (nested too deep, a lone
    surrogate) goes to the route without the handler seeing it, so the two cannot answer it apart.
    """
    if refused_before_parsing(body):
        return None
    try:
        answer = fast(body, started, scope)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer
    except Exception:
        _log.exception("the fast handler for POST %s raised; the route answers instead", scope["path"])
        return None


async def _send_answer(send, answer: FastAnswer) -> None:
    """A 200 answer, with the headers (and their order) Starlette's Response would send, then the handler's."""
    content = answer.content
    headers = [(b"content-length", str(len(content)).encode()), (b"content-type", answer.media_type), *answer.headers]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def _bearer_tokens(headers) -> list[bytes]:
    """The tokens of the request's ``Authorization: Bearer <token>`` headers (RFC 7235: the scheme is
    case-insensitive, one or more spaces separate it from the token, whitespace around the value is
    not part of it)."""
    tokens = []
    for key, value in headers:
        if key == b"authorization":
            scheme, _, token = value.strip(b" \t").partition(b" ")
            if scheme.lower() == _BEARER and token:
                tokens.append(token.lstrip(b" "))
    return tokens


def _matches(presented: list[bytes], expected: bytes) -> bool:
    """Whether a presented token is ``expected``, compared in constant time."""
    return any(hmac.compare_digest(token, expected) for token in presented)


def _unauthorized(headers, presented: list[bytes], needed: str) -> JSONResponse:
    values = [value for key, value in headers if key == b"authorization"]
    if presented:
        problem, challenge = "wrong bearer token", 'Bearer error="invalid_token"'
    elif values:
        scheme = values[0].strip(b" \t").partition(b" ")[0]
        if scheme.lower() == _BEARER:
            problem, challenge = "no token after 'Bearer'", 'Bearer error="invalid_request"'
        else:
            problem, challenge = f"scheme {scheme[:20].decode('latin-1')!r} is not accepted", "Bearer"
    else:
        problem, challenge = "missing", "Bearer"
    return _refusal(
        401, f"{problem}; this route needs {needed} as 'Authorization: Bearer <token>'", challenge=challenge
    )


def _refusal(status: int, message: str, challenge: str | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": challenge} if challenge else None
    return JSONResponse(
        {"error": f"authorization: {message}", "field": "authorization"}, status_code=status, headers=headers
    )


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

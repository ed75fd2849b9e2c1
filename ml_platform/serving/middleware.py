"""Auth, the body limit, request metrics and the fast paths: one plain ASGI layer in front of FastAPI.

The fast paths: a protocol module may answer its common request (one valid row, say) itself, before
FastAPI's routing, request object and dependency solving (~2.5x the cost of the answer). It registers a
:data:`FastHandler` for an exact path; the handler gets the buffered body and returns a
:class:`FastAnswer`, or None to let the FastAPI route answer, which it always can, errors included.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from fastapi.responses import JSONResponse

from ml_platform.serving.server import ModelServer

# Routes open without a token (probes and scrapers carry none).
PUBLIC_PATHS = frozenset({"/health", "/ping", "/v2/health/live", "/v2/health/ready", "/metrics"})


class FastAnswer(NamedTuple):
    """A 200 answer made by a fast handler: the body, the variant that answered, its content type and
    any extra headers (name, value) as bytes."""

    content: bytes
    variant: str
    media_type: bytes = b"application/json"
    headers: tuple[tuple[bytes, bytes], ...] = ()


# (body, started (perf_counter), ASGI scope) -> the answer, or None to let the route answer
FastHandler = Callable[[bytes, float, Mapping[str, Any]], FastAnswer | None]


class GuardMiddleware:
    """Auth, the body limit and request metrics for every route, then a fast handler or the app.

    A plain ASGI layer (no per-request task). A fast handler, registered for ``POST <path>`` in
    ``fast_routes``, answers once auth and the body limit passed; the headers it sends are those of
    the route's answer (content-length, content-type) plus the handler's own.
    """

    def __init__(self, app, server: ModelServer, fast_routes: Mapping[str, FastHandler] | None = None) -> None:
        self.app = app
        self.server = server
        token = server.config.auth_token
        self.expected = f"Bearer {token}".encode() if token else None
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
                    answer = fast(body, started, scope)
                    if answer is not None:
                        state["variant"] = answer.variant
                        fast_label, status["code"] = scope["path"], 200
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
        if self.expected is None or scope["path"] in PUBLIC_PATHS:
            return None
        for key, value in scope["headers"]:
            if key == b"authorization" and hmac.compare_digest(value, self.expected):
                return None
        return JSONResponse(
            {
                "error": "authorization: missing or wrong bearer token; send 'Authorization: Bearer <token>'",
                "field": "authorization",
            },
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

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
        from starlette.routing import Match

        app = scope.get("app")
        for route in getattr(app, "routes", []):
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "unmatched")
        return "unmatched"


async def _send_answer(send, answer: FastAnswer) -> None:
    """A 200 answer, with the headers (and their order) Starlette's Response would send, then the handler's."""
    content = answer.content
    headers = [(b"content-length", str(len(content)).encode()), (b"content-type", answer.media_type), *answer.headers]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": content})


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

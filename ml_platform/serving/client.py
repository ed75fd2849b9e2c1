"""The one client of the model server: what the deployment targets, the smoke check, monitoring, traffic
replay and the closed loop use to talk to a running ``python -m ml_platform.serving``.

:class:`ModelServerClient` holds the server's base URL, its two bearer tokens (the scoring token for every
route, the admin token for ``/admin/*``) and a default timeout, over one keep-alive connection pool
(httpx). Every method either returns what the server answered or raises one of:

- :class:`ServerUnreachable`: nothing answered (connection refused, timed out, dropped), the cause named;
- :class:`StatusError`: the server answered with an error status; ``status_code`` and ``detail`` (the
  server's own message, e.g. which field a 422 is about) are attributes;
- :class:`BadAnswer`: a success status, but a body the protocol does not allow (not JSON, fields missing);
- :class:`WaitTimedOut`: a ``wait_*`` method ran out of time; the message says what was last seen.

All are :class:`ModelServerError`, so "the server is not usable" is one ``except``.

Importing this module loads httpx and nothing of the server (no FastAPI, XGBoost or pandas), so a
command that only talks to a server starts fast.
"""

from __future__ import annotations

import functools
import json
import math
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

READY_PATH = "/v2/health/ready"
ADMIN_PREFIX = "/admin"
# The server closed the connection without answering (a kept-alive connection it had just closed, a reset):
# the request is sent once more on a new connection. Connection refused and timeouts are not retried.
_DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class ModelServerError(Exception):
    """The model server did not give the answer asked for. ``url`` is the address asked; ``status_code``
    the HTTP status when the server answered (None when nothing answered)."""

    def __init__(self, message: str, *, url: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status_code = status_code


class ServerUnreachable(ModelServerError):
    """Nothing answered: the connection was refused, timed out or dropped."""


class StatusError(ModelServerError):
    """The server answered with an error status. ``detail`` is its message (its ``error`` field, or
    ``reason`` for health), ``body`` the answer's text as it came."""

    def __init__(self, message: str, *, url: str, status_code: int, detail: str, body: str) -> None:
        super().__init__(message, url=url, status_code=status_code)
        self.detail = detail
        self.body = body


class BadAnswer(ModelServerError):
    """The server answered with a success status but not with what the protocol says."""


class WaitTimedOut(ModelServerError):
    """A wait ran out of time; ``last_seen`` is what the server last answered (or why it did not)."""

    def __init__(self, message: str, *, url: str, last_seen: object) -> None:
        super().__init__(message, url=url)
        self.last_seen = last_seen


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Loading the CA bundle takes ~20 ms; done once per process, not per client.
    return httpx.create_ssl_context()


class ModelServerClient:
    """A client of one model server at ``url`` (``http://host:port``, optionally with a path prefix).

    ``token`` is sent to every route but ``/admin/*``, which gets ``admin_token``; a token not given is
    not sent. ``timeout`` (seconds) bounds connecting and each read or write; every method takes its own.
    Use it as a context manager, or :meth:`close` it, to close its connections.
    """

    def __init__(
        self, url: str, *, token: str | None = None, admin_token: str | None = None, timeout: float = 5.0
    ) -> None:
        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url: expected the model server's http(s) URL, like http://127.0.0.1:8080; got {url!r}")
        self.url = url.rstrip("/")
        self.token = token
        self.admin_token = admin_token
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, timeout=timeout, verify=_tls_context())

    def __enter__(self) -> ModelServerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"ModelServerClient({self.url!r})"

    # ---- probes --------------------------------------------------------------------------------
    def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``GET /health`` when the server is up and serving: model name, ``model_version`` (the
        champion), ``challenger_version``, ``uptime_seconds``. A server that is not ready answers 503,
        raised as :class:`StatusError` with its reason as ``detail``."""
        return self._json_object(self._send("GET", "/health", timeout=timeout))

    def ready(self, *, timeout: float | None = None) -> bool:
        """Whether a model is loaded and warmed up (``GET /v2/health/ready``: 200 yes, 503 not yet)."""
        try:
            self._send("GET", READY_PATH, timeout=timeout)
        except StatusError as error:
            if error.status_code == 503:
                return False
            raise
        return True

    def metrics(self, *, timeout: float | None = None) -> str:
        """The Prometheus text exposition of ``GET /metrics``."""
        return self._send("GET", "/metrics", timeout=timeout).text

    def routing(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``GET /admin/routing`` (sent with the admin token): the versions served, challenger weight, mode."""
        return self._json_object(self._send("GET", f"{ADMIN_PREFIX}/routing", timeout=timeout))

    # ---- scoring -------------------------------------------------------------------------------
    def predict(self, row: Sequence[float | None] | Mapping[str, Any], *, timeout: float | None = None) -> dict:
        """One row scored by ``POST /predict``: the model's features in order (NaN or None for a missing
        value), or a transaction (``customer_id``, ``amount``, ...: the server reads the customer's
        stats). Returns the answer: ``probability``, ``model_version``, ``request_id``, ..."""
        answer = self._json_object(self._send("POST", "/predict", body=_instance(row), timeout=timeout))
        missing = [name for name in ("probability", "model_version") if name not in answer]
        if missing:
            raise BadAnswer(
                f"POST {self.url}/predict answered without {', '.join(missing)}: {_clip(answer)}",
                url=f"{self.url}/predict",
                status_code=200,
            )
        return answer

    def predict_batch(
        self, rows: Sequence[Sequence[float | None] | Mapping[str, Any]], *, timeout: float | None = None
    ) -> list[dict]:
        """``rows`` (each as :meth:`predict` takes it) scored in one request, ``{"instances": [...]}``;
        returns the answers in order. The server refuses more rows than its ``max_batch_rows`` (413)."""
        body = {"instances": [_instance(row) for row in rows]}
        answer = self._json_object(self._send("POST", "/predict", body=body, timeout=timeout))
        predictions = answer.get("predictions")
        if not isinstance(predictions, list):
            raise BadAnswer(
                f"POST {self.url}/predict answered without a 'predictions' list: {_clip(answer)}",
                url=f"{self.url}/predict",
                status_code=200,
            )
        return predictions

    # ---- waiting -------------------------------------------------------------------------------
    def wait_until_ready(
        self,
        timeout: float,
        *,
        interval: float = 0.2,
        probe_timeout: float = 2.0,
        check: Callable[[], None] | None = None,
    ) -> None:
        """Poll ``/v2/health/ready`` every ``interval`` until it answers 200; :class:`WaitTimedOut` after
        ``timeout`` seconds, naming the last answer. ``check`` runs before every probe; raise from it to
        stop waiting early (the server's process exited, say)."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if check is not None:
                check()
            try:
                self._send("GET", READY_PATH, timeout=probe_timeout)
                return
            except ModelServerError as error:
                last = str(error)
            time.sleep(interval)
        raise WaitTimedOut(
            f"the model server at {self.url} was not ready after {timeout:.0f} s ({last})", url=self.url, last_seen=last
        )

    def wait_for_version(
        self, version: int | None, timeout: float, *, interval: float = 0.25, probe_timeout: float = 2.0
    ) -> dict[str, Any]:
        """Poll ``/health`` until the server serves ``version`` as its champion; returns that health answer.
        :class:`WaitTimedOut` after ``timeout`` seconds names the version it served last."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            try:
                health = self.health(timeout=probe_timeout)
            except ModelServerError:
                health = None
            if health is not None:
                seen = health.get("model_version")
                if seen == version:
                    return health
            time.sleep(interval)
        raise WaitTimedOut(
            f"the model server at {self.url} still serves v{seen} after {timeout:.0f} s, not v{version}",
            url=self.url,
            last_seen=seen,
        )

    # ---- internals -----------------------------------------------------------------------------
    def _send(self, method: str, path: str, *, body: object = None, timeout: float | None = None) -> httpx.Response:
        """The server's 2xx answer to ``method path``; every failure raised as a :class:`ModelServerError`."""
        url = f"{self.url}{path}"
        token = self.admin_token if _is_admin(path) else self.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        content = None
        if body is not None:
            content = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                response = self._http.request(
                    method,
                    path,
                    content=content,
                    headers=headers,
                    timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
                )
                break
            except _DROPPED as error:
                if attempt == 2:
                    raise ServerUnreachable(f"{url} did not answer: {_cause(error)}", url=url) from error
            except httpx.TransportError as error:
                raise ServerUnreachable(f"{url} did not answer: {_cause(error)}", url=url) from error
        if response.is_success:
            return response
        detail = _detail(response)
        raise StatusError(
            f"{method} {url} answered HTTP {response.status_code}: {detail}",
            url=url,
            status_code=response.status_code,
            detail=detail,
            body=response.text,
        )

    @staticmethod
    def _json_object(response: httpx.Response) -> dict[str, Any]:
        url = str(response.request.url)
        try:
            answer = response.json()
        except ValueError as error:
            raise BadAnswer(
                f"{response.request.method} {url} answered HTTP {response.status_code} with a body that is not "
                f"JSON ({error}): {response.text[:200]!r}",
                url=url,
                status_code=response.status_code,
            ) from error
        if not isinstance(answer, dict):
            raise BadAnswer(
                f"{response.request.method} {url} answered with JSON that is not an object: {_clip(answer)}",
                url=url,
                status_code=response.status_code,
            )
        return answer


def _is_admin(path: str) -> bool:
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


def _instance(row: Sequence[float | None] | Mapping[str, Any]) -> dict[str, Any]:
    """One ``/predict`` row: a mapping as it is, a sequence as ``{"features": [...]}`` with NaN as null
    (JSON has no NaN; the server reads null as a missing value)."""
    if isinstance(row, Mapping):
        return dict(row)
    return {"features": [None if value is None or math.isnan(value) else float(value) for value in row]}


def _detail(response: httpx.Response) -> str:
    """The server's own message in an error answer: ``error`` (every route), ``reason`` (health) or
    ``detail`` (FastAPI's default shape, from a proxy in front), else the text."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        for name in ("error", "reason", "detail"):
            if payload.get(name):
                return str(payload[name])
    return response.text[:300] or response.reason_phrase


def _cause(error: BaseException) -> str:
    """The root cause of a transport error, named: ``ConnectionRefusedError: [Errno 111] Connection refused``."""
    root, seen = error, {id(error)}
    while (earlier := root.__cause__ or root.__context__) is not None and id(earlier) not in seen:
        root = earlier
        seen.add(id(root))
    text = str(root)
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


def _clip(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."

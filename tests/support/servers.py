"""Model servers for tests: real uvicorn on 127.0.0.1, an ephemeral port, a background thread.

``serve`` runs ``create_app(config)`` and stops it gracefully on exit; ``make_config`` is the server
configuration tests start from (a log directory of the test's own, fast alias polls and log flushes);
``copy_model`` registers copies of a champion's files under another name, for tests that move aliases
without touching the model they were given. ``post_both`` and ``counted_fast_reads`` compare a server
on the fast path with one on the FastAPI route.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from ml_platform.registry import CHAMPION, THRESHOLD_TAG, Registry
from ml_platform.serving import ServerConfig, create_app

# An answer's latency differs between two servers; answers are compared with it zeroed.
LATENCY = re.compile(rb'"latency_ms":[0-9.e+-]+')


@dataclass
class Running:
    url: str
    app: object
    config: ServerConfig

    @property
    def server(self):
        return self.app.state.server

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)

    def flush_log(self) -> None:
        assert self.server.logger.flush(), "the prediction log did not flush"


@contextmanager
def serve(config: ServerConfig, *, wait_ready: bool = True, timeout: float = 60.0) -> Iterator[Running]:
    """Run ``create_app(config)`` under uvicorn in a thread; stop it (gracefully) on exit.

    ``timeout`` bounds start-up and the first model load together: a minute, because on a busy machine
    (two cores shared with other test processes) loading MLflow and the model can take tens of seconds.
    """
    app = create_app(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    running = Running(f"http://127.0.0.1:{port}", app, config)
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive(), "uvicorn exited during start-up"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    if wait_ready:
        wait_until_ready(running, deadline)
    try:
        yield running
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server started in a subprocess)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(running: Running, deadline: float) -> None:
    with running.client() as client:
        while True:
            answer = client.get("/v2/health/ready")
            if answer.status_code == 200:
                return
            assert time.monotonic() < deadline, f"server never became ready: {answer.text}"
            time.sleep(0.02)


def make_config(settings, tmp_path: Path, **overrides) -> ServerConfig:
    """The server ``settings`` describe, with no ``ML_PLATFORM_SERVING_*`` variable read, its prediction log
    under ``tmp_path``, alias polls every 0.2 s and log flushes every 0.5 s; ``overrides`` on top."""
    values = {"log_dir": tmp_path / "predictions", "poll_seconds": 0.2, "log_flush_seconds": 0.5}
    values.update(overrides)
    return ServerConfig.from_settings(settings, environ={}, **values)


def copy_model(settings, registry, name: str, versions: int) -> Registry:
    """A registered model ``name`` with ``versions`` versions, each the champion's files and threshold."""
    champion = registry.version_for_alias(CHAMPION)
    source = registry.model_version(champion)
    files = registry.client.get_model_version_download_uri(registry.model_name, str(champion))
    other = Registry.from_settings(settings, model_name=name)
    other.client.create_registered_model(name)
    for _ in range(versions):
        other.client.create_model_version(
            name, files, run_id=source.run_id, tags={THRESHOLD_TAG: source.tags[THRESHOLD_TAG]}
        )
    return other


def post_both(fast_server: Running, route_server: Running, body) -> list[httpx.Response]:
    """The same ``/predict`` body (a dict, or raw JSON text) sent to both servers: [fast, route]."""
    text = body if isinstance(body, str) else json.dumps(body)
    with fast_server.client() as fast, route_server.client() as route:
        return [
            client.post("/predict", content=text.encode(), headers={"Content-Type": "application/json"})
            for client in (fast, route)
        ]


@contextmanager
def counted_fast_reads(running: Running) -> Iterator[list[int]]:
    """Counts the fast path's store reads on a running server (the real read, counted): a body the fast
    path answered was read there, one the route answered was not."""
    features = running.server.features
    real = features.customer_async
    calls: list[int] = []

    async def counted(customer_id: int):
        calls.append(customer_id)
        return await real(customer_id)

    features.customer_async = counted
    try:
        yield calls
    finally:
        del features.customer_async  # the method again


def start_server_process(arguments: list[str], env: dict[str, str], output: Path) -> tuple[subprocess.Popen, str]:
    """``python -m ml_platform.serving --port <free> ARGUMENTS`` with ``env``, its output appended to ``output``;
    returns the process and its URL once it is ready (a fresh process imports the server and loads the model:
    up to two minutes on a busy machine). A server that exits or never gets ready fails the test with its output."""
    port = free_port()
    command = [sys.executable, "-m", "ml_platform.serving", "--port", str(port), *arguments]
    with open(output, "ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(10)
            raise AssertionError(f"the server did not become ready:\n{Path(output).read_text()}")
        time.sleep(0.1)

"""Local deployment target: the model server as a managed background process on 127.0.0.1.

The server's pid, address and log live under the state directory (``serving/server.json``,
``serving/server.log``). Deploying a version means: make sure the server runs and is ready, then wait
until it answers with that version (the server watches the registry alias and swaps models itself,
atomically, without dropping requests). Stopping sends SIGTERM, so the server drains and flushes its
prediction log.

The server gets exactly the bearer tokens the target was given (the scoring token as
``ML_PLATFORM_SERVING_TOKEN``, the admin token as ``ML_PLATFORM_SERVING_ADMIN_TOKEN``; a token not given
is not set), and the target's own calls to it send the scoring token.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ml_platform.serving.client import ModelServerClient, ModelServerError, ServerUnreachable, WaitTimedOut
from ml_platform.storage import write_text_atomic

# The variables the model server reads its bearer tokens from (ml_platform.serving.config).
SERVER_TOKEN_VARIABLES = ("ML_PLATFORM_SERVING_TOKEN", "ML_PLATFORM_SERVING_ADMIN_TOKEN")


class DeploymentError(RuntimeError):
    """A deployment did not reach the state it was asked for; the message says what was seen."""


@dataclass(frozen=True)
class LocalServer:
    pid: int
    host: str
    port: int
    started_at: float
    log_path: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class DeploymentReport:
    target: str
    url: str
    model_name: str
    model_version: int
    started_server: bool
    seconds: float
    detail: str


class LocalProcessTarget:
    def __init__(
        self,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        python_executable: str = "",
        environment: dict[str, str] | None = None,
        token: str | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port
        self.python_executable = python_executable or sys.executable
        self.environment = environment or {}
        self.token = token
        self.admin_token = admin_token

    def server_environment(self) -> dict[str, str]:
        """The server process's environment: this one, ``environment``, then the target's tokens (a token
        the target was not given is removed, so what the server requires is what the target sends)."""
        env = {**os.environ, **self.environment}
        for name, value in zip(SERVER_TOKEN_VARIABLES, (self.token, self.admin_token), strict=True):
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def _client(self, url: str | None = None) -> ModelServerClient:
        """A client of the server at ``url`` (default: this target's address) with the target's tokens."""
        return ModelServerClient(
            url or f"http://{self.host}:{self.port}", token=self.token, admin_token=self.admin_token
        )

    @property
    def state_file(self) -> Path:
        return self.state_dir / "server.json"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "server.log"

    # ---- observing -----------------------------------------------------------------------------
    def server(self) -> LocalServer | None:
        """The server this target started, if its process is still alive."""
        if not self.state_file.exists():
            return None
        server = LocalServer(**json.loads(self.state_file.read_text()))
        try:
            os.kill(server.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, owned by someone else: not ours to manage
            return None
        return server

    def health(self, server: LocalServer | None = None) -> dict | None:
        server = server or self.server()
        if server is None:
            return None
        try:
            with self._client(server.url) as client:
                return client.health(timeout=2.0)
        except ModelServerError:
            return None

    # ---- acting --------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> LocalServer:
        """Start the server unless ours is running; return once it is ready (model loaded, warmed up)."""
        running = self.server()
        if running is not None:
            self._wait_ready(running, timeout_s, process=None)
            return running
        self._refuse_if_port_taken()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        command = [self.python_executable, "-m", "ml_platform.serving", "--host", self.host, "--port", str(self.port)]
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.server_environment(),
            start_new_session=True,  # outlives the command that deployed it; stopped by stop()
        )
        log.close()
        server = LocalServer(process.pid, self.host, self.port, time.time(), str(self.log_path))
        try:
            self._wait_ready(server, timeout_s, process=process)
        except DeploymentError:
            self._terminate(process.pid, grace_s=5.0)
            raise
        write_text_atomic(self.state_file, json.dumps(asdict(server)))
        return server

    def deploy(self, model_name: str, version: int, timeout_s: float = 60.0) -> DeploymentReport:
        """Serve ``version``: start the server if needed, then wait until it answers with that version."""
        started = time.perf_counter()
        was_running = self.server() is not None
        server = self.start(timeout_s)
        try:
            with self._client(server.url) as client:
                health = client.wait_for_version(version, timeout_s)
        except WaitTimedOut as error:
            raise DeploymentError(str(error)) from error
        return DeploymentReport(
            target="local",
            url=server.url,
            model_name=model_name,
            model_version=version,
            started_server=not was_running,
            seconds=time.perf_counter() - started,
            detail=f"pid {server.pid}, challenger {health.get('challenger_version')}",
        )

    def stop(self, grace_s: float = 30.0) -> bool:
        """SIGTERM the server (it drains and flushes its log); SIGKILL after ``grace_s``. True if one ran."""
        server = self.server()
        if server is None:
            self.state_file.unlink(missing_ok=True)
            return False
        self._terminate(server.pid, grace_s)
        self.state_file.unlink(missing_ok=True)
        return True

    # ---- internals -----------------------------------------------------------------------------
    def _refuse_if_port_taken(self) -> None:
        try:
            with self._client() as client:
                client.health(timeout=1.0)
            status = 200
        except ServerUnreachable:
            return
        except ModelServerError as error:
            status = error.status_code
        raise DeploymentError(
            f"{self.host}:{self.port} is already answering (HTTP {status}) but not as a server this target "
            f"started; stop it or choose another port"
        )

    def _wait_ready(self, server: LocalServer, timeout_s: float, process: subprocess.Popen | None) -> None:
        def exited() -> None:
            if process is not None and process.poll() is not None:
                raise DeploymentError(
                    f"the model server exited with code {process.returncode} before it was ready; "
                    f"last lines of {self.log_path}:\n{self._log_tail()}"
                )

        try:
            with self._client(server.url) as client:
                client.wait_until_ready(timeout_s, check=exited)
        except WaitTimedOut as error:
            raise DeploymentError(str(error)) from error

    def _terminate(self, pid: int, grace_s: float) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)

    def _log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # reaps our own child if it has exited
        if finished == pid:
            return False
    except ChildProcessError:
        pass  # not our child (started by an earlier command): fall back to a signal probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

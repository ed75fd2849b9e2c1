"""Replica-set deployment target: N model-server processes behind one haproxy, rolled one at a time.

What runs (everything under the state directory):

- ``<name>-<i>/``: replica ``i``, a ``python -m ml_platform.serving`` process managed by a
  :class:`~ml_platform.deploy.local.LocalProcessTarget` of its own (``server.json``: pid and port,
  ``server.log``). Each replica is pinned to one model version (``ML_PLATFORM_SERVING_MODEL_VERSION``):
  it serves exactly that version and ignores alias moves, so which version answers is decided here, by
  which replicas run, not by the registry. ``ML_PLATFORM_REPLICA_NAME`` names it in its prediction log,
  and its journal (the log's local buffer for an object-store log) is ``<name>-<i>/journal``.
- ``haproxy.cfg``, ``haproxy.log``, ``haproxy.sock``: the balancer (HTTP mode, round robin, a health
  check on the server's readiness route), and its runtime API socket at ``level admin``.
- ``replicas.json``: the set's ports, model, the version each replica was started with and haproxy's
  pid, so a later command (a new process) finds and manages what an earlier one started.

A rollout replaces one replica at a time without failing a request: drain it in haproxy (no new
requests; the ones in flight finish), wait until haproxy holds no session to it, SIGTERM it (it
finishes what it has, flushes its prediction log and exits), start its successor on the same port,
wait until it is ready and answers with the new version, put it back into rotation and wait until
haproxy's own check sees it UP. Only then is the next one touched, so the others serve throughout.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from ml_platform.deploy.local import DeploymentError, DeploymentReport, LocalProcessTarget
from ml_platform.serving.client import READY_PATH, ModelServerClient, ModelServerError, WaitTimedOut
from ml_platform.storage import file_lock, write_text_atomic

# What each replica process is told: its name (the prediction log puts it in its part files' names),
# the one model version it serves (a pinned server ignores alias moves) and the registered model.
REPLICA_NAME_VARIABLE = "ML_PLATFORM_REPLICA_NAME"
MODEL_VERSION_VARIABLE = "ML_PLATFORM_SERVING_MODEL_VERSION"
MODEL_NAME_VARIABLE = "ML_PLATFORM_MODEL_NAME"
# Each replica's own journal (the prediction log's local write-ahead buffer when the log is in an object
# store), under its folder: like a pod's emptyDir, its successor on the same folder ships what it left.
JOURNAL_VARIABLE = "ML_PLATFORM_PREDICTION_JOURNAL_DIR"
BACKEND = "replicas"
FRONTEND = "model_server"
# A name goes into file names, haproxy's server names and environment values.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# The longest path a Unix socket address holds (sun_path is 108 bytes with the terminating NUL).
_MAX_SOCKET_PATH = 107


class HAProxyError(DeploymentError):
    """haproxy is missing, refused its configuration, exited, or its runtime API refused a command."""


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica as seen now: ``version`` is the version it was started pinned to, ``served_version``
    what its ``/health`` answers (None when it does not answer), ``balancer_status`` haproxy's view of it
    (``UP``, ``DOWN``, ``DRAIN``, ``MAINT``, or a transition such as ``DOWN 1/2``) and ``sessions`` the
    requests haproxy has in flight to it."""

    name: str
    index: int
    port: int
    pid: int | None
    version: int | None
    served_version: int | None
    pinned: bool | None
    ready: bool
    balancer_status: str | None
    sessions: int | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class ReplicaSetStatus:
    endpoint: str | None
    model_name: str | None
    haproxy_pid: int | None
    replicas: list[ReplicaStatus]

    @property
    def running(self) -> bool:
        return self.haproxy_pid is not None or any(replica.pid is not None for replica in self.replicas)

    def versions(self) -> dict[str, int | None]:
        """Each replica's name and the version it serves now (None: not running or not answering)."""
        return {replica.name: replica.served_version for replica in self.replicas}


@dataclass
class _ReplicaRecord:
    index: int
    port: int
    version: int | None = None  # the version its running process is pinned to; None: none runs
    extra_environment: list[str] = field(default_factory=list)  # names only: values may be secrets


@dataclass
class _SetState:
    name: str
    host: str
    balancer_port: int
    model_name: str | None
    replicas: list[_ReplicaRecord]
    haproxy_pid: int | None = None

    @classmethod
    def from_json(cls, text: str) -> _SetState:
        raw = json.loads(text)
        raw["replicas"] = [_ReplicaRecord(**replica) for replica in raw["replicas"]]
        return cls(**raw)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


class ReplicaSetTarget:
    """``replicas`` model servers on ``host`` behind haproxy on ``balancer_port``.

    ``ports`` (one per replica) and ``balancer_port`` default to free ports chosen at the first start and
    kept in the state file until :meth:`stop`. ``environment`` goes to every replica (the prediction log's
    URI, object-store credentials, ...); ``token``/``admin_token`` are the server's bearer tokens, as for
    :class:`~ml_platform.deploy.local.LocalProcessTarget`. ``haproxy`` is the binary (a name on PATH or a
    path). ``timeout_s`` bounds each replica's start (import, model load, warm-up); ``grace_s`` how long a
    SIGTERMed process may take before it is killed; ``drain_timeout_s`` how long to wait for haproxy to
    finish the requests in flight to a drained replica (the replica's own graceful shutdown finishes any
    left after that).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        replicas: int = 3,
        name: str = "replica",
        host: str = "127.0.0.1",
        ports: list[int] | None = None,
        balancer_port: int | None = None,
        environment: Mapping[str, str] | None = None,
        token: str | None = None,
        admin_token: str | None = None,
        haproxy: str = "haproxy",
        python_executable: str = "",
        timeout_s: float = 120.0,
        grace_s: float = 30.0,
        drain_timeout_s: float = 60.0,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"replicas: expected at least 1, got {replicas}")
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"name: expected letters, digits and _.- (at most 63, not starting with _.-); got {name!r}"
            )
        if ports is not None and len(ports) != replicas:
            raise ValueError(f"ports: expected one per replica ({replicas}), got {len(ports)}: {ports}")
        self.state_dir = Path(state_dir).absolute()
        self.replicas = replicas
        self.name = name
        self.host = host
        self.ports = list(ports) if ports is not None else None
        self.balancer_port = balancer_port
        self.environment = dict(environment or {})
        self.token = token
        self.admin_token = admin_token
        self.haproxy = haproxy
        self.python_executable = python_executable
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.drain_timeout_s = drain_timeout_s

    def __repr__(self) -> str:
        return f"ReplicaSetTarget({str(self.state_dir)!r}, replicas={self.replicas})"

    # ---- paths ---------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.state_dir / "replicas.json"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "haproxy.cfg"

    @property
    def socket_path(self) -> Path:
        return self.state_dir / "haproxy.sock"

    @property
    def haproxy_log_path(self) -> Path:
        return self.state_dir / "haproxy.log"

    def replica_name(self, index: int) -> str:
        return f"{self.name}-{index}"

    # ---- observing -----------------------------------------------------------------------------
    def endpoint(self) -> str:
        """The balancer's URL: where clients send requests."""
        state = self._load()
        port = state.balancer_port if state is not None else self.balancer_port
        if port is None:
            raise DeploymentError(
                f"{self!r} has no balancer port yet: give balancer_port, or deploy first (a free one is chosen)"
            )
        return f"http://{self.host}:{port}"

    def status(self) -> ReplicaSetStatus:
        """Each replica (pid, port, the version it was started with, what it serves, ready) and haproxy's view."""
        state = self._load()
        if state is None:
            return ReplicaSetStatus(None, None, None, [])
        haproxy_pid = self._haproxy_pid(state)
        balancer = self.balancer_view() if haproxy_pid is not None else {}
        replicas = []
        for record in state.replicas:
            name = self.replica_name(record.index)
            server = self._replica_target(record).server()
            health, ready = None, False
            if server is not None:
                with self._client(record.port) as client:
                    with contextlib.suppress(ModelServerError):
                        ready = client.ready(timeout=2.0)
                    with contextlib.suppress(ModelServerError):
                        health = client.health(timeout=2.0)
            seen = balancer.get(name, {})
            replicas.append(
                ReplicaStatus(
                    name=name,
                    index=record.index,
                    port=record.port,
                    pid=server.pid if server is not None else None,
                    version=record.version if server is not None else None,
                    served_version=health.get("model_version") if health else None,
                    pinned=health.get("pinned") if health else None,
                    ready=ready,
                    balancer_status=seen.get("status"),
                    sessions=_int(seen.get("scur")),
                )
            )
        return ReplicaSetStatus(f"http://{state.host}:{state.balancer_port}", state.model_name, haproxy_pid, replicas)

    def balancer_view(self) -> dict[str, dict[str, str]]:
        """haproxy's statistics for each replica (``show stat``: ``status``, ``scur``, ``check_status``,
        ``stot``, ...), by replica name."""
        rows = csv.DictReader(_strip_header_mark(self.haproxy_command("show stat")))
        return {
            row["svname"]: row
            for row in rows
            if row.get("pxname") == BACKEND and row.get("svname") not in ("FRONTEND", "BACKEND")
        }

    def haproxy_command(self, command: str, timeout: float = 5.0) -> str:
        """One command to haproxy's runtime API (the admin socket); its answer."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(timeout)
                connection.connect(str(self.socket_path))
                connection.sendall(command.encode("ascii") + b"\n")
                chunks = []
                while chunk := connection.recv(65536):
                    chunks.append(chunk)
        except OSError as error:
            raise HAProxyError(
                f"haproxy's admin socket {self.socket_path} did not answer {command!r}: {error}"
            ) from error
        return b"".join(chunks).decode("utf-8", errors="replace")

    # ---- acting --------------------------------------------------------------------------------
    def deploy(self, model_name: str, version: int, timeout_s: float | None = None) -> DeploymentReport:
        """Serve ``version`` of ``model_name`` on every replica.

        Nothing running: start every replica pinned to ``version`` and haproxy, return once each is ready,
        answers with ``version`` and haproxy sees it UP. Running: replace each replica not serving
        ``version`` (or not running), one at a time, without failing a request. All serving it already:
        nothing is done. A replica that does not come up stops the rollout with a :class:`DeploymentError`
        naming it, its log tail and the version each replica serves; the others keep serving.
        """
        version = _check_version(version)
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        started = time.perf_counter()
        haproxy = self._haproxy_binary()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            state = self._load() or self._new_state(model_name)
            self._check_shape(state)
            running = {record.index for record in state.replicas if self._replica_target(record).server()}
            haproxy_running = self._haproxy_pid(state) is not None
            if not running and not haproxy_running:
                self._start_all(state, haproxy, model_name, version, timeout_s)
                return self._report(state, model_name, version, started, True, "started")

            actions = []
            if not haproxy_running:
                self._start_haproxy(state, haproxy)
                actions.append(f"restarted haproxy (pid {state.haproxy_pid})")
            for record in state.replicas:
                previous = record.version if record.index in running else None
                if (
                    previous == version
                    and state.model_name == model_name
                    and self._serves(record, version)
                    and not record.extra_environment
                ):
                    continue
                self._replace(state, record, model_name, version, {}, timeout_s)
                was = f"v{previous}" if previous is not None else "not running"
                actions.append(f"{self.replica_name(record.index)} {was} -> v{version}")
            state.model_name = model_name
            self._save(state)
            if not actions:
                detail = f"nothing to do: all {len(state.replicas)} replicas already serve v{version}"
                return self._report(state, model_name, version, started, False, detail)
            return self._report(state, model_name, version, started, False, "rolled: " + "; ".join(actions))

    def restart_replica(
        self, index: int, *, extra_environment: Mapping[str, str] | None = None, timeout_s: float | None = None
    ) -> ReplicaStatus:
        """Replace replica ``index`` as a rollout step would (drain, stop, start, ready, back in rotation),
        pinned to the version it serves, with ``extra_environment`` on top of the set's environment (a
        later rollout starts it without). Returns its status."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        with self._locked():
            state = self._load()
            if state is None or state.model_name is None:
                raise DeploymentError(f"{self!r} is not running: deploy a version first")
            if not 0 <= index < len(state.replicas):
                raise DeploymentError(f"replica index {index} is out of range: the set has {len(state.replicas)}")
            record = state.replicas[index]
            version = record.version if record.version is not None else _common_version(state)
            if version is None:
                raise DeploymentError(f"{self.replica_name(index)} has no version to restart with")
            self._replace(state, record, state.model_name, version, dict(extra_environment or {}), timeout_s)
        return next(replica for replica in self.status().replicas if replica.index == index)

    def stop(self, grace_s: float | None = None) -> bool:
        """Stop haproxy and every replica (SIGTERM: each finishes its requests and flushes its prediction
        log; SIGKILL after ``grace_s``) and forget the set's ports. True if anything ran."""
        grace_s = self.grace_s if grace_s is None else grace_s
        if not self.state_dir.exists():
            return False
        with self._locked():
            state = self._load()
            if state is None:
                return False
            stopped = False
            haproxy_pid = self._haproxy_pid(state)
            if haproxy_pid is not None:
                _terminate(haproxy_pid, grace_s)
                stopped = True
            with ThreadPoolExecutor(max_workers=len(state.replicas)) as pool:
                results = list(pool.map(lambda record: self._replica_target(record).stop(grace_s), state.replicas))
            self.state_file.unlink(missing_ok=True)
            self.socket_path.unlink(missing_ok=True)
            return stopped or any(results)

    # ---- the steps -----------------------------------------------------------------------------
    def _start_all(self, state: _SetState, haproxy: str, model_name: str, version: int, timeout_s: float) -> None:
        """A fresh start: every replica at once (they load their models in parallel), then haproxy."""
        state.model_name = model_name
        for record in state.replicas:
            record.version, record.extra_environment = None, []
        self._save(state)

        def start(record: _ReplicaRecord) -> DeploymentError | None:
            try:
                self._start_replica(state, record, model_name, version, {}, timeout_s)
            except DeploymentError as error:
                return error
            return None

        with ThreadPoolExecutor(max_workers=len(state.replicas)) as pool:
            errors = [error for error in pool.map(start, state.replicas) if error is not None]
        if errors:
            for record in state.replicas:
                self._replica_target(record).stop(self.grace_s)
                record.version = None
            self._save(state)
            raise DeploymentError(
                "the replica set did not start (nothing was serving before; every replica is stopped again): "
                + "\n".join(str(error) for error in errors)
            )
        try:
            self._start_haproxy(state, haproxy)
        except DeploymentError:
            for record in state.replicas:
                self._replica_target(record).stop(self.grace_s)
                record.version = None
            self._save(state)
            raise
        for record in state.replicas:
            self._wait_in_rotation(state, record, timeout_s)

    def _replace(
        self,
        state: _SetState,
        record: _ReplicaRecord,
        model_name: str,
        version: int,
        extra_environment: dict[str, str],
        timeout_s: float,
    ) -> None:
        """One rollout step: drain, wait for no sessions, stop, start pinned to ``version``, ready, UP."""
        name = self.replica_name(record.index)
        self._set_server_state(name, "drain")
        self._wait_no_sessions(name)
        self._replica_target(record).stop(self.grace_s)
        record.version, record.extra_environment = None, []
        self._save(state)
        self._start_replica(state, record, model_name, version, extra_environment, timeout_s)
        self._save(state)
        self._set_server_state(name, "ready")
        self._wait_in_rotation(state, record, timeout_s)

    def _start_replica(
        self,
        state: _SetState,
        record: _ReplicaRecord,
        model_name: str,
        version: int,
        extra_environment: dict[str, str],
        timeout_s: float,
    ) -> None:
        """Start replica ``record`` pinned to ``version``; return once it is ready and answers with it. On
        failure it is stopped again and the error names it, its log tail and what the others serve."""
        name = self.replica_name(record.index)
        environment = {
            **self.environment,
            JOURNAL_VARIABLE: str(self.state_dir / name / "journal"),
            **extra_environment,
            MODEL_NAME_VARIABLE: model_name,
            REPLICA_NAME_VARIABLE: name,
            MODEL_VERSION_VARIABLE: str(version),
        }
        target = self._replica_target(record, environment)
        deadline = time.monotonic() + timeout_s
        try:
            target.start(timeout_s)
            with self._client(record.port) as client:
                client.wait_for_version(version, max(deadline - time.monotonic(), 1.0))
        except (DeploymentError, WaitTimedOut) as error:
            target.stop(self.grace_s)
            others = ", ".join(
                f"{self.replica_name(other.index)} v{other.version}"
                if other.version is not None
                else f"{self.replica_name(other.index)} not running"
                for other in state.replicas
                if other is not record
            )
            raise DeploymentError(
                f"replica {name} (port {record.port}) did not come up serving v{version} of {model_name}: "
                f"{_first_line(error)}\nlast lines of {target.log_path}:\n{_tail(target.log_path)}\n"
                f"the others: {others or 'none'}"
            ) from error
        record.version, record.extra_environment = version, sorted(extra_environment)

    def _serves(self, record: _ReplicaRecord, version: int) -> bool:
        with self._client(record.port) as client:
            try:
                return client.health(timeout=5.0).get("model_version") == version
            except ModelServerError:
                return False

    # ---- haproxy -------------------------------------------------------------------------------
    def render_config(self, state: _SetState) -> str:
        return render_haproxy_config(
            socket_path=self.socket_path,
            host=state.host,
            balancer_port=state.balancer_port,
            servers=[(self.replica_name(record.index), record.port) for record in state.replicas],
        )

    def _start_haproxy(self, state: _SetState, haproxy: str) -> None:
        write_text_atomic(self.config_path, self.render_config(state))
        checked = subprocess.run(
            [haproxy, "-c", "-q", "-f", str(self.config_path)], capture_output=True, text=True, check=False
        )
        if checked.returncode != 0:
            raise HAProxyError(
                f"haproxy refused {self.config_path} (exit {checked.returncode}): "
                f"{(checked.stderr or checked.stdout).strip()}"
            )
        self.socket_path.unlink(missing_ok=True)
        with open(self.haproxy_log_path, "ab") as log:
            process = subprocess.Popen(
                [haproxy, "-db", "-f", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the command that started it; stopped by stop()
            )
        deadline = time.monotonic() + 30.0
        while True:
            if process.poll() is not None:
                raise HAProxyError(
                    f"haproxy exited with code {process.returncode} at start; last lines of "
                    f"{self.haproxy_log_path}:\n{_tail(self.haproxy_log_path)}"
                )
            try:
                self.haproxy_command("show info", timeout=1.0)
                break
            except HAProxyError:
                if time.monotonic() > deadline:
                    _terminate(process.pid, self.grace_s)
                    raise
                time.sleep(0.05)
        state.haproxy_pid = process.pid
        self._save(state)

    def _haproxy_pid(self, state: _SetState) -> int | None:
        """haproxy's pid when the process the state names is alive and is haproxy (not a reused pid)."""
        if state.haproxy_pid is None:
            return None
        try:
            process = psutil.Process(state.haproxy_pid)
            alive = process.status() != psutil.STATUS_ZOMBIE and "haproxy" in process.name()
        except psutil.Error:
            return None
        return state.haproxy_pid if alive else None

    def _set_server_state(self, name: str, server_state: str) -> None:
        if not self.socket_path.exists():
            return  # no balancer (it is started after the replicas on a fresh start)
        answer = self.haproxy_command(f"set server {BACKEND}/{name} state {server_state}").strip()
        if answer:
            raise HAProxyError(f"haproxy refused 'set server {BACKEND}/{name} state {server_state}': {answer}")

    def _wait_no_sessions(self, name: str) -> None:
        """Until haproxy has no request in flight or queued for ``name`` (or ``drain_timeout_s`` passed: the
        replica's graceful shutdown then finishes what is left)."""
        if not self.socket_path.exists():
            return
        deadline = time.monotonic() + self.drain_timeout_s
        while time.monotonic() < deadline:
            seen = self.balancer_view().get(name, {})
            if _int(seen.get("scur")) == 0 and _int(seen.get("qcur")) in (0, None):
                return
            time.sleep(0.05)

    def _wait_in_rotation(self, state: _SetState, record: _ReplicaRecord, timeout_s: float) -> None:
        """Until haproxy's own health check sees the replica UP (it then gets its share of requests)."""
        name = self.replica_name(record.index)
        deadline = time.monotonic() + timeout_s
        status = None
        while time.monotonic() < deadline:
            status = self.balancer_view().get(name, {}).get("status")
            if status == "UP":
                return
            time.sleep(0.1)
        raise DeploymentError(
            f"replica {name} (port {record.port}) answers v{record.version} but haproxy still sees it "
            f"{status!r} after {timeout_s:.0f} s; haproxy's log {self.haproxy_log_path}:\n"
            f"{_tail(self.haproxy_log_path)}"
        )

    def _haproxy_binary(self) -> str:
        """The haproxy binary, checked before anything starts, with the admin socket's path."""
        found = shutil.which(self.haproxy)
        if found is None:
            raise HAProxyError(
                f"haproxy not found: {self.haproxy!r} is not an executable file or on PATH; install it "
                "(apt-get install haproxy) or give the target the binary's path"
            )
        if len(str(self.socket_path.absolute())) > _MAX_SOCKET_PATH:
            raise HAProxyError(
                f"haproxy's admin socket {self.socket_path} would have a path longer than a Unix socket address "
                f"may be ({_MAX_SOCKET_PATH} bytes): choose a shorter state directory"
            )
        return found

    # ---- state ---------------------------------------------------------------------------------
    def _new_state(self, model_name: str) -> _SetState:
        ports = self.ports or _free_ports(self.replicas, self.host)
        balancer_port = self.balancer_port or _free_ports(1, self.host, avoid=set(ports))[0]
        records = [_ReplicaRecord(index=index, port=port) for index, port in enumerate(ports)]
        return _SetState(self.name, self.host, balancer_port, model_name, records)

    def _check_shape(self, state: _SetState) -> None:
        """The running set must be the one this target describes; changing its shape needs a stop first."""
        problems = []
        if len(state.replicas) != self.replicas:
            problems.append(f"{len(state.replicas)} replicas, not {self.replicas}")
        if self.ports is not None and [record.port for record in state.replicas] != self.ports:
            problems.append(f"ports {[record.port for record in state.replicas]}, not {self.ports}")
        if self.balancer_port is not None and state.balancer_port != self.balancer_port:
            problems.append(f"balancer port {state.balancer_port}, not {self.balancer_port}")
        if state.name != self.name or state.host != self.host:
            problems.append(f"replicas named {state.name!r} on {state.host}, not {self.name!r} on {self.host}")
        if problems:
            raise DeploymentError(
                f"the replica set under {self.state_dir} has {'; '.join(problems)}: stop it before changing its shape"
            )

    def _load(self) -> _SetState | None:
        if not self.state_file.exists():
            return None
        try:
            return _SetState.from_json(self.state_file.read_text())
        except (ValueError, TypeError, KeyError) as error:
            raise DeploymentError(f"{self.state_file} is not a replica set's state ({error}); remove it") from error

    def _save(self, state: _SetState) -> None:
        write_text_atomic(self.state_file, state.to_json())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One command at a time manages the set (deploys run in separate processes)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.state_dir / "replicas.lock"):
            yield

    # ---- helpers -------------------------------------------------------------------------------
    def _replica_target(self, record: _ReplicaRecord, environment: dict[str, str] | None = None) -> LocalProcessTarget:
        return LocalProcessTarget(
            self.state_dir / self.replica_name(record.index),
            host=self.host,
            port=record.port,
            python_executable=self.python_executable,
            environment=environment,
            token=self.token,
            admin_token=self.admin_token,
        )

    def _client(self, port: int) -> ModelServerClient:
        return ModelServerClient(f"http://{self.host}:{port}", token=self.token, admin_token=self.admin_token)

    def _report(
        self, state: _SetState, model_name: str, version: int, started: float, started_server: bool, detail: str
    ) -> DeploymentReport:
        replicas = ", ".join(
            f"{self.replica_name(record.index)} :{record.port} v{record.version}" for record in state.replicas
        )
        return DeploymentReport(
            target=f"replicas/{len(state.replicas)}",
            url=f"http://{state.host}:{state.balancer_port}",
            model_name=model_name,
            model_version=version,
            started_server=started_server,
            seconds=time.perf_counter() - started,
            detail=f"{detail} ({replicas}; haproxy pid {state.haproxy_pid})",
        )


def render_haproxy_config(
    *, socket_path: Path, host: str, balancer_port: int, servers: Sequence[tuple[str, int]]
) -> str:
    """haproxy's configuration: a frontend on ``host:balancer_port`` over the named ``servers`` (name, port
    on ``host``), and the runtime API on ``socket_path`` at ``level admin``.

    - Each request is balanced on its own (round robin), and the connection to a replica is closed after
      its answer (``http-server-close``): haproxy then never holds an idle connection a stopping replica
      might close under a request, and a drained replica's session count falls to zero as soon as its
      last answer is sent.
    - A replica that refuses a connection (stopping, not started yet) costs no request: the connection is
      retried on another replica (``retries`` + ``redispatch``).
    - The health check asks the readiness route, which answers 200 only once a model is loaded and warmed
      up; two checks in a row decide a change (``rise``/``fall``), every 250 ms while one is under way.
    """
    lines = "\n".join(f"    server {name} {host}:{port} check" for name, port in servers)
    return f"""# Written by ml_platform.deploy.replicas.
global
    stats socket {socket_path} mode 600 level admin
    stats timeout 30s

defaults
    mode http
    option http-server-close
    retries 3
    option redispatch
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-request 30s
    timeout http-keep-alive 60s
    timeout queue 30s
    timeout check 5s

frontend {FRONTEND}
    bind {host}:{balancer_port}
    default_backend {BACKEND}

backend {BACKEND}
    balance roundrobin
    option httpchk
    http-check send meth GET uri {READY_PATH}
    http-check expect status 200
    default-server inter 1s fastinter 250ms downinter 500ms rise 2 fall 2
{lines}
"""


# ---- module helpers ------------------------------------------------------------------------------
def _check_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int | str) or not str(version).isdigit():
        raise DeploymentError(f"version: expected a registered model version number, got {version!r}")
    number = int(version)
    if number < 1:
        raise DeploymentError(f"version: expected a registered model version number (1 or more), got {version!r}")
    return number


def _common_version(state: _SetState) -> int | None:
    versions = {record.version for record in state.replicas if record.version is not None}
    return versions.pop() if len(versions) == 1 else None


def _free_ports(count: int, host: str, avoid: set[int] | None = None) -> list[int]:
    """``count`` distinct ports free on ``host`` now (each bound at once, so the kernel hands out distinct ones)."""
    probes: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < count:
            probe = socket.socket()
            probes.append(probe)
            probe.bind((host, 0))
            port = probe.getsockname()[1]
            if port not in (avoid or set()):
                ports.append(port)
        return ports
    finally:
        for probe in probes:
            probe.close()


def _terminate(pid: int, grace_s: float) -> None:
    """SIGTERM ``pid``, wait for it to exit; SIGKILL after ``grace_s``."""
    try:
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)
        process.wait(grace_s)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
            process.wait(10)


def _strip_header_mark(text: str) -> list[str]:
    """``show stat``'s CSV with its header's leading ``# `` removed, so csv reads the column names."""
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        lines[0] = lines[0][2:]
    return [line for line in lines if line.strip()]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

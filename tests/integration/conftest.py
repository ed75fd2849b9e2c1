"""Real services for the production profile: PostgreSQL and Redis on loopback, never mocks.

- Dagster's instance: PostgreSQL on 127.0.0.1:5432 (the server `.ci/run` starts), user postgres, in a
  fresh database ``mlp_it_dagster``.
- MLflow's backend store: a PostgreSQL cluster of the test's own (``initdb`` + ``pg_ctl`` in a temporary
  directory, a free port), so a test can stop it in the middle of a run and start it again.
- Feast's online store: a redis-server of the test's own on a free port (append-only file on, so a
  restart keeps the data as a production Redis would), stopped and started by the fault test.

Every production-profile command runs as a subprocess with its own environment (the one switch,
``ML_PLATFORM_PROFILE=production``, and the connection variables), exactly as a user runs it; the test
process itself stays on the local profile of the rest of the suite. When a service cannot be reached
or started the tests FAIL with a message saying which and how to start it: in CI they must run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
DAGSTER_DB, MLFLOW_DB = "mlp_it_dagster", "mlp_it_mlflow"
SMALL_DATA = {"raw_transactions": {"n_customers": 1_500, "transactions_per_day": 1_200, "seed": 7}}
FIRST_DAY, LAST_DAY = date(2026, 3, 1), date(2026, 3, 14)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pg_connect(port: int = PG_PORT, dbname: str = "postgres", timeout: int = 3):
    import psycopg2

    connection = psycopg2.connect(host=PG_HOST, port=port, user=PG_USER, dbname=dbname, connect_timeout=timeout)
    connection.autocommit = True
    return connection


def pg_query(port: int, dbname: str, sql: str, params: tuple = ()) -> list[tuple]:
    connection = pg_connect(port, dbname)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def recreate_database(port: int, name: str) -> None:
    connection = pg_connect(port)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()


def _postgres_bin(tool: str) -> str:
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"), reverse=True)
    if not candidates:
        pytest.fail(f"PostgreSQL's {tool} is neither on PATH nor under /usr/lib/postgresql/*/bin: install the server")
    return str(candidates[0])


@dataclass
class PostgresCluster:
    """A PostgreSQL server of the test's own (initdb + pg_ctl), run as the postgres user when we are root:
    the server refuses to run as root."""

    directory: Path
    port: int
    as_user: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def _ctl(self, *args: str) -> subprocess.CompletedProcess:
        command = [*self.as_user, _postgres_bin("pg_ctl"), "-D", str(self.data), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    def init(self) -> None:
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.directory, "postgres")
        self.directory.chmod(0o700)
        initdb = [*self.as_user, _postgres_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", PG_USER]
        done = subprocess.run([*initdb, "--no-sync", "-E", "UTF8"], capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"initdb failed: {done.stderr}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        done = self._ctl("-o", options, "-l", str(self.directory / "server.log"), "-w", "start")
        assert done.returncode == 0, f"pg_ctl start failed: {done.stderr}\n{self.log_tail()}"

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: the server dies at once (what a crash or a lost node looks like to clients)."""
        self._ctl("-m", mode, "-w", "stop")

    def running(self) -> bool:
        try:
            pg_connect(self.port, timeout=1).close()
        except Exception:
            return False
        return True

    def log_tail(self) -> str:
        log = self.directory / "server.log"
        return "\n".join(log.read_text().splitlines()[-20:]) if log.exists() else ""


@dataclass
class RedisServer:
    """A redis-server of the test's own; the append-only file keeps its data across a restart."""

    directory: Path
    port: int
    process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"]
        command += ["--appendfsync", "always", "--dir", str(self.directory), "--logfile", "redis.log"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self.running():
            assert self.process.poll() is None, f"redis-server exited: {self.log_tail()}"
            assert time.monotonic() < deadline, "redis-server did not answer PING within 20 s"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # a clean shutdown: the append-only file is complete
            self.process.wait(30)
        self.process = None

    def client(self, **kwargs):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, retry=None, **kwargs)

    def running(self) -> bool:
        try:
            return bool(self.client().ping())
        except Exception:
            return False

    def log_tail(self) -> str:
        log = self.directory / "redis.log"
        return "\n".join(log.read_text().splitlines()[-20:]) if log.exists() else ""


@dataclass
class Production:
    """Everything a production-profile process needs: its environment and the services behind it."""

    home: Path
    env: dict[str, str]
    mlflow_pg: PostgresCluster
    redis: RedisServer
    serving_port: int

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """``ml-platform ARGS`` in a fresh process with the production environment."""
        return subprocess.run(
            [sys.executable, "-m", "ml_platform.cli", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cli_background(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "ml_platform.cli", *args],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @property
    def tracking_uri(self) -> str:
        return self.env["ML_PLATFORM_MLFLOW_URI"]

    @property
    def serving_url(self) -> str:
        return f"http://127.0.0.1:{self.serving_port}"


@pytest.fixture(scope="session")
def main_postgres() -> None:
    """The PostgreSQL server on 127.0.0.1:5432 answers, with a fresh database for Dagster's instance."""
    try:
        pg_connect().close()
    except Exception as error:
        pytest.fail(
            f"PostgreSQL is not answering on {PG_HOST}:{PG_PORT} as user {PG_USER} ({error}). Start it: "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` (.ci/run does)"
        )
    recreate_database(PG_PORT, DAGSTER_DB)


@pytest.fixture(scope="session")
def mlflow_postgres() -> Iterator[PostgresCluster]:
    # Directly under /tmp: the postgres user must reach it, and pytest's base temp is private to us.
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="mlp_it_pg_")), free_port())
    try:
        cluster.init()
        cluster.start()
        recreate_database(cluster.port, MLFLOW_DB)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def production(main_postgres, mlflow_postgres, redis_server, tmp_path_factory) -> Production:
    home = tmp_path_factory.mktemp("production_home")
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ML_PLATFORM_", "DAGSTER_", "MLFLOW_", "PG", "PYTEST_"))
    }
    serving_port = free_port()
    env = {
        **inherited,
        # the one switch, and what the production profile reads
        "ML_PLATFORM_PROFILE": "production",
        "ML_PLATFORM_HOME": str(home),
        "ML_PLATFORM_MLFLOW_URI": f"postgresql://{PG_USER}@{PG_HOST}:{mlflow_postgres.port}/{MLFLOW_DB}",
        "ML_PLATFORM_MLFLOW_ARTIFACT_ROOT": str(home / "artifact-store"),
        "ML_PLATFORM_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        # no cluster here: training in a local Pipes subprocess, the model server as a local process
        "ML_PLATFORM_TRAINING_BACKEND": "local",
        "ML_PLATFORM_DEPLOYMENT_TARGET": "local",
        "ML_PLATFORM_EXECUTOR": "local",
        "ML_PLATFORM_SERVING_PORT": str(serving_port),
        # Dagster's instance (deploy/dagster/dagster.yaml reads these)
        "DAGSTER_PG_HOST": PG_HOST,
        "DAGSTER_PG_PORT": str(PG_PORT),
        "DAGSTER_PG_USERNAME": PG_USER,
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": DAGSTER_DB,
        # the model server started by `deploy`: quick to follow the registry and to write its log
        "ML_PLATFORM_SERVING_POLL_SECONDS": "0.5",
        "ML_PLATFORM_SERVING_LOG_FLUSH_SECONDS": "0.2",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    return Production(home, env, mlflow_postgres, redis_server, serving_port)


@pytest.fixture(scope="session")
def bootstrapped(production: Production) -> subprocess.CompletedProcess:
    """``ml-platform init`` (MLflow's tables created once, up front) then the whole graph over 14 days."""
    import yaml

    init = production.cli("init")
    assert init.returncode == 0, init.stdout + init.stderr
    params = production.home / "small.yaml"
    params.write_text(yaml.safe_dump(SMALL_DATA))
    days = ["--start", FIRST_DAY.isoformat(), "--end", LAST_DAY.isoformat()]
    run = production.cli("run", "--pipeline", "all", *days, "--params", str(params))
    assert run.returncode == 0, run.stdout + run.stderr
    return run


@pytest.fixture(scope="session")
def deployed(production: Production, bootstrapped) -> Iterator[str]:
    """The champion served by ``ml-platform deploy --env local`` (the server reads features from Redis)."""
    done = production.cli("deploy", "--env", "local")
    assert done.returncode == 0, done.stdout + done.stderr
    yield production.serving_url
    production.cli("stop-server")

"""The production profile's home and the real services behind it: PostgreSQL and Redis on loopback.

- ``PG_*``, ``pg_connect``, ``pg_query``, ``recreate_database``: the PostgreSQL server on 127.0.0.1:5432 (the
  one `.ci/run` starts) and plain SQL against any server of ours.
- ``PostgresCluster``: a PostgreSQL server of a test's own (``initdb`` + ``pg_ctl`` in a temporary directory,
  a free port), so a test can stop it in the middle of a run and start it again.
- ``RedisServer``: a redis-server of a test's own (append-only file on, so a restart keeps the data).
- ``Production``: a production-profile state directory with its environment and services; ``cli`` runs
  ``ml-platform`` in a fresh process with that environment, as a user would.

The fixtures that start them are in tests/integration/conftest.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
DAGSTER_DB, MLFLOW_DB = "mlp_it_dagster", "mlp_it_mlflow"


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
            [sys.executable, "-m", "runs.cli", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cli_background(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "runs.cli", *args],
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

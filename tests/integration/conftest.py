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
or started the tests FAIL with a message saying which and how to start it: in CI they must run. The
services' helpers are in tests/support/homes.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.homes import (
    DAGSTER_DB,
    MLFLOW_DB,
    PG_HOST,
    PG_PORT,
    PG_USER,
    PostgresCluster,
    Production,
    RedisServer,
    pg_connect,
    pg_query,
    recreate_database,
)
from tests.support.runs import FIRST_DAY, LAST_DAY, SMALL_DATA
from tests.support.servers import free_port


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
def stored_by_bootstrap(production: Production, bootstrapped) -> dict:
    """What the stores held right after the bootstrap: Dagster's runs (PostgreSQL), MLflow's model versions and
    aliases (its PostgreSQL database) and the model files in the artifact root. Read before any test deploys
    or trains (``deployed`` needs it), so the tests about what the bootstrap stored hold in any order."""
    port = production.mlflow_pg.port
    return {
        "runs": pg_query(PG_PORT, DAGSTER_DB, "SELECT run_id, pipeline_name, status FROM runs"),
        "versions": pg_query(port, MLFLOW_DB, "SELECT name, version, status FROM model_versions"),
        "aliases": dict(pg_query(port, MLFLOW_DB, "SELECT alias, version FROM registered_model_aliases")),
        "model_files": list((production.home / "artifact-store").rglob("model.ubj")),
    }


@pytest.fixture(scope="session")
def deployed(production: Production, stored_by_bootstrap) -> Iterator[str]:
    """The champion served by ``ml-platform deploy --env local`` (the server reads features from Redis)."""
    done = production.cli("deploy", "--env", "local")
    assert done.returncode == 0, done.stdout + done.stderr
    yield production.serving_url
    production.cli("stop-server")

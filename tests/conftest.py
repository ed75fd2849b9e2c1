"""Test session set-up: every test writes its state under a temporary home of its own, offline; and the
graph world, the whole asset graph materialized once on small data, for the tests that need it.

The home. This runs before any test module imports MLflow, Feast or Dagster, so nothing reaches the
network (telemetry off) and nothing is written under the real state directory or $HOME. Under
pytest-xdist every worker (``PYTEST_XDIST_WORKER``: gw0, gw1, ...; "main" without xdist) gets a home and a
model-server port of its own: two workers sharing them would share one registry, one Dagster instance and
one server. The worker's home and port are kept in environment variables named after the worker
(``ML_PLATFORM_TEST_HOME_GW0``, ``ML_PLATFORM_TEST_PORT_GW0``), because the processes Dagster starts for a
run's steps inherit the worker's environment (its ``PYTEST_XDIST_WORKER`` included) and may import this
module again: they must find the worker's home, not make a new one. The names carry the worker because
the workers themselves inherit the environment of the process that started them, which ran this module
too ("main"): a plain ``ML_PLATFORM_TEST_HOME`` would hand all of them the same home.

The graph world. ``bootstrap_run`` materializes the whole graph (raw data -> champion over 14 days) once per
home. The tests that use it change what it left (they train versions, move aliases, serve, send traffic),
so each establishes the state it needs or reads the state it finds, and they carry
``pytest.mark.xdist_group("graph")``: with ``--dist loadgroup`` they all run on one worker, so the graph
is bootstrapped once per test run (the hook below keeps that true on pytest 9.2).
"""

import os
import socket
import tempfile

import pytest

from ml_platform.settings import Settings

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
HOME_VARIABLE = f"ML_PLATFORM_TEST_HOME_{WORKER.upper()}"
PORT_VARIABLE = f"ML_PLATFORM_TEST_PORT_{WORKER.upper()}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if HOME_VARIABLE not in os.environ:
    os.environ[HOME_VARIABLE] = tempfile.mkdtemp(prefix=f"ml_platform_tests_{WORKER}_")
    os.environ[PORT_VARIABLE] = str(_free_port())  # a free port, so a test server never meets another one
os.environ["ML_PLATFORM_HOME"] = os.environ[HOME_VARIABLE]
os.environ["ML_PLATFORM_SERVING_PORT"] = os.environ[PORT_VARIABLE]
os.environ.pop("ML_PLATFORM_MLFLOW_URI", None)
SESSION_SETTINGS = Settings.from_env()
SESSION_SETTINGS.apply_environment()
SESSION_SETTINGS.prepare()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """``--dist loadgroup``: each test marked ``xdist_group(name)`` gets the ``@name`` suffix on its id that
    tells pytest-xdist's scheduler its group, as xdist itself means to.

    pytest-xdist 3.8 appends the suffix in the worker by setting ``item._nodeid``; pytest 9.2 keeps an item's
    id in a structured ``item._id`` instead, so xdist's edit no longer takes effect and every test is
    scheduled on its own (pytest-xdist issue #1386): each worker would bootstrap the graph. This makes the
    same edit on the structured id, and nothing where the suffix is already there.
    """
    if not getattr(config.option, "loadgroup", False):  # set in xdist's workers under --dist loadgroup
        return
    from _pytest.nodeid import NodeId

    for item in items:
        marks = item.iter_markers("xdist_group")
        names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks}
        if names and item.nodeid.rfind("@") <= item.nodeid.rfind("]"):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(sorted(names))}")


@pytest.fixture(scope="session", autouse=True)
def stop_the_session_model_server():
    """Jobs that deploy (deploy, retrain, rollback) leave the local model server running, as they should
    outside tests; the session stops it at the end so no process outlives the tests."""
    yield
    from ml_platform.deploy.local import LocalProcessTarget

    LocalProcessTarget(SESSION_SETTINGS.home / "serving", port=SESSION_SETTINGS.serving_port).stop()


# ---- the graph world (tests/dagster, tests/e2e) -----------------------------------------------------------
# Dagster and the graph's modules are imported inside the fixtures: the tests that never ask for the graph
# (unit, deploy, serving) do not pay for importing them.
@pytest.fixture(scope="session")
def settings():
    return SESSION_SETTINGS


@pytest.fixture(scope="session")
def defs(settings):
    from definitions import build_definitions

    return build_definitions(settings)


@pytest.fixture(scope="session")
def instance(settings):
    import dagster as dg

    return dg.DagsterInstance.get()


@pytest.fixture(scope="session")
def registry(defs):
    return defs.resources["mlflow"].registry()


@pytest.fixture(scope="session")
def bootstrap_run(defs, instance):
    """raw data -> champion over 14 days (what `make demo` does: the days' assets in one run, training to
    promotion in a second, ``runs.launch.GraphResult``), and the registry's aliases right after it (later
    tests train more versions)."""
    from runs.launch import launch_graph
    from tests.support.runs import FIRST_DAY, LAST_DAY, SMALL_DATA

    result = launch_graph(SMALL_DATA, start=FIRST_DAY, end=LAST_DAY, defs=defs)
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return result, defs.resources["mlflow"].registry().aliases()


@pytest.fixture(scope="session")
def bootstrap_result(bootstrap_run):
    return bootstrap_run[0]

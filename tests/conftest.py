"""Test session set-up: every test writes its state under one temporary home, offline.

This runs before any test module imports MLflow, Feast or Dagster, so nothing reaches the network
(telemetry off) and nothing is written under the real state directory or $HOME.
"""

import os
import socket
import tempfile
from pathlib import Path

import pytest

from ml_platform.settings import Settings

# Step subprocesses of a test run (re-execution uses the multiprocess executor) import this module
# again: they must find the session's home, not make a new one.
SESSION_HOME = Path(os.environ.get("ML_PLATFORM_TEST_HOME") or tempfile.mkdtemp(prefix="ml_platform_tests_"))
os.environ["ML_PLATFORM_TEST_HOME"] = str(SESSION_HOME)
os.environ["ML_PLATFORM_HOME"] = str(SESSION_HOME)
os.environ.pop("ML_PLATFORM_MLFLOW_URI", None)
if "ML_PLATFORM_SERVING_PORT" not in os.environ:  # a free port, so a test server never meets another one
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        os.environ["ML_PLATFORM_SERVING_PORT"] = str(probe.getsockname()[1])
SESSION_SETTINGS = Settings.from_env()
SESSION_SETTINGS.apply_environment()
SESSION_SETTINGS.prepare()


@pytest.fixture(scope="session", autouse=True)
def stop_the_session_model_server():
    """Jobs that deploy (deploy, retrain, rollback) leave the local model server running, as they should
    outside tests; the session stops it at the end so no process outlives the tests."""
    yield
    from ml_platform.deploy.local import LocalProcessTarget

    LocalProcessTarget(SESSION_SETTINGS.home / "serving", port=SESSION_SETTINGS.serving_port).stop()

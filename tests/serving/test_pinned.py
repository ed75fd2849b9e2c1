"""A pinned server (ML_PLATFORM_SERVING_MODEL_VERSION, as Kubernetes rolls it out) serves exactly that
version for its role and ignores alias moves; an unpinned one follows the alias. A pin that names no
version leaves the server not ready, saying why; a pin that is not a version stops the server at start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from ml_platform.registry import CHALLENGER, CHAMPION
from ml_platform.serving import ServerConfig
from ml_platform.settings import Settings, SettingsError
from tests.support.servers import copy_model, free_port, make_config, serve

FEATURES = [420.0, 2.25, 1.0, 10.0, 1.0, 35.0, 35.0, 12.0, 12.0]
VARIABLE = "ML_PLATFORM_SERVING_MODEL_VERSION"


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def served_version(running) -> int:
    with running.client() as client:
        return client.post("/predict", json={"features": FEATURES}).json()["model_version"]


def test_a_pinned_champion_keeps_its_version_while_the_alias_moves_twice(
    settings, registry, champion_version, tmp_path
):
    model = copy_model(settings, registry, f"serving_pin_{uuid.uuid4().hex[:6]}", versions=3)
    model.set_alias(CHAMPION, 1)
    model.set_alias(CHALLENGER, 3)
    common = {"model_name": model.model_name, "feast": None, "poll_seconds": 0.05}
    pinned_config = make_config(settings, tmp_path / "pinned", model_version=1, **common)
    following_config = make_config(settings, tmp_path / "following", **common)
    with serve(pinned_config) as pinned, serve(following_config) as following:
        assert served_version(pinned) == served_version(following) == 1
        seen = []
        for version in (2, 3):
            model.promote(version, promoted_at=f"2026-03-1{version}T00:00:00Z")
            # the unpinned server proves the move is visible to a server that looks
            wait_for(lambda v=version: served_version(following) == v, f"the unpinned server to serve v{version}")
            polls = pinned.server.manager.polls
            wait_for(lambda p=polls: pinned.server.manager.polls >= p + 3, "three more ticks of the pinned server")
            seen.append((served_version(pinned), served_version(following)))
        with pinned.client() as client:
            pinned_health = client.get("/health").json()
            metadata = client.get(f"/v2/models/{model.model_name}").json()
        with following.client() as client:
            following_health = client.get("/health").json()

    assert seen == [(1, 2), (1, 3)]
    assert pinned.server.manager.swaps == 1  # loaded once, never swapped
    # pinned: the version alone, no challenger beside it although the registry names one
    assert (pinned_health["pinned"], pinned_health["pinned_version"]) == (True, 1)
    assert (pinned_health["model_version"], pinned_health["challenger_version"]) == (1, None)
    assert metadata["versions"] == ["1"] and metadata["parameters"]["pinned"] is True
    assert (following_health["pinned"], following_health["pinned_version"]) == (False, None)
    assert following_health["model_version"] == 3


def test_a_pinned_canary_serves_its_version_as_the_challenger(settings, registry, champion_version, tmp_path):
    model = copy_model(settings, registry, f"serving_pin_canary_{uuid.uuid4().hex[:6]}", versions=3)
    model.set_alias(CHAMPION, 1)
    model.set_alias(CHALLENGER, 2)
    config = make_config(
        settings, tmp_path, model_name=model.model_name, feast=None, poll_seconds=0.05,
        serve_alias="challenger", model_version=2,
    )  # fmt: skip
    with serve(config) as running:
        model.set_alias(CHALLENGER, 3)
        polls = running.server.manager.polls
        wait_for(lambda: running.server.manager.polls >= polls + 3, "three more ticks")
        with running.client() as client:
            answer = client.post("/predict", json={"features": FEATURES}).json()
            health = client.get("/health").json()
    assert (answer["model_version"], answer["variant"]) == (2, "challenger")
    assert (health["pinned"], health["pinned_version"], health["model_version"]) == (True, 2, 2)


def test_a_pin_to_a_missing_version_is_not_ready_and_says_why(settings, registry, champion_version, tmp_path):
    model = copy_model(settings, registry, f"serving_pin_missing_{uuid.uuid4().hex[:6]}", versions=1)
    model.set_alias(CHAMPION, 1)
    config = make_config(
        settings, tmp_path, model_name=model.model_name, feast=None, poll_seconds=0.05, model_version=7
    )
    with serve(config, wait_ready=False) as running:
        manager = running.server.manager
        wait_for(lambda: manager.polls >= 3, "three ticks")
        with running.client() as client:
            health = client.get("/health")
            ready = client.get("/v2/health/ready")
            answer = client.post("/predict", json={"features": FEATURES})
    reason = f"the pinned champion ({model.model_name} version 7) does not exist in the registry"
    assert health.status_code == 503
    body = health.json()
    assert (body["status"], body["reason"], body["pinned"], body["pinned_version"]) == ("unavailable", reason, True, 7)
    assert body["model_version"] is None  # the champion alias (v1) is not served instead
    assert (ready.status_code, ready.json()) == (503, {"ready": False, "reason": reason})
    assert answer.status_code == 503 and answer.json()["error"] == f"no model loaded: {reason}"


@pytest.mark.parametrize("raw", ["0", "-2", "1.5", "three", "", " "])
def test_a_pin_that_is_not_a_version_is_refused_naming_the_variable(tmp_path, raw):
    with pytest.raises(SettingsError) as refused:
        ServerConfig.from_settings(Settings(home=tmp_path), environ={VARIABLE: raw})
    assert f"{VARIABLE}={raw!r} is not valid" in str(refused.value)
    assert "positive integer" in str(refused.value)


@pytest.mark.parametrize("value", [0, -1, True, "3"])
def test_a_pin_override_that_is_not_a_version_is_refused(tmp_path, value):
    with pytest.raises(SettingsError, match=f"model_version \\({VARIABLE}\\) must be a registry version"):
        ServerConfig.from_settings(Settings(home=tmp_path), environ={}, model_version=value)


def test_a_pin_is_read_from_the_environment_and_absent_by_default(tmp_path):
    settings = Settings(home=tmp_path)
    assert ServerConfig.from_settings(settings, environ={}).model_version is None
    assert ServerConfig.from_settings(settings, environ={VARIABLE: " 12 "}).model_version == 12


def test_the_server_process_stops_at_start_on_a_bad_pin(tmp_path):
    env = {
        **os.environ,
        "ML_PLATFORM_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "home" / "dagster"),
        VARIABLE: "latest",
    }
    completed = subprocess.run(
        [sys.executable, "-m", "ml_platform.serving", "--port", str(free_port()), "--no-feast"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode != 0
    assert f"{VARIABLE}='latest' is not valid" in completed.stderr

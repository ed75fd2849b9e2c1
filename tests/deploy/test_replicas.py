"""The replica-set target: three real model servers pinned to a version behind a real haproxy, on free
loopback ports; rollouts one replica at a time under continuous traffic, without one failed request."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid

import httpx
import pytest

from ml_platform.deploy.local import DeploymentError
from ml_platform.deploy.replicas import BACKEND, HAProxyError, ReplicaSetTarget, render_haproxy_config
from ml_platform.predictions import read_prediction_log
from ml_platform.registry import CHAMPION
from tests.support.replicas import FEATURES, Traffic, replica_environment, require_haproxy, running_set
from tests.support.servers import copy_model
from tests.support.serving_world import ServingWorld, build_serving_world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> ServingWorld:
    return build_serving_world(tmp_path_factory.mktemp("replicas_world"))


@pytest.fixture
def model(world):
    """A model of the test's own with versions 1 and 2 (the same files), the champion alias on 1: a replica
    that followed the alias instead of its pin would answer 1 where 2 is asked for."""
    registry = copy_model(world.settings, world.registry, f"replicas_{uuid.uuid4().hex[:6]}", versions=2)
    registry.set_alias(CHAMPION, 1)
    return registry


def served(target: ReplicaSetTarget) -> dict[str, tuple[int | None, bool | None]]:
    """Each replica asked directly (not through haproxy): the version it serves and whether it is pinned."""
    answers = {}
    for replica in target.status().replicas:
        with httpx.Client(base_url=replica.url, timeout=30.0) as client:
            health = client.get("/health").json()
            version = client.post("/predict", json={"features": FEATURES}).json()["model_version"]
        assert health["model_version"] == version, (replica.name, health)
        answers[replica.name] = (version, health.get("pinned"))
    return answers


def balancer_statuses(target: ReplicaSetTarget) -> dict[str, str]:
    return {name: row["status"] for name, row in target.balancer_view().items()}


def test_rollouts_under_traffic_fail_no_request_and_leave_every_replica_on_the_new_version(world, model, tmp_path):
    names = ["replica-0", "replica-1", "replica-2"]
    log_dir = tmp_path / "predictions"
    environment = replica_environment(world.settings, log_dir)
    with running_set(tmp_path / "set", environment, replicas=3) as target:
        first = target.deploy(model.model_name, 1)
        assert (first.started_server, first.model_version, first.url) == (True, 1, target.endpoint())
        assert served(target) == {name: (1, True) for name in names}
        assert balancer_statuses(target) == {name: "UP" for name in names}

        # each step as a later command would take it: a new target object that finds the set from its state
        def again() -> ReplicaSetTarget:
            return ReplicaSetTarget(tmp_path / "set", environment=environment, haproxy=require_haproxy())

        with Traffic(target.endpoint()) as traffic:
            traffic.wait_for(20)
            before_v2 = time.monotonic()
            rolled = again().deploy(model.model_name, 2)
            after_v2 = time.monotonic()
            traffic.wait_for(20)
            before_v1 = time.monotonic()
            rolled_back = again().deploy(model.model_name, 1)
            after_v1 = time.monotonic()
            traffic.wait_for(20)

        assert traffic.failures() == []
        # before a rollout: the old version only; while it runs: old and new; once it returned: the new only
        assert traffic.versions_between(float("-inf"), before_v2) == {1}
        assert traffic.versions_between(before_v2, after_v2) == {1, 2}
        assert traffic.versions_between(after_v2, before_v1) == {2}
        assert traffic.versions_between(before_v1, after_v1) == {1, 2}
        assert traffic.versions_between(after_v1, float("inf")) == {1}
        # requests went on while each rollout ran (three restarts each; a model load takes seconds)
        assert sum(1 for a in traffic.answers if before_v2 < a.sent and a.answered <= after_v2) >= 10

        assert (rolled.started_server, rolled.model_version) == (False, 2)
        assert "rolled" in rolled.detail and all(f"{name} v1 -> v2" in rolled.detail for name in names)
        assert all(f"{name} v2 -> v1" in rolled_back.detail for name in names)
        assert served(target) == {name: (1, True) for name in names}
        assert balancer_statuses(target) == {name: "UP" for name in names}

        same = again().deploy(model.model_name, 1)
        assert same.detail.startswith("nothing to do: all 3 replicas already serve v1")
        status = target.status()
        assert [(r.name, r.version, r.served_version, r.ready, r.balancer_status) for r in status.replicas] == [
            (name, 1, 1, True, "UP") for name in names
        ]
        ports = [r.port for r in status.replicas] + [int(target.endpoint().rsplit(":", 1)[1])]

    # stopped (running_set asserted no process is left): nothing listens on the set's ports any more
    for port in ports:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers after stop()"
    # SIGTERM on every replacement flushed each replica's log: every answered request is in it, once
    answered = sorted(a.request_id for a in traffic.answers)
    log = read_prediction_log(log_dir)
    assert sorted(r for r in log["request_id"] if r.startswith("traffic-")) == answered
    parts = [path.name for path in log_dir.rglob("part-*.parquet")]
    assert all(any(f"-{name}-" in part for part in parts) for name in names), parts


def test_a_replica_that_does_not_come_up_stops_the_rollout_and_the_others_keep_serving(world, model, tmp_path):
    environment = replica_environment(world.settings, tmp_path / "predictions")
    with running_set(tmp_path / "set", environment, replicas=2, timeout_s=120.0) as target:
        target.deploy(model.model_name, 1)
        with Traffic(target.endpoint()) as traffic:
            traffic.wait_for(10)
            # version 3 does not exist: a server pinned to it never becomes ready
            with pytest.raises(DeploymentError) as failed:
                target.deploy(model.model_name, 3, timeout_s=20.0)
            traffic.wait_for(10)
        message = str(failed.value)
        assert "replica replica-0 (port" in message and "did not come up serving v3" in message, message
        assert f"last lines of {tmp_path / 'set' / 'replica-0' / 'server.log'}" in message, message
        assert message.endswith("the others: replica-1 v1"), message
        assert traffic.failures() == [] and {a.version for a in traffic.answers} == {1}
        status = {r.name: (r.pid is not None, r.served_version, r.balancer_status) for r in target.status().replicas}
        assert status["replica-0"][:2] == (False, None) and status["replica-0"][2] != "UP"
        assert status["replica-1"] == (True, 1, "UP")

        # the next deploy starts what is not running; the running one is left as it is
        repaired = target.deploy(model.model_name, 1)
        assert "replica-0 not running -> v1" in repaired.detail and "replica-1" not in repaired.detail.split("(")[0]
        assert balancer_statuses(target) == {"replica-0": "UP", "replica-1": "UP"}

        # one replica replaced with extra environment (a fault of a test's choosing): only it refuses batches
        restarted = target.restart_replica(1, extra_environment={"ML_PLATFORM_SERVING_MAX_BATCH_ROWS": "1"})
        assert (restarted.name, restarted.served_version, restarted.balancer_status) == ("replica-1", 1, "UP")
        batch = {"instances": [{"features": FEATURES}, {"features": FEATURES}]}
        codes = {}
        for replica in target.status().replicas:
            with httpx.Client(base_url=replica.url, timeout=30.0) as client:
                codes[replica.name] = client.post("/predict", json=batch).status_code
        assert codes == {"replica-0": 200, "replica-1": 413}
        # a deploy of the same version replaces the replica that runs with extra environment
        cleaned = target.deploy(model.model_name, 1)
        assert "replica-1 v1 -> v1" in cleaned.detail and "replica-0 v1" not in cleaned.detail.split("(")[0]


def test_without_haproxy_the_deploy_fails_naming_it_and_starts_nothing(tmp_path):
    target = ReplicaSetTarget(tmp_path / "set", haproxy=str(tmp_path / "no-such-haproxy"))
    with pytest.raises(HAProxyError, match=r"haproxy not found: .*no-such-haproxy.*apt-get install haproxy"):
        target.deploy("fraud_detector", 1)
    assert not (tmp_path / "set" / "replica-0").exists()
    assert target.status().running is False and target.stop() is False


def test_the_rendered_configuration_is_one_haproxy_accepts(tmp_path):
    haproxy = require_haproxy()
    servers = [("replica-0", 20001), ("replica-1", 20002), ("replica-2", 20003)]
    config = render_haproxy_config(
        socket_path=tmp_path / "haproxy.sock", host="127.0.0.1", balancer_port=20000, servers=servers
    )
    (tmp_path / "haproxy.cfg").write_text(config)
    checked = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert f"stats socket {tmp_path / 'haproxy.sock'} mode 600 level admin" in config
    assert "balance roundrobin" in config and "http-check send meth GET uri /v2/health/ready" in config
    rendered = [line.split()[1:3] for line in config.splitlines() if line.strip().startswith("server ")]
    assert rendered == [
        ["replica-0", "127.0.0.1:20001"],
        ["replica-1", "127.0.0.1:20002"],
        ["replica-2", "127.0.0.1:20003"],
    ]
    assert f"backend {BACKEND}" in config and "bind 127.0.0.1:20000" in config

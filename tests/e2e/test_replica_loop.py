"""The closed loop on three replicas, proven on one machine: three model-server processes behind a real
haproxy, one prediction log in an S3 bucket (moto's server on loopback), one real Prometheus scraping the
three. The loop itself runs as a user's would, in a process of its own with a fresh state directory
(tests/support/replica_loop.py: the Dagster jobs, the sensors under Dagster's daemon code, the replica
set's rolling deploys); this test starts the services around it and judges what it reports, reading the
bucket and Prometheus itself as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ml_platform.predictions import read_prediction_log
from ml_platform.settings import REPO_ROOT
from tests.support.prometheus import instant, run_prometheus
from tests.support.replicas import require_haproxy
from tests.support.s3 import s3_bucket
from tests.support.servers import free_port

REPLICAS = 3


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    require_haproxy()
    home = tmp_path_factory.mktemp("replica_loop_home")
    ports = [free_port() for _ in range(REPLICAS)]
    balancer = free_port()
    with s3_bucket(prefix="prediction-log") as bucket, run_prometheus([f"127.0.0.1:{p}" for p in ports]) as prometheus:
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("ML_PLATFORM_", "DAGSTER_", "MLFLOW_", "PYTEST_", "AWS_"))
        }
        env = {
            **inherited,
            **bucket.env,
            "ML_PLATFORM_HOME": str(home),
            "ML_PLATFORM_DEPLOYMENT_TARGET": "replicas",
            "ML_PLATFORM_SERVING_REPLICAS": str(REPLICAS),
            "ML_PLATFORM_SERVING_REPLICA_PORTS": ",".join(map(str, ports)),
            "ML_PLATFORM_SERVING_PORT": str(balancer),
            "ML_PLATFORM_PREDICTION_LOG_URI": bucket.uri,
            "ML_PLATFORM_PROMETHEUS_URL": prometheus,
            # the replicas: quick to write their log (a rollout stops each one: it flushes on the way out)
            "ML_PLATFORM_SERVING_LOG_FLUSH_SECONDS": "0.5",
        }
        report_path = home / "report.json"
        completed = subprocess.run(
            [sys.executable, "-m", "tests.support.replica_loop", str(report_path)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1500,
            check=False,
        )
        output = f"{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
        assert report_path.exists(), f"the loop wrote no report (exit {completed.returncode}):\n{output}"
        report = json.loads(report_path.read_text())
        assert completed.returncode == 0, f"the loop failed:\n{output}"
        logged = read_prediction_log(bucket.uri)
        keys = bucket.object_keys()
        errors_by_instance = dict(
            (labels["instance"], value)
            for labels, value in instant(
                # the highest each 5xx series reached: the rollback restarted every replica, counters from 0
                prometheus,
                # (on /predict: a replica starting up answers its readiness probe 503 until its model is loaded)
                'sum by (instance) (max_over_time(ml_platform_serving_requests_total{route="/predict",'
                ' status_code=~"5.."}[1h]))',
            )
        )
    yield {"report": report, "logged": logged, "keys": keys, "ports": ports, "errors": errors_by_instance}


def versions(replicas: list[dict]) -> list[tuple[int, bool, str]]:
    return [(replica["version"], replica["pinned"], replica["balancer"]) for replica in replicas]


@pytest.mark.slow
def test_every_replica_serves_the_pinned_champion_and_every_answer_is_logged_once(loop):
    report, logged = loop["report"], loop["logged"]
    v_start = report["v_start"]
    assert versions(report["after_serve"]) == [(v_start, True, "UP")] * REPLICAS
    # Monitoring sees every answered row, to the row: what the three servers scored by their own counters
    # (summed by Prometheus) is what the window of the log holds. Besides the loop's traffic, the servers
    # answered the deploy's smoke check (one prediction) before the first monitoring run; before the second,
    # also the loop's look at which version answered and the retrain's deploy's smoke check.
    first = report["monitor_1"]
    assert first["scored"] == first["serving_metrics"]["rows"] == first["drift_report"]["rows"] > 10_000
    assert first["serving_metrics"]["rows"] == first["answered"] + 1
    assert first["serving_metrics"]["source"] == "prometheus"
    assert first["serving_metrics"]["replicas"] == REPLICAS
    second = report["monitor_2"]
    assert second["serving_metrics"]["rows"] == second["answered"] + 3
    # The bucket holds every answer of the loop exactly once, written by all three replicas: the loop's
    # traffic, and five more predictions (three deploys' smoke checks, the loop's two looks before each leg).
    answered = set(report["answered_ids"])
    assert logged["request_id"].nunique() == len(logged) == len(answered) + 5
    assert answered <= set(logged["request_id"])
    writers = {key.split("part-", 1)[1] for key in loop["keys"] if "/part-" in key and "compacted" not in key}
    for index in range(REPLICAS):
        assert any(f"-replica-{index}-" in name for name in writers), f"no part file of replica-{index}"


@pytest.mark.slow
def test_drift_retrains_and_a_pinned_rollout_reaches_every_replica_without_a_failed_request(loop):
    report = loop["report"]
    v_start, leg = report["v_start"], report["leg_1"]
    assert report["monitor_1"]["checks"]["drift_score"]["passed"] is False
    assert (leg["check"], leg["sensor"], leg["job"]) == ("drift_report:drift_score", "retrain_on_drift", "retrain")
    v_new = leg["to_version"]
    assert leg["from_version"] == v_start != v_new
    assert versions(report["after_leg_1"]) == [(v_new, True, "UP")] * REPLICAS
    rollout = report["rollout_1"]
    assert rollout["failed"] == 0, rollout["failures"]
    assert rollout["versions"] == sorted({v_start, v_new})  # answered by both while it rolled
    assert rollout["requests"] > 100


@pytest.mark.slow
def test_one_failing_replica_trips_error_rate_across_replicas_and_the_rollback_reaches_all_three(loop):
    report = loop["report"]
    v_start, v_new = report["v_start"], report["leg_1"]["to_version"]
    fault = report["fault"]
    assert fault["replica"] == "replica-1"
    # round robin over three: a third of the requests reached the refusing replica and got its 503
    assert fault["requests"] >= 1_500
    assert 0.2 < fault["failed"] / fault["requests"] < 0.45
    assert all("503" in failure for failure in fault["failures"])
    metrics = report["monitor_2"]["serving_metrics"]
    assert metrics["source"] == "prometheus" and metrics["replicas"] == REPLICAS
    assert metrics["errors"] == fault["failed"]  # summed over the replicas by Prometheus, to the request
    error_rate = report["monitor_2"]["checks"]["error_rate"]
    assert error_rate["passed"] is False
    assert error_rate["metadata"]["value"] == pytest.approx(metrics["errors"] / metrics["requests"])
    # only the faulty replica answered 5xx, as Prometheus itself counts them
    faulty_instance = f"127.0.0.1:{loop['ports'][1]}"
    assert {instance for instance, errors in loop["errors"].items() if errors > 0} == {faulty_instance}

    leg = report["leg_2"]
    assert (leg["check"], leg["sensor"], leg["job"]) == (
        "serving_metrics:error_rate",
        "rollback_on_failure",
        "rollback",
    )
    assert (leg["from_version"], leg["to_version"]) == (v_new, v_start)
    assert versions(report["after_leg_2"]) == [(v_start, True, "UP")] * REPLICAS
    rollout = report["rollout_2"]
    assert rollout["failed"] == 0, rollout["failures"]
    assert rollout["requests"] > 100
    assert "retrain_on_drift" in report["declined"]  # drift persists, but a retrain would make v_new again
    assert report["stopped"] is True
    for name, seconds in report["phases"].items():
        print(f"{name}: {seconds:.1f} s")
    for key in ("leg_1", "leg_2"):
        print(report[key]["line"])

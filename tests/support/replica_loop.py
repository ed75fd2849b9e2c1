"""The closed loop on three replicas, as a program: ``python -m tests.support.replica_loop REPORT.json``.

tests/e2e/test_replica_loop.py runs it in a process of its own, with an environment of its own: a fresh
state directory, the deployment target ``replicas`` (three pinned model servers behind haproxy on fixed
ports), the prediction log in an S3 bucket and Prometheus scraping the three replicas (both started by the
test). Everything here goes through what a user runs: the Dagster jobs, the sensors ticked by Dagster's own
daemon code (:class:`runs.sensor_daemon.SensorDaemon`), the replica set's rollouts. It writes what it saw
to REPORT.json for the test to judge:

1. bootstrap (raw data -> champion over 14 days), then the ``deploy`` job: three replicas pinned to it;
2. four drifted days as live traffic through the balancer, each then ingested (the nightly batch), and a
   monitoring run: it must see every answered row, and its drift check fails;
3. the retrain sensor's run trains, promotes and rolls the new version out, one replica at a time, while
   requests flow through the balancer without pause;
4. one replica's disk refuses its prediction log's journal: it answers 503 (it must not answer what it
   cannot log) while the others answer; the monitoring run's ``error_rate``, summed over the replicas by
   Prometheus, fails;
5. the disk is replaced (the journal folder is back), and the rollback sensor's run rolls the previous
   version out to every replica, again under traffic.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg

from definitions import build_definitions
from ml_platform.deploy.replicas import ReplicaSetTarget
from ml_platform.settings import Settings
from runs.closed_loop import ClosedLoop, LoopLeg, LoopPlan, LoopReport
from runs.launch import launch_graph
from runs.sensor_daemon import SensorDaemon
from tests.support.prometheus import instant, wait_for_scrapes_after
from tests.support.replicas import Traffic
from tests.support.runs import FIRST_DAY, LAST_DAY, SMALL_DATA

DRIFT_START, DRIFT_DAYS, DRIFT = date(2026, 8, 1), 4, 0.3
FAULTY_REPLICA = 1
# Traffic while a rollout runs: one request at a time, 50 ms apart (a steady stream, ~20 a second, that leaves
# the machine's two cores to the retraining run and the replicas' restarts).
ROLLOUT_PAUSE = 0.05
# Requests sent while one replica refuses: a fifth as many as were sent before (at least 1,500), of which a
# third fail, so the error rate of the whole 24 h window is about 5%, well above the 1% rule.
FAULT_SHARE, FAULT_MIN_REQUESTS = 0.2, 1_500
STARTED = time.time()  # every answer of the loop comes after this


def replica_versions(target: ReplicaSetTarget) -> list[dict[str, Any]]:
    """Each replica as it answers for itself (asked directly, not through the balancer)."""
    return [
        {
            "name": replica.name,
            "port": replica.port,
            "version": replica.served_version,
            "pinned": replica.pinned,
            "ready": replica.ready,
            "balancer": replica.balancer_status,
        }
        for replica in target.status().replicas
    ]


def evaluations_of(result) -> dict[str, dict[str, Any]]:
    return {
        e.check_name: {
            "passed": e.passed,
            "description": e.description,
            "metadata": {k: _plain(v) for k, v in e.metadata.items()},
        }
        for e in result.get_asset_check_evaluations()
    }


def materialized(result, asset: str) -> dict[str, Any]:
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        if materialization.asset_key == dg.AssetKey(asset):
            return {k: _plain(v) for k, v in materialization.metadata.items()}
    raise AssertionError(f"the monitoring run did not materialize {asset}")


def _plain(entry: Any) -> Any:
    """A metadata entry as a value the report's JSON holds: a table as its rows (dicts; json would iterate
    a TableRecord, which refuses it), anything else its value."""
    if isinstance(entry, dg.TableMetadataValue):
        return [dict(record.data) for record in entry.records]
    return getattr(entry, "value", entry)


def leg_of(leg: LoopLeg) -> dict[str, Any]:
    return {
        "line": leg.line(),
        "check": leg.check,
        "sensor": leg.sensor,
        "job": leg.job,
        "from_version": leg.from_version,
        "to_version": leg.to_version,
        "sensor_seconds": leg.sensor_seconds,
        "run_seconds": leg.run_seconds,
        "total_seconds": leg.total_seconds,
        "tags": leg.tags,
    }


def traffic_of(traffic: Traffic) -> dict[str, Any]:
    answered = [a for a in traffic.answers if a.failure is None]
    return {
        "requests": len(traffic.answers),
        "answered": len(answered),
        "failures": [a.failure for a in traffic.failures()][:20],
        "failed": len(traffic.failures()),
        "versions": sorted({a.version for a in answered}),
    }


def scored_rows(prometheus: str, replicas: int) -> int:
    """The rows the replicas scored, summed over their ``ml_platform_serving_predictions_total`` as Prometheus
    scraped it after now (each counter started at 0 with its process)."""
    wait_for_scrapes_after(prometheus, time.time(), targets=replicas)
    [(_, value)] = instant(prometheus, "sum(ml_platform_serving_predictions_total)")
    return int(value)


def react_under_traffic(
    loop: ClosedLoop, daemon: SensorDaemon, sensor: str, scratch: LoopReport, report: dict[str, Any], *, leg: int
) -> set[str]:
    """The sensor's run (and its rolling deploy) while requests flow through the balancer without pause;
    reports the leg, that traffic and what each replica serves afterwards; returns the answered ids."""
    with Traffic(loop.endpoint, token=loop.token, prefix=f"rollout-{leg}", pause=ROLLOUT_PAUSE) as rollout:
        rollout.wait_for(20)
        reaction = loop.react(daemon, sensor, scratch)
        rollout.wait_for(20)
    target = loop.defs.resources["deployment"].for_environment("local").target()
    report[f"leg_{leg}"] = leg_of(reaction)
    report[f"rollout_{leg}"] = traffic_of(rollout)
    report[f"after_leg_{leg}"] = replica_versions(target)
    return {a.request_id for a in rollout.answers if a.failure is None}


def main(report_path: Path) -> None:
    settings = Settings.from_env()
    assert settings.deployment_target == "replicas", "run by tests/e2e/test_replica_loop.py, which sets it up"
    prometheus = settings.prometheus_url
    report: dict[str, Any] = {"phases": {}}
    answered_ids: set[str] = set()
    clock = time.time()

    defs = build_definitions(settings)
    result = launch_graph(SMALL_DATA, start=FIRST_DAY, end=LAST_DAY, defs=defs)
    assert result.success, "the bootstrap run failed"
    report["phases"]["bootstrap"] = time.time() - clock

    loop = ClosedLoop(settings, defs, echo=print)
    deployment = defs.resources["deployment"].for_environment("local")
    target = deployment.target()
    try:
        clock = time.time()
        report["v_start"] = loop.serve()
        report["after_serve"] = replica_versions(target)
        report["phases"]["serve (3 replicas started, pinned)"] = time.time() - clock

        plan = LoopPlan.for_history(
            SMALL_DATA["raw_transactions"],
            history_days=(LAST_DAY - FIRST_DAY).days + 1,
            drift_start=DRIFT_START,
            drift_days=DRIFT_DAYS,
            drift=DRIFT,
        )
        with SensorDaemon(loop.instance) as daemon:
            loop.start_sensors(daemon)

            # Leg 1: drifted traffic through the balancer, the nightly batch after each day.
            clock = time.time()
            for number in range(plan.drift_days):
                day = plan.drift_start + timedelta(days=number)
                transactions = plan.transactions(day, day, plan.drift_rows_per_day)
                loop.send(transactions, label_delay=plan.late_label_delay, seed=number)
                answered_ids |= set(transactions["transaction_id"].astype(str))
                loop.run("ingest", {"raw_transactions": plan.drifted_data()}, start=day, end=day)
                loop.run("refresh_features", start=day, end=day)
            report["phases"]["drifted days (traffic, ingest, features)"] = time.time() - clock

            clock = time.time()
            monitor = loop.run("monitor")
            report["monitor_1"] = {
                "answered": len(answered_ids),
                # every row the three servers scored, by their own counters (no replica restarted yet)
                "scored": scored_rows(prometheus, settings.serving_replicas),
                "serving_metrics": materialized(monitor, "serving_metrics"),
                "drift_report": materialized(monitor, "drift_report"),
                "checks": evaluations_of(monitor),
            }
            scratch = LoopReport(champion=report["v_start"], endpoint=loop.endpoint)
            answered_ids |= react_under_traffic(loop, daemon, "retrain_on_drift", scratch, report, leg=1)
            report["phases"]["leg 1 (monitor, retrain, rolling deploy)"] = time.time() - clock

            # Leg 2: one replica's disk refuses the journal; a third of the requests get 503.
            clock = time.time()
            journal = target.state_dir / target.replica_name(FAULTY_REPLICA) / "journal"
            broken = journal.with_name("journal.moved")
            journal.rename(broken)
            journal.write_text("not a folder: the journal's disk refuses writes\n")
            time.sleep(2 * float(os.environ.get("ML_PLATFORM_SERVING_LOG_FLUSH_SECONDS", "2")) + 1.0)
            sent_before = report["monitor_1"]["serving_metrics"]["requests"] + report["rollout_1"]["requests"]
            with Traffic(loop.endpoint, token=loop.token, prefix="fault") as faulty:
                faulty.wait_for(max(FAULT_MIN_REQUESTS, int(FAULT_SHARE * sent_before)))
            report["fault"] = {"replica": target.replica_name(FAULTY_REPLICA), **traffic_of(faulty)}
            answered_ids |= {a.request_id for a in faulty.answers if a.failure is None}
            loop.wait_for_log(answered_ids, since=datetime.fromtimestamp(STARTED, UTC))
            wait_for_scrapes_after(prometheus, time.time(), targets=settings.serving_replicas)
            monitor = loop.run("monitor")
            report["monitor_2"] = {
                "answered": len(answered_ids),
                "serving_metrics": materialized(monitor, "serving_metrics"),
                "checks": evaluations_of(monitor),
            }
            # The disk is replaced: the replica logs (and answers) again; the loop rolls back all the same.
            journal.unlink()
            broken.rename(journal)
            answered_ids |= react_under_traffic(loop, daemon, "rollback_on_failure", scratch, report, leg=2)
            report["declined"] = scratch.skipped
            report["phases"]["leg 2 (fault, monitor, rollback, rolling deploy)"] = time.time() - clock

            # Every answer, logged once, in the bucket (read by the test itself as well).
            loop.wait_for_log(answered_ids, since=datetime.fromtimestamp(STARTED, UTC))
    finally:
        report["stopped"] = target.stop()
        report["answered_ids"] = sorted(answered_ids)
        report_path.write_text(json.dumps(report, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

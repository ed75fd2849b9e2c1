"""The closed loop, end to end, with nobody in it: the champion serves (a real uvicorn process), drifted
traffic arrives, the drift check fails, the retrain sensor requests a run that trains, gates, promotes and
deploys a new version; then labels turn bad, the accuracy check fails, the rollback sensor puts the
previous champion back, and the server answers with it. The same scenario `make demo` shows.

It runs in a state directory of its own (registry, data, Dagster instance, server port), so its data
and versions are exactly these (fixed days of a seeded source) whatever other tests did before.
"""

import json
import socket
from datetime import date

import dagster as dg
import pytest
from typer.testing import CliRunner

from ml_platform.cli import ClosedLoop, LoopPlan, app, launch
from ml_platform.deploy.local import http_json
from ml_platform.registry import CHAMPION, PREVIOUS, ROLLBACK_REASON_TAG
from ml_platform.settings import Settings
from sensors.monitoring import CHECK_RUN_TAG, REASON_TAG, TRIGGER_TAG

DATA = {"n_customers": 1_500, "transactions_per_day": 1_200, "seed": 7}
HISTORY = (date(2026, 3, 1), date(2026, 3, 14))
DRIFT_START, DRIFT_DAYS, DRIFT = date(2026, 3, 15), 4, 0.3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def own_home(tmp_path_factory):
    """Settings of a fresh state directory, with the environment pointing at it for the module (the
    model server the loop starts inherits it), restored afterwards."""
    patch = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("closed_loop_home")
    patch.setenv("ML_PLATFORM_HOME", str(home))
    patch.setenv("DAGSTER_HOME", str(home / "dagster"))
    patch.setenv("ML_PLATFORM_SERVING_PORT", str(free_port()))
    patch.delenv("ML_PLATFORM_SERVING_LOG_DIR", raising=False)
    patch.delenv("ML_PLATFORM_ALERT_WEBHOOK_URL", raising=False)
    settings = Settings.from_env()
    settings.apply_environment()
    settings.prepare()
    yield settings
    patch.undo()


@pytest.fixture(scope="module")
def loop_run(own_home):
    from definitions import build_definitions

    defs = build_definitions(own_home)
    history = launch("bootstrap", {"raw_transactions": DATA}, start=HISTORY[0], end=HISTORY[1], defs=defs)
    assert history.success
    plan = LoopPlan.for_history(DATA, history_days=14, drift_start=DRIFT_START, drift_days=DRIFT_DAYS, drift=DRIFT)
    loop = ClosedLoop(own_home, defs)
    try:
        report = loop.run_scenario(plan)
        served = http_json(f"{loop.endpoint}/predict", body={"features": [50.0] * 9})
        health = http_json(f"{loop.endpoint}/health")
    finally:
        stopped = loop.stop_server()
    return {
        "defs": defs,
        "plan": plan,
        "loop": loop,
        "report": report,
        "served": served,
        "health": health,
        "stopped": stopped,
    }


@pytest.mark.slow
def test_drift_retrains_and_serves_a_new_version_then_bad_labels_roll_it_back(loop_run):
    report, plan = loop_run["report"], loop_run["plan"]
    assert report.champion == 1  # the first model of this state directory
    drift_leg, rollback_leg = report.legs

    # Leg 1: drift -> retrain -> v2 trained, gated, promoted, deployed, answering.
    assert (drift_leg.check, drift_leg.sensor, drift_leg.job) == (
        "drift_report:drift_score",
        "retrain_on_drift",
        "retrain",
    )
    assert (drift_leg.from_version, drift_leg.to_version) == (1, 2)
    assert drift_leg.value > drift_leg.threshold == 0.15
    assert drift_leg.tags[TRIGGER_TAG] == "drift_score"
    assert drift_leg.run_key.startswith("drift_score-")

    # Leg 2: labels turn bad -> accuracy_drop -> rollback -> v1 answering again.
    assert (rollback_leg.check, rollback_leg.sensor, rollback_leg.job) == (
        "live_performance:accuracy_drop",
        "rollback_on_failure",
        "rollback",
    )
    assert (rollback_leg.from_version, rollback_leg.to_version) == (2, 1)
    assert rollback_leg.value > rollback_leg.threshold == 0.05
    assert rollback_leg.value == pytest.approx(plan.flip_fraction, abs=0.1)

    # The timings are measured from the failed check, in order: sensor, then the run, then serving.
    for leg in report.legs:
        assert 0 <= leg.sensor_seconds <= leg.total_seconds
        assert 0 < leg.run_seconds <= leg.total_seconds
        assert leg.sensor_seconds + leg.run_seconds <= leg.total_seconds + 1e-6

    # What each monitoring run found: leg 1's labels were not in yet, leg 2's were (and bad).
    first, second = report.checks
    assert first["drift_score"] is False and first["accuracy_drop"] is True
    assert second["accuracy_drop"] is False
    assert report.skipped["retrain_on_drift"].startswith("cooldown: retrain was requested")
    drifted = plan.transactions(plan.drift_start, plan.drift_end, plan.drift_rows_per_day)
    bad_day = plan.transactions(plan.bad_day, plan.bad_day, DATA["transactions_per_day"])
    assert [(t["rows"], t["failed"], t["model_versions"]) for t in report.traffic] == [
        (len(drifted), 0, {"1": len(drifted)}),
        (len(bad_day), 0, {"2": len(bad_day)}),
    ]


@pytest.mark.slow
def test_the_server_registry_runs_and_alerts_agree(loop_run, own_home):
    report, loop = loop_run["report"], loop_run["loop"]
    status, answer = loop_run["served"]
    assert status == 200 and answer["model_version"] == 1  # /predict answered by the old version again
    assert loop_run["health"][1]["model_version"] == 1
    assert loop_run["stopped"] is True and loop.served_version() is None  # and the server is stopped

    registry = loop.registry
    assert registry.version_for_alias(CHAMPION) == 1 and registry.version_for_alias(PREVIOUS) is None
    rollback_leg = report.legs[1]
    assert registry.model_version(2).tags[ROLLBACK_REASON_TAG] == rollback_leg.tags[REASON_TAG]
    assert registry.test_metrics(2)["accuracy"] > 0.85  # v2 passed the quality floor

    instance = dg.DagsterInstance.get()
    for leg in report.legs:
        [run] = instance.get_runs(filters=dg.RunsFilter(tags={TRIGGER_TAG: leg.tags[TRIGGER_TAG]}))
        assert (run.run_id, run.job_name, run.status) == (leg.run_id, leg.job, dg.DagsterRunStatus.SUCCESS)
        assert run.tags["dagster/sensor_name"] == leg.sensor
        assert run.tags[CHECK_RUN_TAG] == leg.check_run_id
        assert instance.get_run_by_id(leg.check_run_id).job_name == "monitor"
        deployed = [
            entry.asset_materialization.metadata["model_version"].value
            for entry in instance.all_logs(leg.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
            if entry.asset_materialization.asset_key == dg.AssetKey("model_deployment")
        ]
        assert deployed == [leg.to_version]  # the run itself deployed what now answers

    alerts = [json.loads(line) for line in (own_home.home / "monitoring" / "alerts.jsonl").read_text().splitlines()]
    assert {a["check"] for a in alerts} >= {"drift_report:drift_score", "live_performance:accuracy_drop"}
    assert set(report.alerts) == {"drift_report:drift_score", "live_performance:accuracy_drop"}
    assert all(a["model"] == "fraud_detector" and a["delivery"] == "recorded" for a in alerts)


def test_demo_rejects_a_loop_longer_than_its_days():
    result = CliRunner().invoke(app, ["demo", "--days", "5", "--drift-days", "5"])
    assert result.exit_code == 2
    assert "--drift-days 5 must be fewer than --days 5" in result.output

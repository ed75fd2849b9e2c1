"""The closed loop, end to end, with nobody in it: the champion serves (a real uvicorn process), drifted
traffic arrives, the drift check fails, the retrain sensor requests a run that trains, gates, promotes and
deploys a new version; then labels turn bad, the accuracy check fails, the rollback sensor puts the
previous champion back, and the server answers with it. The same scenario `make demo` shows.

It runs in the session's graph world (tests/conftest.py: registry, data, Dagster instance, server port),
from whatever state the other graph tests left: the champion at its start is ``v_start``, the version the
drift retrain makes is new, and the rollback serves ``v_start`` again, so the tests after it find the
champion as this test found it. What else it adds cannot disturb them: its drifted days
(2026-03-15 .. 03-19) are days no other test ingests or sends, and the server it starts writes a prediction
log of its own, so its monitoring runs judge its traffic only and other tests' monitoring runs never see it.
"""

import json
from datetime import date

import dagster as dg
import pytest
from typer.testing import CliRunner

from ml_platform.deploy.local import LocalProcessTarget
from ml_platform.registry import CHAMPION, PREVIOUS, ROLLBACK_REASON_TAG
from ml_platform.serving.client import ModelServerClient
from runs.cli import app
from runs.closed_loop import ClosedLoop, LoopPlan
from sensors.monitoring import CHECK_RUN_TAG, REASON_TAG, TRIGGER_TAG
from tests.support.runs import FIRST_DAY, LAST_DAY, SMALL_DATA

pytestmark = pytest.mark.xdist_group("graph")  # the session's one graph world: see tests/conftest.py
DATA = SMALL_DATA["raw_transactions"]
DRIFT_START, DRIFT_DAYS, DRIFT = date(2026, 3, 15), 4, 0.3


@pytest.fixture(scope="module")
def loop_run(bootstrap_result, settings, tmp_path_factory):
    """The scenario in the session's world, with the model server writing a prediction log of the loop's
    own (the environment points it there for the module, restored afterwards)."""
    from definitions import build_definitions

    patch = pytest.MonkeyPatch()
    patch.setenv("ML_PLATFORM_SERVING_LOG_DIR", str(tmp_path_factory.mktemp("closed_loop_predictions")))
    patch.delenv("ML_PLATFORM_ALERT_WEBHOOK_URL", raising=False)
    # A server an earlier test left running writes the session's log: the loop starts its own.
    LocalProcessTarget(settings.home / "serving", port=settings.serving_port).stop()
    try:
        defs = build_definitions(settings)  # its monitoring resource reads the loop's log
        loop = ClosedLoop(settings, defs)
        v_start = loop.registry.version_for_alias(CHAMPION)
        versions = loop.registry.client.search_model_versions(f"name='{settings.model_name}'")
        newest = max(int(v.version) for v in versions)
        history_days = (LAST_DAY - FIRST_DAY).days + 1
        plan = LoopPlan.for_history(
            DATA, history_days=history_days, drift_start=DRIFT_START, drift_days=DRIFT_DAYS, drift=DRIFT
        )
        try:
            report = loop.run_scenario(plan)
            with ModelServerClient(loop.endpoint) as client:
                served = client.predict([50.0] * 9)
                health = client.health()
        finally:
            stopped = loop.stop_server()
    finally:
        patch.undo()
    return {
        "defs": defs,
        "plan": plan,
        "loop": loop,
        "report": report,
        "served": served,
        "health": health,
        "stopped": stopped,
        "v_start": v_start,
        "v_new": newest + 1,  # the drift retrain registers the next version
    }


@pytest.mark.slow
def test_drift_retrains_and_serves_a_new_version_then_bad_labels_roll_it_back(loop_run):
    report, plan = loop_run["report"], loop_run["plan"]
    v_start, v_new = loop_run["v_start"], loop_run["v_new"]
    assert report.champion == v_start  # the champion the loop found
    drift_leg, rollback_leg = report.legs

    # Leg 1: drift -> retrain -> a new version trained, gated, promoted, deployed, answering.
    assert (drift_leg.check, drift_leg.sensor, drift_leg.job) == (
        "drift_report:drift_score",
        "retrain_on_drift",
        "retrain",
    )
    assert (drift_leg.from_version, drift_leg.to_version) == (v_start, v_new)
    assert drift_leg.value > drift_leg.threshold == 0.15
    assert drift_leg.tags[TRIGGER_TAG] == "drift_score"
    assert drift_leg.run_key.startswith("drift_score-")

    # Leg 2: labels turn bad -> accuracy_drop -> rollback -> v_start answering again.
    assert (rollback_leg.check, rollback_leg.sensor, rollback_leg.job) == (
        "live_performance:accuracy_drop",
        "rollback_on_failure",
        "rollback",
    )
    assert (rollback_leg.from_version, rollback_leg.to_version) == (v_new, v_start)
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
        (len(drifted), 0, {str(v_start): len(drifted)}),
        (len(bad_day), 0, {str(v_new): len(bad_day)}),
    ]


@pytest.mark.slow
def test_the_server_registry_runs_and_alerts_agree(loop_run, settings):
    report, loop = loop_run["report"], loop_run["loop"]
    v_start, v_new = loop_run["v_start"], loop_run["v_new"]
    answer = loop_run["served"]
    assert answer["model_version"] == v_start  # /predict answered by the old version again
    assert loop_run["health"]["model_version"] == v_start
    assert loop_run["stopped"] is True and loop.served_version() is None  # and the server is stopped

    registry = loop.registry
    assert registry.version_for_alias(CHAMPION) == v_start and registry.version_for_alias(PREVIOUS) is None
    rollback_leg = report.legs[1]
    assert registry.model_version(v_new).tags[ROLLBACK_REASON_TAG] == rollback_leg.tags[REASON_TAG]
    assert registry.test_metrics(v_new)["accuracy"] > 0.85  # the new version passed the quality floor

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

    alerts = [json.loads(line) for line in (settings.home / "monitoring" / "alerts.jsonl").read_text().splitlines()]
    assert {a["check"] for a in alerts} >= {"drift_report:drift_score", "live_performance:accuracy_drop"}
    assert set(report.alerts) == {"drift_report:drift_score", "live_performance:accuracy_drop"}
    assert all(a["model"] == "fraud_detector" and a["delivery"] == "recorded" for a in alerts)


def test_demo_rejects_a_loop_longer_than_its_days():
    result = CliRunner().invoke(app, ["demo", "--days", "5", "--drift-days", "5"])
    assert result.exit_code == 2
    assert "--drift-days 5 must be fewer than --days 5" in result.output

"""The closed loop, end to end, with nobody in it: the champion serves (a real uvicorn process), drifted
traffic arrives day by day (each day then ingested, so features never go stale), the drift check fails, the
retrain sensor requests a run that trains, gates, promotes and deploys a new version; then fraud takes a
pattern never seen at a 2% fraud rate, the class-aware accuracy check fails once its labels arrive, the
rollback sensor puts the champion it replaced back, and the server answers with it. The same scenario
`make demo` shows. The sensors are ticked by Dagster's own daemon code, state in the instance: a daemon
evaluating them afterwards neither alerts again nor remediates again, and drift that persists into the
next monitoring run does not bring a second retrain.

It runs in the session's graph world (tests/conftest.py: registry, data, Dagster instance, server port),
from whatever state the other graph tests left: the champion at its start is ``v_start``, the version the
drift retrain makes is new, and the rollback serves ``v_start`` again, so the tests after it find the
champion as this test found it. What else it adds cannot disturb them: its drifted days
(2026-08-01 .. 08-04 ingested, 08-05 only sent) come after every day another test ingests (the online
store it serves from holds no later day) and are removed again afterwards, and the server it starts writes
a prediction log of its own, so its monitoring runs judge its traffic only and other tests' monitoring runs
never see it.
"""

import json
import re
from datetime import date, timedelta

import dagster as dg
import pytest
from typer.testing import CliRunner

from ml_platform.deploy.local import LocalProcessTarget
from ml_platform.registry import CHAMPION, PREVIOUS, ROLLBACK_REASON_TAG
from ml_platform.serving.client import ModelServerClient
from runs.cli import app
from runs.closed_loop import ClosedLoop, LoopPlan
from runs.launch import launch
from runs.sensor_daemon import SensorDaemon
from sensors.monitoring import CHECK_RUN_TAG, REASON_TAG, SENSOR_TAG, TRIGGER_TAG
from tests.support.runs import FIRST_DAY, LAST_DAY, SMALL_DATA, catch_up_features, forget_days

pytestmark = pytest.mark.xdist_group("graph")  # the session's one graph world: see tests/conftest.py
DATA = SMALL_DATA["raw_transactions"]
DRIFT_START, DRIFT_DAYS, DRIFT = date(2026, 8, 1), 4, 0.3


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
        # The online store as the nightly batch leaves it: every stored day loaded (a test before this one may
        # have ingested a day without refreshing the features).
        catch_up_features(defs, DRIFT_START - timedelta(days=1))
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
    yield {
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
    forget_days(defs, [plan.drift_start + timedelta(days=n) for n in range(plan.drift_days)])


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

    # Leg 2: fraud changes pattern -> class-aware accuracy_drop -> rollback -> v_start answering again.
    assert (rollback_leg.check, rollback_leg.sensor, rollback_leg.job) == (
        "live_performance:accuracy_drop",
        "rollback_on_failure",
        "rollback",
    )
    assert (rollback_leg.from_version, rollback_leg.to_version) == (v_new, v_start)
    assert rollback_leg.value > rollback_leg.threshold == 0.05

    # The timings are measured from the failed check, in order: sensor, then the run, then serving.
    for leg in report.legs:
        assert 0 <= leg.sensor_seconds <= leg.total_seconds
        assert 0 < leg.run_seconds <= leg.total_seconds
        assert leg.sensor_seconds + leg.run_seconds <= leg.total_seconds + 1e-6

    # What each monitoring run found: leg 1's labels were not in yet, leg 2's were (fraud missed); the
    # features served equal the training set's in both (no skew).
    first, second = report.checks
    assert first["drift_score"] is False and first["accuracy_drop"] is True
    assert second["accuracy_drop"] is False
    assert first["feature_skew"] is True and second["feature_skew"] is True
    # Leg 2's tick did not retrain: the drift check passed, or the new champion already covers the data.
    if second["drift_score"] is False:
        assert report.skipped["retrain_on_drift"].startswith(
            f"not requesting retrain for the failed drift_report:drift_score: champion v{v_new} was trained on data "
            f"through {plan.drift_end}"
        ), report.skipped
    assert set(report.skipped) <= {"retrain_on_drift"}
    days = [(t["day"], t["rows"], t["failed"], t["model_versions"]) for t in report.traffic]
    expected = []
    for number in range(plan.drift_days):
        day = date.fromordinal(plan.drift_start.toordinal() + number)
        rows = len(plan.transactions(day, day, plan.drift_rows_per_day))
        expected.append((day.isoformat(), rows, 0, {str(v_start): rows}))
    bad_rows = len(plan.bad_transactions())
    expected.append((plan.bad_day.isoformat(), bad_rows, 0, {str(v_new): bad_rows}))
    assert days == expected
    assert set(report.phases) >= {"serve", "drifted days", "total"}


@pytest.mark.slow
def test_the_server_registry_runs_and_alerts_agree(loop_run, settings):
    report, loop = loop_run["report"], loop_run["loop"]
    v_start, v_new = loop_run["v_start"], loop_run["v_new"]
    answer = loop_run["served"]
    assert answer["model_version"] == v_start  # /predict answered by the old version again
    assert loop_run["health"]["model_version"] == v_start
    assert loop_run["stopped"] is True and loop.served_version() is None  # and the server is stopped

    registry = loop.registry
    assert registry.version_for_alias(CHAMPION) == v_start
    assert registry.version_for_alias(PREVIOUS) != v_new  # the version rolled back is never a rollback target
    rollback_leg = report.legs[1]
    assert registry.model_version(v_new).tags[ROLLBACK_REASON_TAG] == rollback_leg.tags[REASON_TAG]
    assert registry.test_metrics(v_new)["accuracy"] > 0.85  # the new version passed the quality floor

    instance = dg.DagsterInstance.get()
    for leg in report.legs:
        run = instance.get_run_by_id(leg.run_id)
        assert (run.job_name, run.status) == (leg.job, dg.DagsterRunStatus.SUCCESS)
        assert run.tags["dagster/sensor_name"] == run.tags[SENSOR_TAG] == leg.sensor  # launched by the daemon's code
        assert run.tags[TRIGGER_TAG] == leg.tags[TRIGGER_TAG] and run.tags["dagster/run_key"] == leg.run_key
        assert run.tags[CHECK_RUN_TAG] == leg.check_run_id
        assert instance.get_run_by_id(leg.check_run_id).job_name == "monitor"
        deployed = [
            entry.asset_materialization.metadata["model_version"].value
            for entry in instance.all_logs(leg.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
            if entry.asset_materialization.asset_key == dg.AssetKey("model_deployment")
        ]
        assert deployed == [leg.to_version]  # the run itself deployed what now answers

    alerts = [json.loads(line) for line in (settings.home / "monitoring" / "alerts.jsonl").read_text().splitlines()]
    expected = {"drift_report:drift_score", "live_performance:accuracy_drop"}
    assert {a["check"] for a in alerts} >= expected
    # the drifted traffic moves the model's scores too (a WARN alert; no sensor acts on it)
    assert expected <= set(report.alerts) <= {*expected, "prediction_drift:prediction_drift"}
    assert all(a["model"] == "fraud_detector" and a["delivery"] == "recorded" for a in alerts)


@pytest.mark.slow
def test_a_daemon_after_the_loop_continues_where_it_stopped(loop_run, settings):
    """What `make dev` does after `make demo`: its daemon ticks the same sensors over the same instance."""
    loop, defs = loop_run["loop"], loop_run["defs"]
    instance, alerts_path = loop.instance, settings.home / "monitoring" / "alerts.jsonl"

    def sensor_runs() -> set[str]:
        return {
            run.run_id
            for name in ClosedLoop.SENSORS
            for run in instance.get_runs(filters=dg.RunsFilter(tags={SENSOR_TAG: name}))
        }

    alerts_before, runs_before = alerts_path.read_text().splitlines(), sensor_runs()
    with SensorDaemon(instance) as daemon:
        quiet = daemon.tick(ClosedLoop.SENSORS)
        assert {name: (tick.status, tick.run_ids) for name, tick in quiet.items()} == {
            name: ("SKIPPED", []) for name in ClosedLoop.SENSORS
        }
        assert quiet["alert_on_failed_checks"].skip_reason == "no new failed check evaluation"
        assert alerts_path.read_text().splitlines() == alerts_before  # nothing alerted twice

        # The next hourly monitoring run: the drifted traffic is still in the window, the drift check fails
        # again. The data the retrain would read is what the rolled-back version was trained on: no retrain.
        monitored = launch("monitor", defs=defs)
        drift = {e.check_name: e for e in monitored.get_asset_check_evaluations()}["drift_score"]
        assert drift.passed is False
        persisting = daemon.tick(ClosedLoop.SENSORS)
    assert persisting["retrain_on_drift"].run_ids == [] and persisting["rollback_on_failure"].run_ids == []
    assert re.search(
        rf"v{loop_run['v_new']} was trained on data through \S+ \(the newest ingested day\) and rolled back",
        persisting["retrain_on_drift"].skip_reason,
    ), persisting["retrain_on_drift"].skip_reason
    assert sensor_runs() == runs_before  # one retrain and one rollback in all
    new_alerts = [json.loads(line) for line in alerts_path.read_text().splitlines()[len(alerts_before) :]]
    checks = [a["check"] for a in new_alerts]  # the new evaluations, once each
    assert "drift_report:drift_score" in checks and len(checks) == len(set(checks))
    assert set(checks) <= {"drift_report:drift_score", "prediction_drift:prediction_drift"}
    assert loop.registry.version_for_alias(CHAMPION) == loop_run["v_start"]


def test_demo_rejects_a_loop_longer_than_its_days():
    result = CliRunner().invoke(app, ["demo", "--days", "5", "--drift-days", "5"])
    assert result.exit_code == 2
    assert "--drift-days 5 must be fewer than --days 5" in result.output

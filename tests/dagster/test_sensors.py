"""The sensors that close the loop, evaluated tick by tick (build_sensor_context + evaluate_tick on the
session's instance) against check evaluations from real runs: one run per failing evaluation, the cooldown
read from the runs the sensor requested, the reason in the tags, declining a retrain that cannot help and a
rollback with nowhere to go, and every failed check turned into one alert, through a webhook that fails,
retries and is recorded. (tests/e2e drives the same sensors through the daemon's own code.)"""

import json
import socket
import threading
from contextlib import contextmanager
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import pytest

from assets.deployment import ENVIRONMENT_TAG
from ml_platform.registry import CHAMPION, MODEL_DIGEST_TAG, PREVIOUS, ROLLED_BACK_AT_TAG, TRAINING_DATA_END_TAG
from ml_platform.serving.client import ModelServerClient
from resources.alerts import WEBHOOK_ENV_VAR, AlertResource
from resources.deployment import DeploymentEnvironments, KubernetesDeployment
from runs.launch import launch, launch_run_request
from sensors.monitoring import (
    CHECK_RUN_TAG,
    REASON_TAG,
    SENSOR_TAG,
    TRIGGER_TAG,
    cursor_after_latest,
    newest_ingested_day,
)
from tests.support.runs import (
    drifted_transactions,
    endpoint,
    monitoring_resources,
    run_monitor,
    send_with_labels,
)

pytestmark = pytest.mark.xdist_group("graph")  # the session's one graph world: see tests/conftest.py
SENSOR_DAY = date(2026, 5, 11)  # this module's traffic (test_monitoring's is another day)
DRIFT = dg.AssetCheckKey(dg.AssetKey("drift_report"), "drift_score")
ACCURACY = dg.AssetCheckKey(dg.AssetKey("live_performance"), "accuracy_drop")
SMOKE = dg.AssetCheckKey(dg.AssetKey("model_deployment"), "smoke")
# The alert tests count the checks this traffic fails (drift, accuracy); the latency rule is put out of reach
# there, because on a busy machine one batch may take longer than the rule's 200 ms.
CALM_LATENCY = {"latency_p99_threshold_ms": 60_000.0}


@pytest.fixture(scope="module")
def traffic(bootstrap_result, defs, settings):
    """The champion served, drifted traffic sent to it, its labels arrived with a third inverted."""
    assert launch("deploy", defs=defs).success
    return send_with_labels(settings, defs, drifted_transactions(SENSOR_DAY, rows=400), flip_fraction=0.3, seed=5)


@pytest.fixture(scope="module")
def another_version(bootstrap_result, defs, registry):
    """A registered version that is a different model from the champion (a weak retrain that the gates
    stop); the champion and previous aliases are put back as they were after the module."""
    aliases = registry.aliases()
    champion = aliases[CHAMPION]
    champion_digest = registry.version_tags(champion).get(MODEL_DIGEST_TAG)
    # An earlier module may have left a weak model as champion: the weak retrain must give another model.
    for depth in (1, 2, 3):
        weak = {"trained_model": {"n_estimators": 1, "max_depth": depth, "early_stopping_rounds": 0}}
        launch("retrain", weak, defs=defs)  # registers the challenger; the gates stop it there
        versions = {int(v.version) for v in registry.client.search_model_versions(f"name='{registry.model_name}'")}
        other = max(versions - {champion})
        if registry.version_tags(other).get(MODEL_DIGEST_TAG) != champion_digest:
            break
    else:
        pytest.fail(f"three weak retrains all gave the champion v{champion}'s own model")
    yield other
    registry.set_alias(CHAMPION, champion)
    if aliases.get(PREVIOUS) is not None:
        registry.set_alias(PREVIOUS, aliases[PREVIOUS])
    elif registry.version_for_alias(PREVIOUS) is not None:
        registry.client.delete_registered_model_alias(registry.model_name, PREVIOUS)


def tick(defs, instance, sensor: str, cursor: str | None, **resources):
    # a context manager, as the daemon opens it: a resource with nested resources (deployment) is set up in it
    with dg.build_sensor_context(
        instance=instance,
        definitions=defs,
        resources={**defs.resources, **resources},
        cursor=cursor,
        sensor_name=sensor,
    ) as context:
        return defs.resolve_sensor_def(sensor).evaluate_tick(context)


def latest(instance, key):
    return instance.get_latest_asset_check_evaluation_record(key)


@contextmanager
def version_tag(registry, version: int, name: str, value: str | None):
    """Version ``version`` carries tag ``name`` = ``value`` (None: no such tag) inside the block; as before after."""
    before = registry.version_tags(version).get(name)

    def put(text: str | None) -> None:
        if text is None:
            if name in registry.version_tags(version):
                registry.client.delete_model_version_tag(registry.model_name, str(version), name)
        else:
            registry.client.set_model_version_tag(registry.model_name, str(version), name, text)

    put(value)
    try:
        yield
    finally:
        put(before)


@contextmanager
def trained_long_ago(registry):
    """Every version's training data ends in 2000 inside the block (as before after): no version covers the
    newest ingested day, so a retrain could help whatever versions other tests left."""
    before = {version: tags.get(TRAINING_DATA_END_TAG) for version, tags in registry.tags_by_version().items()}
    for version in before:
        registry.client.set_model_version_tag(
            registry.model_name, str(version), TRAINING_DATA_END_TAG, "2000-01-01T00:00:00+00:00"
        )
    try:
        yield
    finally:
        for version, value in before.items():
            if value is None:
                registry.client.delete_model_version_tag(registry.model_name, str(version), TRAINING_DATA_END_TAG)
            else:
                registry.client.set_model_version_tag(registry.model_name, str(version), TRAINING_DATA_END_TAG, value)


@contextmanager
def requested_run(instance, defs, sensor: str, job: str):
    """A run of ``job`` in the instance as ``sensor`` would have requested it (created, not executed), removed
    afterwards: what the cooldown reads."""
    run = instance.create_run_for_job(defs.resolve_job_def(job), tags={SENSOR_TAG: sensor})
    try:
        yield run
    finally:
        instance.delete_run(run.run_id)


# ---- drift -> retrain ----------------------------------------------------------------------------------
def test_a_failed_drift_check_requests_one_retrain_then_cools_down(traffic, defs, instance, registry):
    cursor = cursor_after_latest(instance, "retrain_on_drift", defs)
    assert tick(defs, instance, "retrain_on_drift", cursor).run_requests == []  # nothing new yet

    failing = run_monitor(defs, instance)
    assert failing.success
    record = latest(instance, DRIFT)
    assert record.run_id == failing.run_id and record.evaluation.passed is False
    # Every version's data ends long before the newest ingested day: a retrain can help. (No cooldown here:
    # another module's loop may have requested a retrain minutes ago; the cooldown is checked below.)
    no_cooldown = monitoring_resources(defs, remediation_cooldown_seconds=0)["monitoring"]
    with trained_long_ago(registry):
        first = tick(defs, instance, "retrain_on_drift", cursor, monitoring=no_cooldown)
    [request] = first.run_requests
    assert request.job_name == "retrain"
    assert request.run_key == f"drift_score-{record.id}"
    assert request.tags[TRIGGER_TAG] == "drift_score"
    assert request.tags[SENSOR_TAG] == "retrain_on_drift"
    assert request.tags[CHECK_RUN_TAG] == failing.run_id
    assert request.tags[REASON_TAG].startswith("drift_report:drift_score failed: drift_score ")
    assert "threshold=0.15]" in request.tags[REASON_TAG]

    again = tick(defs, instance, "retrain_on_drift", first.cursor)  # the same evaluation: handled
    assert again.run_requests == [] and "no new failed evaluation" in again.skip_message

    # The cooldown is read from the runs the sensor requested, not from the cursor: any process sees it.
    with trained_long_ago(registry), requested_run(instance, defs, "retrain_on_drift", "retrain"):
        assert run_monitor(defs, instance).success  # fails again, within the cooldown
        cooling = tick(defs, instance, "retrain_on_drift", again.cursor)
        assert cooling.run_requests == []
        assert cooling.skip_message.startswith("cooldown: retrain was requested")
        assert f"evaluation {latest(instance, DRIFT).id}" in cooling.skip_message
        fresh = tick(defs, instance, "retrain_on_drift", None)  # a process with no cursor of its own
        assert fresh.run_requests == [] and fresh.skip_message.startswith("cooldown: retrain was requested")

        assert run_monitor(defs, instance).success
        fired = tick(defs, instance, "retrain_on_drift", cooling.cursor, monitoring=no_cooldown)
        assert [r.run_key for r in fired.run_requests] == [f"drift_score-{latest(instance, DRIFT).id}"]

    assert run_monitor(defs, instance, drift_score_threshold=1.0).success  # now it passes
    calm = tick(defs, instance, "retrain_on_drift", fired.cursor, monitoring=no_cooldown)
    assert calm.run_requests == []
    assert calm.skip_message == "no new failed evaluation (passed: drift_report:drift_score)"


def test_a_retrain_that_would_learn_nothing_new_is_declined(traffic, defs, instance, registry, another_version):
    champion, newest = registry.version_for_alias(CHAMPION), newest_ingested_day(instance)
    assert newest is not None and newest >= date(2026, 3, 14)  # the session's history at least
    cursor = cursor_after_latest(instance, "retrain_on_drift", defs)
    assert run_monitor(defs, instance).success
    # The champion was trained on data through the newest ingested day: retraining reads the same days.
    with version_tag(registry, champion, TRAINING_DATA_END_TAG, f"{newest}T23:59:00+00:00"):
        covered = tick(defs, instance, "retrain_on_drift", cursor)
    assert covered.run_requests == []
    assert covered.skip_message.startswith(
        f"not requesting retrain for the failed drift_report:drift_score: champion v{champion} was trained on data "
        f"through {newest} 23:59 UTC"
    )
    assert f"no newer day has been ingested (newest: {newest})" in covered.skip_message

    # A version trained on the same data was rolled back: a retrain would make it again.
    assert run_monitor(defs, instance).success
    with (
        trained_long_ago(registry),
        version_tag(registry, another_version, TRAINING_DATA_END_TAG, f"{newest}T12:00:00+00:00"),
        version_tag(registry, another_version, ROLLED_BACK_AT_TAG, "2026-11-01T00:00:00+00:00"),
        version_tag(registry, another_version, "ml_platform.rollback_reason", "accuracy_drop failed"),
    ):
        again = tick(defs, instance, "retrain_on_drift", covered.cursor)
    assert again.run_requests == []
    # (the newest such version is named: another test's rollback may have left one newer than ours)
    assert f"was trained on data through {newest} (the newest ingested day) and rolled back" in again.skip_message
    assert again.skip_message.endswith("a retrain now would make the same model again; it waits for newer data")


# ---- accuracy / smoke -> rollback ----------------------------------------------------------------------
def test_rollback_needs_a_previous_champion_and_a_current_verdict(traffic, defs, instance, registry, another_version):
    champion = registry.version_for_alias(CHAMPION)
    if registry.version_for_alias(PREVIOUS) is not None:
        registry.client.delete_registered_model_alias(registry.model_name, PREVIOUS)
    cursor = cursor_after_latest(instance, "rollback_on_failure", defs)
    assert run_monitor(defs, instance).success
    assert latest(instance, ACCURACY).evaluation.passed is False
    declined = tick(defs, instance, "rollback_on_failure", cursor)
    assert declined.run_requests == []
    assert f"has no known-good version to roll back to (champion v{champion})" in declined.skip_message

    # A previous champion exists, but the failing verdict was about a version no longer serving.
    other = another_version
    registry.set_alias(PREVIOUS, other)
    assert run_monitor(defs, instance).success
    registry.set_alias(CHAMPION, other)
    try:
        stale = tick(defs, instance, "rollback_on_failure", declined.cursor)
    finally:
        registry.set_alias(CHAMPION, champion)
    assert stale.run_requests == []
    assert f"it judged v{champion}, and the champion is already v{other}" in stale.skip_message

    assert run_monitor(defs, instance).success
    no_cooldown = monitoring_resources(defs, remediation_cooldown_seconds=0)["monitoring"]
    wanted = tick(defs, instance, "rollback_on_failure", stale.cursor, monitoring=no_cooldown)
    [request] = wanted.run_requests
    record = latest(instance, ACCURACY)
    assert (request.job_name, request.run_key) == ("rollback", f"accuracy_drop-{record.id}")
    assert request.tags[TRIGGER_TAG] == "accuracy_drop"
    reason = request.run_config["ops"]["roll_back_champion"]["config"]["reason"]
    assert reason == request.tags[REASON_TAG] and reason.startswith("live_performance:accuracy_drop failed")
    # production traffic's verdict rolls back the environment monitoring watches (here the default, local)
    assert request.run_config["ops"]["roll_back_champion"]["config"]["environment"] == "local"
    assert request.tags[ENVIRONMENT_TAG] == "local"


def test_a_failed_smoke_check_rolls_back_and_the_old_version_answers(
    traffic, defs, instance, registry, settings, another_version
):
    champion, previous = registry.version_for_alias(CHAMPION), another_version
    # The known-good history a rollback follows: the other version served, then the champion again.
    registry.pin(previous, promoted_at=datetime.now(UTC).isoformat())
    registry.pin(champion, promoted_at=datetime.now(UTC).isoformat())
    assert registry.version_for_alias(PREVIOUS) == previous
    cursor = cursor_after_latest(instance, "rollback_on_failure", defs)
    # The smoke check as a probe outside Dagster runs would report it (a runless evaluation).
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=SMOKE.asset_key,
            check_name=SMOKE.name,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"/predict answered 503 for v{champion}",
            metadata={"expected_version": champion},
        )
    )
    no_cooldown = monitoring_resources(defs, remediation_cooldown_seconds=0)["monitoring"]
    result = tick(defs, instance, "rollback_on_failure", cursor, monitoring=no_cooldown)
    [request] = result.run_requests
    assert request.tags[TRIGGER_TAG] == "smoke"
    assert "/predict answered 503" in request.tags[REASON_TAG]
    # an evaluation that names no environment speaks for the default one
    assert request.run_config["ops"]["roll_back_champion"]["config"]["environment"] == "local"

    run = launch_run_request(request, defs)
    assert run.success
    assert run.dagster_run.tags[TRIGGER_TAG] == "smoke"
    instance.delete_run(run.run_id)  # a sensor's request, launched by hand: no cooldown for the loop's sensors
    assert registry.version_for_alias(CHAMPION) == previous
    tags = registry.model_version(champion).tags
    assert tags["ml_platform.rollback_reason"] == request.tags[REASON_TAG]
    with ModelServerClient(endpoint(settings)) as client:
        answer = client.predict([50.0] * 9)
    assert answer["model_version"] == previous
    registry.pin(champion, promoted_at=datetime.now(UTC).isoformat())  # the session's champion back, known-good


def test_each_failed_check_rolls_back_the_environment_it_speaks_for(
    traffic, defs, instance, registry, settings, another_version
):
    champion = registry.version_for_alias(CHAMPION)
    registry.pin(another_version, promoted_at=datetime.now(UTC).isoformat())
    registry.pin(champion, promoted_at=datetime.now(UTC).isoformat())  # a previous to roll back to
    no_cooldown = monitoring_resources(defs, remediation_cooldown_seconds=0)["monitoring"]
    local = defs.resources["deployment"].for_environment("local")
    watching_prod = DeploymentEnvironments(
        default_environment="local",
        monitored_environment="prod",
        local=local,
        staging=KubernetesDeployment(overlay="staging"),
        prod=KubernetesDeployment(overlay="prod"),
    )

    def requested(key, metadata) -> dg.RunRequest:
        cursor = cursor_after_latest(instance, "rollback_on_failure", defs)
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=key.asset_key,
                check_name=key.name,
                passed=False,
                severity=dg.AssetCheckSeverity.ERROR,
                description=f"{key.name} failed for v{champion}",
                metadata=metadata,
            )
        )
        result = tick(defs, instance, "rollback_on_failure", cursor, monitoring=no_cooldown, deployment=watching_prod)
        [request] = result.run_requests
        return request

    # a deploy's smoke check: the environment the deploy went to
    staging = requested(SMOKE, {"expected_version": champion, "environment": "staging"})
    assert staging.run_config["ops"]["roll_back_champion"]["config"]["environment"] == "staging"
    assert staging.tags[ENVIRONMENT_TAG] == "staging" and staging.job_name == "rollback"
    # production traffic's verdict: the environment monitoring watches
    traffic_check = requested(ACCURACY, {"model_version": champion})
    assert traffic_check.run_config["ops"]["roll_back_champion"]["config"]["environment"] == "prod"
    assert traffic_check.tags[ENVIRONMENT_TAG] == "prod"
    assert registry.version_for_alias(CHAMPION) == champion  # requested only: nothing rolled back here


def test_a_rollback_to_an_unknown_environment_is_refused_before_the_registry_changes(bootstrap_result, defs, registry):
    champion = registry.version_for_alias(CHAMPION)
    result = launch("rollback", ops_config={"roll_back_champion": {"reason": "test", "environment": "qa"}}, defs=defs)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "config environment: unknown deployment environment 'qa'" in failure.event_specific_data.error.message
    assert registry.version_for_alias(CHAMPION) == champion


# ---- alerts --------------------------------------------------------------------------------------------
class Webhook:
    """A Slack-like webhook on 127.0.0.1 that fails the first ``failures`` posts with HTTP 500."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.bodies: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.bodies.append(body)
                status = 500 if len(owner.bodies) <= owner.failures else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"try again")

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T000/B000"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def alert_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_every_failed_check_becomes_one_alert(traffic, defs, instance, registry, tmp_path):
    path = tmp_path / "alerts.jsonl"
    alerts = AlertResource(jsonl_path=str(path))
    cursor = cursor_after_latest(instance, "alert_on_failed_checks", defs)
    failing = run_monitor(defs, instance, **CALM_LATENCY)
    first = tick(defs, instance, "alert_on_failed_checks", cursor, alerts=alerts)
    lines = alert_lines(path)
    drifted = {"drift_report:drift_score", "prediction_drift:prediction_drift"}  # features and scores moved
    assert {line["check"] for line in lines} == {*drifted, "live_performance:accuracy_drop"}
    by_check = {line["check"]: line for line in lines}
    evaluation = {e.check_name: e for e in failing.get_asset_check_evaluations()}["accuracy_drop"]
    accuracy = by_check["live_performance:accuracy_drop"]
    assert accuracy["name"] == "accuracy_drop" and accuracy["severity"] == "ERROR"
    assert accuracy["model"] == registry.model_name and accuracy["run_id"] == failing.run_id
    assert accuracy["value"] == evaluation.metadata["value"].value and accuracy["threshold"] == 0.05
    assert accuracy["window"] == evaluation.metadata["window"].value
    assert accuracy["message"] == evaluation.description and accuracy["delivery"] == "recorded"
    assert by_check["drift_report:drift_score"]["severity"] == "WARN"
    assert first.skip_message.startswith("3 alert(s) delivered")

    again = tick(defs, instance, "alert_on_failed_checks", first.cursor, alerts=alerts)
    assert len(alert_lines(path)) == 3 and again.skip_message == "no new failed check evaluation"
    # Another process with no cursor (a daemon started afterwards): the history says they were alerted.
    ids = {line["check"]: line["evaluation_id"] for line in alert_lines(path)}
    assert ids["live_performance:accuracy_drop"] == latest(instance, ACCURACY).id
    elsewhere = tick(defs, instance, "alert_on_failed_checks", cursor, alerts=alerts)
    assert len(alert_lines(path)) == 3
    assert elsewhere.skip_message == "0 alert(s) delivered, 0 recorded undelivered, 3 already alerted before"

    # A gate's failure is alerted too (here the smoke check, reported without a value or threshold).
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(asset_key=SMOKE.asset_key, check_name="smoke", passed=False, description="down")
    )
    tick(defs, instance, "alert_on_failed_checks", again.cursor, alerts=alerts)
    smoke = alert_lines(path)[-1]
    assert (smoke["check"], smoke["message"], smoke["value"], smoke["threshold"]) == (
        "model_deployment:smoke",
        "down",
        None,
        None,
    )


def test_a_flaky_webhook_is_retried_and_an_unreachable_one_is_recorded(traffic, defs, instance, tmp_path):
    path = tmp_path / "alerts.jsonl"
    cursor = cursor_after_latest(instance, "alert_on_failed_checks", defs)
    assert run_monitor(defs, instance, **CALM_LATENCY).success
    with Webhook(failures=2) as hook:
        flaky = AlertResource(jsonl_path=str(path), webhook_url=hook.url, backoff_seconds=0.01)
        result = tick(defs, instance, "alert_on_failed_checks", cursor, alerts=flaky)
    lines = alert_lines(path)
    assert [line["delivery"] for line in lines] == ["delivered"] * 3  # drift, accuracy, prediction drift
    assert [line["attempts"] for line in lines] == [3, 1, 1]  # 500, 500, then 200; then 200 at once
    assert len(hook.bodies) == 5
    assert all(body["text"].startswith(":") and body["blocks"] for body in hook.bodies)
    assert result.skip_message.startswith("3 alert(s) delivered")

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    assert run_monitor(defs, instance, **CALM_LATENCY).success
    down = AlertResource(jsonl_path=str(path), webhook_url=closed, retries=2, backoff_seconds=0.01)
    unreachable = tick(defs, instance, "alert_on_failed_checks", result.cursor, alerts=down)
    failed = alert_lines(path)[3:]
    assert [line["delivery"] for line in failed] == ["failed"] * 3
    assert all(line["attempts"] == 3 and "cannot reach the webhook" in line["error"] for line in failed)
    assert unreachable.skip_message == "0 alert(s) delivered, 3 recorded undelivered"
    assert json.loads(unreachable.cursor) != json.loads(result.cursor)  # recorded, so not sent again


def test_the_webhook_url_comes_from_the_environment(tmp_path, monkeypatch):
    resource = AlertResource(jsonl_path=str(tmp_path / "alerts.jsonl"))
    monkeypatch.delenv(WEBHOOK_ENV_VAR, raising=False)
    assert resource.url() is None and type(resource.sink()).__name__ == "JsonlAlertSink"
    monkeypatch.setenv(WEBHOOK_ENV_VAR, "https://hooks.example.invalid/T/B/X")
    assert resource.url() == "https://hooks.example.invalid/T/B/X"
    assert type(resource.sink()).__name__ == "WebhookAlertSink"
    monkeypatch.setenv(WEBHOOK_ENV_VAR, "not a url")
    from ml_platform.monitoring.alerts import Alert

    delivery = resource.send(Alert("drift_score", "WARN", "m", "fraud_detector", 0.3, 0.15))
    assert delivery.delivered is False and "http(s) URL" in delivery.error
    assert alert_lines(tmp_path / "alerts.jsonl")[0]["delivery"] == "failed"

"""The closed loop: monitoring jobs and schedules, and the sensors that act on failed checks.

- ``retrain_on_drift``: a failed ``drift_score`` check requests the ``retrain`` job (train, gate,
  promote, deploy; a gate that fails stops it before anything is promoted or deployed).
- ``rollback_on_failure``: a failed ``accuracy_drop``, ``error_rate`` or deployment ``smoke`` check
  requests the ``rollback`` job (champion back to previous, redeploy, verify), with the reason and the
  environment as config: a failed smoke check rolls back the environment it checked, a failed monitoring
  check the environment monitoring watches (``ML_PLATFORM_MONITORED_ENVIRONMENT``, else the default one).
- ``alert_on_failed_checks``: every failed evaluation of every check of the graph (gates and smoke
  included) becomes an alert sent to the ``alerts`` resource's sink.

Why plain ``@sensor``s reading check evaluation records, not ``AutomationCondition``
(``any_checks_match(check_failed())``) on the jobs' assets: a remediation must be requested once per
failing evaluation (``run_key`` = check + evaluation record id), must not fire again within a cooldown
(a bad hour would otherwise queue a retrain per monitoring tick), must carry why it fired into the
run's tags and config (the rollback's reason is recorded on the version taken out), and must be able
to decline (no known-good version to roll back to; the failing evaluation judged a version that is no
longer champion; a retrain that would learn from the very data the champion was trained on). Automation
conditions give none of these. Asset sensors do not see check results at all (they fire on
materializations only), so these sensors read the check evaluation records
(``instance.get_latest_asset_check_evaluation_record``).

Everything a sensor remembers lives in the Dagster instance, so the daemon of ``make dev``, the demo's
loop (which ticks the sensors through the daemon's own code, ``runs/sensor_daemon.py``) and any second
process agree and continue each other's work:

- the cursor (the last evaluation record handled per check) is the sensor's cursor, stored with its ticks;
- the cooldown is read from the newest run the sensor requested (runs carry ``ml_platform/sensor``), not
  from memory, so no restart resets it;
- an alert is sent once per check evaluation: the alert history (the sink's JSON lines) records the
  evaluation id, and an evaluation already there is not sent again, whatever the cursor says.

This module alone writes and reads the cursors; code that drives the sensors tick by tick (tests) uses
:func:`cursor_after_latest` and :func:`alerted_checks`.

A check evaluation record (``AssetCheckExecutionRecord``, not exported by dagster) has ``key``, ``id``
(increasing), ``run_id``, ``event`` and ``evaluation``; the functions here take it unannotated.
"""

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg

from assets.deployment import ENVIRONMENT_TAG
from assets.monitoring import WINDOW_ASSETS
from ml_platform.monitoring.alerts import Alert
from ml_platform.registry import (
    CHAMPION,
    PREVIOUS,
    ROLLBACK_REASON_TAG,
    ROLLED_BACK_AT_TAG,
    TRAINING_DATA_END_TAG,
    TRAINING_SET_DIGEST_TAG,
)
from resources.alerts import AlertResource
from resources.deployment import DeploymentEnvironments
from resources.mlflow import MLflowResource
from resources.monitoring import MonitoringResource

TRIGGER_TAG = "ml_platform/trigger"
REASON_TAG = "ml_platform/reason"
CHECK_RUN_TAG = "ml_platform/check_run"
SENSOR_TAG = "ml_platform/sensor"  # the sensor that requested the run: its cooldown is read from these runs
REASON_MAX_CHARS = 1_000
ALERTS_PER_CHECK_PER_TICK = 20
HISTORY_PAGE = 100  # evaluation records read per query when looking for failed ones
# The requested runs log to the console of the process that launched them (`dagster dev`'s terminal, the
# demo's) at INFO: what the steps say, not every engine event (the UI's event log keeps everything).
RUN_CONSOLE = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}

DRIFT_CHECKS = (dg.AssetCheckKey(dg.AssetKey("drift_report"), "drift_score"),)
SMOKE_CHECK = dg.AssetCheckKey(dg.AssetKey("model_deployment"), "smoke")
ROLLBACK_CHECKS = (
    dg.AssetCheckKey(dg.AssetKey("live_performance"), "accuracy_drop"),
    dg.AssetCheckKey(dg.AssetKey("serving_metrics"), "error_rate"),
    SMOKE_CHECK,
)

# ---- jobs and schedules ----------------------------------------------------------------------------------
monitor = dg.define_asset_job(
    "monitor",
    selection=dg.AssetSelection.assets(*WINDOW_ASSETS),
    description="Judge the last window of traffic: drift, live performance, serving figures (with the alert "
    "rules as checks) and the health summary.",
)

collect_predictions = dg.define_asset_job(
    "collect_predictions",
    selection=dg.AssetSelection.assets("prediction_log"),
    description="Compact one day of the prediction log into one file and record what it holds.",
)

monitor_hourly = dg.ScheduleDefinition(
    name="monitor_hourly",
    job=monitor,
    cron_schedule="0 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="The monitoring checks every hour, over the last 24 hours of traffic.",
)


@dg.schedule(
    name="collect_predictions_daily",
    job=collect_predictions,
    cron_schedule="15 0 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Yesterday's prediction log compacted at 00:15 UTC, once the server has moved on to today.",
)
def collect_predictions_daily(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    day = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
    return dg.RunRequest(run_key=f"prediction_log-{day}", partition_key=day)


# ---- reading check evaluations ---------------------------------------------------------------------------
def check_name(key: dg.AssetCheckKey) -> str:
    return key.to_user_string()


def result_of(record) -> dg.AssetCheckEvaluation | None:
    """The check's result; None while the evaluation is only planned (its check has not finished)."""
    evaluation = record.evaluation  # while planned, the data of the planned event: not a result
    return evaluation if isinstance(evaluation, dg.AssetCheckEvaluation) else None


def failed(record) -> bool:
    result = result_of(record)
    return result is not None and not result.passed


def evaluation_metadata(record) -> dict[str, object]:
    evaluation = result_of(record)
    if evaluation is None:
        return {}
    return {name: getattr(value, "value", value) for name, value in evaluation.metadata.items()}


def _number(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
    return number


def failure_reason(record) -> str:
    """Why the check failed, in one line: its description, then its value and threshold."""
    evaluation = result_of(record)
    metadata = evaluation_metadata(record)
    reason = f"{check_name(record.key)} failed"
    if evaluation is not None and evaluation.description:
        reason += f": {evaluation.description}"
    figures = [
        f"{name}={_number(metadata[name]):.4g}" for name in ("value", "threshold") if metadata.get(name) is not None
    ]
    if figures:
        reason += f" [{' '.join(figures)}]"
    return reason


def _read_cursor(raw: str | None) -> dict:
    try:
        cursor = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        cursor = {}
    return cursor if isinstance(cursor, dict) else {}


def _remediation_cursor(seen: dict[str, int]) -> str:
    """A remediation sensor's cursor: the last evaluation record handled per check."""
    return json.dumps({"seen": seen}, sort_keys=True)


def _alert_cursor(alerted: dict[str, int]) -> str:
    """The alert sensor's cursor: the last evaluation record handled per check."""
    return json.dumps(alerted, sort_keys=True)


def new_evaluations(instance: dg.DagsterInstance, keys: Sequence[dg.AssetCheckKey], seen: dict[str, int]) -> list:
    """The latest evaluation record of each check, when it finished after the one already handled."""
    found = []
    for key in keys:
        record = instance.get_latest_asset_check_evaluation_record(key)
        if record is None or result_of(record) is None:
            continue  # never ran, or running now: its result comes in a later tick
        if record.id > seen.get(check_name(key), 0):
            found.append(record)
    return found


def failed_after(instance: dg.DagsterInstance, key: dg.AssetCheckKey, last_id: int) -> list:
    """The failed evaluation records of ``key`` recorded after record ``last_id``, oldest first (the newest
    ALERTS_PER_CHECK_PER_TICK of them when there are more)."""
    found: list = []
    cursor = None
    while len(found) < ALERTS_PER_CHECK_PER_TICK:
        page = instance.event_log_storage.get_asset_check_execution_history(key, limit=HISTORY_PAGE, cursor=cursor)
        newer = [r for r in page if r.id > last_id]  # the history comes newest first
        found += [r for r in newer if failed(r)]
        if len(newer) < HISTORY_PAGE:
            break  # reached the records handled before, or the first one
        cursor = page[-1].id
    return sorted(found[:ALERTS_PER_CHECK_PER_TICK], key=lambda r: r.id)


# ---- remediation -----------------------------------------------------------------------------------------
def last_request(instance: dg.DagsterInstance, sensor_name: str) -> float | None:
    """When the newest run requested by ``sensor_name`` was created (a UNIX time), from the instance's runs."""
    records = instance.get_run_records(filters=dg.RunsFilter(tags={SENSOR_TAG: sensor_name}), limit=1)
    if not records:
        return None
    created = records[0].create_timestamp
    return created.timestamp() if isinstance(created, datetime) else float(created)


def remediate(
    context: dg.SensorEvaluationContext,
    *,
    checks: Sequence[dg.AssetCheckKey],
    job_name: str,
    cooldown_seconds: float,
    decline: Callable[[Any], str | None] | None = None,
    run_config: Callable[[Any, str], dict] | None = None,
    tags: Callable[[Any], dict[str, str]] | None = None,
) -> dg.SensorResult:
    """One run of ``job_name`` for a new failing evaluation of one of ``checks`` (the first in order),
    unless declined (``decline`` says why) or within the cooldown since the sensor's newest requested run;
    every new evaluation is marked handled either way."""
    cursor = _read_cursor(context.cursor)
    seen: dict[str, int] = cursor.get("seen", {})
    evaluations = new_evaluations(context.instance, checks, seen)
    for record in evaluations:
        seen[check_name(record.key)] = record.id
    failures = [r for r in evaluations if failed(r)]

    def result(skip: str | None = None, requests: Sequence[dg.RunRequest] = ()) -> dg.SensorResult:
        return dg.SensorResult(run_requests=list(requests), skip_reason=skip, cursor=_remediation_cursor(seen))

    if not failures:
        passed = ", ".join(check_name(r.key) for r in evaluations)
        return result(f"no new failed evaluation ({'passed: ' + passed if passed else 'nothing new'})")
    record = failures[0]
    name = check_name(record.key)
    sensor_name = context.sensor_name or job_name
    declined = decline(record) if decline is not None else None
    if declined:
        return result(f"not requesting {job_name} for the failed {name}: {declined}")
    now = time.time()
    fired_at = last_request(context.instance, sensor_name)
    if fired_at is not None and now - fired_at < cooldown_seconds:
        return result(
            f"cooldown: {job_name} was requested {now - fired_at:.0f} s ago (cooldown {cooldown_seconds:.0f} s); "
            f"skipping the failed {', '.join(check_name(r.key) for r in failures)} (evaluation {record.id})"
        )
    reason = failure_reason(record)[:REASON_MAX_CHARS]
    context.log.info(f"{name} failed (evaluation {record.id}, run {record.run_id}): requesting {job_name}")
    request = dg.RunRequest(
        run_key=f"{record.key.name}-{record.id}",
        job_name=job_name,
        run_config={**(run_config(record, reason) if run_config is not None else {}), **RUN_CONSOLE},
        tags={
            **(tags(record) if tags is not None else {}),
            TRIGGER_TAG: record.key.name,
            REASON_TAG: reason,
            CHECK_RUN_TAG: record.run_id or "none",
            SENSOR_TAG: sensor_name,
        },
    )
    return result(requests=[request])


def judged_version(record) -> int | None:
    """The model version a failed evaluation judged (its ``model_version`` metadata), when it says."""
    metadata = evaluation_metadata(record)
    judged = metadata.get("model_version", metadata.get("expected_version"))
    return int(judged) if isinstance(judged, int | float) and not isinstance(judged, bool) else None


def newest_ingested_day(instance: dg.DagsterInstance) -> date | None:
    """The newest day of ``validated_transactions`` the instance records as materialized: the day a retrain's
    training set would end with (a partition file deleted by hand outside Dagster is still listed)."""
    days = instance.get_materialized_partitions(dg.AssetKey("validated_transactions"))
    parsed = []
    for key in days:
        try:
            parsed.append(date.fromisoformat(key))
        except ValueError:
            continue
    return max(parsed) if parsed else None


def _trained_through(tags: dict[str, str]) -> datetime | None:
    text = tags.get(TRAINING_DATA_END_TAG)
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).astimezone(UTC)


def retrain_cannot_help(
    champion: int | None,
    tags_by_version: dict[int, dict[str, str]],
    newest_day: date | None,
) -> str | None:
    """Why a retrain now would learn nothing new, or None when it could help (or when it cannot be told).

    A retrain reads every ingested day, so it cannot help when a version already trained on data through
    the newest ingested day is the champion (it would be trained on the same data again), or was rolled
    back (it would be made again, and its rollback says how that ends). ``tags_by_version`` holds the
    registered versions' tags.
    """
    if newest_day is None:
        return None
    covering = {
        version: moment
        for version, tags in tags_by_version.items()
        if (moment := _trained_through(tags)) is not None and moment.date() >= newest_day
    }
    if champion in covering:
        digest = tags_by_version[champion].get(TRAINING_SET_DIGEST_TAG, "")
        return (
            f"champion v{champion} was trained on data through {covering[champion]:%Y-%m-%d %H:%M} UTC"
            + (f" (training set {digest[:12]})" if digest else "")
            + f" and no newer day has been ingested (newest: {newest_day}): a retrain now would learn from the "
            "same data; the drifted traffic is judged again once its day is ingested"
        )
    rolled_back = sorted(v for v in covering if tags_by_version[v].get(ROLLED_BACK_AT_TAG))
    if rolled_back:
        version = rolled_back[-1]
        reason = tags_by_version[version].get(ROLLBACK_REASON_TAG, "")
        return (
            f"v{version} was trained on data through {newest_day} (the newest ingested day) and rolled back"
            + (f" ({reason[:200]})" if reason else "")
            + ": a retrain now would make the same model again; it waits for newer data"
        )
    return None


@dg.sensor(
    name="retrain_on_drift",
    job_name="retrain",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A failed drift_score check requests the retrain job (once per failing evaluation, with a "
    "cooldown), unless the champion was already trained on the newest ingested data; the run's tags say which "
    "evaluation and why, the tick why not.",
)
def retrain_on_drift(
    context: dg.SensorEvaluationContext, monitoring: MonitoringResource, mlflow: MLflowResource
) -> dg.SensorResult:
    def decline(record) -> str | None:
        registry = mlflow.registry()
        champion = registry.version_for_alias(CHAMPION)
        judged = judged_version(record)
        if judged is not None and champion is not None and judged != champion:
            return f"it judged v{judged}, and the champion is now v{champion}"
        newest = newest_ingested_day(context.instance)
        if newest is None:
            return None
        return retrain_cannot_help(champion, registry.tags_by_version(), newest)

    return remediate(
        context,
        checks=DRIFT_CHECKS,
        job_name="retrain",
        cooldown_seconds=monitoring.remediation_cooldown_seconds,
        decline=decline,
    )


@dg.sensor(
    name="rollback_on_failure",
    job_name="rollback",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A failed accuracy_drop, error_rate or deployment smoke check requests the rollback job "
    "(the last different known-good version back, redeployed, verified) for the environment that failed (the one "
    "the smoke check checked, the monitored one for traffic checks), with the failure as the recorded reason.",
)
def rollback_on_failure(
    context: dg.SensorEvaluationContext,
    monitoring: MonitoringResource,
    mlflow: MLflowResource,
    deployment: DeploymentEnvironments,
) -> dg.SensorResult:
    def decline(record) -> str | None:
        aliases = mlflow.registry().aliases()
        champion, previous = aliases.get(CHAMPION), aliases.get(PREVIOUS)
        judged = judged_version(record)
        if judged is not None and champion is not None and judged != champion:
            return f"it judged v{judged}, and the champion is already v{champion}"
        if previous is None:
            return f"{mlflow.model_name} has no known-good version to roll back to (champion v{champion})"
        return None

    def reason_config(record, reason: str) -> dict:
        config = {"reason": reason, "environment": failed_environment(record, deployment)}
        return {"ops": {"roll_back_champion": {"config": config}}}

    return remediate(
        context,
        checks=ROLLBACK_CHECKS,
        job_name="rollback",
        cooldown_seconds=monitoring.remediation_cooldown_seconds,
        decline=decline,
        run_config=reason_config,
        tags=lambda record: {ENVIRONMENT_TAG: failed_environment(record, deployment)},
    )


def failed_environment(record, deployment: DeploymentEnvironments) -> str:
    """The environment a failed evaluation speaks for: a smoke check's own (its ``environment`` metadata; the
    default environment for one that names none), the monitored environment for a check of traffic. A name
    this code location does not know is passed on: the rollback job refuses it before changing anything."""
    if record.key == SMOKE_CHECK:
        named = evaluation_metadata(record).get("environment")
        return named if isinstance(named, str) and named else deployment.environment()
    return deployment.monitored()


# ---- alerts ------------------------------------------------------------------------------------------------
def alert_for(record, model_name: str) -> Alert:
    """The alert for a failed evaluation: the check's name, severity, message, model, value and threshold,
    plus the window, the check and the run that evaluated it."""
    evaluation = result_of(record)
    metadata = evaluation_metadata(record)
    severity = evaluation.severity.value if evaluation is not None else "ERROR"
    description = evaluation.description if evaluation is not None and evaluation.description else ""
    return Alert(
        name=record.key.name,
        severity=severity,
        message=description or f"check {check_name(record.key)} failed",
        model=model_name,
        value=_number(metadata.get("value")),
        threshold=_number(metadata.get("threshold")),
        window=str(metadata.get("window") or ""),
        check=check_name(record.key),
        run_id=record.run_id or "",
        evaluation_id=record.id,
    )


@dg.sensor(
    name="alert_on_failed_checks",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every failed check evaluation of the graph becomes an alert (JSON lines under the state "
    "directory; a Slack-compatible webhook too when ML_PLATFORM_ALERT_WEBHOOK_URL is set), once each.",
)
def alert_on_failed_checks(
    context: dg.SensorEvaluationContext, alerts: AlertResource, mlflow: MLflowResource
) -> dg.SensorResult:
    cursor = _read_cursor(context.cursor)
    keys = sorted(context.repository_def.asset_graph.asset_check_keys, key=check_name)
    sent, undelivered, again = [], [], 0
    alerted: set[tuple[str, int]] | None = None  # read from the history once, when there is something to send
    for key in keys:
        for record in failed_after(context.instance, key, int(cursor.get(check_name(key), 0))):
            cursor[check_name(key)] = record.id
            if alerted is None:
                alerted = alerts.alerted()
            if (check_name(key), record.id) in alerted:
                again += 1  # sent before (by the daemon, the demo's loop or another process): once is enough
                continue
            alert = alert_for(record, mlflow.model_name)
            delivery = alerts.send(alert)
            (sent if delivery.delivered else undelivered).append(f"{alert.check}#{record.id}")
            if not delivery.delivered:
                context.log.warning(
                    f"alert {alert.check} not delivered by {delivery.sink} after {delivery.attempts} "
                    f"attempt(s): {delivery.error}"
                )
    summary = f"{len(sent)} alert(s) delivered, {len(undelivered)} recorded undelivered"
    if sent or undelivered:
        context.log.info(f"{summary}: {', '.join(sent + undelivered)}")
    if again:
        summary += f", {again} already alerted before"
    return dg.SensorResult(
        skip_reason=summary if sent or undelivered or again else "no new failed check evaluation",
        cursor=_alert_cursor(cursor),
    )


SENSORS = [retrain_on_drift, rollback_on_failure, alert_on_failed_checks]
MONITORING_JOBS = [monitor, collect_predictions]
MONITORING_SCHEDULES = [monitor_hourly, collect_predictions_daily]


# ---- driving the sensors tick by tick (the closed loop, tests) ----------------------------------------------
REMEDIATION_CHECKS = {retrain_on_drift.name: DRIFT_CHECKS, rollback_on_failure.name: ROLLBACK_CHECKS}


def cursor_after_latest(instance: dg.DagsterInstance, sensor_name: str, defs: dg.Definitions) -> str:
    """The cursor of sensor ``sensor_name`` (of ``defs``) having handled every evaluation recorded so far:
    a tick from it acts only on evaluations recorded after this call."""
    if sensor_name == alert_on_failed_checks.name:
        keys = defs.resolve_asset_graph().asset_check_keys
    elif sensor_name in REMEDIATION_CHECKS:
        keys = REMEDIATION_CHECKS[sensor_name]
    else:
        raise ValueError(f"no sensor {sensor_name!r} here; expected one of {', '.join(s.name for s in SENSORS)}")
    latest = {}
    for key in keys:
        record = instance.get_latest_asset_check_evaluation_record(key)
        if record is not None:
            latest[check_name(key)] = record.id
    if sensor_name == alert_on_failed_checks.name:
        return _alert_cursor(latest)
    return _remediation_cursor(latest)


def alerted_checks(cursor_before: str | None, cursor_after: str) -> list[str]:
    """The checks (``asset:check``) an ``alert_on_failed_checks`` tick alerted, from its cursor before and
    after the tick."""
    before, after = _read_cursor(cursor_before), _read_cursor(cursor_after)
    return sorted(name for name, record_id in after.items() if before.get(name) != record_id)

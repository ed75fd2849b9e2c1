"""The closed loop: monitoring jobs and schedules, and the sensors that act on failed checks.

- ``retrain_on_drift``: a failed ``drift_score`` check requests the ``retrain`` job (train, gate,
  promote, deploy; a gate that fails stops it before anything is promoted or deployed).
- ``rollback_on_failure``: a failed ``accuracy_drop``, ``error_rate`` or deployment ``smoke`` check
  requests the ``rollback`` job (champion back to previous, redeploy, verify), with the reason as config.
- ``alert_on_failed_checks``: every failed evaluation of every check of the graph (gates and smoke
  included) becomes an alert sent to the ``alerts`` resource's sink.

Why plain ``@sensor``s reading check evaluation records, not ``AutomationCondition``
(``any_checks_match(check_failed())``) on the jobs' assets: a remediation must be requested once per
failing evaluation (``run_key`` = check + evaluation record id), must not fire again within a cooldown
(a bad hour would otherwise queue a retrain per monitoring tick), must carry why it fired into the
run's tags and config (the rollback's reason is recorded on the version taken out), and must be able
to decline (no previous version to roll back to; the failing evaluation judged a version that is no
longer champion). Automation conditions give none of these. Asset sensors do not see check results at
all (STACK_NOTES 3.7), so these sensors read ``instance.get_latest_asset_check_evaluation_record``.
Cursors are JSON: the last evaluation record handled per check, and when the sensor last fired.
"""

import json
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

import dagster as dg

# The record type of instance.get_latest_asset_check_evaluation_record (not re-exported by dagster).
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)

from assets.monitoring import WINDOW_ASSETS
from ml_platform.monitoring.alerts import Alert
from ml_platform.registry import CHAMPION, PREVIOUS
from resources.alerts import AlertResource
from resources.mlflow import MLflowResource
from resources.monitoring import MonitoringResource

TRIGGER_TAG = "ml_platform/trigger"
REASON_TAG = "ml_platform/reason"
CHECK_RUN_TAG = "ml_platform/check_run"
REASON_MAX_CHARS = 1_000
ALERTS_PER_CHECK_PER_TICK = 20

DRIFT_CHECKS = (dg.AssetCheckKey(dg.AssetKey("drift_report"), "drift_score"),)
ROLLBACK_CHECKS = (
    dg.AssetCheckKey(dg.AssetKey("live_performance"), "accuracy_drop"),
    dg.AssetCheckKey(dg.AssetKey("serving_metrics"), "error_rate"),
    dg.AssetCheckKey(dg.AssetKey("model_deployment"), "smoke"),
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


def evaluation_metadata(record: AssetCheckExecutionRecord) -> dict[str, object]:
    evaluation = record.evaluation
    if evaluation is None:
        return {}
    return {name: getattr(value, "value", value) for name, value in evaluation.metadata.items()}


def _number(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
    return number


def failure_reason(record: AssetCheckExecutionRecord) -> str:
    """Why the check failed, in one line: its description, then its value and threshold."""
    evaluation = record.evaluation
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


def new_evaluations(
    instance: dg.DagsterInstance, keys: Sequence[dg.AssetCheckKey], seen: dict[str, int]
) -> list[AssetCheckExecutionRecord]:
    """The latest evaluation of each check, when it finished after the one already handled."""
    found = []
    for key in keys:
        record = instance.get_latest_asset_check_evaluation_record(key)
        if record is None or record.status == AssetCheckExecutionRecordStatus.PLANNED:
            continue  # never ran, or running now: its result comes in a later tick
        if record.id > seen.get(check_name(key), 0):
            found.append(record)
    return found


# ---- remediation -----------------------------------------------------------------------------------------
def remediate(
    context: dg.SensorEvaluationContext,
    *,
    checks: Sequence[dg.AssetCheckKey],
    job_name: str,
    cooldown_seconds: float,
    decline: Callable[[AssetCheckExecutionRecord], str | None] | None = None,
    run_config: Callable[[AssetCheckExecutionRecord, str], dict] | None = None,
) -> dg.SensorResult:
    """One run of ``job_name`` for a new failing evaluation of one of ``checks`` (the first in order),
    unless within the cooldown or declined; every new evaluation is marked handled either way."""
    cursor = _read_cursor(context.cursor)
    seen: dict[str, int] = cursor.get("seen", {})
    fired_at: float | None = cursor.get("fired_at")
    evaluations = new_evaluations(context.instance, checks, seen)
    for record in evaluations:
        seen[check_name(record.key)] = record.id
    failed = [r for r in evaluations if r.status == AssetCheckExecutionRecordStatus.FAILED]

    def result(skip: str | None = None, requests: Sequence[dg.RunRequest] = ()) -> dg.SensorResult:
        state = json.dumps({"seen": seen, "fired_at": fired_at}, sort_keys=True)
        return dg.SensorResult(run_requests=list(requests), skip_reason=skip, cursor=state)

    if not failed:
        passed = ", ".join(check_name(r.key) for r in evaluations)
        return result(f"no new failed evaluation ({'passed: ' + passed if passed else 'nothing new'})")
    record = failed[0]
    name = check_name(record.key)
    now = time.time()
    if fired_at is not None and now - fired_at < cooldown_seconds:
        return result(
            f"cooldown: {job_name} was requested {now - fired_at:.0f} s ago (cooldown {cooldown_seconds:.0f} s); "
            f"skipping the failed {', '.join(check_name(r.key) for r in failed)} (evaluation {record.id})"
        )
    declined = decline(record) if decline is not None else None
    if declined:
        return result(f"not requesting {job_name} for the failed {name}: {declined}")
    reason = failure_reason(record)[:REASON_MAX_CHARS]
    fired_at = now
    context.log.info(f"{name} failed (evaluation {record.id}, run {record.run_id}): requesting {job_name}")
    request = dg.RunRequest(
        run_key=f"{record.key.name}-{record.id}",
        job_name=job_name,
        run_config=run_config(record, reason) if run_config is not None else {},
        tags={TRIGGER_TAG: record.key.name, REASON_TAG: reason, CHECK_RUN_TAG: record.run_id or "none"},
    )
    return result(requests=[request])


@dg.sensor(
    name="retrain_on_drift",
    job_name="retrain",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A failed drift_score check requests the retrain job (once per failing evaluation, with a "
    "cooldown); the run's tags say which evaluation and why.",
)
def retrain_on_drift(context: dg.SensorEvaluationContext, monitoring: MonitoringResource) -> dg.SensorResult:
    return remediate(
        context, checks=DRIFT_CHECKS, job_name="retrain", cooldown_seconds=monitoring.remediation_cooldown_seconds
    )


@dg.sensor(
    name="rollback_on_failure",
    job_name="rollback",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A failed accuracy_drop, error_rate or deployment smoke check requests the rollback job "
    "(previous champion back, redeployed, verified), with the failure as the recorded reason.",
)
def rollback_on_failure(
    context: dg.SensorEvaluationContext, monitoring: MonitoringResource, mlflow: MLflowResource
) -> dg.SensorResult:
    def decline(record: AssetCheckExecutionRecord) -> str | None:
        aliases = mlflow.registry().aliases()
        champion, previous = aliases.get(CHAMPION), aliases.get(PREVIOUS)
        metadata = evaluation_metadata(record)
        judged = metadata.get("model_version", metadata.get("expected_version"))
        if isinstance(judged, int | float) and champion is not None and int(judged) != champion:
            return f"it judged v{int(judged)}, and the champion is already v{champion}"
        if previous is None:
            return f"{mlflow.model_name} has no previous champion to roll back to (champion v{champion})"
        return None

    def reason_config(record: AssetCheckExecutionRecord, reason: str) -> dict:
        return {"ops": {"roll_back_champion": {"config": {"reason": reason}}}}

    return remediate(
        context,
        checks=ROLLBACK_CHECKS,
        job_name="rollback",
        cooldown_seconds=monitoring.remediation_cooldown_seconds,
        decline=decline,
        run_config=reason_config,
    )


# ---- alerts ------------------------------------------------------------------------------------------------
def alert_for(record: AssetCheckExecutionRecord, model_name: str) -> Alert:
    """The alert for a failed evaluation: the original design's fields (name, severity, message, model,
    value, threshold) plus the window, the check and the run that evaluated it."""
    evaluation = record.evaluation
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
    storage = context.instance.event_log_storage
    sent, undelivered = [], []
    for key in keys:
        last = int(cursor.get(check_name(key), 0))
        records = storage.get_asset_check_execution_history(
            key, limit=ALERTS_PER_CHECK_PER_TICK, status={AssetCheckExecutionRecordStatus.FAILED}
        )
        for record in sorted((r for r in records if r.id > last), key=lambda r: r.id):
            alert = alert_for(record, mlflow.model_name)
            delivery = alerts.send(alert)
            cursor[check_name(key)] = record.id
            (sent if delivery.delivered else undelivered).append(f"{alert.check}#{record.id}")
            if not delivery.delivered:
                context.log.warning(
                    f"alert {alert.check} not delivered by {delivery.sink} after {delivery.attempts} "
                    f"attempt(s): {delivery.error}"
                )
    summary = f"{len(sent)} alert(s) delivered, {len(undelivered)} recorded undelivered"
    if sent or undelivered:
        context.log.info(f"{summary}: {', '.join(sent + undelivered)}")
    return dg.SensorResult(
        skip_reason=summary if sent or undelivered else "no new failed check evaluation",
        cursor=json.dumps(cursor, sort_keys=True),
    )


SENSORS = [retrain_on_drift, rollback_on_failure, alert_on_failed_checks]
MONITORING_JOBS = [monitor, collect_predictions]
MONITORING_SCHEDULES = [monitor_hourly, collect_predictions_daily]

"""The closed loop with nobody in it (``ml-platform demo``, tests/e2e): serve the champion, send drifted
traffic, let the sensors retrain and deploy, turn the labels bad, let them roll back.

What the Dagster daemon does under ``make dev``, done step by step in this process so it can be shown
and timed: the sensors are evaluated tick by tick (each keeps its cursor), and what they request is
launched with the request's own config and tags, so the runs look in the UI exactly as the daemon's would.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg

from ml_platform.data.synthetic import SyntheticConfig, generate_transactions
from ml_platform.deploy.local import LocalProcessTarget
from ml_platform.monitoring.labels import delayed_labels
from ml_platform.monitoring.traffic import send_traffic
from ml_platform.monitoring.window import Window, read_predictions
from ml_platform.serving.client import ModelServerClient, ModelServerError, WaitTimedOut
from ml_platform.settings import Settings
from runs.launch import failure_report, launch, launch_run_request
from sensors.monitoring import REASON_TAG, REMEDIATION_CHECKS, TRIGGER_TAG, alerted_checks, cursor_after_latest


class LoopError(RuntimeError):
    """A step of the closed loop did not happen as it should; the message says what was seen instead."""


@dataclass(frozen=True)
class LoopPlan:
    """What the loop sends.

    Leg 1: ``drift_days`` new days of the synthetic source (``data``: its seed, customers, ...) with the
    drift knob at ``drift``, ``drift_rows_per_day`` transactions each, sent as live traffic; their labels
    arrive ``late_label_delay`` later (after the monitoring run: fraud is known late). The days are then
    ingested as the nightly batch would, so the retraining the drift check triggers learns from them.
    Leg 2: one more drifted day (``bad_day``) answered by the retrained model, whose labels come back
    after ``bad_label_delay`` with ``flip_fraction`` of them inverted: the accuracy drop.
    """

    data: dict[str, Any]
    drift_start: date
    drift_days: int
    drift: float
    drift_rows_per_day: int
    flip_fraction: float = 0.3
    late_label_delay: timedelta = timedelta(hours=1)
    bad_label_delay: timedelta = timedelta(seconds=1)

    @classmethod
    def for_history(
        cls,
        data: dict[str, Any],
        *,
        history_days: int,
        drift_start: date,
        drift_days: int,
        drift: float,
        share: float = 0.6,
        **options: Any,
    ) -> LoopPlan:
        """A plan whose drifted days hold ``share`` as many transactions as the clean history: enough
        that the time split puts drifted rows in the retraining's train split, so the new model learns
        the new world (with a handful of drifted rows it is a coin toss whether it beats the champion)."""
        per_day = int(data.get("transactions_per_day", SyntheticConfig().transactions_per_day))
        rows = math.ceil(share * history_days * per_day / drift_days)
        return cls(dict(data), drift_start, drift_days, drift, rows, **options)

    @property
    def drift_end(self) -> date:
        return self.drift_start + timedelta(days=self.drift_days - 1)

    @property
    def bad_day(self) -> date:
        return self.drift_end + timedelta(days=1)

    def drifted_data(self) -> dict[str, Any]:
        """raw_transactions config of the drifted days."""
        return {**self.data, "drift": self.drift, "transactions_per_day": self.drift_rows_per_day}

    def transactions(self, first: date, last: date, rows_per_day: int):
        """The synthetic source's drifted transactions of ``first`` .. ``last`` (the same rows ingestion makes)."""
        known = {f.name for f in fields(SyntheticConfig)}
        values = {k: v for k, v in self.data.items() if k in known}
        config = SyntheticConfig(**{**values, "drift": self.drift, "transactions_per_day": rows_per_day})
        return generate_transactions(config, first, last + timedelta(days=1))


@dataclass(frozen=True)
class LoopLeg:
    """One reaction: a failed check, the sensor's request, the run, the version serving afterwards."""

    check: str  # asset:check that failed
    check_run_id: str  # the run that evaluated it (a monitoring run)
    value: float | None
    threshold: float | None
    sensor: str
    job: str
    run_id: str
    run_key: str
    tags: dict[str, str]
    from_version: int
    to_version: int
    sensor_seconds: float  # failed evaluation -> run requested
    run_seconds: float  # run requested -> run finished (the new version is serving when it finishes)
    total_seconds: float  # failed evaluation -> the new version answering /predict

    def line(self) -> str:
        return (
            f"{self.check} failed -> {self.sensor} requested {self.job} -> v{self.to_version} serving "
            f"(was v{self.from_version}): {self.total_seconds:.1f} s from the failed check "
            f"(sensor {self.sensor_seconds:.1f} s, run {self.run_seconds:.1f} s)"
        )


@dataclass
class LoopReport:
    """What the loop did and saw: its legs, each monitoring run's checks, the traffic, the alerts."""

    champion: int
    endpoint: str
    legs: list[LoopLeg] = field(default_factory=list)
    checks: list[dict[str, bool]] = field(default_factory=list)  # each monitoring run's check results
    traffic: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # sensor -> why it did not request a run
    alerts: list[str] = field(default_factory=list)  # checks alerted, as asset:check
    alert_summary: str = ""  # what the alert sensor's tick said (alerts delivered / recorded undelivered)
    alerts_path: str = ""

    def summary(self) -> str:
        lines = [f"closed loop at {self.endpoint} (champion v{self.champion} at the start):"]
        for number, leg in enumerate(self.legs, 1):
            lines.append(f"  leg {number}: {leg.line()}")
            lines.append(f"         run {leg.run_id}, reason: {leg.tags.get(REASON_TAG, '')}")
        for sensor, message in self.skipped.items():
            lines.append(f"  {sensor} declined: {message}")
        lines.append(f"  alerts: {self.alert_summary} for {', '.join(self.alerts)} -> {self.alerts_path}")
        return "\n".join(lines)


class ClosedLoop:
    """The loop's steps against one code location (``defs``) and its local instance; see :class:`LoopPlan`."""

    SENSORS = ("retrain_on_drift", "rollback_on_failure", "alert_on_failed_checks")

    def __init__(self, settings: Settings, defs: dg.Definitions, *, echo=None) -> None:
        self.settings = settings
        self.defs = defs
        self.echo = echo or (lambda text: None)
        self.instance = dg.DagsterInstance.get()
        self.registry = defs.resources["mlflow"].registry()
        deployment = defs.resources["deployment"]
        self.endpoint, self.token = deployment.endpoint(), deployment.token()
        self.paths = defs.resources["monitoring"].paths()
        self.alerts_path = str(defs.resources["alerts"].jsonl_path)
        # Sensors start from now: evaluations older than this loop were someone else's to act on.
        self.cursors: dict[str, str] = {name: cursor_after_latest(self.instance, name, defs) for name in self.SENSORS}

    # ---- the steps ---------------------------------------------------------------------------------------
    def run(self, job_name: str, params: dict | None = None, **options: Any):
        result = launch(job_name, params, defs=self.defs, **options)
        if not result.success:
            raise LoopError(f"the {job_name} run {result.run_id} failed:\n{failure_report(result)}")
        return result

    def serve(self) -> int:
        """Deploy the champion; returns the version answering."""
        self.run("deploy")
        return self.wait_for_version(self.registry.version_for_alias("champion"))

    def served_version(self) -> int | None:
        """The version that answers a prediction now; None when the server does not answer."""
        try:
            with ModelServerClient(self.endpoint, token=self.token) as client:
                return client.predict([50.0] * 9)["model_version"]
        except ModelServerError:
            return None

    def wait_for_version(self, version: int | None, timeout: float = 120.0) -> int:
        try:
            with ModelServerClient(self.endpoint, token=self.token) as client:
                return client.wait_for_version(version, timeout, interval=0.2)["model_version"]
        except WaitTimedOut as error:
            raise LoopError(str(error)) from error

    def send(self, transactions, *, label_delay: timedelta, flip_fraction: float = 0.0, seed: int = 0):
        """The transactions as live traffic, then their labels (due ``label_delay`` after sending); returns
        once the server has logged every answer (its log is written in batches)."""
        sent_at = datetime.now(UTC)
        traffic = send_traffic(self.endpoint, transactions, token=self.token)
        if traffic.failed:
            raise LoopError(f"{traffic.failed} of {traffic.rows} transactions got no answer: {traffic.errors}")
        labels = delayed_labels(
            transactions, sent_at=sent_at, delay=label_delay, flip_fraction=flip_fraction, seed=seed
        )
        self.paths.labels().write(labels)
        self._wait_for_log(set(transactions["transaction_id"].astype(str)), since=sent_at)
        due = sent_at + label_delay
        if due - datetime.now(UTC) < timedelta(seconds=10):  # a short delay: wait, so the labels are known
            time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
        return traffic

    def monitor(self) -> dict[str, Any]:
        """A monitoring run; returns each check's evaluation by name."""
        result = self.run("monitor")
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        return evaluations

    def tick(self, sensor_name: str):
        """One evaluation of a sensor, as the daemon's tick (its cursor carried to the next)."""
        sensor = self.defs.resolve_sensor_def(sensor_name)
        context = dg.build_sensor_context(
            instance=self.instance,
            definitions=self.defs,
            resources=self.defs.resources,
            cursor=self.cursors.get(sensor_name),
            sensor_name=sensor_name,
        )
        result = sensor.evaluate_tick(context)
        if result.cursor is not None:
            self.cursors[sensor_name] = result.cursor
        return result

    def react(self, sensor_name: str) -> LoopLeg:
        """Tick ``sensor_name``, which must request one run; launch it; wait for the new version to answer."""
        before = self.served_version()
        result = self.tick(sensor_name)
        if len(result.run_requests) != 1:
            raise LoopError(f"{sensor_name} requested {len(result.run_requests)} runs: {result.skip_message}")
        requested_at = time.time()
        request = result.run_requests[0]
        record = self._trigger_record(sensor_name, request)
        run = launch_run_request(request, self.defs)
        finished_at = time.time()
        if not run.success:
            raise LoopError(f"the {request.job_name} run {run.run_id} failed:\n{failure_report(run)}")
        expected = self.registry.version_for_alias("champion")
        served = self.wait_for_version(expected)
        serving_at = time.time()
        if served == before:
            raise LoopError(f"{request.job_name} finished but v{before} still answers")
        failed_at = record.event.timestamp
        metadata = {k: getattr(v, "value", v) for k, v in record.evaluation.metadata.items()}
        return LoopLeg(
            check=record.key.to_user_string(),
            check_run_id=record.run_id,
            value=metadata.get("value"),
            threshold=metadata.get("threshold"),
            sensor=sensor_name,
            job=request.job_name,
            run_id=run.run_id,
            run_key=request.run_key,
            tags={k: v for k, v in request.tags.items() if k.startswith("ml_platform/")},
            from_version=before,
            to_version=served,
            sensor_seconds=requested_at - failed_at,
            run_seconds=finished_at - requested_at,
            total_seconds=serving_at - failed_at,
        )

    def stop_server(self) -> bool:
        deployment = self.defs.resources["deployment"]
        if not hasattr(deployment, "state_dir"):
            return False  # not a local process: nothing of ours to stop
        return LocalProcessTarget(Path(deployment.state_dir), host=deployment.host, port=deployment.port).stop()

    # ---- the scenario ------------------------------------------------------------------------------------
    def run_scenario(self, plan: LoopPlan) -> LoopReport:
        """Drift -> retrain -> serve the new model; labels turn bad -> roll back -> serve the old one."""
        champion = self.serve()
        report = LoopReport(champion=champion, endpoint=self.endpoint, alerts_path=self.alerts_path)
        self.echo(f"\nclosing the loop: v{champion} serving at {self.endpoint}")

        drifted = plan.transactions(plan.drift_start, plan.drift_end, plan.drift_rows_per_day)
        traffic = self.send(drifted, label_delay=plan.late_label_delay)
        report.traffic.append({"leg": 1, **traffic.to_dict()})
        self.echo(
            f"  {traffic.rows:,} transactions of {plan.drift_start} .. {plan.drift_end} with drift {plan.drift} "
            f"answered by {_versions(traffic.model_versions)} in {traffic.seconds:.1f} s; labels due in "
            f"{plan.late_label_delay}"
        )
        self.run("ingest", {"raw_transactions": plan.drifted_data()}, start=plan.drift_start, end=plan.drift_end)
        self.run("refresh_features")
        self.echo(f"  the nightly batch: {plan.drift_start} .. {plan.drift_end} ingested, features refreshed")
        checks = self._monitor_expecting("drift_score", report)
        self.echo(f"  monitor: drift_score FAILED: {checks['drift_score'].description}")
        leg = self.react("retrain_on_drift")
        report.legs.append(leg)
        self.echo(f"  {leg.line()}")

        bad = plan.transactions(plan.bad_day, plan.bad_day, int(plan.data.get("transactions_per_day", 2_000)))
        traffic = self.send(bad, label_delay=plan.bad_label_delay, flip_fraction=plan.flip_fraction, seed=1)
        report.traffic.append({"leg": 2, **traffic.to_dict()})
        self.echo(
            f"  {traffic.rows:,} transactions of {plan.bad_day} answered by {_versions(traffic.model_versions)}; "
            f"their labels arrived with {plan.flip_fraction:.0%} inverted"
        )
        checks = self._monitor_expecting("accuracy_drop", report)
        self.echo(f"  monitor: accuracy_drop FAILED: {checks['accuracy_drop'].description}")
        retrain_again = self.tick("retrain_on_drift")
        if retrain_again.run_requests:
            raise LoopError("retrain_on_drift requested another retrain during its cooldown")
        report.skipped["retrain_on_drift"] = retrain_again.skip_message or ""
        leg = self.react("rollback_on_failure")
        report.legs.append(leg)
        self.echo(f"  {leg.line()}")

        before = self.cursors["alert_on_failed_checks"]
        alerted = self.tick("alert_on_failed_checks")
        report.alerts = alerted_checks(before, self.cursors["alert_on_failed_checks"])
        report.alert_summary = alerted.skip_message or ""
        self.echo(f"  alerts: {report.alert_summary} -> {self.alerts_path}")
        return report

    # ---- internals ---------------------------------------------------------------------------------------
    def _monitor_expecting(self, check: str, report: LoopReport) -> dict[str, Any]:
        checks = self.monitor()
        report.checks.append({name: evaluation.passed for name, evaluation in checks.items()})
        if check not in checks or checks[check].passed:
            seen = checks[check].description if check in checks else "it did not run"
            raise LoopError(f"the monitoring run did not fail {check}: {seen}")
        return checks

    def _trigger_record(self, sensor_name: str, request):
        trigger = request.tags[TRIGGER_TAG]
        key = next(k for k in REMEDIATION_CHECKS[sensor_name] if k.name == trigger)
        return self.instance.get_latest_asset_check_evaluation_record(key)

    def _wait_for_log(self, request_ids: set[str], since: datetime, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        logged = 0
        while time.monotonic() < deadline:
            window = Window(start=since - timedelta(seconds=1), end=datetime.now(UTC) + timedelta(seconds=1))
            logged = read_predictions(self.paths.log_dir, window, variants=None)["request_id"].isin(request_ids).sum()
            if logged >= len(request_ids):
                return
            time.sleep(0.5)
        raise LoopError(f"the server logged {logged} of {len(request_ids)} answers within {timeout:.0f} s")


def _versions(counts: dict[int, int]) -> str:
    return ", ".join(f"v{version} ({rows:,})" for version, rows in sorted(counts.items())) or "no model"

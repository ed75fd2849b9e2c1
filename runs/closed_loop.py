"""The closed loop with nobody in it (``ml-platform demo``, tests/e2e): serve the champion, send drifted
traffic, let the sensors retrain and deploy, let fraud change its pattern, let them roll back.

What the Dagster daemon does under ``make dev``, done step by step in this process so it can be shown and
timed, by the daemon's own code (:mod:`runs.sensor_daemon`): each step ticks the sensors, which keep their
cursors and ticks in the instance, and the runs they request are created and launched as the daemon
launches them. A ``make dev`` started afterwards continues where the loop stopped: it neither alerts again
nor repeats a remediation the loop already made or declined.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg

from ml_platform.data.synthetic import SyntheticConfig, generate_transactions
from ml_platform.monitoring.labels import delayed_labels
from ml_platform.monitoring.traffic import send_traffic
from ml_platform.monitoring.window import Window, read_predictions
from ml_platform.serving.client import ModelServerClient, ModelServerError, WaitTimedOut
from ml_platform.settings import Settings
from runs import progress
from runs.launch import failure_report, launch
from runs.sensor_daemon import SensorDaemon, SensorDaemonError, Tick
from sensors.monitoring import REASON_TAG, REMEDIATION_CHECKS, SENSOR_TAG, TRIGGER_TAG, cursor_after_latest


class LoopError(RuntimeError):
    """A step of the closed loop did not happen as it should; the message says what was seen instead."""


@dataclass(frozen=True)
class LoopPlan:
    """What the loop sends.

    Leg 1: ``drift_days`` new days of the synthetic source (``data``: its seed, customers, ...) with the
    drift knob at ``drift``, ``drift_rows_per_day`` transactions each. Each day is sent as live traffic and
    then ingested as the nightly batch would (features refreshed), so the next day is served with the
    stats the training set gives it: the drift the check sees comes from the knob, not from stale
    features. Their labels arrive ``late_label_delay`` later (after the monitoring run: fraud is known
    late). The retraining the drift check triggers learns from these days.
    Leg 2: one more drifted day (``bad_day``) answered by the retrained model, in which fraud takes a
    pattern no model has seen (``novel_fraud`` of it: card present, everyday category, daytime, the
    customer's usual amount); its labels come back after ``bad_label_delay``: recall collapses and the
    class-aware accuracy_drop fails.
    """

    data: dict[str, Any]
    drift_start: date
    drift_days: int
    drift: float
    drift_rows_per_day: int
    novel_fraud: float = 1.0
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

    def transactions(self, first: date, last: date, rows_per_day: int, *, novel_fraud: float = 0.0):
        """The synthetic source's drifted transactions of ``first`` .. ``last`` (the same rows ingestion makes)."""
        known = {f.name for f in fields(SyntheticConfig)}
        values = {k: v for k, v in self.data.items() if k in known}
        config = SyntheticConfig(
            **{**values, "drift": self.drift, "transactions_per_day": rows_per_day, "novel_fraud": novel_fraud}
        )
        return generate_transactions(config, first, last + timedelta(days=1))

    def bad_transactions(self):
        """Leg 2's traffic: the bad day at the drifted days' volume, fraud in its new pattern (enough labelled
        fraud in one day for the accuracy check to judge: ~2% of ``drift_rows_per_day``)."""
        return self.transactions(self.bad_day, self.bad_day, self.drift_rows_per_day, novel_fraud=self.novel_fraud)


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
    alerts: list[str] = field(default_factory=list)  # checks alerted during the loop, as asset:check
    alert_summary: str = ""  # what the alert sensor's ticks said (alerts delivered / recorded undelivered)
    alerts_path: str = ""
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of the loop

    def summary(self) -> str:
        lines = [f"closed loop at {self.endpoint} (champion v{self.champion} at the start):"]
        for number, leg in enumerate(self.legs, 1):
            lines.append(f"  leg {number}: {leg.line()}")
            lines.append(f"         run {leg.run_id}, reason: {leg.tags.get(REASON_TAG, '')}")
        for sensor, message in self.skipped.items():
            lines.append(f"  {sensor} declined: {message}")
        lines.append(f"  alerts: {self.alert_summary} for {', '.join(self.alerts)} -> {self.alerts_path}")
        if self.phases:
            lines.append("  seconds: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.phases.items()))
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

    def send(self, transactions, *, label_delay: timedelta, seed: int = 0):
        """The transactions as live traffic, then their labels (due ``label_delay`` after sending); returns
        once the server has logged every answer (its log is written in batches)."""
        sent_at = datetime.now(UTC)
        traffic = send_traffic(self.endpoint, transactions, token=self.token)
        if traffic.failed:
            raise LoopError(f"{traffic.failed} of {traffic.rows} transactions got no answer: {traffic.errors}")
        labels = delayed_labels(transactions, sent_at=sent_at, delay=label_delay, seed=seed)
        self.paths.labels().write(labels)
        self.wait_for_log(set(transactions["transaction_id"].astype(str)), since=sent_at)
        due = sent_at + label_delay
        if due - datetime.now(UTC) < timedelta(seconds=10):  # a short delay: wait, so the labels are known
            time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
        return traffic

    def monitor(self) -> dict[str, Any]:
        """A monitoring run; returns each check's evaluation by name."""
        result = self.run("monitor")
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        return evaluations

    def start_sensors(self, daemon: SensorDaemon) -> list[str]:
        """Sensors the instance has never ticked start from now: evaluations older than this loop were
        someone else's to act on. Sensors a daemon (or an earlier loop) ticked go on from their cursor.
        Returns the sensors started here."""
        return [
            name
            for name in self.SENSORS
            if daemon.start_from(name, cursor_after_latest(self.instance, name, self.defs))
        ]

    def tick(self, daemon: SensorDaemon) -> dict[str, Tick]:
        """One tick of every sensor, by the daemon's code (after waiting until each is due)."""
        try:
            return daemon.tick(self.SENSORS)
        except SensorDaemonError as error:
            raise LoopError(str(error)) from error

    def react(self, daemon: SensorDaemon, sensor_name: str, report: LoopReport) -> LoopLeg:
        """Tick the sensors; ``sensor_name`` must request one run; wait for it and for the new version to answer."""
        before = self.served_version()
        ticks = self.tick(daemon)
        self._note_alerts(ticks, report)
        tick = ticks[sensor_name]
        if len(tick.run_ids) != 1:
            raise LoopError(f"{sensor_name} requested {len(tick.run_ids)} runs: {tick.skip_reason or tick.status}")
        for name, other in ticks.items():
            if name != sensor_name and other.run_ids:
                raise LoopError(f"{name} requested runs {', '.join(other.run_ids)} as well")
            declined = other.skip_reason and not other.skip_reason.startswith("no new failed evaluation")
            if name not in (sensor_name, "alert_on_failed_checks") and declined:
                report.skipped[name] = other.skip_reason  # it had a failure to act on, and said why it did not
        # The daemon's run launcher runs it in a process of its own, which this one's progress does not see.
        progress.current().line(f"{sensor_name} requested run {tick.run_ids[0][:8]}; waiting for it to finish")
        try:
            [run] = daemon.wait_for_runs(tick.run_ids)
        except SensorDaemonError as error:
            raise LoopError(str(error)) from error
        progress.current().line(f"{run.job_name} run {run.run_id[:8]} ended {run.status.value}")
        if run.status != dg.DagsterRunStatus.SUCCESS:
            raise LoopError(f"the {run.job_name} run {run.run_id} the daemon launched ended {run.status.value}")
        run_record = self.instance.get_run_record_by_id(run.run_id)
        finished_at = run_record.end_time if run_record and run_record.end_time else time.time()
        expected = self.registry.version_for_alias("champion")
        served = self.wait_for_version(expected)
        serving_at = time.time()
        if served == before:
            raise LoopError(f"{run.job_name} finished but v{before} still answers")
        record = self._trigger_record(sensor_name, run.tags)
        failed_at = record.event.timestamp
        metadata = {k: getattr(v, "value", v) for k, v in record.evaluation.metadata.items()}
        return LoopLeg(
            check=record.key.to_user_string(),
            check_run_id=record.run_id,
            value=metadata.get("value"),
            threshold=metadata.get("threshold"),
            sensor=sensor_name,
            job=run.job_name,
            run_id=run.run_id,
            run_key=tick.run_keys[0] if tick.run_keys else "",
            tags={k: v for k, v in run.tags.items() if k.startswith("ml_platform/")},
            from_version=before,
            to_version=served,
            sensor_seconds=tick.timestamp - failed_at,
            run_seconds=finished_at - tick.timestamp,
            total_seconds=serving_at - failed_at,
        )

    def stop_server(self) -> bool:
        """Stop the local environment's servers (the loop's): True when some ran."""
        return self.defs.resources["deployment"].for_environment("local").stop()

    # ---- the scenario ------------------------------------------------------------------------------------
    def run_scenario(self, plan: LoopPlan) -> LoopReport:
        """Drift -> retrain -> serve the new model; fraud changes pattern -> roll back -> serve the old one."""
        started = time.time()
        champion = self.serve()
        report = LoopReport(champion=champion, endpoint=self.endpoint, alerts_path=self.alerts_path)
        self.echo(f"\nclosing the loop: v{champion} serving at {self.endpoint}")
        with SensorDaemon(self.instance) as daemon:
            started_here = self.start_sensors(daemon)
            if started_here:
                self.echo(f"  sensors started in the instance: {', '.join(started_here)}")
            report.phases["serve"] = time.time() - started

            clock = time.time()
            days = [plan.drift_start + timedelta(days=n) for n in range(plan.drift_days)]
            for number, day in enumerate(days):
                traffic = self.send(
                    plan.transactions(day, day, plan.drift_rows_per_day),
                    label_delay=plan.late_label_delay,
                    seed=number,
                )
                report.traffic.append({"leg": 1, "day": day.isoformat(), **traffic.to_dict()})
                self.run("ingest", {"raw_transactions": plan.drifted_data()}, start=day, end=day)
                self.run("refresh_features", start=day, end=day)
                self.echo(
                    f"  {day}: {traffic.rows:,} transactions with drift {plan.drift} answered by "
                    f"{_versions(traffic.model_versions)} in {traffic.seconds:.1f} s; then the nightly batch "
                    "(ingested, features refreshed)"
                )
            report.phases["drifted days"] = time.time() - clock
            self.echo(f"  labels of those days are due in {plan.late_label_delay}")
            clock = time.time()
            checks = self._monitor_expecting("drift_score", report)
            self.echo(f"  monitor: drift_score FAILED: {checks['drift_score'].description}")
            if "feature_skew" in checks:
                self.echo(f"  monitor: feature_skew {_verdict(checks['feature_skew'])}")
            leg = self.react(daemon, "retrain_on_drift", report)
            report.legs.append(leg)
            report.phases["leg 1 (monitor, retrain, deploy)"] = time.time() - clock
            self.echo(f"  {leg.line()}")

            clock = time.time()
            bad = plan.bad_transactions()
            traffic = self.send(bad, label_delay=plan.bad_label_delay, seed=len(days))
            report.traffic.append({"leg": 2, "day": plan.bad_day.isoformat(), **traffic.to_dict()})
            frauds = int(bad["is_fraud"].sum())
            self.echo(
                f"  {plan.bad_day}: {traffic.rows:,} transactions answered by {_versions(traffic.model_versions)}; "
                f"{frauds} of them fraud in a new pattern ({plan.novel_fraud:.0%} of it); labels arrived"
            )
            checks = self._monitor_expecting("accuracy_drop", report)
            self.echo(f"  monitor: accuracy_drop FAILED: {checks['accuracy_drop'].description}")
            leg = self.react(daemon, "rollback_on_failure", report)
            report.legs.append(leg)
            report.phases["leg 2 (traffic, monitor, rollback, deploy)"] = time.time() - clock
            self.echo(f"  {leg.line()}")
            for sensor, message in report.skipped.items():
                self.echo(f"  {sensor}: {message}")

        report.alerts = self._alerted_since(started)
        self.echo(f"  alerts: {report.alert_summary} -> {self.alerts_path}")
        report.phases["total"] = time.time() - started
        return report

    # ---- internals ---------------------------------------------------------------------------------------
    def _monitor_expecting(self, check: str, report: LoopReport) -> dict[str, Any]:
        checks = self.monitor()
        report.checks.append({name: evaluation.passed for name, evaluation in checks.items()})
        if check not in checks or checks[check].passed:
            seen = checks[check].description if check in checks else "it did not run"
            raise LoopError(f"the monitoring run did not fail {check}: {seen}")
        return checks

    def _note_alerts(self, ticks: dict[str, Tick], report: LoopReport) -> None:
        tick = ticks.get("alert_on_failed_checks")
        if tick is not None and tick.skip_reason:
            report.alert_summary = "; ".join(filter(None, [report.alert_summary, tick.skip_reason]))

    def _alerted_since(self, started: float) -> list[str]:
        """The checks alerted since the loop started, from the alert history."""
        from ml_platform.monitoring.alerts import JsonlAlertSink

        since = datetime.fromtimestamp(started, UTC)
        alerted = set()
        for line in JsonlAlertSink(self.alerts_path).read():
            try:
                at = datetime.fromisoformat(str(line.get("time")))
            except ValueError:
                continue
            if at >= since and line.get("check"):
                alerted.add(str(line["check"]))
        return sorted(alerted)

    def _trigger_record(self, sensor_name: str, tags: dict[str, str]):
        trigger = tags[TRIGGER_TAG]
        key = next(k for k in REMEDIATION_CHECKS[sensor_name] if k.name == trigger)
        return self.instance.get_latest_asset_check_evaluation_record(key)

    def wait_for_log(self, request_ids: set[str], since: datetime, timeout: float = 60.0) -> None:
        """Until every one of ``request_ids`` answered since ``since`` is in the prediction log (it is written in
        batches by every server); raises :class:`LoopError` naming how many are missing after ``timeout``."""
        deadline = time.monotonic() + timeout
        logged = 0
        while time.monotonic() < deadline:
            window = Window(start=since - timedelta(seconds=1), end=datetime.now(UTC) + timedelta(seconds=1))
            logged = read_predictions(self.paths.log_dir, window, variants=None)["request_id"].isin(request_ids).sum()
            if logged >= len(request_ids):
                return
            time.sleep(0.5)
        raise LoopError(f"the server logged {logged} of {len(request_ids)} answers within {timeout:.0f} s")


def earlier_remediation(instance: dg.DagsterInstance) -> str | None:
    """The newest run a remediation sensor requested in this instance, described; None when there is none.

    The sensors remember what they did (cursors, cooldowns, rolled-back versions): in an instance where
    they already retrained or rolled back, the demo's scenario would rightly be declined, so it is shown
    once per state directory.
    """
    records = [
        record
        for name in REMEDIATION_CHECKS
        for record in instance.get_run_records(filters=dg.RunsFilter(tags={SENSOR_TAG: name}), limit=1)
    ]
    if not records:
        return None
    newest = max(records, key=lambda record: record.create_timestamp)
    run = newest.dagster_run
    when = f"{newest.create_timestamp:%Y-%m-%d %H:%M} UTC"
    return f"{run.tags.get(SENSOR_TAG)} requested {run.job_name} run {run.run_id} at {when}"


def _verdict(evaluation) -> str:
    verdict = "passed" if evaluation.passed else "FAILED"
    return f"{verdict}: {evaluation.description}" if evaluation.description else verdict


def _versions(counts: dict[int, int]) -> str:
    return ", ".join(f"v{version} ({rows:,})" for version, rows in sorted(counts.items())) or "no model"

"""The sensors evaluated by Dagster's own sensor daemon code, on demand: what ``make dev``'s daemon does on a tick.

The closed loop (``ml-platform demo``, the end-to-end test) must leave the instance exactly as the daemon
would: each sensor's cursor and ticks stored in the instance (so a daemon started afterwards continues where
the loop stopped, instead of reacting again to what the loop already handled), and each requested run
created, tagged and launched by the daemon's code (run key deduplication, ``dagster/sensor_name``, the run
launcher of the instance). So this module does not call a sensor function itself: it loads the code
location the way ``dagster dev`` does (``workspace.yaml``: a code server process for module ``definitions``)
and runs one iteration of Dagster's sensor daemon (``dagster._daemon.sensor.execute_sensor_iteration``)
against the instance.

That function (and the instigator state written by :meth:`SensorDaemon.start_from`) is not part of Dagster's
public API: there is no public "tick the sensors now" call, the daemon is the only caller. So it is imported
here alone, and ``tests/e2e/test_closed_loop.py`` drives every path of this module against the instance,
failing on a Dagster upgrade that changes what it relies on.

An iteration ticks every running sensor that is due (its ``minimum_interval_seconds`` since its last tick
has passed), as the daemon does; :meth:`SensorDaemon.tick` first waits until the sensors asked for are due.
The runs a tick requests are submitted to the instance's run coordinator; Dagster's default one queues
them, and the daemon's queued-run coordinator launches them: :meth:`SensorDaemon.wait_for_runs` runs its
iterations (``dagster._daemon.run_coordinator``) while a run is still queued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

WORKSPACE_FILE = Path(__file__).resolve().parents[1] / "workspace.yaml"
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


class SensorDaemonError(RuntimeError):
    """A tick or a run it launched did not go as it should; the message says what was seen."""


@dataclass(frozen=True)
class Tick:
    """One stored tick of one sensor: what it decided."""

    sensor: str
    tick_id: int
    status: str  # SUCCESS (requested runs), SKIPPED, FAILURE
    run_ids: list[str] = field(default_factory=list)
    run_keys: list[str] = field(default_factory=list)
    skip_reason: str = ""
    cursor: str | None = None
    error: str = ""
    timestamp: float = 0.0


class SensorDaemon:
    """The code location of ``workspace.yaml`` loaded as the daemon loads it, over ``instance``.

    Use as a context manager: the code server process starts on entry and stops on exit.
    """

    def __init__(self, instance: dg.DagsterInstance, workspace_file: Path = WORKSPACE_FILE) -> None:
        self.instance = instance
        self.workspace_file = workspace_file
        self._context = None
        self._queue = None  # the queued-run coordinator daemon, made when a run waits in the queue
        self._log = logging.getLogger("ml_platform.sensor_daemon")

    def __enter__(self) -> SensorDaemon:
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import WorkspaceFileTarget

        self._context = WorkspaceProcessContext(
            self.instance, WorkspaceFileTarget(paths=[str(self.workspace_file)]), code_server_log_level="WARNING"
        ).__enter__()
        errors = [
            entry.load_error
            for entry in self._context.create_request_context().get_code_location_entries().values()
            if entry.load_error is not None
        ]
        if errors:
            self.__exit__(None, None, None)
            raise SensorDaemonError(f"the code location of {self.workspace_file} did not load: {errors[0]}")
        return self

    def __exit__(self, *exc) -> None:
        if self._queue is not None:
            self._queue.__exit__(None, None, None)
            self._queue = None
        if self._context is not None:
            self._context.__exit__(*exc)
            self._context = None

    # ---- the sensors as the daemon sees them --------------------------------------------------------------
    def remote_sensor(self, name: str):
        context = self._require()
        for entry in context.create_request_context().get_code_location_entries().values():
            location = entry.code_location
            if location is None:
                continue
            for repository in location.get_repositories().values():
                if repository.has_sensor(name):
                    return repository.get_sensor(name)
        raise SensorDaemonError(f"no sensor named {name} in the code location of {self.workspace_file}")

    def last_tick(self, name: str) -> Tick | None:
        sensor = self.remote_sensor(name)
        ticks = self.instance.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id, limit=1)
        return _tick(name, ticks[0]) if ticks else None

    def cursor(self, name: str) -> str | None:
        """The sensor's cursor as stored in the instance (None before its first tick)."""
        sensor = self.remote_sensor(name)
        state = self.instance.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id)
        data = state.instigator_data if state is not None else None
        return getattr(data, "cursor", None)

    def start_from(self, name: str, cursor: str) -> bool:
        """Give a sensor the daemon has never ticked its first cursor (as ``dagster sensor cursor --set``
        does, but keeping the sensor running as declared in code); False, changing nothing, when the
        instance already holds its state (a daemon or an earlier loop ticked it: go on from there)."""
        from dagster._core.scheduler.instigation import (
            InstigatorState,
            InstigatorStatus,
            InstigatorType,
            SensorInstigatorData,
        )

        sensor = self.remote_sensor(name)
        if self.instance.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id) is not None:
            return False
        self.instance.add_instigator_state(
            InstigatorState(
                sensor.get_remote_origin(),
                InstigatorType.SENSOR,
                InstigatorStatus.DECLARED_IN_CODE,
                SensorInstigatorData(
                    min_interval=sensor.min_interval_seconds,
                    cursor=cursor,
                    last_sensor_start_timestamp=time.time(),
                    sensor_type=sensor.sensor_type,
                ),
            )
        )
        return True

    def seconds_until_due(self, name: str) -> float:
        """How long until the daemon would tick the sensor again (0 when due now)."""
        tick = self.last_tick(name)
        if tick is None:
            return 0.0
        interval = self.remote_sensor(name).min_interval_seconds or 0
        return max(0.0, tick.timestamp + interval - time.time())

    # ---- ticking ------------------------------------------------------------------------------------------
    def tick(self, names: Sequence[str], *, max_wait: float = 120.0) -> dict[str, Tick]:
        """Wait until every sensor in ``names`` is due, run one daemon iteration (which ticks every due
        running sensor), and return the new tick of each sensor in ``names``."""
        wait = max((self.seconds_until_due(name) for name in names), default=0.0)
        if wait > max_wait:
            raise SensorDaemonError(f"the sensors {', '.join(names)} are not due for another {wait:.0f} s")
        if wait > 0:
            time.sleep(wait + 0.05)
        before = {name: self.last_tick(name) for name in names}
        self.iterate()
        ticks: dict[str, Tick] = {}
        for name in names:
            tick = self.last_tick(name)
            previous = before[name]
            if tick is None or (previous is not None and tick.tick_id == previous.tick_id):
                raise SensorDaemonError(f"the daemon's iteration did not tick {name} (is it stopped in the UI?)")
            if tick.status == "FAILURE":
                raise SensorDaemonError(f"{name}'s tick failed: {tick.error}")
            ticks[name] = tick
        return ticks

    def iterate(self) -> None:
        """One iteration of Dagster's sensor daemon over the instance, synchronously."""
        from dagster._daemon.sensor import execute_sensor_iteration

        for _ in execute_sensor_iteration(self._require(), self._log, None, None):
            pass

    def wait_for_runs(self, run_ids: Iterable[str], timeout: float = 600.0) -> list[dg.DagsterRun]:
        """Wait until each run has finished; the runs, in order."""
        deadline = time.monotonic() + timeout
        finished: list[dg.DagsterRun] = []
        for run_id in run_ids:
            while True:
                run = self.instance.get_run_by_id(run_id)
                if run is None:
                    raise SensorDaemonError(f"run {run_id} is not in the instance")
                if run.status in FINISHED:
                    finished.append(run)
                    break
                if time.monotonic() > deadline:
                    raise SensorDaemonError(f"run {run_id} ({run.job_name}) is still {run.status.value}")
                if run.status == dg.DagsterRunStatus.QUEUED:
                    self.launch_queued()
                time.sleep(0.5)
        return finished

    def launch_queued(self) -> None:
        """One iteration of the daemon's queued-run coordinator: it launches the queued runs it may."""
        from dagster._core.run_coordinator import QueuedRunCoordinator
        from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

        if not isinstance(self.instance.run_coordinator, QueuedRunCoordinator):
            return  # runs are launched when submitted
        if self._queue is None:
            self._queue = QueuedRunCoordinatorDaemon(interval_seconds=1)
        for _ in self._queue.run_iteration(self._require()):
            pass

    def _require(self):
        if self._context is None:
            raise SensorDaemonError("SensorDaemon is used outside its `with` block")
        return self._context


def _tick(name: str, tick) -> Tick:
    data = tick.tick_data
    return Tick(
        sensor=name,
        tick_id=tick.tick_id,
        status=tick.status.value,
        run_ids=list(data.run_ids or []),
        run_keys=list(data.run_keys or []),
        skip_reason=data.skip_reason or "",
        cursor=data.cursor,
        error=data.error.to_string() if data.error is not None else "",
        timestamp=data.timestamp,
    )

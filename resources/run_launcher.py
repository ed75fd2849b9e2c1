"""The local instance's run launcher: Dagster's default one, plus a health check of each run's process.

Dagster's run monitoring (the daemon under ``dagster dev``) fails a STARTED run only when the run
launcher reports its worker dead, and the default launcher reports nothing: a run whose process died
with the code server that started it (``dagster dev`` stopped or killed mid-run, the machine put to
sleep) or with the command that ran it in process (``ml-platform run`` killed) stays STARTED forever.
The local profile runs everything on one machine, so the check is simple: the run's process is the
one that logged the run's first ``pid`` engine event ("Started process for run", or "Executing steps
in process"); the run is healthy while a process with that pid, started no later than that event,
is alive.
"""

import dagster as dg
import psutil
from dagster._core.events import DagsterEventType
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

# A process created this long after the event that named its pid is another process with a reused pid.
PID_REUSE_MARGIN_S = 2.0


class LocalRunLauncher(dg.DefaultRunLauncher):
    """:class:`dagster.DefaultRunLauncher` whose runs run monitoring can judge (same machine only)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        worker = run_worker(self._instance, run.run_id)
        if worker is None:
            # Not yet logged (the process is starting), or a run that never logs one: cannot tell.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "the run has not logged its process id yet")
        pid, logged_at = worker
        if process_alive(pid, logged_at):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"the run's process {pid} is alive")
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"the run's process {pid} is gone (killed, or stopped with the `dagster dev` or command that ran it)",
        )


def run_worker(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The pid the run's process logged first, and when; None while it has logged none."""
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        metadata = event.engine_event_data.metadata if event is not None and event.engine_event_data else {}
        pid = metadata.get("pid")
        if pid is not None and str(pid.value).isdigit():
            return int(pid.value), record.timestamp
    return None


def process_alive(pid: int, logged_at: float) -> bool:
    """Whether the process that logged ``pid`` at ``logged_at`` (a UNIX time) still runs."""
    try:
        process = psutil.Process(pid)
        if process.create_time() > logged_at + PID_REUSE_MARGIN_S:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process is alive; it is not ours to judge
        return True

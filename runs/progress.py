"""Progress of long work as it happens: one line per finished step, with the seconds since the work began.

    [ 14.2s] bootstrap run 38861e21 started
    [ 17.4s] check validated_transactions:schema passed (20 days)
    [ 19.0s] validated_transactions (20 days) materialized in 2.7 s
    [ 19.6s] customer_stats (20 days) materialized in 0.6 s

Lines go to stderr, so a ``--json`` caller's stdout stays one JSON object. When stderr is a terminal the step
that is running is shown on a line of its own that the next line overwrites (carriage return and "erase
line"); otherwise, a log file or a pipe, every line is plain text written once: no escape codes, no
carriage-return animation, one line per finished step.

Dagster runs report their steps through the instance's event listeners (``DagsterInstance.add_event_listener``,
called synchronously by ``handle_new_event`` for every stored event of the run, in the process that executes
it): ``execute_in_process`` returns only when the run is over, the listener sees each step when it ends.
:func:`watch_run` is what ``runs.launch.launch`` calls for every run it launches.

The elapsed seconds count from when the process's display was made (its first use), or from
``ML_PLATFORM_PROGRESS_SINCE`` (a Unix time) when a parent process set it, so the lines of the child processes
a benchmark starts count from the benchmark's start.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import dagster as dg

SINCE_VARIABLE = "ML_PLATFORM_PROGRESS_SINCE"
_ERASE_LINE = "\r\x1b[K"


class Progress:
    """A progress display on ``stream`` (stderr by default); ``interactive`` (default: the stream is a
    terminal) allows the running step's overwritten line. ``since`` is the Unix time the elapsed seconds count
    from (default: now)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interactive: bool | None = None,
        since: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stream = stream if stream is not None else _stderr_as_it_is_now()
        self.interactive = _is_terminal(self.stream) if interactive is None else interactive
        self.clock = clock
        self.since = clock() if since is None else since
        self._running = False  # a "running" line is on screen, waiting to be overwritten
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return self.clock() - self.since

    def line(self, text: str) -> None:
        """One finished step: ``[ 12.3s] text``, written at once."""
        with self._lock:
            prefix = _ERASE_LINE if self._running else ""
            self._running = False
            self._write(f"{prefix}{self._stamp()} {text}\n")

    def running(self, text: str) -> None:
        """What is under way now; shown (and overwritten by the next line) on a terminal only."""
        if not self.interactive:
            return
        with self._lock:
            self._running = True
            self._write(f"{_ERASE_LINE}{self._stamp()} {text} ...")

    @contextmanager
    def stage(self, text: str) -> Iterator[None]:
        """A stage of work: shown as running, then ``text done in N s`` (or ``text FAILED after N s``)."""
        started = self.clock()
        self.running(text)
        try:
            yield
        except BaseException:
            self.line(f"{text} FAILED after {self.clock() - started:.1f} s")
            raise
        self.line(f"{text} done in {self.clock() - started:.1f} s")

    def watch(self, instance: dg.DagsterInstance, run_id: str, job_name: str) -> None:
        """Show the run ``run_id`` of ``job_name`` step by step as its events are stored in ``instance``."""
        instance.add_event_listener(run_id, RunWatcher(self, job_name))

    def _stamp(self) -> str:
        return f"[{self.elapsed():6.1f}s]"

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed stream (a pipe whose reader left): progress is not worth a crash
            pass


class RunWatcher:
    """The event listener of one run: a line when the run starts, per finished step (the assets it
    materialized, how many days), per check the step evaluated (passed, or FAILED on how many days), per
    failed step. A range run evaluates a partitioned check once a day: one line says it for every day."""

    def __init__(self, progress: Progress, job_name: str) -> None:
        self.progress = progress
        self.job_name = job_name
        self._partitions: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self._checks: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))

    def __call__(self, entry: Any) -> None:
        event = entry.dagster_event
        if event is None:
            return
        kind = event.event_type.name  # the enum's name: RUN_START's value is still "PIPELINE_START"
        step = event.step_key or ""
        if kind == "RUN_START":
            self.progress.line(f"{self.job_name} run {entry.run_id[:8]} started")
        elif kind == "STEP_START":
            self.progress.running(step)
        elif kind == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization
            self._partitions[step][materialization.asset_key.to_user_string()].add(materialization.partition or "")
        elif kind == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
            self._checks[step][name].append(evaluation.passed)
        elif kind == "STEP_SUCCESS":
            self._checks_done(step)
            self.progress.line(self._finished(step, event.event_specific_data.duration_ms / 1000))
        elif kind == "STEP_FAILURE":
            self._checks_done(step)
            self.progress.line(f"{step} FAILED: {_first_line(event.event_specific_data.error)}")

    def _checks_done(self, step_key: str) -> None:
        for name, verdicts in self._checks.pop(step_key, {}).items():
            failed = verdicts.count(False)
            if not failed:
                verdict = "passed" + (f" ({len(verdicts)} days)" if len(verdicts) > 1 else "")
            else:
                verdict = "FAILED" + (f" ({failed} of {len(verdicts)} days)" if len(verdicts) > 1 else "")
            self.progress.line(f"check {name} {verdict}")

    def _finished(self, step_key: str, seconds: float) -> str:
        assets = self._partitions.pop(step_key, {})
        if not assets:
            return f"{step_key} done in {seconds:.1f} s"
        shown = []
        for asset, partitions in assets.items():
            days = len(partitions - {""})
            shown.append(f"{asset} ({days} day{'s' if days != 1 else ''})" if days else asset)
        return f"{', '.join(shown)} materialized in {seconds:.1f} s"


def _first_line(error: Any) -> str:
    """The first line of what the step's own code raised (Dagster wraps it in a step execution error)."""
    while error is not None and error.cause is not None:
        error = error.cause
    message = error.message.strip() if error is not None else ""
    return message.splitlines()[0] if message else "unknown error"


_current: Progress | None = None


def current() -> Progress:
    """The process's display: made on first use, on stderr, counting from ``ML_PLATFORM_PROGRESS_SINCE``
    when set (a parent's start), else from now."""
    global _current
    if _current is None:
        _current = Progress(since=_since_from_environment())
    return _current


@contextmanager
def using(progress: Progress) -> Iterator[Progress]:
    """``progress`` is the process's display while the block runs (a command's own, a test's)."""
    global _current
    before, _current = _current, progress
    try:
        yield progress
    finally:
        _current = before


def watch_run(instance: dg.DagsterInstance, run_id: str, job_name: str) -> None:
    """Show the run on the process's display (what ``runs.launch.launch`` calls before executing a run)."""
    current().watch(instance, run_id, job_name)


def child_environment(progress: Progress | None = None) -> dict[str, str]:
    """The environment variable that makes a child process's lines count from this display's start."""
    return {SINCE_VARIABLE: repr((progress or current()).since)}


def _since_from_environment() -> float | None:
    """The parent's start; a malformed value is said on stderr and ignored (progress is not worth failing a
    command over)."""
    value = os.environ.get(SINCE_VARIABLE, "")
    try:
        return float(value) if value else None
    except ValueError:
        sys.stderr.write(f"{SINCE_VARIABLE}={value!r} is not a Unix time; progress counts from now\n")
        return None


def _stderr_as_it_is_now() -> TextIO:
    """A stream on what file descriptor 2 is now, which stays there while a run executes. During a run
    Dagster's compute log capture points descriptor 2 at the run's log file and mirrors the file back with a
    ``tail -F`` process that is stopped when the run ends, losing what it had not copied yet (the last step's
    line, seen). Lines on the duplicate are never lost and stay out of the run's captured logs."""
    try:
        sys.stderr.flush()
        duplicate = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor behind sys.stderr (replaced by a test, say)
        return sys.stderr
    return os.fdopen(duplicate, "w", buffering=1, encoding="utf-8", errors="replace")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

"""A replica set for tests: N real model-server processes behind a real haproxy, and traffic through it.

- ``require_haproxy``: the haproxy binary, or the test FAILS naming it (never skips).
- ``replica_environment``: what every replica of a serving world needs (its home and model as
  ``ML_PLATFORM_*`` variables, no feature store, its prediction log under the test's directory).
- ``running_set``: a :class:`~ml_platform.deploy.replicas.ReplicaSetTarget` on free loopback ports, stopped
  on exit, after which not one of its processes may be left.
- ``Traffic``: a thread sending ``POST /predict`` through the balancer without pause, recording every answer
  (its version, when it was sent and answered) and every failure (a non-200 or a transport error).
"""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from ml_platform.deploy.replicas import ReplicaSetTarget
from ml_platform.settings import Settings

# One transaction's 9 model features (the replicas run without the feature store).
FEATURES = [420.0, 2.25, 1.0, 10.0, 1.0, 35.0, 35.0, 12.0, 12.0]


def require_haproxy() -> str:
    found = shutil.which("haproxy")
    if found is None:
        pytest.fail("haproxy is not installed (not on PATH): apt-get install haproxy (Debian's 2.6 is what CI uses)")
    return found


def replica_environment(settings: Settings, log_dir: Path, **extra: str) -> dict[str, str]:
    """Every replica's environment: the world's settings, no feature store, alias polls every 0.2 s, the
    prediction log under ``log_dir`` flushed every 0.5 s; ``extra`` on top."""
    return {
        **settings.environment_for_pods(),
        "ML_PLATFORM_SERVING_FEAST": "off",
        "ML_PLATFORM_SERVING_LOG_DIR": str(log_dir),
        "ML_PLATFORM_SERVING_POLL_SECONDS": "0.2",
        "ML_PLATFORM_SERVING_LOG_FLUSH_SECONDS": "0.5",
        **extra,
    }


@contextmanager
def running_set(state_dir: Path, environment: dict[str, str], **options) -> Iterator[ReplicaSetTarget]:
    """A replica set under ``state_dir`` (haproxy required); on exit it is stopped and each of its
    processes must be gone."""
    haproxy = require_haproxy()
    target = ReplicaSetTarget(state_dir, environment=environment, haproxy=haproxy, **options)
    try:
        yield target
    finally:
        status = target.status()
        pids = [pid for pid in [status.haproxy_pid, *(r.pid for r in status.replicas)] if pid is not None]
        target.stop(grace_s=30.0)
        left = [pid for pid in pids if _alive(pid)]
        assert not left, f"processes of the replica set still run after stop(): {left}"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass(frozen=True)
class Answer:
    request_id: str
    sent: float  # time.monotonic() when the request was sent
    answered: float
    version: int | None  # None for a failure
    failure: str | None = None


@dataclass
class Traffic:
    """Requests through ``url`` one after another on one keep-alive connection until stopped."""

    url: str
    token: str | None = None
    prefix: str = "traffic"  # request ids are <prefix>-<n>: two Traffic objects on one log need two prefixes
    pause: float = 0.0  # seconds between one answer and the next request (0: none)
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self._send, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)
        assert not self._thread.is_alive(), "the traffic thread did not stop"

    def _send(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        with httpx.Client(base_url=self.url, timeout=60.0, headers=headers) as client:
            for number in itertools.count():
                if self._stop.wait(self.pause) if self.pause else self._stop.is_set():
                    return
                request_id = f"{self.prefix}-{number}"
                sent = time.monotonic()
                try:
                    response = client.post("/predict", json={"features": FEATURES, "request_id": request_id})
                except httpx.HTTPError as error:
                    self.answers.append(
                        Answer(request_id, sent, time.monotonic(), None, f"{type(error).__name__}: {error}")
                    )
                    continue
                if response.status_code != 200:
                    failure = f"HTTP {response.status_code}: {response.text[:200]}"
                    self.answers.append(Answer(request_id, sent, time.monotonic(), None, failure))
                    continue
                self.answers.append(Answer(request_id, sent, time.monotonic(), response.json()["model_version"]))

    def wait_for(self, count: int, timeout: float = 120.0) -> None:
        """Until ``count`` more answers than now have come back (of any kind)."""
        target = len(self.answers) + count
        deadline = time.monotonic() + timeout
        while len(self.answers) < target:
            assert self._thread is not None and self._thread.is_alive(), "the traffic thread died"
            assert time.monotonic() < deadline, f"only {len(self.answers)} of {target} answers in {timeout:.0f} s"
            time.sleep(0.02)

    def failures(self) -> list[Answer]:
        return [answer for answer in self.answers if answer.failure is not None]

    def versions_between(self, start: float, end: float) -> set[int | None]:
        """The versions of the answers to requests sent at or after ``start`` and answered by ``end``."""
        return {a.version for a in self.answers if a.sent >= start and a.answered <= end}

"""A real Prometheus and a real Pushgateway for tests: Debian's binaries, on 127.0.0.1, free ports,
temporary storage, stopped on exit.

``run_prometheus(targets)`` scrapes the given ``host:port`` targets (model servers) every second and
evaluates rules every second; ``rule_files`` loads rules files (the generated deploy/prometheus/rules.yml)
and ``pushgateway`` adds a Pushgateway as a target whose labels are kept (``honor_labels``), as a real
deployment configures it. Both yield their base URL. A missing binary fails the test, naming it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from ml_platform.monitoring.serving_metrics import query_prometheus
from tests.support.servers import free_port

SERVING_JOB = "ml_platform_serving"
PUSHGATEWAY_JOB = "pushgateway"


def binary(name: str, package: str) -> str:
    """The path of ``name``; fails the test (never skips) when it is not installed."""
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
    if path is None:
        pytest.fail(
            f"`{name}` is not installed: these tests run the real one. Install Debian's package: "
            f"apt-get install -y --no-install-recommends {package} (.ci/run does)"
        )
    return path


@contextmanager
def _process(command: list[str], url: str, log: Path, *, timeout: float = 60.0) -> Iterator[str]:
    """Start ``command``, wait until ``url``/-/ready answers 200, yield ``url``; stop it on exit."""
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"{command[0]} exited with {process.returncode} at start: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/-/ready", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{command[0]} did not get ready within {timeout:.0f} s: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextmanager
def run_pushgateway() -> Iterator[str]:
    """A Pushgateway on 127.0.0.1 (in memory: nothing persisted); yields its base URL."""
    executable = binary("prometheus-pushgateway", "prometheus-pushgateway")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pushgateway_") as directory:
        command = [executable, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
        with _process(command, f"http://127.0.0.1:{port}", Path(directory) / "pushgateway.log") as url:
            yield url


@contextmanager
def run_prometheus(
    targets: Iterable[str], *, rule_files: Iterable[Path] = (), pushgateway: str | None = None
) -> Iterator[str]:
    """A Prometheus on 127.0.0.1 scraping ``targets`` (``host:port`` of model servers, job
    ``ml_platform_serving``) and ``pushgateway`` (a base URL, job ``pushgateway``, labels kept) every
    second, evaluating ``rule_files`` every second; yields its base URL."""
    executable = binary("prometheus", "prometheus")
    port = free_port()
    scrape_configs = [{"job_name": SERVING_JOB, "static_configs": [{"targets": list(targets)}]}]
    if pushgateway is not None:
        address = pushgateway.split("://", 1)[-1].rstrip("/")
        scrape_configs.append(
            {"job_name": PUSHGATEWAY_JOB, "honor_labels": True, "static_configs": [{"targets": [address]}]}
        )
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(Path(path).resolve()) for path in rule_files],
        "scrape_configs": scrape_configs,
    }
    with tempfile.TemporaryDirectory(prefix="prometheus_") as directory:
        config_path = Path(directory) / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        command = [
            executable,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={Path(directory) / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        with _process(command, f"http://127.0.0.1:{port}", Path(directory) / "prometheus.log") as url:
            yield url


def instant(url: str, promql: str) -> list[tuple[dict[str, str], float]]:
    """``promql`` evaluated now on the Prometheus at ``url``."""
    return query_prometheus(url, promql, datetime.now(UTC))


def wait_for(
    url: str, promql: str, accept: Callable[[list[tuple[dict[str, str], float]]], bool], *, timeout: float = 90.0
) -> list[tuple[dict[str, str], float]]:
    """Query ``promql`` until ``accept(result)``; fails with the last result after ``timeout`` seconds (a
    generous bound: it only waits for scrapes and evaluations, which come every second)."""
    deadline = time.monotonic() + timeout
    while True:
        result = instant(url, promql)
        if accept(result):
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus never answered {promql} as expected within {timeout:.0f} s; last: {result}")
        time.sleep(0.2)


def wait_for_scrapes_after(url: str, moment: float, *, job: str = SERVING_JOB, targets: int) -> None:
    """Wait until every one of the ``targets`` targets of ``job`` was scraped after unix time ``moment``:
    whatever a scrape begun before ``moment`` read is then in Prometheus."""
    wait_for(
        url,
        f'timestamp(up{{job="{job}"}}) > {moment:.3f}',
        lambda result: len(result) == targets,
    )

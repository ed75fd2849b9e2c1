"""Answered means logged: SIGKILL under load loses no answered prediction, and a bad request id is
refused (422) without costing any other client's row.

The server runs as ``python -m ml_platform.serving`` in a subprocess (SIGKILL needs a process of its
own); the bad-request-id test runs it in process under real uvicorn.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ml_platform.predictions import read_prediction_log, read_quarantine
from tests.support.servers import make_config, serve, start_server_process

FEATURES = [120.0, 13.5, 1.0, 8.0, 4.0, 80.0, 320.0, 2.5, 1.5]
WORKERS = 4


class Load:
    """``WORKERS`` threads posting single rows with unique request ids; records every 2xx answer's id."""

    def __init__(self, url: str, prefix: str, per_worker: int) -> None:
        self.url = url
        self.prefix = prefix
        self.per_worker = per_worker
        self.answered: list[str] = []
        self.refused: list[tuple[int, str]] = []  # anything but a 2xx: (status, body)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(worker,)) for worker in range(WORKERS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.join()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in self._threads), "a load thread did not finish"

    def count(self) -> int:
        with self._lock:
            return len(self.answered)

    def _send(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for index in range(self.per_worker):
                if self._stop.is_set():
                    return
                request_id = f"{self.prefix}{worker}-{index}"
                try:
                    answer = client.post("/predict", json={"features": FEATURES, "request_id": request_id})
                except httpx.HTTPError:
                    return  # the server is gone
                with self._lock:
                    if 200 <= answer.status_code < 300:
                        self.answered.append(answer.json()["request_id"])
                    else:
                        self.refused.append((answer.status_code, answer.text))


def start_server(settings, log_dir: Path, output: Path) -> tuple[subprocess.Popen, str]:
    """``python -m ml_platform.serving`` on a free port, once it is ready."""
    env = {
        **os.environ,
        **settings.environment_for_pods(),  # the settings (home, model name) as ML_PLATFORM_* variables
        # Parts are written every 700 rows and never by time: the kill leaves the rows since the
        # last part in the journal only.
        "ML_PLATFORM_SERVING_LOG_FLUSH_ROWS": "700",
        "ML_PLATFORM_SERVING_LOG_FLUSH_SECONDS": "600",
    }
    return start_server_process(["--no-feast", "--log-dir", str(log_dir), "--log-level", "warning"], env, output)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


def test_sigkill_under_load_loses_no_answered_prediction(settings, champion_version, tmp_path):
    log_dir, output = tmp_path / "predictions", tmp_path / "server.log"
    first, url = start_server(settings, log_dir, output)
    try:
        with Load(url, "k", per_worker=1_500) as load:
            deadline = time.monotonic() + 300
            while load.count() < 1_000:
                assert first.poll() is None, output.read_text()
                assert time.monotonic() < deadline, f"only {load.count()} answers"
                time.sleep(0.005)
            first.send_signal(signal.SIGKILL)
            assert first.wait(30) == -signal.SIGKILL
    finally:
        stop(first)
    answered = load.answered
    assert load.refused == []
    assert len(answered) >= 1_000 and len(set(answered)) == len(answered)
    assert len(read_prediction_log(log_dir)) < len(answered)  # answered rows the kill left in the journal only
    assert list((log_dir / "journal").glob("*.jsonl"))

    second, url = start_server(settings, log_dir, output)
    try:
        deadline = time.monotonic() + 120
        while not set(answered) <= set(read_prediction_log(log_dir)["request_id"]):
            assert second.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "the restarted server did not convert what the killed one left"
            time.sleep(0.1)
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) in (0, -signal.SIGTERM), output.read_text()
    finally:
        stop(second)

    log = read_prediction_log(log_dir)
    counts = log["request_id"].value_counts()
    assert counts.max() == 1, counts[counts > 1]  # no row twice
    assert set(answered) <= set(counts.index)  # every answer, exactly once
    # Rows logged but never answered: at most the request each client had in flight at the kill.
    unanswered = set(counts.index) - set(answered)
    assert len(unanswered) <= WORKERS and all(request_id.startswith("k") for request_id in unanswered)
    assert set(log["variant"]) == {"champion"} and set(log["model_version"]) == {champion_version}
    assert read_quarantine(log_dir) == []
    assert list((log_dir / "journal").glob("*.jsonl")) == []
    assert "Traceback" not in output.read_text(), output.read_text()


def test_a_bad_request_id_is_refused_and_costs_no_other_row(settings, champion_version, tmp_path):
    config = make_config(settings, tmp_path, feast=None, log_flush_rows=200)
    bad_bodies = [
        # (body, field, words of the message)
        ('{"features": %s, "request_id": "\\ud800"}', "request_id", "lone surrogate"),
        ('{"instances": [{"features": %s, "request_id": "ok-\\udfff"}]}', "instances[0].request_id", "lone surrogate"),
        ('{"features": %s, "request_id": "a\\u0000b"}', "request_id", "printable characters only"),
        ('{"features": %s, "request_id": "tab\\there"}', "request_id", "printable characters only"),
        ('{"features": %%s, "request_id": "%s"}' % ("x" * 201), "request_id", "at most 200 characters, got 201"),
        ('{"features": %s, "request_id": ""}', "request_id", "1 to 200 characters"),
    ]
    with serve(config) as running:
        with Load(running.url, "s", per_worker=300) as load, running.client() as client:
            deadline = time.monotonic() + 120
            while load.count() < 200:
                assert time.monotonic() < deadline, f"only {load.count()} answers"
                time.sleep(0.005)
            for body, field, words in bad_bodies:
                answer = client.post(
                    "/predict",
                    content=(body % str(FEATURES)).encode(),
                    headers={"Content-Type": "application/json"},
                )
                assert answer.status_code == 422, (body, answer.text)
                assert answer.json()["field"] == field and words in answer.json()["error"], answer.json()
            load.join()
        running.flush_log()
        with running.client() as client:
            scraped = client.get("/metrics").text
    answered = load.answered
    assert load.refused == [] and len(answered) == WORKERS * 300
    log = read_prediction_log(config.log_dir)
    assert sorted(log["request_id"]) == sorted(answered)  # every answer, once; nothing of the refused
    assert read_quarantine(config.log_dir) == []
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name.startswith("ml_platform_serving_prediction_log_") and sample.name.endswith("_total")
    }
    assert samples == {
        "ml_platform_serving_prediction_log_rows_written_total": len(answered),
        "ml_platform_serving_prediction_log_quarantined_total": 0,
        "ml_platform_serving_prediction_log_write_errors_total": 0,
    }

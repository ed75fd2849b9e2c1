"""``python -m ml_platform.serving`` in a subprocess: SIGTERM while requests are in flight loses no log row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from ml_platform.predictions import read_prediction_log
from tests.support.servers import free_port

FEATURES = [120.0, 13.5, 1.0, 8.0, 4.0, 80.0, 320.0, 2.5, 1.5]


def test_sigterm_flushes_every_answered_prediction(settings, champion_version, tmp_path):
    port = free_port()
    log_dir = tmp_path / "predictions"
    env = {
        **os.environ,
        **settings.environment_for_pods(),  # the settings (home, model name) as ML_PLATFORM_* variables
        "ML_PLATFORM_SERVING_FEAST": "off",
        "ML_PLATFORM_SERVING_LOG_DIR": str(log_dir),
        "ML_PLATFORM_SERVING_LOG_FLUSH_SECONDS": "600",  # nothing is written before the shutdown flush
        "ML_PLATFORM_SERVING_LOG_FLUSH_ROWS": "100000",
    }
    output = tmp_path / "server.log"
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ml_platform.serving", "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        # A minute for a fresh Python process to import the server and load the model on two busy cores.
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.1)

        answered: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def send(worker: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                for index in range(10_000):
                    if stop.is_set():
                        return
                    request_id = f"w{worker}-{index}"
                    try:
                        answer = client.post("/predict", json={"features": FEATURES, "request_id": request_id})
                    except httpx.HTTPError:
                        return  # the server stopped accepting
                    if answer.status_code == 200:
                        with lock:
                            answered.append(answer.json()["request_id"])

        threads = [threading.Thread(target=send, args=(worker,)) for worker in range(3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60  # 150 answers take well under a second on an idle machine
        while len(answered) < 150:
            assert process.poll() is None
            assert time.monotonic() < deadline, f"only {len(answered)} answers"
            time.sleep(0.005)
        assert not list(log_dir.rglob("part-*.parquet")), "the log was written before the shutdown"
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught: the status says SIGTERM
        assert process.wait(30) in (0, -signal.SIGTERM), output.read_text()
        assert "Traceback" not in output.read_text(), output.read_text()
        stop.set()
        for thread in threads:
            thread.join(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    log = read_prediction_log(log_dir)
    assert len(answered) >= 150
    assert len(log) == len(answered)
    assert sorted(log["request_id"]) == sorted(answered)
    assert set(log["variant"]) == {"champion"} and set(log["model_version"]) == {champion_version}

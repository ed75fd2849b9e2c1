"""The model server's prediction log in an object store: a real S3-compatible server (moto on loopback),
``python -m ml_platform.serving`` in a subprocess, answered requests, SIGTERM, and exactly those rows
in the log read back from the bucket."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from ml_platform.monitoring.health import MonitoringPaths
from ml_platform.predictions import read_prediction_log
from ml_platform.serving import ServerConfig
from ml_platform.settings import Settings, SettingsError
from tests.support.s3 import s3_bucket
from tests.support.servers import start_server_process

FEATURES = [120.0, 13.5, 1.0, 8.0, 4.0, 80.0, 320.0, 2.5, 1.5]
REQUESTS = 40


def test_settings_config_and_monitoring_agree_on_an_object_store_log(tmp_path):
    env = {
        "ML_PLATFORM_HOME": str(tmp_path),
        "ML_PLATFORM_PREDICTION_LOG_URI": "s3://logs/fraud/predictions",
        "ML_PLATFORM_PREDICTION_JOURNAL_DIR": str(tmp_path / "buffer"),
    }
    settings = Settings.from_env(env)
    config = ServerConfig.from_settings(settings, environ={}, model_name="m", feast=None)
    assert config.log_dir == "s3://logs/fraud/predictions" and config.journal_dir == tmp_path / "buffer"
    assert MonitoringPaths.from_settings(settings, env).log_dir == "s3://logs/fraud/predictions"
    assert settings.environment_for_pods()["ML_PLATFORM_PREDICTION_LOG_URI"] == "s3://logs/fraud/predictions"
    # The server's own override still wins, for the server and for monitoring alike; a local one stays a Path.
    moved = {**env, "ML_PLATFORM_SERVING_LOG_DIR": str(tmp_path / "local")}
    local = ServerConfig.from_settings(settings, environ=moved, feast=None)
    assert local.log_dir == tmp_path / "local" and local.journal_dir is None
    assert MonitoringPaths.from_settings(settings, moved).log_dir == tmp_path / "local"
    default = Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path)})
    assert ServerConfig.from_settings(default, environ={}, feast=None).log_dir == tmp_path / "logs" / "predictions"
    with pytest.raises(SettingsError, match="ML_PLATFORM_PREDICTION_LOG_URI.*unsupported scheme 'ftp'"):
        Settings.from_env({**env, "ML_PLATFORM_PREDICTION_LOG_URI": "ftp://host/log"})
    with pytest.raises(SettingsError, match="ML_PLATFORM_SERVING_LOG_DIR.*unsupported scheme"):
        ServerConfig.from_settings(settings, environ={"ML_PLATFORM_SERVING_LOG_DIR": "http://x/y"}, feast=None)


def test_sigterm_ships_every_answered_prediction_to_the_bucket(settings, champion_version, tmp_path):
    journal = tmp_path / "journal"
    output = tmp_path / "server.log"
    with s3_bucket() as bucket:
        env = {
            **os.environ,
            **settings.environment_for_pods(),  # the settings (home, model name) as ML_PLATFORM_* variables
            **bucket.env,
            "ML_PLATFORM_SERVING_FEAST": "off",
            "ML_PLATFORM_PREDICTION_LOG_URI": bucket.uri,
            "ML_PLATFORM_PREDICTION_JOURNAL_DIR": str(journal),
            "ML_PLATFORM_REPLICA_NAME": "model-server-5f7c9-abcde",
            "ML_PLATFORM_SERVING_LOG_FLUSH_SECONDS": "600",  # nothing is shipped before the shutdown flush
            "ML_PLATFORM_SERVING_LOG_FLUSH_ROWS": "100000",
        }
        env.pop("ML_PLATFORM_SERVING_LOG_DIR", None)
        process, url = start_server_process(["--log-level", "warning"], env, output)
        try:
            answered = []
            with httpx.Client(base_url=url, timeout=30) as client:
                for index in range(REQUESTS):
                    answer = client.post("/predict", json={"features": FEATURES, "request_id": f"s3-{index}"})
                    assert answer.status_code == 200, answer.text
                    answered.append(answer.json()["request_id"])
            assert [path.name for path in journal.glob("*.jsonl")], "the rows wait in the local journal"
            shipped = [key for key in bucket.object_keys() if "part-" in key]
            assert not shipped, "the log was shipped before the shutdown"
            process.send_signal(signal.SIGTERM)
            # uvicorn shuts down gracefully, then re-raises the signal it caught: the status says SIGTERM
            assert process.wait(60) in (0, -signal.SIGTERM), output.read_text()
            assert "Traceback" not in output.read_text(), output.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)

        parts = [key for key in bucket.object_keys() if "part-" in key]
        assert parts and all("-model-server-5f7c9-abcde-" in key for key in parts), parts
        log = read_prediction_log(bucket.uri)
        assert sorted(log["request_id"]) == sorted(answered) and len(log) == REQUESTS
        assert set(log["model_version"]) == {champion_version} and set(log["variant"]) == {"champion"}
        assert not list(journal.glob("*.jsonl")), "the journal was drained"
        assert not list(tmp_path.glob("**/date=*")), "nothing of the log was written to local disk"

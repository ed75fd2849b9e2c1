"""The dashboard renderers: the numbers appear, the PNG is a real image, missing parts say n/a."""

import struct
from datetime import UTC, datetime

import numpy as np
import pytest

from ml_platform.monitoring.alerts import DEFAULT_RULES
from ml_platform.monitoring.dashboard import (
    ModelHealth,
    health_status,
    render_markdown,
    render_png,
    render_terminal,
)
from ml_platform.monitoring.drift import DriftReport, FeatureDrift
from ml_platform.monitoring.performance import LivePerformance
from ml_platform.monitoring.serving_metrics import ServingMetrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def full_health() -> ModelHealth:
    serving = ServingMetrics(
        window="2026-11-24T09:00Z .. 2026-11-24T10:00Z (1h)",
        requests=1234,
        rows=4321,
        errors=7,
        error_rate=7 / 1234,
        latency_p50_ms=3.21,
        latency_p95_ms=12.34,
        latency_p99_ms=234.56,
        throughput_rps=1.2,
        by_version={7: 4000, 8: 321},
    )
    performance = LivePerformance(
        model_version=7,
        labeled_rows=900,
        unlabeled_rows=3421,
        metrics={"accuracy": 0.912, "precision": 0.654, "recall": 0.432, "f1": 0.52},
        baseline={"accuracy": 0.975, "precision": 0.81, "recall": 0.7, "f1": 0.75},
    )
    drift = DriftReport(
        method="wasserstein",
        features=(
            FeatureDrift("amount", 0.4567, 0.1, True, "wasserstein"),
            FeatureDrift("is_online", 0.1234, 0.1, True, "wasserstein"),
            FeatureDrift("hour_of_day", 0.02, 0.1, False, "wasserstein"),
        ),
        reference_rows=50_000,
        current_rows=4321,
    )
    alerts = [
        DEFAULT_RULES["latency_p99"].alert(234.56, model="fraud_detector v7"),
        DEFAULT_RULES["accuracy_drop"].alert(0.063, model="fraud_detector v7"),
    ]
    scores = np.concatenate([np.full(80, 0.05), np.full(15, 0.55), np.full(5, 0.95)])
    return ModelHealth(
        model_name="fraud_detector",
        model_version=7,
        status=health_status(model_version=7, server_up=True, alerts=alerts),
        deployed_at=datetime(2026, 11, 20, 8, 0, tzinfo=UTC).isoformat(),
        uptime_seconds=3 * 86_400 + 5 * 3_600 + 17,
        endpoint="http://127.0.0.1:8080",
        serving=serving,
        performance=performance,
        drift=drift,
        prediction_scores=scores,
        alerts=alerts,
    )


def test_health_status_rules():
    warn = DEFAULT_RULES["latency_p99"].alert(300, model="m")
    error = DEFAULT_RULES["error_rate"].alert(0.5, model="m")
    assert health_status(model_version=None, server_up=True) == "no model"
    assert health_status(model_version=3, server_up=False, alerts=[warn]) == "down"
    assert health_status(model_version=3, server_up=True, alerts=[warn, error]) == "degraded"
    assert health_status(model_version=3, server_up=True, alerts=[warn]) == "healthy"
    with pytest.raises(ValueError, match="status: expected one of healthy, degraded, down, no model"):
        ModelHealth("m", 1, "fine")


def test_markdown_contains_the_numbers():
    text = render_markdown(full_health())
    assert text.startswith("## fraud_detector v7: degraded")
    for expected in (
        "| fraud_detector | v7 | degraded | 2026-11-20T08:00:00+00:00 | 3d 5h | http://127.0.0.1:8080 |",
        "| 3.2 ms | 12.3 ms | 234.6 ms | 1.20 rows/s | 1234 | 4321 | 7 | 0.57% |",
        "Rows by model version: v7: 4000, v8: 321",
        "900 labeled, 3421 awaiting labels (model v7)",
        "| accuracy | 0.912 | 0.975 | 0.063 |",
        "| recall | 0.432 | 0.700 | 0.268 |",
        "Drift score 0.667 (2 of 3 features drifted",
        "| amount | 0.4567 | 0.1 | yes |",
        "| hour_of_day | 0.02 | 0.1 | no |",
        "![scores per bin 0.0-0.1: 80, 0.1-0.2: 0,",  # the histogram is a PNG; its counts are its alt text
        "0.9-1.0: 5](data:image/png;base64,",
        "| ERROR | accuracy_drop | 0.063 | 0.05 |",
    ):
        assert expected in text, expected


def test_markdown_and_terminal_with_nothing_known():
    empty = ModelHealth("fraud_detector", None, "no model")
    text = render_markdown(empty)
    assert "No serving metrics" in text and "No live performance" in text and "No drift report" in text
    assert "No predictions in the window." in text and "None firing." in text
    terminal = render_terminal(empty)
    assert "fraud_detector none  [NO MODEL]" in terminal and "serving: n/a" in terminal


def test_terminal_has_the_version_and_p99():
    text = render_terminal(full_health())
    assert text.splitlines()[0] == "fraud_detector v7  [DEGRADED]"
    assert "p99 234.6 ms" in text
    assert "accuracy  0.912   baseline 0.975   drop 0.063" in text
    assert "drift score 0.667 (wasserstein); top: amount 0.457, is_online 0.123, hour_of_day 0.02" in text
    assert "[ERROR] accuracy_drop: accuracy_drop is 0.063" in text


@pytest.mark.parametrize("which", ["full", "empty"])
def test_png_is_a_real_image(tmp_path, which):
    health = full_health() if which == "full" else ModelHealth("fraud_detector", 3, "down")
    path = render_png(health, tmp_path / "out" / "dashboard.png")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert (width, height) == (1200, 800)
    assert len(data) > 20_000
    assert [p.name for p in path.parent.iterdir()] == ["dashboard.png"]

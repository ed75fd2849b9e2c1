"""Serving metrics: percentiles from log rows, request and error counts from the server's real
Prometheus registry (ml_platform.serving.metrics.Metrics) rendered by prometheus_client, scraped over HTTP."""

import math
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest

from ml_platform.monitoring.serving_metrics import parse_prometheus, scrape_metrics, serving_metrics
from ml_platform.monitoring.window import Window
from ml_platform.serving.metrics import Metrics

WINDOW = Window.parse("1h", end=datetime(2026, 11, 24, 10, 0, tzinfo=UTC))


def log_rows(latencies: list[float], versions: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"latency_ms": latencies, "model_version": versions})


def exposition(counts: dict[tuple[str, int], int], metrics: Metrics | None = None) -> tuple[str, Metrics]:
    """The /metrics text after ``counts[(route, status)]`` more requests (on ``metrics``, or a fresh registry)."""
    metrics = metrics or Metrics()
    for (route, status), count in counts.items():
        for _ in range(count):
            metrics.observe_request(route, status, "champion" if status < 400 else "none", 0.004)
    return generate_latest(metrics.registry).decode(), metrics


def test_latency_percentiles_equal_numpy_and_throughput():
    rng = np.random.default_rng(2)
    latencies = rng.gamma(2.0, 3.0, 997).round(3).tolist()
    versions = [3] * 900 + [4] * 97
    result = serving_metrics(log_rows(latencies, versions), WINDOW)
    expected = np.percentile(latencies, [50, 95, 99])
    assert (result.latency_p50_ms, result.latency_p95_ms, result.latency_p99_ms) == tuple(expected)
    assert result.latency_p50_ms < result.latency_p95_ms < result.latency_p99_ms
    assert result.rows == 997 and result.throughput_rps == 997 / 3600
    assert result.by_version == {3: 900, 4: 97}
    # without a scrape: the log alone
    assert result.requests == 997 and result.errors == 0 and result.error_rate == 0.0 and not result.scraped
    assert result.window == WINDOW.label


def test_known_latencies():
    result = serving_metrics(log_rows([float(v) for v in range(1, 101)], [1] * 100), WINDOW)
    assert result.latency_p50_ms == 50.5
    assert result.latency_p95_ms == pytest.approx(95.05)
    assert result.latency_p99_ms == pytest.approx(99.01)


def test_error_rate_from_two_scrapes():
    first, metrics = exposition({("/predict", 200): 10, ("/predict", 500): 1, ("/health", 200): 5})
    second, _ = exposition(
        {("/predict", 200): 20, ("/predict", 503): 2, ("/invocations", 200): 3, ("/metrics", 200): 7}, metrics
    )
    rows = log_rows([5.0] * 30, [3] * 30)
    result = serving_metrics(rows, WINDOW, scrape=second, previous_scrape=first)
    # the window: 20 + 2 + 3 scoring requests, 2 of them 5xx; /health and /metrics do not count
    assert (result.requests, result.errors) == (25, 2)
    assert result.error_rate == 2 / 25
    assert result.scraped and result.rows == 30
    totals = serving_metrics(rows, WINDOW, scrape=second)
    assert (totals.requests, totals.errors) == (36, 3)
    assert totals.error_rate == 3 / 36


def test_a_restarted_server_counts_its_new_totals():
    before, _ = exposition({("/predict", 200): 50, ("/predict", 500): 5})
    after_restart, _ = exposition({("/predict", 200): 8, ("/predict", 500): 1})
    result = serving_metrics(log_rows([1.0], [1]), WINDOW, scrape=after_restart, previous_scrape=before)
    assert (result.requests, result.errors) == (9, 1)


def test_no_rows_no_requests():
    empty = serving_metrics(log_rows([], []), WINDOW)
    assert empty.rows == 0 and empty.requests == 0 and empty.error_rate == 0.0 and empty.by_version == {}
    assert math.isnan(empty.latency_p99_ms)
    assert empty.to_dict()["latency_p99_ms"] is None


def test_parse_prometheus_keys():
    text, _ = exposition({("/predict", 200): 4})
    values = parse_prometheus(text)
    assert values["ml_platform_serving_requests_total{route=/predict,status_code=200,variant=champion}"] == 4.0
    assert values["ml_platform_serving_challenger_weight"] == 0.0
    bucket = (
        "ml_platform_serving_request_duration_seconds_bucket{le=0.005,route=/predict,status_code=200,variant=champion}"
    )
    assert values[bucket] == 4.0


class _MetricsHandler(BaseHTTPRequestHandler):
    text = ""
    seen_authorization: list = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.seen_authorization.append(self.headers.get("Authorization"))
        body = self.text.encode() if self.path == "/metrics" else b"not found"
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_scrape_metrics_over_http():
    text, _ = exposition({("/predict", 200): 3})
    handler = type("Handler", (_MetricsHandler,), {"text": text, "seen_authorization": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert scrape_metrics(url) == text
        assert scrape_metrics(url + "/metrics", token="s3cret") == text
        assert handler.seen_authorization == [None, "Bearer s3cret"]
    finally:
        server.shutdown()
        server.server_close()
    assert scrape_metrics(url, timeout=1.0) is None  # nothing listens any more
    assert scrape_metrics("http://127.0.0.1:1", timeout=1.0) is None

"""Prometheus metrics, in a registry of the app's own (two apps in one process do not collide)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ml_platform_serving_requests",
            "HTTP requests answered, by route template, status code and variant that answered.",
            ["route", "status_code", "variant"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ml_platform_serving_request_duration_seconds",
            "Time from request received to response sent, by route template, status code and variant.",
            ["route", "status_code", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "ml_platform_serving_predictions",
            "Rows scored, by variant (champion, challenger, challenger_shadow).",
            ["variant"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "ml_platform_serving_model_version",
            "The model version loaded per role (0: none).",
            ["variant"],
            registry=self.registry,
        )
        self.model_refused = Gauge(
            "ml_platform_serving_model_refused",
            "1 for each model version the server refused to load (not a native XGBoost model of its features).",
            ["version"],
            registry=self.registry,
        )
        self.challenger_weight = Gauge(
            "ml_platform_serving_challenger_weight",
            "Share of traffic the challenger answers in split mode.",
            registry=self.registry,
        )
        self.prediction_log_rows = Counter(
            "ml_platform_serving_prediction_log_rows_written",
            "Prediction log rows written to parquet.",
            registry=self.registry,
        )
        self.prediction_log_quarantined = Counter(
            "ml_platform_serving_prediction_log_quarantined",
            "Prediction log rows the log's schema could not hold, kept in its quarantine folder with the reason.",
            registry=self.registry,
        )
        self.prediction_log_write_errors = Counter(
            "ml_platform_serving_prediction_log_write_errors",
            "Failed prediction log writes: journal appends (the request got a 503) and parquet conversions"
            " (retried; the journal keeps the rows).",
            registry=self.registry,
        )
        # The labelled children, looked up once per label set: ``labels()`` costs a lock and a few
        # string conversions per call, which the request path need not pay every time.
        self._request_children: dict[tuple[str, int, str], tuple[Any, Any]] = {}
        self._prediction_children: dict[str, Any] = {}

    def observe_request(self, route: str, status_code: int, variant: str, seconds: float) -> None:
        key = (route, status_code, variant)
        children = self._request_children.get(key)
        if children is None:
            labels = (route, str(status_code), variant)
            children = (self.requests.labels(*labels), self.latency.labels(*labels))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_predictions(self, variant: str, rows: int) -> None:
        child = self._prediction_children.get(variant)
        if child is None:
            child = self._prediction_children[variant] = self.predictions.labels(variant)
        child.inc(rows)

    def count_prediction_log(self, event: str, amount: int) -> None:
        """The prediction log's report (``PredictionLogger.on_count``): rows written, quarantined, write errors."""
        counters = {
            "rows_written": self.prediction_log_rows,
            "quarantined": self.prediction_log_quarantined,
            "write_errors": self.prediction_log_write_errors,
        }
        counters[event].inc(amount)

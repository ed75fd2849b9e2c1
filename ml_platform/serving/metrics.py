"""Prometheus metrics, in a registry of the app's own (two apps in one process do not collide)."""

from __future__ import annotations

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
        self.challenger_weight = Gauge(
            "ml_platform_serving_challenger_weight",
            "Share of traffic the challenger answers in split mode.",
            registry=self.registry,
        )

    def observe_request(self, route: str, status_code: int, variant: str, seconds: float) -> None:
        labels = (route, str(status_code), variant)
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

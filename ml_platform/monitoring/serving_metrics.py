"""Serving health over a window: latency percentiles and throughput from the prediction log, request
and error counts from the server's Prometheus counters.

The log has one row per answered prediction with its request's latency, so percentiles and rows/s
come from it exactly (no histogram-bucket interpolation). Errors never reach the log (a 5xx answer
scored nothing), so they come from ``ml_platform_serving_requests_total`` on ``/metrics``: the
difference between two scrapes gives the window's counts; a counter that went down (or whose
``_created`` time changed) means the server restarted, and the new total is the window's count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ml_platform.monitoring.window import Window
from ml_platform.serving.client import ModelServerClient, ModelServerError

REQUESTS_COUNTER = "ml_platform_serving_requests_total"
# Routes that score rows: the error rate is about predictions, not probes or scrapes of /metrics.
SCORING_ROUTES = frozenset(
    {"/predict", "/invocations", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"}
)


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


@dataclass(frozen=True)
class ServingMetrics:
    window: str
    requests: int
    rows: int
    errors: int
    error_rate: float  # 5xx responses / all responses on the scoring routes (0 if none)
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    throughput_rps: float  # answered rows per second of the window
    by_version: dict[int, int] = field(default_factory=dict)  # answered rows per model version
    scraped: bool = False  # requests/errors came from /metrics (else from the log alone)

    def to_dict(self) -> dict:
        """JSON-able (NaN becomes null, version keys become strings)."""
        return {
            "window": self.window,
            "requests": self.requests,
            "rows": self.rows,
            "errors": self.errors,
            "error_rate": _nan_to_none(self.error_rate),
            "latency_p50_ms": _nan_to_none(self.latency_p50_ms),
            "latency_p95_ms": _nan_to_none(self.latency_p95_ms),
            "latency_p99_ms": _nan_to_none(self.latency_p99_ms),
            "throughput_rps": _nan_to_none(self.throughput_rps),
            "by_version": {str(version): count for version, count in self.by_version.items()},
            "scraped": self.scraped,
        }


def sample_key(name: str, labels: dict[str, str]) -> str:
    """``name{a=1,b=2}`` (labels sorted), or ``name`` without labels."""
    if not labels:
        return name
    return name + "{" + ",".join(f"{key}={labels[key]}" for key in sorted(labels)) + "}"


def parse_prometheus(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text exposition, keyed ``name{label=value,...}`` (labels sorted)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample_key(sample.name, dict(sample.labels))] = float(sample.value)
    return values


def scrape_metrics(url: str, *, token: str | None = None, timeout: float = 5.0) -> str | None:
    """The text of ``{url}/metrics`` (``url`` may already end in /metrics); None when it cannot be read
    (nothing answers, an error status, or ``url`` is no http(s) URL)."""
    base = url.rstrip("/").removesuffix("/metrics")
    try:
        with ModelServerClient(base, token=token, timeout=timeout) as client:
            return client.metrics()
    except (ModelServerError, ValueError):
        return None


def _request_counts(text: str) -> dict[tuple[str, str, str], tuple[float, float | None]]:
    """(route, status, variant) -> (count, created time) of the scoring routes' request counter."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[tuple[str, str, str], list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in (REQUESTS_COUNTER, "ml_platform_serving_requests_created"):
                continue
            labels = sample.labels
            if labels.get("route") not in SCORING_ROUTES:
                continue
            key = (labels["route"], labels.get("status_code", ""), labels.get("variant", ""))
            entry = counts.setdefault(key, [0.0, None])
            if sample.name == REQUESTS_COUNTER:
                entry[0] = float(sample.value)
            else:
                entry[1] = float(sample.value)
    return {key: (count, created) for key, (count, created) in counts.items()}


def request_deltas(scrape: str, previous_scrape: str | None = None) -> tuple[int, int]:
    """(responses, 5xx responses) on the scoring routes since ``previous_scrape`` (or in total)."""
    now = _request_counts(scrape)
    before = _request_counts(previous_scrape) if previous_scrape else {}
    requests = errors = 0.0
    for key, (count, created) in now.items():
        previous_count, previous_created = before.get(key, (0.0, None))
        restarted = count < previous_count or (
            created is not None and previous_created is not None and created != previous_created
        )
        delta = count if restarted else count - previous_count
        requests += delta
        if key[1].startswith("5"):
            errors += delta
    return int(round(requests)), int(round(errors))


def serving_metrics(
    predictions: pd.DataFrame,
    window: Window,
    *,
    scrape: str | None = None,
    previous_scrape: str | None = None,
) -> ServingMetrics:
    """The window's serving figures.

    Latency percentiles (linear interpolation, numpy's default) and throughput come from the log rows
    (one row = one answered prediction, carrying its request's latency); ``by_version`` counts rows per
    model version. Requests and errors come from the ``/metrics`` text ``scrape`` (the difference from
    ``previous_scrape`` when given, else the totals); without a scrape, errors are 0 and requests the
    number of log rows.
    """
    rows = len(predictions)
    if rows:
        latency = predictions["latency_ms"].to_numpy(dtype="float64")
        p50, p95, p99 = (float(value) for value in np.percentile(latency, [50, 95, 99]))
        counts = predictions["model_version"].value_counts()
        by_version = {int(version): int(count) for version, count in sorted(counts.items())}
    else:
        p50 = p95 = p99 = float("nan")
        by_version = {}
    if scrape is not None:
        requests, errors = request_deltas(scrape, previous_scrape)
    else:
        requests, errors = rows, 0
    return ServingMetrics(
        window=window.label,
        requests=requests,
        rows=rows,
        errors=errors,
        error_rate=errors / requests if requests else 0.0,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        latency_p99_ms=p99,
        throughput_rps=rows / window.seconds,
        by_version=by_version,
        scraped=scrape is not None,
    )

"""Serving health over a window: latency percentiles and throughput from the prediction log, request
and error counts from the server's Prometheus counters; or, with a Prometheus server that scrapes every
replica, requests, errors and latency percentiles summed over all of them (:func:`prometheus_serving_metrics`).

The log has one row per answered prediction with its request's latency, so percentiles and rows/s
come from it exactly (no histogram-bucket interpolation). Errors never reach the log (a 5xx answer
scored nothing), so they come from ``ml_platform_serving_requests_total`` on ``/metrics``: the
difference between two scrapes gives the window's counts; a counter that went down (or whose
``_created`` time changed) means the server restarted, and the new total is the window's count.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

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
    scraped: bool = False  # requests/errors came from /metrics or Prometheus (else from the log alone)
    # Where requests, errors (and, from Prometheus, the latency percentiles) came from: "prometheus" (every
    # replica Prometheus scrapes), "scrape" (one scrape of the serving endpoint) or "log" (the log alone).
    source: str = "log"
    # From Prometheus: {replica: {"requests": n, "errors": m}}, the replica named by its instance (and pod) labels.
    by_replica: dict[str, dict[str, int]] = field(default_factory=dict)

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
            "source": self.source,
            "by_replica": {replica: dict(counts) for replica, counts in self.by_replica.items()},
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
        source="scrape" if scrape is not None else "log",
    )


# ---- from Prometheus, over every replica -------------------------------------------------------------
LATENCY_HISTOGRAM = "ml_platform_serving_request_duration_seconds"
# The labels that tell replicas apart: ``instance`` (host:port of the scrape target) everywhere, ``pod``
# where Kubernetes service discovery adds it (the Prometheus Operator does).
REPLICA_LABELS: tuple[str, ...] = ("instance", "pod")
SERVER_ERRORS = "5.."  # status codes counted as errors: the server failed (4xx: the caller did)
ANSWERED = "2.."  # status codes whose latency the percentiles describe: answered predictions


class PrometheusError(RuntimeError):
    """Prometheus could not answer a query: nothing answers at its URL, it answered an error, or its
    answer is not one of Prometheus' HTTP API. The message names the URL, the query and what went wrong."""


def _promql_string(text: str) -> str:
    """``text`` as a PromQL double-quoted string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def scoring_selector(metric: str, *, status: str | None = None) -> str:
    """The PromQL selector of ``metric`` on the scoring routes (``status``: a regex of status codes)."""
    routes = "|".join(re.escape(route) for route in sorted(SCORING_ROUTES))
    matchers = [f"route=~{_promql_string(routes)}"]
    if status is not None:
        matchers.append(f"status_code=~{_promql_string(status)}")
    return f"{metric}{{{','.join(matchers)}}}"


def promql_duration(seconds: float) -> str:
    """A PromQL duration of ``seconds`` (whole milliseconds)."""
    return f"{max(1, round(seconds * 1000))}ms"


def window_increase(selector: str, duration: str) -> str:
    """PromQL for how much each counter series of ``selector`` grew over the ``duration`` before the
    evaluation time, exactly wherever the samples allow it.

    Prometheus' ``increase()`` is an estimate: it extrapolates the samples in the range to the range's
    edges (a counter that moved by 20 can read 20.7), and it cannot count a series' first sample: a
    labelled prometheus_client counter appears when first incremented, so a replica's first requests of
    a route, status and variant are already in the first value Prometheus sees and ``increase()`` treats
    them as history. So each series counts, in order of preference:

    - existed at the window's start and never reset in it: its value at the end minus its value at the
      start (exact);
    - born in the window (absent at its start: a new replica, or a first request with a new status): its
      whole value at the end, since the counter started at 0 when it appeared (exact, unless the series
      existed before but Prometheus had no sample of it in the 5 minutes before the window's start);
    - reset in the window (a restarted process) or gone before its end (a replica that stopped):
      ``increase()``, which adds up the values across resets but is Prometheus' estimate, not a count.
    """
    stable = f"resets({selector}[{duration}]) == 0"
    return (
        f"((({selector} - {selector} offset {duration}) >= 0) and {stable})"
        f" or (({selector} unless {selector} offset {duration}) and {stable})"
        f" or increase({selector}[{duration}])"
    )


def query_prometheus(
    url: str, promql: str, at: datetime, *, timeout: float = 10.0
) -> list[tuple[dict[str, str], float]]:
    """The instant vector ``promql`` evaluates to at ``at`` on the Prometheus server at ``url``: (labels,
    value) per series. Raises :class:`PrometheusError` naming the URL and what went wrong."""
    import httpx

    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise PrometheusError(f"Prometheus URL {url!r}: expected an http(s) URL such as http://prometheus:9090")
    try:
        answer = httpx.post(
            f"{base}/api/v1/query", data={"query": promql, "time": f"{at.timestamp():.3f}"}, timeout=timeout
        )
    except httpx.HTTPError as error:
        raise PrometheusError(f"Prometheus at {base} cannot be reached: {type(error).__name__}: {error}") from error
    try:
        body = answer.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
        raise PrometheusError(
            f"{base} is not Prometheus' HTTP API: HTTP {answer.status_code} to /api/v1/query, "
            f"answered {answer.text[:200]!r}"
        )
    if body["status"] == "error" or answer.status_code != 200:
        raise PrometheusError(
            f"Prometheus at {base} answered HTTP {answer.status_code} ({body.get('errorType', 'error')}: "
            f"{body.get('error', 'no message')}) to the query {promql}"
        )
    data = body.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise PrometheusError(f"Prometheus at {base}: expected an instant vector for {promql}, got {str(data)[:200]}")
    series = []
    for item in data["result"]:
        try:
            labels = {str(key): str(value) for key, value in item["metric"].items()}
            series.append((labels, float(item["value"][1])))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            raise PrometheusError(f"Prometheus at {base}: a malformed sample {str(item)[:200]} for {promql}") from error
    return series


def _replica(labels: Mapping[str, str]) -> str:
    return " ".join(labels[name] for name in REPLICA_LABELS if labels.get(name)) or "unknown"


def prometheus_serving_metrics(
    predictions: pd.DataFrame, window: Window, prometheus_url: str, *, timeout: float = 10.0
) -> ServingMetrics:
    """The window's serving figures over every replica Prometheus scrapes, evaluated at the window's end.

    Requests and 5xx errors on the scoring routes are the growth of ``ml_platform_serving_requests_total``
    over the window, per series (:func:`window_increase`: exact unless a counter reset), summed per
    replica and in total; the error rate is errors / requests (0 without requests). The p50/p95/p99
    latencies are ``histogram_quantile`` over the answered (2xx) scoring requests' bucket counts grown
    in the window, summed over replicas: linear interpolation inside the bucket that holds the quantile,
    so a percentile is only known to lie within its bucket (NaN without answered requests). Rows,
    throughput and rows per model version come from the log ``predictions``, as in :func:`serving_metrics`.
    Raises :class:`PrometheusError` when Prometheus cannot answer.
    """
    duration = promql_duration(window.seconds)
    by = ", ".join(REPLICA_LABELS)

    def per_replica(status: str | None) -> dict[str, float]:
        counted = window_increase(scoring_selector(REQUESTS_COUNTER, status=status), duration)
        totals: dict[str, float] = {}
        answer = query_prometheus(prometheus_url, f"sum by ({by}) ({counted})", window.end, timeout=timeout)
        for labels, value in answer:
            if math.isfinite(value):
                totals[_replica(labels)] = totals.get(_replica(labels), 0.0) + value
        return totals

    requests_by, errors_by = per_replica(None), per_replica(SERVER_ERRORS)
    buckets = window_increase(scoring_selector(f"{LATENCY_HISTOGRAM}_bucket", status=ANSWERED), duration)
    quantiles = []
    for quantile in (0.50, 0.95, 0.99):
        result = query_prometheus(
            prometheus_url, f"histogram_quantile({quantile}, sum by (le) ({buckets}))", window.end, timeout=timeout
        )
        quantiles.append(result[0][1] * 1000.0 if result else float("nan"))
    requests, errors = round(sum(requests_by.values())), round(sum(errors_by.values()))
    base = serving_metrics(predictions, window)
    return ServingMetrics(
        window=base.window,
        requests=requests,
        rows=base.rows,
        errors=errors,
        error_rate=errors / requests if requests else 0.0,
        latency_p50_ms=quantiles[0],
        latency_p95_ms=quantiles[1],
        latency_p99_ms=quantiles[2],
        throughput_rps=base.throughput_rps,
        by_version=base.by_version,
        scraped=True,
        source="prometheus",
        by_replica={
            replica: {"requests": round(requests_by.get(replica, 0.0)), "errors": round(errors_by.get(replica, 0.0))}
            for replica in sorted(set(requests_by) | set(errors_by))
        },
    )

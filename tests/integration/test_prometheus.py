"""Serving metrics from a real Prometheus over three real model servers, and the monitoring values pushed
through a real Pushgateway into Prometheus' alerts.

Three servers (uvicorn on 127.0.0.1, the serving world's champion) are scraped every second. Traffic goes
to all three: answers, refused bodies (422) and real 503s: one server's prediction log cannot open a
journal segment (its journal folder was replaced by a file, as a full or broken disk would), so it
answers 503 until the folder is back. The core's numbers must equal the requests sent, over a window
holding all of it (every counter series born inside it) and over a later window (series that existed at
its start), and its latency percentiles must equal ``histogram_quantile`` over the servers' own buckets.
"""

from __future__ import annotations

import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.monitoring.prometheus import push_monitoring_values
from ml_platform.monitoring.serving_metrics import (
    LATENCY_HISTOGRAM,
    SCORING_ROUTES,
    PrometheusError,
    prometheus_serving_metrics,
    query_prometheus,
)
from ml_platform.monitoring.window import Window
from ml_platform.predictions.layout import JOURNAL_DIR
from tests.support.bodies import GOOD
from tests.support.prometheus import instant, run_prometheus, run_pushgateway, wait_for, wait_for_scrapes_after
from tests.support.servers import Running, free_port, make_config, serve
from tests.support.serving_world import build_serving_world
from tests.support.tables import table_rows

RULES_FILE = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yml"
NO_ROWS = pd.DataFrame({"latency_ms": pd.Series(dtype="float64"), "model_version": pd.Series(dtype="int64")})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_serving_world(tmp_path_factory.mktemp("prometheus_world"))


@pytest.fixture(scope="module")
def replicas(world, tmp_path_factory):
    with ExitStack() as stack:
        yield [
            stack.enter_context(serve(make_config(world.settings, tmp_path_factory.mktemp(f"replica_{name}"))))
            for name in "abc"
        ]


def address(running: Running) -> str:
    return running.url.removeprefix("http://")


def send(running: Running, route: str, body: dict, times: int, status: int) -> None:
    with running.client() as client:
        for _ in range(times):
            answer = client.post(route, json=body)
            assert answer.status_code == status, answer.text


def buckets(replicas: list[Running]) -> dict[float, float]:
    """The answered scoring requests' latency buckets (upper bound -> cumulative count), summed over the
    servers' own /metrics."""
    summed: dict[float, float] = {}
    for running in replicas:
        with running.client() as client:
            text = client.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name == f"{LATENCY_HISTOGRAM}_bucket"
                    and labels["route"] in SCORING_ROUTES
                    and labels["status_code"].startswith("2")
                ):
                    upper = float(labels["le"])
                    summed[upper] = summed.get(upper, 0.0) + sample.value
    return summed


def histogram_quantile(quantile: float, cumulative: dict[float, float]) -> tuple[float, float, float]:
    """(Prometheus' estimate, the bucket's lower and upper bound) for cumulative bucket counts: linear
    interpolation inside the first bucket whose count reaches the quantile's rank."""
    bounds = sorted(cumulative)
    rank = quantile * cumulative[float("inf")]
    below_bound, below_count = 0.0, 0.0
    for upper in bounds[:-1]:
        if cumulative[upper] >= rank:
            share = (rank - below_count) / (cumulative[upper] - below_count)
            return below_bound + (upper - below_bound) * share, below_bound, upper
        below_bound, below_count = upper, cumulative[upper]
    return bounds[-2], bounds[-2], float("inf")


def difference(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


@dataclass
class Traffic:
    url: str
    replicas: list[Running]
    start: float  # before any request
    middle: float  # between the two phases
    end: float  # after both, every request scraped
    buckets_middle: dict[float, float]
    buckets_end: dict[float, float]


@pytest.fixture(scope="module")
def traffic(replicas, world) -> Traffic:
    first, second, broken = replicas
    invocation = {"dataframe_records": [dict(zip(MODEL_FEATURES, GOOD, strict=True))]}
    infer = {"inputs": [{"name": "input-0", "shape": [1, 9], "datatype": "FP64", "data": GOOD}]}
    with run_prometheus([address(running) for running in replicas]) as url:
        wait_for(url, 'up{job="ml_platform_serving"} == 1', lambda result: len(result) == 3)
        start = time.time()
        # phase 1: 9 + 7 + 5 requests, 3 of them 5xx
        send(first, "/predict", {"features": GOOD}, 7, 200)
        send(first, "/predict", {"features": GOOD[:7]}, 2, 422)
        send(second, "/invocations", invocation, 4, 200)
        send(second, f"/v2/models/{world.settings.model_name}/infer", infer, 3, 200)
        journal = broken.config.log_dir / JOURNAL_DIR
        shutil.rmtree(journal)
        journal.write_text("not a folder")  # the log cannot open a journal segment: 503
        send(broken, "/predict", {"features": GOOD}, 3, 503)
        journal.unlink()
        journal.mkdir()  # the disk is back: answers again
        send(broken, "/predict", {"features": GOOD}, 2, 200)
        wait_for_scrapes_after(url, time.time(), targets=3)
        middle = time.time()
        wait_for_scrapes_after(url, middle, targets=3)  # no scrape begun before `middle` is still reading
        buckets_middle = buckets(replicas)
        # phase 2: 6 requests, no error
        send(first, "/predict", {"features": GOOD}, 4, 200)
        send(second, "/invocations", invocation, 2, 200)
        wait_for_scrapes_after(url, time.time(), targets=3)
        end = time.time()
        yield Traffic(url, replicas, start, middle, end, buckets_middle, buckets(replicas))


def window(start: float, end: float) -> Window:
    return Window(datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))


def test_requests_and_errors_over_all_replicas_equal_what_was_sent(traffic):
    metrics = prometheus_serving_metrics(NO_ROWS, window(traffic.start, traffic.end), traffic.url)
    first, second, broken = (address(running) for running in traffic.replicas)
    assert metrics.source == "prometheus" and metrics.scraped
    assert (metrics.requests, metrics.errors) == (27, 3)
    assert metrics.error_rate == 3 / 27
    assert metrics.by_replica == {
        first: {"requests": 13, "errors": 0},
        second: {"requests": 9, "errors": 0},
        broken: {"requests": 5, "errors": 3},
    }


def test_a_later_window_counts_only_its_own_requests(traffic):
    """Every series existed at this window's start: its growth, not its total."""
    metrics = prometheus_serving_metrics(NO_ROWS, window(traffic.middle, traffic.end), traffic.url)
    first, second, broken = (address(running) for running in traffic.replicas)
    assert (metrics.requests, metrics.errors, metrics.error_rate) == (6, 0, 0.0)
    assert metrics.by_replica == {
        first: {"requests": 4, "errors": 0},
        second: {"requests": 2, "errors": 0},
        broken: {"requests": 0, "errors": 0},
    }


@pytest.mark.parametrize("span", ["whole", "later"])
def test_latency_percentiles_are_the_histograms_quantiles(traffic, span):
    """p50/p95/p99 equal histogram_quantile over the servers' own answered buckets (16 + 6 answers), so
    each lies inside the bucket that holds the true percentile."""
    if span == "whole":
        counts, start = traffic.buckets_end, traffic.start
    else:
        counts, start = difference(traffic.buckets_end, traffic.buckets_middle), traffic.middle
    assert counts[float("inf")] == (22 if span == "whole" else 6)
    metrics = prometheus_serving_metrics(NO_ROWS, window(start, traffic.end), traffic.url)
    for quantile, value in (
        (0.5, metrics.latency_p50_ms),
        (0.95, metrics.latency_p95_ms),
        (0.99, metrics.latency_p99_ms),
    ):
        expected, lower, upper = histogram_quantile(quantile, counts)
        assert value == pytest.approx(expected * 1000, rel=1e-9), quantile
        assert lower * 1000 <= value <= upper * 1000


def test_an_empty_window_has_no_requests_and_no_latency(traffic):
    before = traffic.start - 600
    metrics = prometheus_serving_metrics(NO_ROWS, window(before, traffic.start - 1), traffic.url)
    assert (metrics.requests, metrics.errors, metrics.error_rate, metrics.by_replica) == (0, 0, 0.0, {})
    assert metrics.latency_p99_ms != metrics.latency_p99_ms  # NaN: nothing to judge


def test_unreachable_prometheus_is_a_named_failure():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusError, match=rf"Prometheus at {url} cannot be reached: ConnectError"):
        prometheus_serving_metrics(NO_ROWS, window(time.time() - 3600, time.time()), url)


def test_an_error_answer_is_a_named_failure(traffic):
    with pytest.raises(PrometheusError, match=r"answered HTTP 400 \(bad_data: .*\) to the query sum\("):
        query_prometheus(traffic.url, "sum(", datetime.now(UTC))
    # a model server is no Prometheus
    server = traffic.replicas[0].url
    with pytest.raises(PrometheusError, match=rf"{server} is not Prometheus' HTTP API: HTTP 404"):
        prometheus_serving_metrics(NO_ROWS, window(traffic.start, traffic.end), server)


def firing(url: str) -> set[tuple[str, str, str]]:
    return {
        (labels["alertname"], labels.get("model", ""), labels["severity"])
        for labels, _ in instant(url, 'ALERTS{alertstate="firing"}')
    }


def test_pushed_drift_and_accuracy_fire_the_generated_rules_only_above_their_thresholds():
    with run_pushgateway() as gateway, run_prometheus([], rule_files=[RULES_FILE], pushgateway=gateway) as url:
        # each asset pushes its own value: the second push keeps the first one's gauge
        push_monitoring_values(gateway, "model_a", {"drift_score": 0.3})
        push_monitoring_values(gateway, "model_a", {"accuracy_drop": 0.02})
        push_monitoring_values(gateway, "model_b", {"drift_score": 0.1, "accuracy_drop": 0.08})
        wanted = {("MlPlatformDriftScore", "model_a", "warning"), ("MlPlatformAccuracyDrop", "model_b", "critical")}
        wait_for(url, 'ALERTS{alertstate="firing"}', lambda result: wanted <= firing(url))
        assert firing(url) == wanted  # 0.02 <= 0.05 and 0.1 <= 0.15 do not fire
        pushed = {
            (labels["__name__"], labels["model"], labels["job"]): value
            for labels, value in instant(url, '{__name__=~"ml_platform_monitoring_.*"}')
        }
        assert pushed == {
            ("ml_platform_monitoring_drift_score", "model_a", "ml_platform_monitoring"): 0.3,
            ("ml_platform_monitoring_accuracy_drop", "model_a", "ml_platform_monitoring"): 0.02,
            ("ml_platform_monitoring_drift_score", "model_b", "ml_platform_monitoring"): 0.1,
            ("ml_platform_monitoring_accuracy_drop", "model_b", "ml_platform_monitoring"): 0.08,
        }

        # back below the threshold, and nothing to judge (NaN): both alerts resolve
        push_monitoring_values(gateway, "model_a", {"drift_score": 0.05})
        push_monitoring_values(gateway, "model_b", {"accuracy_drop": None})
        wait_for(url, 'ALERTS{alertstate="firing"}', lambda result: not result)
        assert firing(url) == set()


def test_an_unreachable_pushgateway_is_a_named_failure():
    from ml_platform.monitoring.prometheus import PushError

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PushError, match=rf"Pushgateway at {url} did not take ml_platform_monitoring_drift_score"):
        push_monitoring_values(url, "model_a", {"drift_score": 0.3})
    with pytest.raises(ValueError, match="cannot push latency: known values are drift_score, accuracy_drop"):
        push_monitoring_values(url, "model_a", {"latency": 1.0})


def test_the_prometheus_fixture_names_what_it_runs(traffic):
    """The fixture's Prometheus scrapes each server as its own target (what the multi-replica tests rely on)."""
    targets = httpx.get(f"{traffic.url}/api/v1/targets").json()["data"]["activeTargets"]
    assert sorted(target["labels"]["instance"] for target in targets) == sorted(
        address(running) for running in traffic.replicas
    )
    assert {target["health"] for target in targets} == {"up"}


def materialize_serving_metrics(world, tmp_path, prometheus_url: str):
    import dagster as dg

    from assets.monitoring import serving_metrics
    from resources import LocalDeployment, MLflowResource, MonitoringResource

    settings = world.settings
    resources = {
        "monitoring": MonitoringResource(
            log_dir=str(tmp_path / "predictions"),
            monitoring_dir=str(tmp_path / "monitoring"),
            prometheus_url=prometheus_url,
        ),
        "deployment": LocalDeployment(state_dir=str(tmp_path / "serving"), port=free_port()),
        "mlflow": MLflowResource(
            tracking_uri=settings.tracking_uri,
            artifact_root=settings.mlflow_artifact_root,
            model_name=settings.model_name,
            experiment_name=settings.experiment_name,
        ),
    }
    return dg.materialize([serving_metrics], resources=resources, raise_on_error=False)


def test_the_asset_reports_prometheus_as_its_source_and_judges_its_numbers(traffic, world, tmp_path):
    result = materialize_serving_metrics(world, tmp_path, traffic.url)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("serving_metrics")
    metadata = {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}
    assert (metadata["source"], metadata["requests"], metadata["errors"], metadata["replicas"]) == (
        "prometheus",
        27,
        3,
        3,
    )
    assert metadata["prometheus"] == traffic.url
    for running in traffic.replicas:
        assert address(running) in table_rows(metadata["requests_by_replica"])
    checks = {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}
    assert not checks["error_rate"].passed  # 3 of 27 is above 1%
    assert checks["error_rate"].metadata["value"].value == 3 / 27
    assert checks["latency_p99"].metadata["value"].value == pytest.approx(
        histogram_quantile(0.99, traffic.buckets_end)[0] * 1000, rel=1e-9
    )


def test_the_asset_fails_naming_an_unreachable_prometheus(world, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = materialize_serving_metrics(world, tmp_path, url)
    assert not result.success
    (failure,) = [event for event in result.all_events if event.event_type_value == "STEP_FAILURE"]
    assert (
        f"serving_metrics: Prometheus at {url} cannot be reached"
        in failure.step_failure_data.user_failure_data.description
    )

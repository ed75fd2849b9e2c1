"""Group monitoring: the server's prediction log by day, and over a trailing window of it, drift against
the training data, live performance against late labels, serving figures and the health summary.

The alert rules are asset checks on these assets (thresholds are fields of the ``monitoring``
resource, so the checks, ``model_health`` and ``ml-platform status`` judge by the same numbers). The
checks never block: a failing check is a signal for the sensors (retrain, roll back, alert), and the
health summary must still be written when something is wrong. A check with nothing to judge (no
traffic, no labels yet) passes and says so.

The window assets read the log directory directly (it is ``prediction_log``'s storage); they are not
partitioned, because a monitoring question is "the last 24 hours", which crosses day boundaries.
"""

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from assets.common import PARTITIONS_START, md_table
from ml_platform.features.engineering import CUMULATIVE_FEATURES, DRIFT_FEATURES
from ml_platform.mlflow_ui import artifact_file_url
from ml_platform.monitoring.alerts import AlertRule
from ml_platform.monitoring.dashboard import render_markdown, render_png, render_png_bytes
from ml_platform.monitoring.drift import METHOD_TITLES, compute_drift, render_drift_html
from ml_platform.monitoring.health import (
    TrainingReference,
    collect_model_health,
    finite_or_none,
    reference_features,
    training_reference,
)
from ml_platform.monitoring.performance import (
    JUDGED_METRICS,
    LIVE_METRICS,
    VARIANT_METRICS,
    check_confidence,
    judge_accuracy_drop,
    variant_performance,
)
from ml_platform.monitoring.performance import live_performance as compute_live_performance
from ml_platform.monitoring.prometheus import PushError, push_monitoring_values
from ml_platform.monitoring.serving_metrics import (
    PrometheusError,
    ServingMetrics,
    prometheus_serving_metrics,
    scrape_metrics,
)
from ml_platform.monitoring.serving_metrics import serving_metrics as compute_serving_metrics
from ml_platform.monitoring.window import ANSWERED_VARIANTS, Window, read_predictions
from ml_platform.predictions import compact_day, read_prediction_log
from ml_platform.registry import CHAMPION
from resources.deployment import DeploymentTarget
from resources.mlflow import MLflowResource
from resources.monitoring import MonitoringResource
from resources.storage import StateStorage

# The days of the prediction log. Unlike the transaction stream (DAILY_PARTITIONS), today is a
# partition too (end_offset=1): the server is writing today's folder, and it can be compacted and
# inspected before the day is over. They start with the transactions' days (assets.common.partitions_start),
# so "Materialize all" proposes the days since the data began, not every day since a fixed date.
PREDICTION_LOG_PARTITIONS = dg.DailyPartitionsDefinition(
    start_date=PARTITIONS_START.isoformat(), end_offset=1, timezone="UTC"
)


# The names monitoring files have in their MLflow runs (ml_platform.monitoring.artifacts).
DRIFT_REPORT_ARTIFACT = "drift_report.html"
DASHBOARD_ARTIFACT = "dashboard.png"
DASHBOARD_PREVIEW_ARTIFACT = "dashboard_preview.png"
PREVIEW_DPI = 40  # 480x320: a thumbnail that fits the metadata table's value column
# The dashboard images kept, on disk and as MLflow monitoring runs: two days of the hourly monitor.
HEALTH_IMAGES_KEPT = 48


class WindowConfig(dg.Config):
    """The trailing window of traffic to judge, ending when the run starts: "24h", "7d", "90m", "2w"."""

    window: str = "24h"


class DriftReportConfig(WindowConfig):
    """The HTML report is drawn from a seeded sample of each side (it is for looking at distributions;
    the scores the check uses are computed on every row). Only the newest ``keep_reports`` are kept."""

    html_sample_rows: int = 20_000
    keep_reports: int = Field(default=48, ge=1, description="drift reports kept, on disk and in MLflow")


def _window(config: WindowConfig) -> Window:
    try:
        return Window.parse(config.window)
    except ValueError as error:
        raise dg.Failure(str(error)) from error


def _rule(monitoring: MonitoringResource, name: str) -> AlertRule:
    try:
        return monitoring.rules()[name]
    except ValueError as error:
        raise dg.Failure(f"monitoring resource: {error}") from error


def rule_check(
    rule: AlertRule,
    value: float | None,
    window: Window,
    *,
    no_data: str | None = None,
    describe: str = "",
    metadata: dict | None = None,
) -> dg.AssetCheckResult:
    """A check from an alert rule: fails when the rule fires on ``value``; with ``no_data`` it passes
    and says why there was nothing to judge. Metadata always holds value, threshold and window."""
    value = finite_or_none(value)
    if no_data is not None:
        passed, description = True, f"nothing to judge: {no_data}"
    else:
        passed = not rule.fires(value)
        verdict = "breaks" if not passed else "within"
        description = f"{rule.metric} {_shown(value)} {verdict} the rule {rule.describe()} over {window.label}"
        if describe:
            description += f"; {describe}"
    return dg.AssetCheckResult(
        check_name=rule.name,
        passed=passed,
        severity=dg.AssetCheckSeverity(rule.severity),
        description=description,
        metadata={"value": value, "threshold": rule.threshold, "window": window.label, **(metadata or {})},
    )


def _shown(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4g}"


def _stamp(context: dg.AssetExecutionContext) -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{context.run.run_id[:8]}"


def _prune(folder: Path, pattern: str, keep: int) -> int:
    """Delete all but the newest ``keep`` files matching ``pattern`` (names sort by time); returns how many."""
    files = sorted(folder.glob(pattern))
    stale = files[:-keep] if keep > 0 else files
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


# ---- the log, by day ---------------------------------------------------------------------------------
@dg.asset(
    group_name="monitoring",
    partitions_def=PREDICTION_LOG_PARTITIONS,
    kinds={"parquet"},
    description="The model server's logged predictions of one UTC day (a local folder or an object store, "
    "every replica's part files). Materializing a day compacts its many small part files into one (without "
    "locks: readers never count a row twice nor miss one) and records what the day holds: rows, model "
    "versions and variants, latency.",
)
def prediction_log(context: dg.AssetExecutionContext, monitoring: MonitoringResource) -> dg.MaterializeResult:
    paths = monitoring.paths()
    result = compact_day(paths.log_dir, context.partition_key)
    frame = read_prediction_log(paths.log_dir, context.partition_key)
    metadata: dict[str, object] = {
        "dagster/row_count": len(frame),
        "files_compacted": result.files_before if result.compacted else 0,
        "files_now": result.files_after,
        "compaction_seconds": result.seconds,
        "folder": dg.MetadataValue.path(str(result.folder)),
    }
    if any(result.recovered.values()):
        metadata["recovered_from_interrupted_compaction"] = dg.MetadataValue.json(result.recovered)
    if len(frame):
        mix = frame.groupby(["model_version", "variant"]).size().rename("rows").reset_index()
        metadata.update(
            {
                "model_versions": md_table(mix, max_rows=50, index=False),
                "versions": ", ".join(f"v{v}" for v in sorted(frame["model_version"].unique())),
                "latency_p50_ms": float(frame["latency_ms"].quantile(0.50)),
                "latency_p99_ms": float(frame["latency_ms"].quantile(0.99)),
                "flagged_as_fraud": int(frame["is_fraud"].sum()),
                "first_prediction": frame["time"].iloc[0].isoformat(),
                "last_prediction": frame["time"].iloc[-1].isoformat(),
            }
        )
    return dg.MaterializeResult(metadata=metadata)


# ---- drift ---------------------------------------------------------------------------------------------
@dg.asset(
    group_name="monitoring",
    deps=[prediction_log, "training_set"],
    kinds={"evidently", "scipy"},
    check_specs=[
        dg.AssetCheckSpec(
            "drift_score",
            asset="drift_report",
            description="share of features whose distribution drifted from the test split of the champion's "
            "training set (WARN)",
        )
    ],
    description="The window's traffic against the test split of the champion's own training set (the stored "
    "file its digest tag names; the current training set for a version without one), per feature and for "
    "the dataset: scores on every row (scipy, equal to Evidently's DataDriftPreset), Evidently's HTML report "
    "from a sample.",
)
def drift_report(
    context: dg.AssetExecutionContext,
    config: DriftReportConfig,
    monitoring: MonitoringResource,
    state: StateStorage,
    mlflow: MLflowResource,
):
    window = _window(config)
    rule = _rule(monitoring, "drift_score")
    try:
        drift_config = monitoring.drift_config()
    except ValueError as error:
        raise dg.Failure(f"monitoring resource: {error}") from error
    paths = monitoring.paths()
    current = read_predictions(paths.log_dir, window)
    method = METHOD_TITLES.get(drift_config.method, drift_config.method)
    registry = mlflow.registry()
    champion = registry.version_for_alias(CHAMPION)
    judged = champion if champion is not None else "none"
    if current.empty:
        note = f"no predictions logged over {window.label}"
        pushed = _push(monitoring, registry.model_name, {"drift_score": None})
        yield dg.MaterializeResult(
            metadata={
                "rows": 0,
                "window": window.label,
                "method": method,
                "note": note,
                "model_version": judged,
                **pushed,
            }
        )
        yield rule_check(rule, None, window, no_data=note, metadata={"model_version": judged})
        return
    try:
        source = training_reference(registry, champion, state.table_path("training_set"), state.training_sets_dir())
        reference = reference_features(source.path)
    except FileNotFoundError as error:
        raise dg.Failure(str(error)) from error
    try:
        report = compute_drift(reference, current, DRIFT_FEATURES, drift_config)
    except ValueError as error:  # e.g. a feature with no finite value on one side
        raise dg.Failure(f"drift_report: {error}") from error
    html = render_drift_html(
        reference,
        current,
        DRIFT_FEATURES,
        drift_config,
        paths.reports_dir / f"drift-{_stamp(context)}.html",
        drift_share=rule.threshold,
        sample_rows=config.html_sample_rows,
    )
    _prune(paths.reports_dir, "drift-*.html", config.keep_reports)
    report_links = _logged_to_mlflow(
        context,
        mlflow,
        {DRIFT_REPORT_ARTIFACT: html},
        metrics={"drift_score": report.drift_score, "drifted_features": len(report.drifted_features)},
        tags={"model_version": str(judged), "window": window.label},
        keep=config.keep_reports,
    )
    top = ", ".join(f"{f.feature} ({f.score:.3g})" for f in report.top(3) if f.drifted) or "none"
    pushed = _push(monitoring, registry.model_name, {"drift_score": report.drift_score})
    yield dg.MaterializeResult(
        metadata={
            "drift_score": float(report.drift_score),
            "drifted_features": f"{len(report.drifted_features)} of {len(report.features)}",
            "top_drifted": top,
            "features": md_table(report.to_frame(), max_rows=len(report.features), index=False),
            "method": method,
            "feature_threshold": drift_config.threshold,
            "categorical_features": ", ".join(drift_config.categorical)
            + " (Evidently's categorical default test and threshold: see the features table)",
            "report_sample": f"{min(len(reference), config.html_sample_rows):,} of {len(reference):,} reference rows, "
            f"{min(len(current), config.html_sample_rows):,} of {len(current):,} current rows",
            "rows": report.current_rows,
            "reference_rows": report.reference_rows,
            "not_scored": ", ".join(CUMULATIVE_FEATURES) + " (grow with each customer's history by construction)",
            "window": window.label,
            "report": dg.MetadataValue.path(str(html)),
            **{("report_url" if key == DRIFT_REPORT_ARTIFACT else key): value for key, value in report_links.items()},
            "compute_seconds": report.seconds,
            "model_version": judged,
            **reference_metadata(source),
            **pushed,
        }
    )
    yield rule_check(
        rule,
        report.drift_score,
        window,
        describe=f"drifted: {', '.join(report.drifted_features) or 'none'}",
        metadata={
            "drifted_features": ", ".join(report.drifted_features),
            "rows": report.current_rows,
            "model_version": judged,
            **reference_metadata(source),
        },
    )


def _logged_to_mlflow(
    context: dg.AssetExecutionContext,
    mlflow: MLflowResource,
    files: dict[str, Path],
    *,
    metrics: dict[str, float | None],
    tags: dict[str, str],
    keep: int,
) -> dict[str, object]:
    """``files`` logged to a monitoring run of their own in MLflow (ml_platform.monitoring.artifacts), so a
    browser opens them from the MLflow UI: metadata with each file's link (by artifact name) and the run.
    The asset's newest ``keep`` runs are kept, as its local files are.
    A store that does not take them is reported, never fatal: the figures and checks do not depend on it."""
    asset = context.asset_key.to_user_string()
    try:
        run = mlflow.log_monitoring_run(
            run_name=f"{asset} {_stamp(context)}",
            files=files,
            metrics=metrics,
            tags={"dagster_run_id": context.run.run_id, "dagster_asset": asset, **tags},
            series=asset,
            keep=keep,
        )
    except Exception as error:  # any artifact store's error (S3, GCS, a full disk): say it, keep the asset
        message = f"not logged to MLflow ({mlflow.public_uri}): {type(error).__name__}: {error}"
        context.log.warning(f"{asset}: {', '.join(files)} {message}")
        return {name: message for name in files}
    links: dict[str, object] = {name: mlflow.artifact_link(run, name) for name in files}
    links["mlflow_monitoring_run"] = run.run_id
    links["mlflow_runs_pruned"] = run.pruned if run.prune_error is None else f"pruning failed: {run.prune_error}"
    if run.prune_error is not None:
        context.log.warning(f"{asset}: older monitoring runs not pruned: {run.prune_error}")
    return links


def _push(monitoring: MonitoringResource, model: str, values: dict[str, float | None]) -> dict[str, object]:
    """Push ``values`` to the Pushgateway when one is configured (for Prometheus' alert rules); metadata
    saying what was pushed. A Pushgateway that does not take them is reported, never fatal: the check
    still judges, and the sensors still act on it."""
    if not monitoring.pushgateway_url:
        return {}
    try:
        names = push_monitoring_values(monitoring.pushgateway_url, model, values)
    except PushError as error:
        dg.get_dagster_logger().warning(str(error))
        return {"pushgateway": f"not pushed: {error}"}
    return {"pushgateway": f"pushed {', '.join(names)} (model={model}) to {monitoring.pushgateway_url}"}


def reference_metadata(reference: TrainingReference | None) -> dict[str, object]:
    """The training set a version was judged against (and why, when it is not the version's own)."""
    metadata: dict[str, object] = {
        "training_set_digest": reference.digest if reference is not None else "none",
        "reference_file": dg.MetadataValue.path(str(reference.path)) if reference is not None else "none",
    }
    if reference is not None and reference.note:
        metadata["reference_note"] = reference.note
    return metadata


# ---- live performance ------------------------------------------------------------------------------
@dg.asset(
    group_name="monitoring",
    deps=[prediction_log, "champion_model", "labels"],
    kinds={"scikitlearn", "scipy"},
    check_specs=[
        dg.AssetCheckSpec(
            "accuracy_drop",
            asset="live_performance",
            description="the champion's recall, precision or PR AUC on labeled traffic fell significantly more "
            "than the threshold below its test metrics (ERROR); judged only with enough labelled positives",
        )
    ],
    description="The champion's answers in the window judged by the labels that have arrived (ground truth "
    "comes late): accuracy, precision, recall, F1 and PR AUC, each with its upper confidence bound, against "
    "what the version scored on its test split. Beside it, every variant served in the window (champion, "
    "challenger, challenger_shadow) side by side: rows, labelled rows, positives, precision, recall, PR AUC, and "
    "each other variant's difference with the champion with its confidence interval.",
)
def live_performance(config: WindowConfig, monitoring: MonitoringResource, mlflow: MLflowResource):
    window = _window(config)
    rule = _rule(monitoring, "accuracy_drop")
    registry = mlflow.registry()
    version = registry.version_for_alias(CHAMPION)
    if version is None:
        note = f"{registry.model_name} has no champion yet"
        pushed = _push(monitoring, registry.model_name, {"accuracy_drop": None})
        yield dg.MaterializeResult(metadata={"model_version": "none", "window": window.label, "note": note, **pushed})
        yield rule_check(rule, None, window, no_data=note)
        return
    paths = monitoring.paths()
    served = read_predictions(paths.log_dir, window, variants=None)  # shadow scores too, for the variants
    predictions = served.loc[served["variant"].isin(list(ANSWERED_VARIANTS))]
    labels = paths.labels().read(as_of=window.end)
    try:
        confidence = check_confidence(monitoring.accuracy_drop_confidence)
    except ValueError as error:
        raise dg.Failure(f"monitoring resource: accuracy_drop_{error}") from error
    performance = compute_live_performance(
        predictions, labels, registry.test_metrics(version), model_version=version, confidence=confidence
    )
    try:
        verdict = judge_accuracy_drop(
            performance, rule.threshold, min_labelled_positives=monitoring.min_labelled_positives, window=window.label
        )
    except ValueError as error:
        raise dg.Failure(f"monitoring resource: {error}") from error
    table = pd.DataFrame(
        {
            "metric": list(LIVE_METRICS),
            "live": [performance.metrics.get(name) for name in LIVE_METRICS],
            "baseline": [performance.baseline.get(name) for name in LIVE_METRICS],
            "drop": [performance.drop(name) for name in LIVE_METRICS],
            "upper_bound": [performance.upper_bounds.get(name) for name in LIVE_METRICS],
            "judged": ["yes" if name in JUDGED_METRICS else "" for name in LIVE_METRICS],
        }
    )
    metadata: dict[str, object] = {
        "model_version": version,
        "labeled_rows": performance.labeled_rows,
        "unlabeled_rows": performance.unlabeled_rows,
        "labelled_positives": performance.labelled_positives,
        "confidence": performance.confidence,
        "bound_level": performance.bound_level,
        "window": window.label,
        "metrics": md_table(table, index=False),
    }
    for name in LIVE_METRICS:
        for key, value in (
            (name, performance.metrics.get(name)),
            (f"baseline_{name}", performance.baseline.get(name)),
            (f"{name}_drop", performance.drop(name)),
            (f"{name}_upper_bound", performance.upper_bounds.get(name)),
        ):
            if finite_or_none(value) is not None:
                metadata[key] = float(value)
    if finite_or_none(performance.label_coverage) is not None:
        metadata["label_coverage"] = float(performance.label_coverage)
    metadata.update(_variant_metadata(served, labels, version, confidence))
    # The value the accuracy_drop check fires on (above the threshold exactly when the verdict fires).
    confident_drop = performance.confident_drop(monitoring.min_labelled_positives)
    metadata.update(_push(monitoring, registry.model_name, {"accuracy_drop": confident_drop}))
    yield dg.MaterializeResult(metadata=metadata)

    yield dg.AssetCheckResult(
        check_name=rule.name,
        passed=not verdict.fires,
        severity=dg.AssetCheckSeverity(rule.severity),
        description=verdict.description,
        metadata={
            "value": finite_or_none(verdict.value),
            "threshold": rule.threshold,
            "window": window.label,
            "model_version": version,
            "labeled_rows": performance.labeled_rows,
            "labelled_positives": performance.labelled_positives,
            "dropped": ", ".join(verdict.dropped),
            **{f"baseline_{name}_lower_bound": bound for name, bound in verdict.baseline_bounds.items()},
        },
    )


def _variant_metadata(predictions: pd.DataFrame, labels: pd.DataFrame, version: int, confidence: float) -> dict:
    """Every variant served in the window side by side (champion, challenger, shadow): the table and, per
    variant, its counts, metrics and (for the others) the difference with the champion and its interval."""
    try:
        comparison = variant_performance(predictions, labels, champion_version=version, confidence=confidence)
    except ValueError as error:  # a log without the variant column
        raise dg.Failure(f"live_performance: {error}") from error
    metadata: dict[str, object] = {
        "variants": md_table(comparison.to_frame(), max_rows=len(comparison), index=False),
        "variant_names": ", ".join(comparison.names),
        "variant_interval": f"{comparison.confidence:.0%} two-sided, percentile bootstrap over labelled rows "
        f"({comparison.resamples} resamples, seeded; paired where both variants answered the same requests)",
    }
    for item in comparison.variants:
        prefix = item.variant
        metadata[f"{prefix}_rows"] = item.rows
        metadata[f"{prefix}_labelled_rows"] = item.labeled_rows
        metadata[f"{prefix}_positives"] = item.positives
        for name in VARIANT_METRICS:
            candidates = [(f"{prefix}_{name}", item.metrics.get(name))]
            if name in item.differences:
                low, high = item.intervals.get(name, (None, None))
                candidates += [
                    (f"{prefix}_{name}_diff", item.differences[name]),
                    (f"{prefix}_{name}_diff_low", low),
                    (f"{prefix}_{name}_diff_high", high),
                ]
            for key, value in candidates:
                if finite_or_none(value) is not None:
                    metadata[key] = float(value)
    return metadata


# ---- serving -------------------------------------------------------------------------------------------
@dg.asset(
    group_name="monitoring",
    deps=[prediction_log, "model_deployment"],
    kinds={"prometheus"},
    check_specs=[
        dg.AssetCheckSpec("latency_p99", asset="serving_metrics", description="p99 latency of answers (WARN)"),
        dg.AssetCheckSpec("error_rate", asset="serving_metrics", description="share of 5xx responses (ERROR)"),
    ],
    description="Throughput and rows per version from the window's log. With Prometheus "
    "(ML_PLATFORM_PROMETHEUS_URL): requests, 5xx errors and latency p50/p95/p99 over the window summed over every "
    "replica it scrapes, with each replica's counts. Without it: latency from the log, requests and 5xx errors "
    "from the endpoint's /metrics counters since the previous monitoring run (the scrape is kept between runs).",
)
def serving_metrics(
    config: WindowConfig, monitoring: MonitoringResource, deployment: DeploymentTarget, mlflow: MLflowResource
):
    window = _window(config)
    latency_rule, error_rule = _rule(monitoring, "latency_p99"), _rule(monitoring, "error_rate")
    paths = monitoring.paths()
    predictions = read_predictions(paths.log_dir, window)
    if monitoring.prometheus_url:
        try:
            metrics = prometheus_serving_metrics(predictions, window, monitoring.prometheus_url)
        except PrometheusError as error:
            raise dg.Failure(f"serving_metrics: {error}") from error
        counted = f"over {window.label}, every replica Prometheus scrapes"
    else:
        scrapes = paths.scrape_state()
        previous = scrapes.latest()
        scrape = scrape_metrics(deployment.endpoint(), token=deployment.token())
        metrics = compute_serving_metrics(
            predictions, window, scrape=scrape, previous_scrape=previous if scrape is not None else None
        )
        if scrape is not None:
            scrapes.advance(scrape)
        counted = (
            "since the previous monitoring run"
            if scrape is not None and previous is not None
            else "since the server started"
            if scrape is not None
            else f"from the log (the endpoint {deployment.endpoint()} did not answer /metrics)"
        )
    version_rows = pd.DataFrame({"model_version": list(metrics.by_version), "rows": list(metrics.by_version.values())})
    metadata: dict[str, object] = {
        "rows": metrics.rows,
        "requests": metrics.requests,
        "errors": metrics.errors,
        "error_rate": metrics.error_rate,
        "throughput_rps": metrics.throughput_rps,
        "requests_counted": counted,
        "source": metrics.source,
        "endpoint": dg.MetadataValue.url(deployment.endpoint()),
        "window": window.label,
    }
    if metrics.source == "prometheus":
        metadata["prometheus"] = dg.MetadataValue.url(monitoring.prometheus_url)
        metadata["replicas"] = len(metrics.by_replica)
        replica_rows = pd.DataFrame(
            [{"replica": replica, **counts} for replica, counts in metrics.by_replica.items()],
            columns=["replica", "requests", "errors"],
        )
        metadata["requests_by_replica"] = md_table(replica_rows, max_rows=len(replica_rows) or 1, index=False)
    for name in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms"):
        if finite_or_none(getattr(metrics, name)) is not None:
            metadata[name] = float(getattr(metrics, name))
    if metrics.by_version:
        metadata["rows_by_version"] = md_table(version_rows, index=False)
    yield dg.MaterializeResult(metadata=metadata)
    champion = mlflow.registry().version_for_alias(CHAMPION)
    yield rule_check(
        latency_rule,
        metrics.latency_p99_ms,
        window,
        no_data=_no_latency(metrics, window),
        describe=f"p50 {_shown(finite_or_none(metrics.latency_p50_ms))} ms "
        + ("from Prometheus' histograms" if metrics.source == "prometheus" else f"over {metrics.rows} answers"),
        metadata={"rows": metrics.rows, "source": metrics.source},
    )
    yield rule_check(
        error_rule,
        metrics.error_rate,
        window,
        no_data=f"no requests answered {counted}" if metrics.requests == 0 else None,
        describe=f"{metrics.errors} of {metrics.requests} responses were 5xx ({counted})",
        metadata={"requests": metrics.requests, "errors": metrics.errors, "model_version": champion},
    )


def _no_latency(metrics: ServingMetrics, window: Window) -> str | None:
    """Why there is no latency to judge, or None: Prometheus saw no answered request, or the log has no row."""
    if metrics.source == "prometheus":
        return None if finite_or_none(metrics.latency_p99_ms) is not None else f"no answers over {window.label}"
    return f"no predictions logged over {window.label}" if metrics.rows == 0 else None


# ---- the summary ---------------------------------------------------------------------------------------
@dg.asset(
    group_name="monitoring",
    deps=[drift_report, live_performance, serving_metrics],
    kinds={"matplotlib"},
    description="The monitoring dashboard in one place: model, status, deployed when, "
    "uptime, latency percentiles, throughput, errors, live accuracy/precision/recall/F1 against the "
    "baseline, drift score and top drifted features, the histogram of prediction scores, alerts firing. "
    "`ml-platform status` prints the same summary. Its model_version is the version it judged (the champion "
    "when it ran): check judges_the_champion says whether that is still the champion, freshness_check whether "
    "the summary is older than two hours (the monitor job runs hourly).",
)
def model_health(
    context: dg.AssetExecutionContext,
    config: WindowConfig,
    monitoring: MonitoringResource,
    mlflow: MLflowResource,
    deployment: DeploymentTarget,
    state: StateStorage,
) -> dg.MaterializeResult:
    window = _window(config)
    paths = monitoring.paths()
    try:
        rules, drift_config = monitoring.rules(), monitoring.drift_config()
    except ValueError as error:
        raise dg.Failure(f"monitoring resource: {error}") from error
    registry = mlflow.registry()
    champion = registry.version_for_alias(CHAMPION)
    try:
        reference = training_reference(registry, champion, state.table_path("training_set"), state.training_sets_dir())
    except FileNotFoundError:  # no training set at all yet: the dashboard shows drift as n/a
        reference = None
    try:
        health = collect_model_health(
            registry,
            paths,
            window,
            endpoint=deployment.endpoint(),
            token=deployment.token(),
            training_set_path=state.table_path("training_set"),
            drift_config=drift_config,
            rules=rules,
            training_sets_dir=state.training_sets_dir(),
            reference=reference,
            prometheus_url=monitoring.prometheus_url,
        )
    except PrometheusError as error:
        raise dg.Failure(f"model_health: {error}") from error
    png = render_png(health, paths.reports_dir / f"health-{_stamp(context)}.png", rules)
    _prune(paths.reports_dir, "health-*.png", HEALTH_IMAGES_KEPT)
    # Dagster's table shows a Markdown value in place only when it is under 1,000 characters; the dashboard
    # with its image inside is ~50 kB ("[Show Markdown]"). So a thumbnail is logged beside the dashboard and
    # shown in place by a line of Markdown (the image as the MLflow server serves it, a link to the full one).
    with tempfile.TemporaryDirectory(prefix="ml-platform-health-") as scratch:
        thumbnail = Path(scratch) / DASHBOARD_PREVIEW_ARTIFACT
        thumbnail.write_bytes(render_png_bytes(health, rules, dpi=PREVIEW_DPI))
        png_links = _logged_to_mlflow(
            context,
            mlflow,
            {DASHBOARD_ARTIFACT: png, DASHBOARD_PREVIEW_ARTIFACT: thumbnail},
            metrics={"alerts_firing": len(health.alerts), "predictions": len(health.prediction_scores)},
            tags={"model_version": str(health.model_version), "status": health.status, "window": window.label},
            keep=HEALTH_IMAGES_KEPT,
        )
    png_links.pop(DASHBOARD_PREVIEW_ARTIFACT)
    markdown = render_markdown(health, dashboard_png=render_png_bytes(health, rules))
    preview = {}
    run = png_links.get("mlflow_monitoring_run")
    if mlflow.ui is not None and isinstance(run, str):
        image = artifact_file_url(mlflow.ui, run, DASHBOARD_PREVIEW_ARTIFACT)
        full = png_links[DASHBOARD_ARTIFACT].value
        preview["dashboard_preview"] = dg.MetadataValue.md(f"[![{health.status}]({image})]({full})")
    metadata: dict[str, object] = {
        **preview,
        "status": health.status,
        "model_version": health.model_version if health.model_version is not None else "none",
        "alerts_firing": len(health.alerts),
        "dashboard": dg.MetadataValue.md(markdown),
        "dashboard_png": dg.MetadataValue.path(str(png)),
        **{("dashboard_url" if key == DASHBOARD_ARTIFACT else key): value for key, value in png_links.items()},
        "window": window.label,
        "predictions": len(health.prediction_scores),
        **reference_metadata(reference),
    }
    if health.alerts:
        metadata["alerts"] = ", ".join(f"{a.name} ({a.severity})" for a in health.alerts)
    return dg.MaterializeResult(metadata=metadata)


MONITORING_ASSETS = [prediction_log, drift_report, live_performance, serving_metrics, model_health]
WINDOW_ASSETS = [
    "drift_report",
    "prediction_drift",
    "live_performance",
    "serving_metrics",
    "feature_skew",
    "model_health",
]

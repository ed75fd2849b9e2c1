"""Monitoring: drift, live performance, serving metrics, alert rules and the status dashboard.

Plain Python over the prediction log and the label store (no Dagster here); the monitoring assets,
checks and sensors call these functions.
"""

from ml_platform.monitoring.alerts import (
    DEFAULT_RULES,
    SEVERITIES,
    Alert,
    AlertRule,
    AlertSink,
    Delivery,
    JsonlAlertSink,
    WebhookAlertSink,
    evaluate_rules,
    send_all,
)
from ml_platform.monitoring.dashboard import (
    ModelHealth,
    health_status,
    render_markdown,
    render_png,
    render_terminal,
)
from ml_platform.monitoring.drift import (
    DRIFT_METHODS,
    DriftConfig,
    DriftReport,
    FeatureDrift,
    compute_drift,
    evidently_drift,
    render_drift_html,
)
from ml_platform.monitoring.labels import LABEL_COLUMNS, LabelStore, delayed_labels
from ml_platform.monitoring.performance import LIVE_METRICS, LivePerformance, live_performance
from ml_platform.monitoring.serving_metrics import ServingMetrics, parse_prometheus, scrape_metrics, serving_metrics
from ml_platform.monitoring.traffic import TrafficResult, send_traffic
from ml_platform.monitoring.window import Window, read_predictions

__all__ = [
    "DEFAULT_RULES",
    "DRIFT_METHODS",
    "LABEL_COLUMNS",
    "LIVE_METRICS",
    "SEVERITIES",
    "Alert",
    "AlertRule",
    "AlertSink",
    "Delivery",
    "DriftConfig",
    "DriftReport",
    "FeatureDrift",
    "JsonlAlertSink",
    "LabelStore",
    "LivePerformance",
    "ModelHealth",
    "ServingMetrics",
    "TrafficResult",
    "WebhookAlertSink",
    "Window",
    "compute_drift",
    "delayed_labels",
    "evaluate_rules",
    "evidently_drift",
    "health_status",
    "live_performance",
    "parse_prometheus",
    "read_predictions",
    "render_drift_html",
    "render_markdown",
    "render_png",
    "render_terminal",
    "scrape_metrics",
    "send_all",
    "send_traffic",
    "serving_metrics",
]

"""Monitoring's settings: where the server's prediction log and the monitoring files are, the alert
rules' thresholds, how drift is scored, and how often the sensors may remediate."""

from pathlib import Path

import dagster as dg

from ml_platform.monitoring.alerts import DEFAULT_RULES, AlertRule
from ml_platform.monitoring.drift import DriftConfig
from ml_platform.monitoring.health import MonitoringPaths, rules_with_thresholds
from ml_platform.monitoring.labels import LABELS_INBOX
from ml_platform.monitoring.performance import DEFAULT_CONFIDENCE, DEFAULT_MIN_LABELLED_POSITIVES
from ml_platform.predictions import log_location


class MonitoringResource(dg.ConfigurableResource):
    """One place for the numbers every monitoring consumer must agree on (checks, ``model_health``,
    ``ml-platform status``), so they are resource fields rather than per-run config.

    - thresholds of the alert rules (defaults from ``ml_platform.monitoring.alerts.DEFAULT_RULES``): p99
      latency over 200 ms (WARN), error rate over 1% (ERROR), accuracy drop over 0.05 (ERROR), drift score
      over 0.15 (WARN);
    - ``drift_method``: ``wasserstein`` (normed; a feature drifted at >= 0.1) or ``ks`` (p-value; drifted
      at <= 0.05); ``drift_feature_threshold`` overrides the method's per-feature default;
    - ``remediation_cooldown_seconds``: after a sensor requested a retrain (or a rollback), further failing
      evaluations of its checks within this many seconds are recorded and skipped, so one bad hour does
      not queue a run per monitoring tick. Read from the newest run the sensor requested (the instance's
      runs), so no restart resets it; two hours by default, longer than the hourly monitoring schedule.
    - ``min_labelled_positives``: the accuracy drop check judges a window only when its labelled rows hold
      at least this many fraud cases (below that it passes, saying "not enough labels");
    - ``accuracy_drop_confidence``: the accuracy drop check fires only when recall, precision or PR AUC
      fell more than its threshold below the test baseline with this confidence, for the three together
      (each live metric's one-sided upper bound is at ``1 - (1 - confidence) / 3``).
    - ``feature_skew_threshold``: the ``feature_skew`` check (WARN) fails when more than this share of the
      served rows differ from the features the training set gives the same transactions.
    - ``prediction_drift_threshold``: the ``prediction_drift`` check (WARN) compares the champion's served
      scores with its scores on its own test split by ``drift_method``; None (the default) takes the
      method's per-feature drift threshold (Wasserstein >= 0.1, KS p-value <= 0.05).
    - ``log_dir``: the server's prediction log, a local folder or an object-store URI (``s3://bucket/prefix``;
      credentials and endpoint from the standard variables, e.g. ``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``).
    - ``labels_source_dir``: where the ``labels`` asset finds each day's label files (empty: the
      ``labels_inbox`` folder of ``monitoring_dir``).
    """

    log_dir: str
    monitoring_dir: str
    latency_p99_threshold_ms: float = DEFAULT_RULES["latency_p99"].threshold
    error_rate_threshold: float = DEFAULT_RULES["error_rate"].threshold
    accuracy_drop_threshold: float = DEFAULT_RULES["accuracy_drop"].threshold
    drift_score_threshold: float = DEFAULT_RULES["drift_score"].threshold
    drift_method: str = "wasserstein"
    drift_feature_threshold: float | None = None
    remediation_cooldown_seconds: float = 7200.0
    min_labelled_positives: int = DEFAULT_MIN_LABELLED_POSITIVES
    accuracy_drop_confidence: float = DEFAULT_CONFIDENCE
    feature_skew_threshold: float = 0.01
    labels_source_dir: str = ""
    prediction_drift_threshold: float | None = None
    # Prometheus' HTTP API (ML_PLATFORM_PROMETHEUS_URL): serving_metrics sums every replica it scrapes;
    # empty: one scrape of the serving endpoint. A Pushgateway (ML_PLATFORM_PUSHGATEWAY_URL): drift_report
    # and live_performance push their values there for Prometheus' alert rules; empty: no push.
    prometheus_url: str = ""
    pushgateway_url: str = ""
    # The label store (ML_PLATFORM_LABELS_URI): a folder or an object-store URI, where every replica's
    # POST /feedback writes; empty: the labels folder of monitoring_dir.
    labels_uri: str = ""

    def paths(self) -> MonitoringPaths:
        return MonitoringPaths(
            log_dir=log_location(self.log_dir),
            root=Path(self.monitoring_dir),
            labels_location=self.labels_uri or None,
        )

    def labels_source(self) -> Path:
        """The folder the ``labels`` asset imports label files from."""
        return Path(self.labels_source_dir) if self.labels_source_dir else Path(self.monitoring_dir) / LABELS_INBOX

    def rules(self) -> dict[str, AlertRule]:
        """The alert rules with this resource's thresholds (ValueError naming a bad one)."""
        return rules_with_thresholds(
            {
                "latency_p99": self.latency_p99_threshold_ms,
                "error_rate": self.error_rate_threshold,
                "accuracy_drop": self.accuracy_drop_threshold,
                "drift_score": self.drift_score_threshold,
            }
        )

    def drift_config(self) -> DriftConfig:
        """How drift is scored (ValueError naming the field for an unknown method or a bad threshold)."""
        return DriftConfig(method=self.drift_method, feature_threshold=self.drift_feature_threshold)

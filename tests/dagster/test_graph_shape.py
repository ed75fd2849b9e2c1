"""A snapshot of the asset graph: an accidental change to keys, groups, deps or checks shows up here."""

import dataclasses
from datetime import UTC, datetime

import dagster as dg
import pytest

from assets.data import RawTransactionsConfig
from assets.evaluation import EvaluationConfig
from assets.monitoring import PREDICTION_LOG_PARTITIONS
from assets.training import TrainingConfig, TrainingSetConfig
from ml_platform.data.synthetic import SyntheticConfig
from ml_platform.evaluation.gate import GateConfig
from ml_platform.monitoring.alerts import DEFAULT_RULES
from ml_platform.monitoring.drift import DriftConfig
from ml_platform.monitoring.performance import DEFAULT_CONFIDENCE, DEFAULT_MIN_LABELLED_POSITIVES
from ml_platform.monitoring.skew import DEFAULT_SKEW_THRESHOLD, skew_rule
from ml_platform.training.dataset import SplitFractions
from ml_platform.training.train import TrainingParams
from resources.monitoring import MonitoringResource

EXPECTED_GROUPS = {
    "raw_transactions": "data",
    "validated_transactions": "data",
    "customer_stats": "features",
    "feature_store": "features",
    "online_features": "features",
    "training_set": "training",
    "trained_model": "training",
    "model_evaluation": "evaluation",
    "champion_model": "evaluation",
    "model_deployment": "deployment",
    "batch_predictions": "deployment",
    "prediction_log": "monitoring",
    "labels": "monitoring",
    "drift_report": "monitoring",
    "live_performance": "monitoring",
    "prediction_drift": "monitoring",
    "serving_metrics": "monitoring",
    "feature_skew": "monitoring",
    "model_health": "monitoring",
}
EXPECTED_DEPS = {
    "raw_transactions": set(),
    "validated_transactions": {"raw_transactions"},
    "customer_stats": {"validated_transactions", "customer_stats"},  # each day continues from the day before
    "feature_store": {"customer_stats"},
    "online_features": {"feature_store", "customer_stats"},
    "training_set": {"validated_transactions", "feature_store"},
    "trained_model": {"training_set"},
    "model_evaluation": {"trained_model", "training_set"},
    "champion_model": {"model_evaluation"},
    "model_deployment": {"champion_model"},
    "batch_predictions": {"validated_transactions", "champion_model", "feature_store"},
    "prediction_log": set(),
    "labels": set(),
    "drift_report": {"prediction_log", "training_set"},
    "live_performance": {"prediction_log", "champion_model", "labels"},
    "prediction_drift": {"prediction_log", "champion_model"},
    "serving_metrics": {"prediction_log", "model_deployment"},
    "feature_skew": {"prediction_log", "validated_transactions", "feature_store"},
    "model_health": {"drift_report", "live_performance", "serving_metrics"},
}
EXPECTED_CHECKS = {
    ("raw_transactions", "batch_accepted"),
    ("validated_transactions", "schema"),
    ("validated_transactions", "no_nulls"),
    ("validated_transactions", "value_ranges"),
    ("validated_transactions", "unique_ids"),
    ("model_evaluation", "quality_floor"),
    ("model_evaluation", "beats_champion"),
    ("model_deployment", "smoke"),
}
# The alert rules as checks: signals for the sensors, never blocking (model_health must still be written).
MONITORING_CHECKS = {
    ("drift_report", "drift_score"): dg.AssetCheckSeverity.WARN,
    ("live_performance", "accuracy_drop"): dg.AssetCheckSeverity.ERROR,
    ("serving_metrics", "latency_p99"): dg.AssetCheckSeverity.WARN,
    ("serving_metrics", "error_rate"): dg.AssetCheckSeverity.ERROR,
}
# Served features against the training set's for the same transactions: a signal too, not an alert rule.
SKEW_CHECKS = {("feature_skew", "feature_skew"): dg.AssetCheckSeverity.WARN}
# The champion's served scores against its test-split scores: the first signal while labels are late.
PREDICTION_DRIFT_CHECKS = {("prediction_drift", "prediction_drift"): dg.AssetCheckSeverity.WARN}
# The catalog's (assets.catalog): the monitoring summary's freshness, and whether it judged the champion.
CATALOG_CHECKS = {
    ("model_health", "freshness_check"),
    ("drift_report", "freshness_check"),
    ("model_health", "judges_the_champion"),
}


def test_asset_keys_groups_and_deps(defs):
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == set(EXPECTED_GROUPS)
    for name, group in EXPECTED_GROUPS.items():
        node = graph.get(dg.AssetKey(name))
        assert node.group_name == group, name
        assert {p.to_user_string() for p in node.parent_keys} == EXPECTED_DEPS[name], name


def test_gates_block_and_monitoring_checks_do_not(defs):
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == (
        EXPECTED_CHECKS | set(MONITORING_CHECKS) | set(SKEW_CHECKS) | set(PREDICTION_DRIFT_CHECKS) | CATALOG_CHECKS
    )
    for key in graph.asset_check_keys:
        name = (key.asset_key.to_user_string(), key.name)
        assert graph.get_check_spec(key).blocking is (name in EXPECTED_CHECKS), name


def test_daily_partitions_on_transactions_and_batch_scores(defs):
    graph = defs.resolve_asset_graph()
    partitioned = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).partitions_def}
    assert partitioned == {
        "raw_transactions",
        "validated_transactions",
        "customer_stats",  # each day continues from the day before
        "online_features",  # each day writes the customers it changed
        "batch_predictions",
        "prediction_log",
        "labels",  # the day the label files arrived, today included: the prediction log's days
    }
    assert graph.get(dg.AssetKey("labels")).partitions_def is PREDICTION_LOG_PARTITIONS
    daily = graph.get(dg.AssetKey("raw_transactions")).partitions_def
    assert isinstance(daily, dg.DailyPartitionsDefinition)
    assert daily.get_partition_keys()[0] == "2025-01-01"
    # The prediction log's days include today (the server is writing it): one partition more.
    log_days = graph.get(dg.AssetKey("prediction_log")).partitions_def
    assert log_days is PREDICTION_LOG_PARTITIONS
    assert log_days.get_partition_keys()[0] == "2025-01-01"
    assert log_days.get_last_partition_key() == datetime.now(UTC).date().isoformat()
    assert len(log_days.get_partition_keys()) == len(daily.get_partition_keys()) + 1


def test_jobs_and_schedules(defs):
    retrain = defs.resolve_job_def("retrain")
    assert {k.to_user_string() for k in retrain.asset_layer.executable_asset_keys} == {
        "training_set",
        "trained_model",
        "model_evaluation",
        "champion_model",
        "model_deployment",  # a promoted model is served by the same run
    }
    schedule = defs.resolve_schedule_def("retrain_daily")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.job_name == "retrain"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    ingest = defs.resolve_schedule_def("ingest_daily")
    assert ingest.job_name == "ingest"
    assert ingest.cron_schedule == "0 1 * * *"

    monitor = defs.resolve_job_def("monitor")
    assert {k.to_user_string() for k in monitor.asset_layer.executable_asset_keys} == {
        "drift_report",
        "prediction_drift",
        "live_performance",
        "serving_metrics",
        "feature_skew",
        "model_health",
    }
    collect = defs.resolve_job_def("collect_predictions")
    assert {k.to_user_string() for k in collect.asset_layer.executable_asset_keys} == {"prediction_log"}
    hourly = defs.resolve_schedule_def("monitor_hourly")
    assert (hourly.job_name, hourly.cron_schedule, hourly.default_status) == (
        "monitor",
        "0 * * * *",
        dg.DefaultScheduleStatus.RUNNING,
    )
    compaction = defs.resolve_schedule_def("collect_predictions_daily")
    assert (compaction.job_name, compaction.cron_schedule) == ("collect_predictions", "15 0 * * *")
    assert {s.name for s in defs.schedules} == {
        "ingest_daily",
        "refresh_features_daily",
        "retrain_daily",
        "monitor_hourly",
        "collect_predictions_daily",
    }


def test_daily_compaction_targets_yesterday(defs):
    schedule = defs.resolve_schedule_def("collect_predictions_daily")
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 3, 2, 0, 15, tzinfo=UTC), repository_def=defs.get_repository_def()
    )
    request = schedule.evaluate_tick(context).run_requests[0]
    assert (request.partition_key, request.run_key) == ("2026-03-01", "prediction_log-2026-03-01")


def test_sensors_run_by_default_and_target_their_jobs(defs):
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {"retrain_on_drift", "rollback_on_failure", "alert_on_failed_checks", "monitoring_freshness"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in sensors.values())
    assert sensors["retrain_on_drift"].job_name == "retrain"
    assert sensors["rollback_on_failure"].job_name == "rollback"
    assert not sensors["alert_on_failed_checks"].has_jobs  # it sends alerts, it launches nothing


def test_monitoring_thresholds_and_drift_method_mirror_the_core_defaults():
    """The resource's defaults are the platform's alert rules (p99 latency, error rate, accuracy drop, drift
    score) and the core's drift config."""
    fields = {name: field.default for name, field in MonitoringResource.model_fields.items()}
    assert fields["latency_p99_threshold_ms"] == DEFAULT_RULES["latency_p99"].threshold == 200.0
    assert fields["error_rate_threshold"] == DEFAULT_RULES["error_rate"].threshold == 0.01
    assert fields["accuracy_drop_threshold"] == DEFAULT_RULES["accuracy_drop"].threshold == 0.05
    assert fields["min_labelled_positives"] == DEFAULT_MIN_LABELLED_POSITIVES == 20
    assert fields["accuracy_drop_confidence"] == DEFAULT_CONFIDENCE == 0.95
    assert fields["drift_score_threshold"] == DEFAULT_RULES["drift_score"].threshold == 0.15
    assert (fields["drift_method"], fields["drift_feature_threshold"]) == (
        DriftConfig().method,
        DriftConfig().feature_threshold,
    )
    rules = MonitoringResource(log_dir="/x", monitoring_dir="/y", drift_score_threshold=0.4).rules()
    assert rules["drift_score"].threshold == 0.4
    assert {name: rule.severity for name, rule in rules.items()} == {
        name[1]: severity.value for name, severity in MONITORING_CHECKS.items()
    }


def test_feature_skew_check_judges_by_the_resource_threshold():
    fields = {name: field.default for name, field in MonitoringResource.model_fields.items()}
    assert fields["feature_skew_threshold"] == DEFAULT_SKEW_THRESHOLD == 0.01
    resource = MonitoringResource(log_dir="/x", monitoring_dir="/y", feature_skew_threshold=0.2)
    rule = skew_rule(resource.feature_skew_threshold)
    assert (rule.threshold, rule.severity) == (0.2, SKEW_CHECKS[("feature_skew", "feature_skew")].value)


@pytest.mark.parametrize(
    ("config_class", "core_class", "core_only"),
    [
        (TrainingConfig, TrainingParams, {"n_jobs"}),
        (RawTransactionsConfig, SyntheticConfig, set()),
        (EvaluationConfig, GateConfig, set()),
    ],
)
def test_asset_config_mirrors_the_core_defaults(config_class, core_class, core_only):
    """Each asset's Config repeats a core dataclass (the core stays dagster-free); they must agree."""
    config_defaults = {name: field.default for name, field in config_class.model_fields.items()}
    core_defaults = {f.name: f.default for f in dataclasses.fields(core_class) if f.name not in core_only}
    shared = {name: config_defaults[name] for name in core_defaults}
    assert shared == core_defaults
    assert set(config_defaults) - set(core_defaults) <= {"source", "path"}  # where the data comes from


def test_split_config_mirrors_the_core_defaults():
    defaults = TrainingSetConfig()
    core = SplitFractions()
    assert (defaults.train_fraction, defaults.validation_fraction, defaults.test_fraction) == (
        core.train,
        core.validation,
        core.test,
    )


def test_prediction_drift_threshold_defaults_to_the_drift_methods_feature_threshold():
    """None: the method's per-feature threshold (Wasserstein 0.1, KS p-value 0.05), as the check applies it."""
    fields = {name: field.default for name, field in MonitoringResource.model_fields.items()}
    assert fields["prediction_drift_threshold"] is None
    for method, threshold in (("wasserstein", 0.1), ("ks", 0.05)):
        assert DriftConfig(method=method, feature_threshold=fields["prediction_drift_threshold"]).threshold == threshold

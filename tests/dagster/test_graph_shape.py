"""A snapshot of the asset graph: an accidental change to keys, groups, deps or checks shows up here."""

import dataclasses

import dagster as dg
import pytest

from assets.data import RawTransactionsConfig
from assets.evaluation import EvaluationConfig
from assets.training import TrainingConfig, TrainingSetConfig
from ml_platform.data.synthetic import SyntheticConfig
from ml_platform.evaluation.gate import GateConfig
from ml_platform.training.dataset import SplitFractions
from ml_platform.training.train import TrainingParams

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
}
EXPECTED_DEPS = {
    "raw_transactions": set(),
    "validated_transactions": {"raw_transactions"},
    "customer_stats": {"validated_transactions"},
    "feature_store": {"customer_stats"},
    "online_features": {"feature_store"},
    "training_set": {"validated_transactions", "feature_store"},
    "trained_model": {"training_set"},
    "model_evaluation": {"trained_model", "training_set"},
    "champion_model": {"model_evaluation"},
    "model_deployment": {"champion_model"},
    "batch_predictions": {"validated_transactions", "champion_model", "feature_store"},
}
EXPECTED_CHECKS = {
    ("validated_transactions", "schema"),
    ("validated_transactions", "no_nulls"),
    ("validated_transactions", "value_ranges"),
    ("validated_transactions", "unique_ids"),
    ("model_evaluation", "quality_floor"),
    ("model_evaluation", "no_regression"),
    ("model_deployment", "smoke"),
}


def test_asset_keys_groups_and_deps(defs):
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == set(EXPECTED_GROUPS)
    for name, group in EXPECTED_GROUPS.items():
        node = graph.get(dg.AssetKey(name))
        assert node.group_name == group, name
        assert {p.to_user_string() for p in node.parent_keys} == EXPECTED_DEPS[name], name


def test_checks_are_blocking(defs):
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == EXPECTED_CHECKS
    for key in graph.asset_check_keys:
        assert graph.get_check_spec(key).blocking, key


def test_daily_partitions_on_transactions_and_batch_scores(defs):
    graph = defs.resolve_asset_graph()
    partitioned = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).partitions_def}
    assert partitioned == {"raw_transactions", "validated_transactions", "batch_predictions"}
    daily = graph.get(dg.AssetKey("raw_transactions")).partitions_def
    assert isinstance(daily, dg.DailyPartitionsDefinition)
    assert daily.get_partition_keys()[0] == "2025-01-01"


def test_jobs_and_schedules(defs):
    retrain = defs.resolve_job_def("retrain")
    assert {k.to_user_string() for k in retrain.asset_layer.executable_asset_keys} == {
        "training_set",
        "trained_model",
        "model_evaluation",
        "champion_model",
    }
    schedule = defs.resolve_schedule_def("retrain_daily")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.job_name == "retrain"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    ingest = defs.resolve_schedule_def("ingest_daily")
    assert ingest.job_name == "ingest"
    assert ingest.cron_schedule == "0 1 * * *"


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

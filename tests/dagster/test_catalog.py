"""The catalog's conventions: owners, code versions, column schemas, the partitions' first day, freshness and
the judged version of model_health, and a bootstrap that leaves no "Skipped" check evaluation behind."""

import re
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pyarrow.parquet as pq
import pytest
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.test_utils import freeze_time
from dagster._core.utils import is_valid_email

from assets.catalog import (
    COLUMN_SCHEMA_KEY,
    COLUMN_SCHEMAS,
    FRESHNESS_CHECKS,
    MONITORING_FRESHNESS,
    SERVING_VERSION_CHECK,
    _arrow_kind,
    _core_modules,
    catalogued,
    judges_the_champion,
)
from assets.common import DAILY_PARTITIONS, PARTITIONS_START, check_partitions_start
from assets.monitoring import PREDICTION_LOG_PARTITIONS
from ml_platform.data.schema import TRANSACTION_COLUMNS
from ml_platform.features.store import FeatureRepo
from ml_platform.monitoring.labels import LABEL_COLUMNS
from ml_platform.partitions import DEFAULT_PARTITIONS_START, partitions_start
from ml_platform.predictions.layout import LOG_COLUMNS
from ml_platform.registry import CHAMPION
from ml_platform.settings import Settings, SettingsError
from ml_platform.storage import table_path

pytestmark = pytest.mark.xdist_group("graph")

DAILY_CHECKED = ("raw_transactions", "validated_transactions")


def _settings(home, **variables) -> Settings:
    return Settings.from_env({"ML_PLATFORM_HOME": str(home), **variables})


def test_every_asset_has_the_owners_and_a_code_version(defs, settings):
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.owners == ["team:ml-platform"] == list(settings.asset_owners), key
        assert re.fullmatch(r"0\.1\.0\+[0-9a-f]{12}", node.code_version or ""), (key, node.code_version)
    # One module, one version; another module (other code), another version.
    assert (
        graph.get(dg.AssetKey("raw_transactions")).code_version
        == graph.get(dg.AssetKey("validated_transactions")).code_version
    )
    assert (
        graph.get(dg.AssetKey("raw_transactions")).code_version != graph.get(dg.AssetKey("training_set")).code_version
    )


def test_the_code_version_covers_the_core_modules_an_asset_module_imports():
    import assets.data

    names = {module.__name__ for module in _core_modules(assets.data)}
    assert {"ml_platform.data.validation", "ml_platform.data.sources", "ml_platform.storage"} <= names
    assert not any(name.startswith(("dagster", "assets", "resources")) for name in names)


def test_owners_come_from_the_setting_and_are_validated_as_dagster_does(tmp_path):
    settings = _settings(tmp_path, ML_PLATFORM_ASSET_OWNERS="ana@example.com, team:fraud")
    assert settings.asset_owners == ("ana@example.com", "team:fraud")
    from assets import ALL_ASSETS

    mapped = catalogued(ALL_ASSETS[:2], settings)
    assert [spec.owners for a in mapped for spec in a.specs] == [["ana@example.com", "team:fraud"]] * 2
    for bad in ("ana", "team:", "ana@example", "@example.com"):
        with pytest.raises(SettingsError, match=f"ML_PLATFORM_ASSET_OWNERS='{re.escape(bad)}' is not valid"):
            _settings(tmp_path, ML_PLATFORM_ASSET_OWNERS=bad)
        assert not (is_valid_email(bad) or (bad.startswith("team:") and len(bad) > 5))  # Dagster refuses it too
    with pytest.raises(SettingsError, match="at least one owner"):
        _settings(tmp_path, ML_PLATFORM_ASSET_OWNERS=" , ")


def test_every_table_asset_has_the_column_schema_of_the_core(defs):
    graph = defs.resolve_asset_graph()
    with_schema = {
        key.to_user_string() for key in graph.get_all_asset_keys() if COLUMN_SCHEMA_KEY in graph.get(key).metadata
    }
    assert with_schema == {
        "raw_transactions",
        "validated_transactions",
        "customer_stats",
        "training_set",
        "prediction_log",
        "labels",
        "batch_predictions",
    }
    for name in with_schema:
        assert graph.get(dg.AssetKey(name)).metadata[COLUMN_SCHEMA_KEY] == COLUMN_SCHEMAS[name]
    names = {name: [column.name for column in schema.columns] for name, schema in COLUMN_SCHEMAS.items()}
    assert names["raw_transactions"] == names["validated_transactions"] == list(TRANSACTION_COLUMNS)
    assert names["prediction_log"] == list(LOG_COLUMNS)
    assert names["labels"] == list(LABEL_COLUMNS)


def test_the_column_schemas_are_what_the_bootstrap_stored(bootstrap_run, settings):
    """Names, order and kinds of the stored files' columns, as the bootstrap wrote them."""
    repo = FeatureRepo.from_settings(settings)
    day = "2026-03-02"
    files = {
        "raw_transactions": table_path(settings.data_dir, "raw_transactions", day),
        "validated_transactions": table_path(settings.data_dir, "validated_transactions", day),
        "training_set": table_path(settings.data_dir, "training_set"),
        "customer_stats": repo.offline_day_path(date.fromisoformat(day)),
    }
    for name, path in files.items():
        stored = [(field.name, _arrow_kind(field.type)) for field in pq.read_schema(path)]
        declared = [(column.name, column.type) for column in COLUMN_SCHEMAS[name].columns]
        assert declared == stored, name


def test_the_partitions_start_with_the_setting_or_the_datas_first_day(tmp_path):
    assert partitions_start(_settings(tmp_path)) == DEFAULT_PARTITIONS_START  # nothing stored, nothing set
    stored = table_path(_settings(tmp_path).data_dir, "raw_transactions", "2026-02-03")
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"")
    (stored.parent / "rejected").mkdir()  # not a day
    assert partitions_start(_settings(tmp_path)) == date(2026, 2, 3)
    earlier = _settings(tmp_path, ML_PLATFORM_PARTITIONS_START="2026-01-15")
    assert partitions_start(earlier) == date(2026, 1, 15)
    check_partitions_start(earlier)  # days after the start: fine
    later = _settings(tmp_path, ML_PLATFORM_PARTITIONS_START="2026-02-10")
    with pytest.raises(
        SettingsError, match=r"ML_PLATFORM_PARTITIONS_START=2026-02-10 is later than 1 stored day.*2026-02-03"
    ):
        check_partitions_start(later)
    with pytest.raises(SettingsError, match="ML_PLATFORM_PARTITIONS_START='2026-2-1' is not valid"):
        _settings(tmp_path, ML_PLATFORM_PARTITIONS_START="2026-2-1")


def test_both_daily_partitions_start_on_the_resolved_day(defs):
    """The session's home was empty when the assets were imported: the default day, in both definitions."""
    graph = defs.resolve_asset_graph()
    assert PARTITIONS_START == DEFAULT_PARTITIONS_START
    for name, partitions in (("raw_transactions", DAILY_PARTITIONS), ("prediction_log", PREDICTION_LOG_PARTITIONS)):
        assert graph.get(dg.AssetKey(name)).partitions_def is partitions
        assert partitions.get_first_partition_key() == PARTITIONS_START.isoformat()


def test_a_bootstrap_leaves_no_skipped_evaluation_of_the_daily_checks(bootstrap_run, instance, defs):
    """One evaluation per day of the run for each check of the daily assets, none left planned (shown as
    "Skipped"), none without a day."""
    result = bootstrap_run[0].runs[0]  # the days' run (the second trains, with no day)
    days = DAILY_PARTITIONS.get_partition_keys_in_range(
        dg.PartitionKeyRange(
            result.dagster_run.tags["dagster/asset_partition_range_start"],
            result.dagster_run.tags["dagster/asset_partition_range_end"],
        )
    )
    assert len(days) == 14
    keys = [k for k in defs.resolve_asset_graph().asset_check_keys if k.asset_key.to_user_string() in DAILY_CHECKED]
    assert len(keys) == 5
    for key in keys:
        records = [
            r
            for r in instance.event_log_storage.get_asset_check_execution_history(key, limit=500)
            if r.run_id == result.run_id
        ]
        statuses = {(r.partition, r.status) for r in records}
        assert statuses == {(day, AssetCheckExecutionRecordStatus.SUCCEEDED) for day in days}, key
        assert len(records) == len(days), key


def _run_checks(instance, names, resources=None) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    """Run the named checks of the catalog (the freshness checks; with ``resources``, judges_the_champion)."""
    keys = [dg.AssetCheckKey(dg.AssetKey(asset), check) for asset, check in names]
    checks = [*FRESHNESS_CHECKS, *([judges_the_champion] if resources else [])]
    result = dg.materialize(
        [dg.AssetSpec("model_health"), dg.AssetSpec("drift_report"), *checks],
        instance=instance,
        resources=resources,
        selection=dg.AssetSelection.checks(*keys),
    )
    return {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}


def test_the_freshness_check_fails_once_model_health_is_older_than_its_limit():
    with dg.instance_for_test() as instance:
        materialized_at = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
        with freeze_time(materialized_at):
            instance.report_runless_asset_event(dg.AssetMaterialization("model_health"))
        key = ("model_health", "freshness_check")
        with freeze_time(materialized_at + MONITORING_FRESHNESS - timedelta(minutes=5)):
            assert _run_checks(instance, [key])[key].passed
        with freeze_time(materialized_at + MONITORING_FRESHNESS + timedelta(minutes=5)):
            stale = _run_checks(instance, [key])[key]
        assert not stale.passed
        assert stale.severity == dg.AssetCheckSeverity.WARN


def test_model_health_marks_a_judgement_of_a_version_no_longer_champion(bootstrap_run, defs):
    registry = defs.resources["mlflow"].registry()
    champion = registry.version_for_alias(CHAMPION)
    assert champion is not None
    key = ("model_health", SERVING_VERSION_CHECK)
    resources = {"mlflow": defs.resources["mlflow"]}
    with dg.instance_for_test() as instance:
        never = _run_checks(instance, [key], resources)[key]
        assert not never.passed and "never materialized" in never.description
        instance.report_runless_asset_event(
            dg.AssetMaterialization("model_health", metadata={"model_version": champion})
        )
        current = _run_checks(instance, [key], resources)[key]
        assert current.passed, current.description
        assert current.metadata["judged_version"].value == champion
        instance.report_runless_asset_event(
            dg.AssetMaterialization("model_health", metadata={"model_version": champion + 1})
        )
        stale = _run_checks(instance, [key], resources)[key]
    assert not stale.passed
    assert stale.description.startswith(
        f"stale: model_health judged v{champion + 1}, but the champion now is v{champion}"
    )
    assert stale.metadata["champion_version"].value == champion

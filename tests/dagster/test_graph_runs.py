"""The whole graph over a range of days is two runs (``runs.launch.launch_graph``): the days' assets over the
range, then training to promotion in a run of no partition. One run tagged with the range left a planned day
of every unpartitioned asset and check behind (Dagster 1.13 plans them per day of the run): "Skipped" rows
under model_evaluation's gates that no evaluation ever settles.

The session's bootstrap (``bootstrap_run``, 14 days) is such a range run: the tests read what it left in the
instance. The failure and config cases run on an instance of their own, so no failed run reaches the
session's."""

from collections import Counter

import dagster as dg
import pytest
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from runs.launch import CliError, failure_causes, launch_graph
from tests.support.runs import FIRST_DAY, LAST_DAY

pytestmark = pytest.mark.xdist_group("graph")

DAYS_ASSETS = {"raw_transactions", "validated_transactions", "customer_stats", "feature_store", "online_features"}
TAIL = {"training_set", "trained_model", "model_evaluation", "champion_model"}
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def _materialized(run) -> set[str]:
    return {
        e.event_specific_data.materialization.asset_key.to_user_string() for e in run.get_asset_materialization_events()
    }


def _days() -> list[str]:
    from assets.common import DAILY_PARTITIONS

    return DAILY_PARTITIONS.get_partition_keys_in_range(dg.PartitionKeyRange(str(FIRST_DAY), str(LAST_DAY)))


def _planned_days(data) -> list[str | None]:
    """The days a planned materialization names (one event per day, or one with a subset); [None]: no day."""
    if data.partition:
        return [data.partition]
    return list(data.partitions_subset.get_partition_keys()) if data.partitions_subset else [None]


def test_the_graph_runs_the_days_then_training_to_promotion(bootstrap_result, instance):
    first, second = bootstrap_result.runs
    assert bootstrap_result.run_ids == [first.run_id, second.run_id]
    assert bootstrap_result.run_id == second.run_id  # the run that trained: lineage's dagster_run_id
    assert bootstrap_result.success and bootstrap_result.not_launched == []
    assert [first.dagster_run.tags.get(tag) for tag in RANGE_TAGS] == [str(FIRST_DAY), str(LAST_DAY)]
    assert not [tag for tag in second.dagster_run.tags if tag.startswith(("dagster/partition", "dagster/asset_part"))]
    assert (_materialized(first), _materialized(second)) == (DAYS_ASSETS, TAIL)
    for run, assets in ((first, DAYS_ASSETS), (second, TAIL)):
        stored = instance.get_run_by_id(run.run_id)
        assert stored.job_name == "bootstrap" and stored.status == dg.DagsterRunStatus.SUCCESS
        assert {key.to_user_string() for key in stored.asset_selection} == assets
    assert bootstrap_result.output_for_node("model_evaluation")["challenger_version"] >= 1
    assert {e.check_name for e in bootstrap_result.get_asset_check_evaluations()} >= {"quality_floor", "schema"}


def test_no_day_is_planned_on_an_unpartitioned_asset(bootstrap_result, instance, defs):
    graph = defs.resolve_asset_graph()
    planned: dict[str, Counter] = {}
    for run_id in bootstrap_result.run_ids:
        connection = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
        for record in connection.records:
            data = record.event_log_entry.dagster_event.event_specific_data
            planned.setdefault(data.asset_key.to_user_string(), Counter()).update(_planned_days(data))
    assert set(planned) == DAYS_ASSETS | TAIL
    days = _days()
    for asset, counts in planned.items():
        if graph.get(dg.AssetKey(asset)).partitions_def is not None:
            assert counts == Counter(days), asset
    unpartitioned = {asset: counts for asset, counts in planned.items() if asset in TAIL}
    assert unpartitioned == {asset: Counter({None: 1}) for asset in TAIL}
    # feature_store, unpartitioned between two daily assets, stays in the days' run, with their days
    # planned as every refresh_features run plans them (launch_graph's docstring says why).
    assert planned["feature_store"] == Counter(days)


def test_every_check_is_evaluated_and_none_is_left_planned(bootstrap_result, instance, defs):
    """Per day for the daily checks, once with no day for the gates; no PLANNED execution at all."""
    run_ids = set(bootstrap_result.run_ids)
    graph = defs.resolve_asset_graph()
    days = _days()
    seen = {}
    for key in graph.asset_check_keys:
        records = [
            r
            for r in instance.event_log_storage.get_asset_check_execution_history(key, limit=500)
            if r.run_id in run_ids
        ]
        if records:
            seen[key.to_user_string()] = sorted((r.partition or "", r.status.value) for r in records)
    succeeded = AssetCheckExecutionRecordStatus.SUCCEEDED.value
    daily = ["raw_transactions:batch_accepted"] + [
        f"validated_transactions:{name}" for name in ("no_nulls", "schema", "unique_ids", "value_ranges")
    ]
    assert seen == {
        **{name: [(day, succeeded) for day in days] for name in daily},
        "model_evaluation:quality_floor": [("", succeeded)],
        "model_evaluation:beats_champion": [("", succeeded)],
    }


@pytest.fixture
def own_instance(tmp_path, monkeypatch):
    """An empty Dagster instance for this test's runs (launch reads DAGSTER_HOME at each run)."""
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        yield instance


def test_a_failed_first_run_launches_no_second(defs, own_instance, tmp_path):
    missing = tmp_path / "no_such_transactions.parquet"
    params = {"raw_transactions": {"source": "file", "path": str(missing)}}
    result = launch_graph(params, start=FIRST_DAY, end=FIRST_DAY, defs=defs)
    assert (result.success, len(result.runs), result.run_id) == (False, 1, result.runs[0].run_id)
    assert result.not_launched == sorted(TAIL)
    causes = failure_causes(result)
    assert causes[0].startswith("step raw_transactions failed: "), causes
    assert causes[-1] == f"not run after run {result.run_id} failed: {', '.join(sorted(TAIL))}"
    assert [run.run_id for run in own_instance.get_runs()] == [result.run_id]


def test_the_second_run_s_params_are_checked_before_the_first_runs(defs, own_instance):
    with pytest.raises(CliError, match=r"min_accuracy"):
        launch_graph({"model_evaluation": {"min_accuracy": "high"}}, start=FIRST_DAY, end=FIRST_DAY, defs=defs)
    with pytest.raises(CliError, match=r"the parameters name model_deployment, not assets of pipeline bootstrap"):
        launch_graph({"model_deployment": {}}, start=FIRST_DAY, end=FIRST_DAY, defs=defs)
    assert own_instance.get_runs() == []

"""The local instance's event log (resources/event_log.py): Dagster's SQLite event log in Dagster's own
place, with connections kept open per shard. What a run stores reads back the same through Dagster's stock
storage, and what the stock storage stored before reads back through ours; connections are WAL and
``synchronous=NORMAL``; only the most recently used shards keep an engine, and an evicted shard still reads."""

from __future__ import annotations

import time

import dagster as dg
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqliteEventLogStorage

from ml_platform.settings import Settings
from resources.event_log import MAX_OPEN_SHARDS, LocalEventLogStorage


@dg.asset(partitions_def=dg.DailyPartitionsDefinition(start_date="2026-01-01", end_date="2026-01-04"))
def daily(context) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"first_day": context.partition_key_range.start})


def materialization(run_id: str, partition: str) -> EventLogEntry:
    event = DagsterEvent(
        DagsterEventType.ASSET_MATERIALIZATION.value,
        "job",
        event_specific_data=StepMaterializationData(dg.AssetMaterialization(asset_key="a", partition=partition)),
    )
    return EventLogEntry(
        error_info=None, level=20, user_message="", run_id=run_id, timestamp=time.time(), dagster_event=event,
        job_name="job",
    )  # fmt: skip


def local_instance(tmp_path) -> tuple[Settings, dg.DagsterInstance]:
    settings = Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path / "home")})
    settings.prepare()
    return settings, dg.DagsterInstance.from_config(str(settings.dagster_home))


def test_a_runs_events_are_in_dagsters_files_and_read_back_by_the_stock_storage(tmp_path):
    settings, instance = local_instance(tmp_path)
    with instance:
        storage = instance.event_log_storage
        assert type(storage) is LocalEventLogStorage
        runs_dir = settings.dagster_home / "history" / "runs"
        assert storage._base_dir == str(runs_dir)  # where Dagster's default SQLite storage keeps them
        result = dg.materialize(
            [daily],
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": "2026-01-01",
                "dagster/asset_partition_range_end": "2026-01-03",
            },
        )
        assert result.success
        ours = [e.dagster_event_type for e in instance.all_logs(result.run_id)]
        assert instance.get_materialized_partitions(dg.AssetKey("daily")) == {"2026-01-01", "2026-01-02", "2026-01-03"}
        assert (runs_dir / f"{result.run_id}.db").is_file() and (runs_dir / "index.db").is_file()

    stock = SqliteEventLogStorage(str(runs_dir))
    assert [e.dagster_event_type for e in stock.get_logs_for_run(result.run_id)] == ours
    assert ours.count(DagsterEventType.ASSET_MATERIALIZATION) == 3
    assert stock.get_materialized_partitions(dg.AssetKey("daily")) == {"2026-01-01", "2026-01-02", "2026-01-03"}
    stock.dispose()


def test_events_the_stock_storage_stored_before_read_back_and_new_ones_add_to_them(tmp_path):
    runs_dir = tmp_path / "runs"
    stock = SqliteEventLogStorage(str(runs_dir))
    for day in ("1", "2"):
        stock.store_event(materialization("before", day))
    stock.dispose()

    ours = LocalEventLogStorage(str(runs_dir))
    ours.store_event(materialization("before", "3"))
    ours.store_event(materialization("after", "4"))
    assert len(ours.get_logs_for_run("before")) == 3 and len(ours.get_logs_for_run("after")) == 1
    assert ours.get_materialized_partitions(dg.AssetKey("a")) == {"1", "2", "3", "4"}
    ours.dispose()


def test_connections_are_wal_and_synchronous_normal_and_only_recent_shards_stay_open(tmp_path):
    storage = LocalEventLogStorage(str(tmp_path / "runs"))
    runs = [f"run{number}" for number in range(MAX_OPEN_SHARDS + 3)]
    for run_id in runs:
        storage.store_event(materialization(run_id, run_id))
    with storage.run_connection("run0") as connection:  # evicted long ago: opened again
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL (FULL is 2)
    assert len(storage._engines) == MAX_OPEN_SHARDS
    assert list(storage._engines)[-2:] == ["index", "run0"]  # most recently used last
    assert [len(storage.get_logs_for_run(run_id)) for run_id in runs] == [1] * len(runs)
    assert storage.get_materialized_partitions(dg.AssetKey("a")) == set(runs)
    storage.dispose()
    assert not storage._engines

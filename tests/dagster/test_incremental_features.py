"""customer_stats by day, through Dagster: each partition continues from the day before; a range of days
in one run, days one run each, and a backfill of an old day (with the days after it, as the graph's
partition dependencies say) all give the whole-history table; the online store loaded day by day equals
a full reload (job reload_online_store).

The module builds a small code location of its own (the data and features groups, the real jobs and
schedule) over a temporary state directory, so it neither needs nor changes the session's graph world.
"""

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pandas as pd
import pytest

from assets.data import raw_transactions, validated_transactions
from assets.features import customer_stats, feature_store, online_features
from ml_platform.data.schema import ENTITY_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import STORED_FEATURES, compute_customer_stats
from ml_platform.features.store import FEATURE_SERVICE, offline_days
from resources.feast import FeastResource
from resources.storage import StateIOManager, StateStorage
from runs.launch import launch
from sensors import ingest, refresh_features, refresh_features_daily, reload_online_store
from tests.support.runs import materializations

DAYS = [date(2026, 3, 1) + timedelta(days=n) for n in range(5)]
DATA = {"n_customers": 120, "transactions_per_day": 150, "seed": 11}


def code_location(home) -> dg.Definitions:
    resources = {
        "io_manager": StateIOManager(base_dir=str(home / "data")),
        "state": StateStorage(base_dir=str(home / "data")),
        "feast": FeastResource(
            repo_dir=str(home / "feast"), offline_dir=str(home / "feast" / "offline"), project="incremental"
        ),
    }
    return dg.Definitions(
        assets=[raw_transactions, validated_transactions, customer_stats, feature_store, online_features],
        jobs=[ingest, refresh_features, reload_online_store],
        schedules=[refresh_features_daily],
        resources=resources,
    )


def run(defs, job: str, first: date, last: date, data: dict | None = None):
    result = launch(job, {"raw_transactions": data} if data else None, start=first, end=last, defs=defs)
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return result


def stored_transactions(defs) -> pd.DataFrame:
    state = defs.resources["state"]
    return pd.concat(
        [pd.read_parquet(state.table_path("validated_transactions", str(day))) for day in DAYS], ignore_index=True
    )


def offline_table(defs) -> pd.DataFrame:
    table = pd.read_parquet(defs.resources["feast"].repo().offline_table_path)
    return table.sort_values([TIMESTAMP_COLUMN, ENTITY_COLUMN], kind="stable").reset_index(drop=True)


def online(defs, customers: list[int]) -> pd.DataFrame:
    store = defs.resources["feast"].store()
    return (
        store.get_online_features(
            features=store.get_feature_service(FEATURE_SERVICE), entity_rows=[{ENTITY_COLUMN: c} for c in customers]
        )
        .to_df()
        .set_index(ENTITY_COLUMN)[list(STORED_FEATURES)]
    )


def assert_features_are_the_whole_history(defs) -> pd.DataFrame:
    """The offline table equals compute_customer_stats over every stored day, row for row, and the online
    store holds each customer's newest row; returns what the online store answered."""
    transactions = stored_transactions(defs)
    pd.testing.assert_frame_equal(offline_table(defs), compute_customer_stats(transactions), check_exact=True)
    customers = sorted(transactions[ENTITY_COLUMN].unique().tolist())
    newest = compute_customer_stats(transactions).drop_duplicates(ENTITY_COLUMN, keep="last").set_index(ENTITY_COLUMN)
    answered = online(defs, customers)
    pd.testing.assert_frame_equal(
        answered, newest.loc[customers, list(STORED_FEATURES)], check_exact=True, check_dtype=False
    )
    return answered


@pytest.fixture(scope="module")
def day_by_day(tmp_path_factory):
    """Five days, each ingested and then refreshed in a run of its own (the nightly schedule's way)."""
    defs = code_location(tmp_path_factory.mktemp("day_by_day"))
    for day in DAYS:
        run(defs, "ingest", day, day, DATA)
        run(defs, "refresh_features", day, day)
    return defs


def test_days_refreshed_one_run_each_give_the_whole_history_online_and_offline(day_by_day):
    answered = assert_features_are_the_whole_history(day_by_day)
    repo = day_by_day.resources["feast"].repo()
    assert offline_days(repo) == DAYS
    assert [path.stem for path in sorted(repo.state_dir.glob("*.parquet"))] == [str(day) for day in DAYS]
    last_state = pd.read_parquet(repo.state_path(DAYS[-1]))
    assert len(last_state) == len(answered) == stored_transactions(day_by_day)[ENTITY_COLUMN].nunique()


def test_the_online_store_loaded_day_by_day_equals_a_full_reload(day_by_day):
    customers = sorted(stored_transactions(day_by_day)[ENTITY_COLUMN].unique().tolist()) + [10**9]
    by_day = online(day_by_day, customers)
    day_by_day.resources["feast"].repo().online_store_path.unlink()
    run_result = day_by_day.resolve_job_def("reload_online_store").execute_in_process(instance=dg.DagsterInstance.get())
    assert run_result.success
    reloaded = online(day_by_day, customers)
    assert reloaded["total_purchases"].notna().sum() == len(customers) - 1  # all but the unknown customer
    pd.testing.assert_frame_equal(by_day, reloaded, check_exact=True)


def test_a_range_in_one_run_gives_the_same_table(day_by_day, tmp_path):
    defs = code_location(tmp_path)
    result = run(defs, "ingest", DAYS[0], DAYS[-1], DATA)
    result = run(defs, "refresh_features", DAYS[0], DAYS[-1])
    assert {m["continued_from"] for m in materializations(result, "customer_stats")} == {"no earlier day"}
    assert len(materializations(result, "customer_stats")) == len(DAYS)  # one materialization per day
    assert_features_are_the_whole_history(defs)
    pd.testing.assert_frame_equal(offline_table(defs), offline_table(day_by_day), check_exact=True)


def downstream_partitions(defs, asset: str, day: date, through: date) -> dict[str, list[str]]:
    """What depends on ``asset``'s partition ``day``, by the graph's own partition mappings (the self-
    dependency included), up to ``through``: asset -> its partitions."""
    graph = defs.resolve_asset_graph()
    found: dict[str, set[str]] = {}
    frontier = [(dg.AssetKey(asset), str(day))]
    while frontier:
        asset_key, partition_key = frontier.pop()
        for child in graph.get_children_partitions(asset_key, partition_key):
            if child.partition_key is None or child.partition_key > str(through):
                continue
            partitions = found.setdefault(child.asset_key.to_user_string(), set())
            if child.partition_key not in partitions:
                partitions.add(child.partition_key)
                frontier.append((child.asset_key, child.partition_key))
    return {name: sorted(keys) for name, keys in found.items()}


def test_a_backfill_of_an_old_day_recomputes_it_and_the_days_after_it(tmp_path):
    defs = code_location(tmp_path)
    for day in DAYS:
        run(defs, "ingest", day, day, DATA)
        run(defs, "refresh_features", day, day)
    before = offline_table(defs)

    # Day 2 arrives again, different; refreshed alone it is right, and it says which days are now behind it.
    changed = DAYS[1]
    run(defs, "ingest", changed, changed, {**DATA, "seed": 99})
    alone = run(defs, "refresh_features", changed, changed)
    [metadata] = materializations(alone, "customer_stats")
    assert metadata["later_days_to_recompute"] == ", ".join(str(day) for day in DAYS[2:])

    # The graph says what follows from customer_stats of day 2: every later day of it (the self-dependency)
    # and of online_features; that backfill, in one run, gives the whole history again.
    behind = downstream_partitions(defs, "customer_stats", changed, DAYS[-1])
    assert behind["customer_stats"] == [str(day) for day in DAYS[2:]]
    assert behind["online_features"] == [str(day) for day in DAYS[1:]]
    first, last = date.fromisoformat(behind["customer_stats"][0]), date.fromisoformat(behind["customer_stats"][-1])
    run(defs, "refresh_features", first, last)
    assert_features_are_the_whole_history(defs)
    after = offline_table(defs)
    day_1 = before[TIMESTAMP_COLUMN].dt.date == DAYS[0]
    pd.testing.assert_frame_equal(after[after[TIMESTAMP_COLUMN].dt.date == DAYS[0]], before[day_1])  # untouched
    assert (
        not after[after[TIMESTAMP_COLUMN].dt.date == DAYS[-1]]
        .reset_index(drop=True)
        .equals(before[before[TIMESTAMP_COLUMN].dt.date == DAYS[-1]].reset_index(drop=True))
    )  # the last day's running totals moved with day 2


def test_a_day_that_would_skip_a_stored_day_is_refused_with_that_day_named(tmp_path):
    defs = code_location(tmp_path)
    run(defs, "ingest", DAYS[0], DAYS[2], DATA)
    run(defs, "refresh_features", DAYS[0], DAYS[0])
    result = launch("refresh_features", start=DAYS[2], end=DAYS[2], defs=defs)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert (
        "leave out the stored transactions of 1 day(s) between: 2026-03-02" in failure.event_specific_data.error.message
    )
    assert not defs.resources["feast"].repo().offline_day_path(DAYS[2]).exists()


def test_the_daily_schedule_refreshes_yesterday_at_01_30(tmp_path):
    defs = code_location(tmp_path)
    schedule = defs.resolve_schedule_def("refresh_features_daily")
    assert schedule.cron_schedule == "30 1 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 3, 6, 1, 30, tzinfo=UTC), repository_def=defs.get_repository_def()
    )
    [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-03-05"
    assert request.job_name == "refresh_features"

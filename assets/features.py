"""Group features: the offline feature table (by day, incremental), the Feast repo, and the online store."""

from datetime import date

import dagster as dg
import pandas as pd

from assets.common import DAILY_PARTITIONS, Stopwatch, md_table, row_count_metadata
from ml_platform.data.schema import ENTITY_COLUMN
from ml_platform.features.engineering import STORED_FEATURES, describe_features, fold_customer_stats
from ml_platform.features.store import (
    FEATURE_SERVICE,
    FEATURE_VIEW,
    feature_definitions,
    last_changes,
    load_online_store,
    offline_days,
    offline_window,
    state_before,
    store_day,
    write_online_changes,
)
from resources.feast import FeastResource
from resources.storage import StateStorage

ALL_STORED_DAYS = {"validated_transactions": dg.AssetIn(metadata={"allow_missing_partitions": True})}

# Day d of customer_stats continues from day d-1's carried state. The first day of the partitions has no
# day before it (allow_nonexistent_upstream_partitions).
PREVIOUS_DAY = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True)


def _days(context: dg.AssetExecutionContext) -> list[date]:
    window = context.partition_time_window
    return [day.date() for day in pd.date_range(window.start, window.end, freq="D", inclusive="left")]


@dg.asset(
    group_name="features",
    partitions_def=DAILY_PARTITIONS,
    # A run over a range of days (bootstrap, `ml-platform run --start .. --end ..`, a backfill) is one step
    # that folds the range's days oldest first, each from the state the day before left: Dagster 1.x runs
    # a self-dependent asset over a range in a single run only with a single-run backfill policy, and one
    # step keeps the order of the days in our hands. Runs of one day each (the daily schedule, a multi-run
    # backfill, which Dagster orders oldest first for a self-dependency) do the same one day at a time.
    backfill_policy=dg.BackfillPolicy.single_run(),
    ins={"validated_transactions": dg.AssetIn(metadata={"allow_missing_partitions": True})},
    deps=[dg.AssetDep("customer_stats", partition_mapping=PREVIOUS_DAY)],
    kinds={"pandas", "parquet"},
    description="The offline feature table, one file per day: each customer's history (total_purchases, "
    "avg_order_value, lifetime_value, last order time) after every event time of the day, continued from the "
    "state the day before left (stored beside it). The Feast source of view customer_stats.",
)
def customer_stats(
    context: dg.AssetExecutionContext, validated_transactions: pd.DataFrame, feast: FeastResource, state: StateStorage
) -> dg.MaterializeResult:
    repo = feast.repo()
    days = _days(context)
    carried_day, carried = state_before(repo, days[0])
    left_out = [
        day
        for day in state.stored_days("validated_transactions")
        if day < days[0] and (carried_day is None or day > carried_day)
    ]
    if left_out:
        shown = ", ".join(str(day) for day in left_out[:5])
        raise dg.Failure(
            f"customer_stats for {days[0]} would continue from the state after "
            f"{carried_day or 'no day'} and leave out the stored transactions of {len(left_out)} day(s) between: "
            f"{shown}. Materialize customer_stats from {left_out[0]} through {days[-1]} in one run instead."
        )
    timer = Stopwatch()
    rows_per_day: dict[str, int] = {}
    written = []
    with timer.measure():
        for day, after, rows in fold_customer_stats(carried, days, validated_transactions):
            store_day(repo, day.date(), after, rows)
            rows_per_day[str(day.date())] = len(rows)
            written.append(rows)
            carried = after
    stats = pd.concat(written, ignore_index=True) if written else pd.DataFrame(columns=list(STORED_FEATURES))
    later = [str(day) for day in offline_days(repo) if day > days[-1]]
    return dg.MaterializeResult(
        metadata={
            **row_count_metadata(context, len(stats)),
            "customers": len(carried),
            "customers_changed": int(stats[ENTITY_COLUMN].nunique()) if len(stats) else 0,
            "transactions": len(validated_transactions),
            "continued_from": str(carried_day) if carried_day else "no earlier day",
            "rows_per_day": md_table(pd.Series(rows_per_day, name="rows").to_frame(), 40),
            # A changed day changes every later day's running stats: these days are now behind it.
            "later_days_to_recompute": ", ".join(later[:10]) + (" ..." if len(later) > 10 else "") or "none",
            "path": dg.MetadataValue.path(str(repo.offline_table_path)),
            "feature_statistics": md_table(describe_features(stats, STORED_FEATURES)) if len(stats) else "no rows",
            "compute_seconds": timer.seconds,
        }
    )


@dg.asset(
    group_name="features",
    deps=[customer_stats],
    kinds={"feast"},
    description="The Feast repo applied: entity customer, the customer_stats view (explicit schema, over every "
    f"day's file of the offline table) and the model's feature service {FEATURE_SERVICE}.",
)
def feature_store(feast: FeastResource) -> dg.MaterializeResult:
    repo = feast.repo()
    store = feast.store()
    timer = Stopwatch()
    with timer.measure():
        store.apply(feature_definitions(repo))
    view = store.get_feature_view(FEATURE_VIEW)
    schema = pd.DataFrame(
        [{"feature": field.name, "type": str(field.dtype), "description": field.description} for field in view.schema]
    )
    return dg.MaterializeResult(
        metadata={
            "project": repo.project,
            "entity": "customer (customer_id)",
            "feature_view": FEATURE_VIEW,
            "feature_service": FEATURE_SERVICE,
            "schema": md_table(schema, index=False),
            "registry": dg.MetadataValue.path(str(repo.registry_path)),
            "feature_store_yaml": dg.MetadataValue.path(str(repo.repo_dir / "feature_store.yaml")),
            "compute_seconds": timer.seconds,
        }
    )


@dg.asset(
    group_name="features",
    partitions_def=DAILY_PARTITIONS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[feature_store, customer_stats],
    kinds={"feast", "sqlite"},
    description="The customers whose stats the day settled (their newest row of the offline table is that "
    "day's) written to the online store (what serving reads); every day loaded gives what a full load gives "
    "(job reload_online_store).",
)
def online_features(context: dg.AssetExecutionContext, feast: FeastResource) -> dg.MaterializeResult:
    repo = feast.repo()
    days = _days(context)
    timer = Stopwatch()
    with timer.measure():
        store = feast.store()
        changes = last_changes(repo, days[0], days[-1])
        written = write_online_changes(store, changes)
        sample = changes.head(3)
        online = store.get_online_features(
            features=store.get_feature_service(FEATURE_SERVICE),
            entity_rows=[{ENTITY_COLUMN: int(c)} for c in sample[ENTITY_COLUMN]],
        ).to_df()
    if len(sample) and not (online["total_purchases"].to_numpy() == sample["total_purchases"].to_numpy()).all():
        raise dg.Failure(
            f"online_features: the sampled customers {sample[ENTITY_COLUMN].tolist()} read back other stats"
        )
    return dg.MaterializeResult(
        metadata={
            "customers": written,
            "first_day": str(days[0]),
            "last_day": str(days[-1]),
            "online_store": feast.repo().describe_online_store(),
            "sample_read_back": md_table(online, index=False),
            "compute_seconds": timer.seconds,
        }
    )


@dg.op(
    description="Every customer's latest stats loaded into the online store from the whole offline table, after "
    "applying the Feast repo: a repair, when the online store was lost or may hold what the offline table no "
    "longer says.",
)
def load_every_customer_online(context: dg.OpExecutionContext, feast: FeastResource) -> None:
    repo = feast.repo()
    store = feast.store()
    store.apply(feature_definitions(repo))
    try:
        start, end = offline_window(repo)
    except ValueError as error:
        raise dg.Failure(f"reload_online_store: {error}") from error
    load_online_store(store, start, end)
    context.log.info(f"loaded every customer of {repo.offline_table_path} ({start} .. {end}) into the online store")

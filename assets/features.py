"""Group features: the offline feature table, the Feast repo, and the online store."""

from datetime import timedelta

import dagster as dg
import pandas as pd

from assets.common import Stopwatch, md_table
from ml_platform.data.schema import ENTITY_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import STORED_FEATURES, compute_customer_stats, describe_features
from ml_platform.features.store import FEATURE_SERVICE, FEATURE_VIEW, feature_definitions, load_online_store
from ml_platform.storage import write_table
from resources.feast import FeastResource

ALL_STORED_DAYS = {"validated_transactions": dg.AssetIn(metadata={"allow_missing_partitions": True})}


@dg.asset(
    group_name="features",
    ins=ALL_STORED_DAYS,
    kinds={"pandas", "parquet"},
    description="The offline feature table: each customer's history (total_purchases, avg_order_value, "
    "lifetime_value, last order time) after every event time. The Feast source of view customer_stats.",
)
def customer_stats(validated_transactions: pd.DataFrame, feast: FeastResource) -> dg.MaterializeResult:
    timer = Stopwatch()
    with timer.measure():
        stats = compute_customer_stats(validated_transactions)
    path = feast.repo().offline_table_path
    write_table(stats, path)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(stats),
            "customers": int(stats[ENTITY_COLUMN].nunique()),
            "transactions": len(validated_transactions),
            "from": str(stats[TIMESTAMP_COLUMN].min()),
            "to": str(stats[TIMESTAMP_COLUMN].max()),
            "path": dg.MetadataValue.path(str(path)),
            "feature_statistics": md_table(describe_features(stats, STORED_FEATURES)),
            "compute_seconds": timer.seconds,
        }
    )


@dg.asset(
    group_name="features",
    deps=[customer_stats],
    kinds={"feast"},
    description="The Feast repo applied: entity customer, the customer_stats view (explicit schema) and "
    f"the model's feature service {FEATURE_SERVICE}.",
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
    deps=[feature_store],
    kinds={"feast", "sqlite"},
    description="Every customer's latest stats loaded into the online store (what serving reads).",
)
def online_features(feast: FeastResource) -> dg.MaterializeResult:
    timer = Stopwatch()
    with timer.measure():
        store = feast.store()
        offline = pd.read_parquet(feast.repo().offline_table_path, columns=[ENTITY_COLUMN, TIMESTAMP_COLUMN])
        if offline.empty:
            raise dg.Failure("online_features: the offline table customer_stats is empty; nothing to load")
        start = offline[TIMESTAMP_COLUMN].min().to_pydatetime()
        end = offline[TIMESTAMP_COLUMN].max().to_pydatetime() + timedelta(seconds=1)
        load_online_store(store, start, end)
        customers = offline[ENTITY_COLUMN].drop_duplicates()
        sample = customers.head(3).tolist()
        online = store.get_online_features(
            features=store.get_feature_service(FEATURE_SERVICE),
            entity_rows=[{ENTITY_COLUMN: c} for c in sample],
        ).to_df()
    loaded = int(online["total_purchases"].notna().sum())
    if loaded != len(sample):
        raise dg.Failure(f"online_features: only {loaded} of {len(sample)} sampled customers read back online")
    return dg.MaterializeResult(
        metadata={
            "customers": len(customers),
            "window_start": str(start),
            "window_end": str(end),
            "online_store": dg.MetadataValue.path(str(feast.repo().online_store_path)),
            "sample_read_back": md_table(online, index=False),
            "compute_seconds": timer.seconds,
        }
    )

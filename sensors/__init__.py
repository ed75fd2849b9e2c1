"""Jobs (verbs), the schedules that run them, and the sensors that close the loop."""

import dagster as dg

from assets.features import load_every_customer_online
from sensors.monitoring import MONITORING_JOBS, MONITORING_SCHEDULES, SENSORS
from sensors.rollback import rollback

__all__ = ["JOBS", "SCHEDULES", "SENSORS"]

# Take in a day of transactions: raw -> validated (daily partitions).
ingest = dg.define_asset_job(
    "ingest",
    selection=dg.AssetSelection.groups("data"),
    description="Load and validate one day of transactions (or a range, in one run).",
)

# A day's features (daily partitions, or a range of days in one run): customer_stats continued from the
# day before, the Feast repo applied, the customers the day changed written to the online store.
refresh_features = dg.define_asset_job(
    "refresh_features",
    selection=dg.AssetSelection.groups("features"),
    description="customer_stats of the day (or range) from the state the day before left, the Feast repo "
    "applied, the day's changed customers written to the online store.",
)

# The repair: the Feast repo applied and every customer loaded into the online store from the whole offline
# table (a lost or suspect online store); the daily refresh writes only the day's changed customers.
reload_online_store = dg.GraphDefinition(
    name="reload_online_store",
    node_defs=[load_every_customer_online],
    description="Apply the Feast repo and load every customer's latest stats from the whole offline table.",
).to_job()

# Train a challenger, evaluate it against the champion, promote it if every gate passes, and serve it: a
# retrain the drift sensor requests ends with the new champion answering. A failed gate stops the run
# before champion_model, so nothing is promoted and nothing is deployed.
retrain = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.groups("training", "evaluation") | dg.AssetSelection.assets("model_deployment"),
    description="training_set -> trained_model -> model_evaluation (gates) -> champion_model -> model_deployment.",
)

# Everything, raw data to champion, over a range of days (make demo, first start), launched as two runs of
# this job by runs.launch.launch_graph: the days' assets over the range, then training to promotion in a
# run of no partition. One run tagged with the range would leave a planned ("Skipped") day of every
# unpartitioned asset and check behind, as Dagster 1.13 plans them per day of the run.
bootstrap = dg.define_asset_job(
    "bootstrap",
    selection=dg.AssetSelection.groups("data", "features", "training", "evaluation"),
    description="The whole graph over a range of days: ingest and features over the days in one run, then "
    "train, evaluate, promote in a second (`ml-platform run --pipeline all`; from the UI, materialize the "
    "assets, which a backfill splits the same way).",
)

# Serve a version in an environment (model_deployment's DeployConfig: the default environment and the
# champion unless configured), then smoke-test that environment's endpoint. Every deploy goes through this
# job, `ml-platform deploy --env local|staging|prod` included, so the rollback sensor sees each smoke check.
deploy = dg.define_asset_job(
    "deploy",
    selection=dg.AssetSelection.assets("model_deployment"),
    description="Serve a version (default: the champion) in an environment (default: the profile's), pinned where "
    "the environment pins, and smoke-test that environment's endpoint.",
)

# Score a day's transactions with the champion.
predict_batch = dg.define_asset_job(
    "predict_batch",
    selection=dg.AssetSelection.assets("batch_predictions"),
    description="Score one day of transactions with the champion (parquet in, parquet out).",
)

JOBS = [
    ingest,
    refresh_features,
    reload_online_store,
    retrain,
    bootstrap,
    deploy,
    predict_batch,
    rollback,
    *MONITORING_JOBS,
]

ingest_daily = dg.build_schedule_from_partitioned_job(
    ingest,
    name="ingest_daily",
    hour_of_day=1,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Yesterday's transactions at 01:00 UTC.",
)

refresh_features_daily = dg.build_schedule_from_partitioned_job(
    refresh_features,
    name="refresh_features_daily",
    hour_of_day=1,
    minute_of_hour=30,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Yesterday's features at 01:30 UTC, after its ingestion.",
)

retrain_daily = dg.ScheduleDefinition(
    name="retrain_daily",
    job=retrain,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Retrain daily at 02:00 UTC, after the day's ingestion (01:00) and features (01:30).",
)

SCHEDULES = [ingest_daily, refresh_features_daily, retrain_daily, *MONITORING_SCHEDULES]

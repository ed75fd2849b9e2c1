"""Group monitoring: training/serving skew, the features the server used against the training set's.

Training and serving read the same daily snapshot of each customer's stats (the online store is loaded
nightly through the last complete day; the training join gives each transaction the stats from before
its day), so a served transaction, once ingested, must get back exactly the features it was served
with. ``feature_skew`` checks that on the window's traffic (``ml_platform.monitoring.skew``).
"""

import dagster as dg

from assets.common import Stopwatch, md_table
from assets.monitoring import WindowConfig, prediction_log, rule_check
from ml_platform.features.store import point_in_time_stats
from ml_platform.monitoring.skew import SKEW_CHECK, partition_files, read_stored_transactions, skew_rule
from ml_platform.monitoring.skew import feature_skew as compute_feature_skew
from ml_platform.monitoring.window import Window, read_predictions
from ml_platform.storage import asset_path
from resources.feast import FeastResource
from resources.monitoring import MonitoringResource
from resources.storage import StateStorage

STORED_TRANSACTIONS = "validated_transactions"


@dg.asset(
    group_name="monitoring",
    deps=[prediction_log, STORED_TRANSACTIONS, "feature_store"],
    kinds={"feast", "pandas"},
    check_specs=[
        dg.AssetCheckSpec(
            SKEW_CHECK,
            asset="feature_skew",
            description="share of served transactions whose features differ from the training set's (WARN)",
        )
    ],
    description="The window's served predictions that named a customer, once their transactions are "
    "ingested: the features the server used against the ones the training set gives the same transactions "
    "(Feast point-in-time join of the daily snapshot + model_features), row by row.",
)
def feature_skew(config: WindowConfig, monitoring: MonitoringResource, feast: FeastResource, state: StateStorage):
    try:
        window = Window.parse(config.window)
        rule = skew_rule(monitoring.feature_skew_threshold)
    except ValueError as error:
        raise dg.Failure(f"feature_skew: {error}") from error
    repo = feast.repo()
    stored_files = partition_files(asset_path(state.base_dir, [STORED_TRANSACTIONS], None, ""))

    def offline_stats(transactions):
        missing = [str(p) for p in (repo.offline_table_path, repo.registry_path) if not p.exists()]
        if missing:
            raise dg.Failure(
                f"feature_skew: the feature store is not built ({', '.join(missing)} missing); "
                "materialize customer_stats and feature_store first"
            )
        return point_in_time_stats(feast.store(), transactions)

    timer = Stopwatch()
    with timer.measure():
        predictions = read_predictions(monitoring.paths().log_dir, window)
        report = compute_feature_skew(
            predictions, lambda ids: read_stored_transactions(stored_files, ids), offline_stats
        )
    share = report.mismatched_share
    metadata: dict[str, object] = {
        "rows_compared": report.compared,
        "rows_not_in_offline_store": report.not_stored,
        "rows_mismatched": report.mismatched,
        "served_rows_with_customer": report.served_rows,
        "tolerance": f"relative {report.tolerance:g}; NaN equals NaN",
        "window": window.label,
        "compute_seconds": timer.seconds,
    }
    if share is not None:
        metadata["mismatched_share"] = float(share)
        metadata["mismatches_by_feature"] = md_table(report.to_frame(), max_rows=len(report.to_frame()), index=False)
    if report.examples:
        metadata["example_request_ids"] = ", ".join(report.examples)
    yield dg.MaterializeResult(metadata=metadata)

    no_data = None
    if report.served_rows == 0:
        no_data = f"no prediction for a customer id logged over {window.label}"
    elif report.compared == 0:
        no_data = f"none of the {report.served_rows} served transactions is in the offline store yet"
    yield rule_check(
        rule,
        share,
        window,
        no_data=no_data,
        describe=f"{report.mismatched} of {report.compared} served transactions have other features than the "
        f"training set gives them ({report.not_stored} not in the offline store yet)",
        metadata={
            "rows_compared": report.compared,
            "rows_mismatched": report.mismatched,
            "rows_not_in_offline_store": report.not_stored,
            "example_request_ids": ", ".join(report.examples),
        },
    )

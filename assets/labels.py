"""Group monitoring: real labels (chargebacks, analysts' verdicts) imported from files into the label store.

Labels arrive weeks after the transactions they judge, as files dropped into an inbox folder (the
``monitoring`` resource's ``labels_source_dir``). Each UTC day's files are one partition: the day the
files arrived, which has nothing to do with the day of the predictions they judge (``live_performance``
joins on the request id and judges by prediction time). The partitions are the prediction log's days,
today included: files can be imported on the day they land, as the server's log of the day can be.
"""

import dagster as dg

from assets.monitoring import PREDICTION_LOG_PARTITIONS
from ml_platform.monitoring.labels import inbox_files
from ml_platform.monitoring.window import ANSWERED_VARIANTS
from ml_platform.predictions import read_prediction_log
from resources.monitoring import MonitoringResource

# The batch name of a day's import in the label store: a re-run replaces it.
BATCH_PREFIX = "inbox-"


@dg.asset(
    group_name="monitoring",
    partitions_def=PREDICTION_LOG_PARTITIONS,
    kinds={"parquet"},
    description="One day's label files imported into the label store that live_performance reads. The files "
    "of day D are the *.csv and *.parquet files of the labels inbox (the monitoring resource's "
    "labels_source_dir, default <monitoring dir>/labels_inbox) whose name holds D (chargebacks-D.csv) or that "
    "lie in its folder D/. A row: request_id or transaction_id, label (1/0, true/false or fraud/legit), "
    "labelled_at (ISO 8601, UTC when no offset; empty: now). All or nothing: a bad file fails the run naming "
    "the file, the row and the reason, and nothing of the day is written. Re-running a day replaces its "
    "import (never counted twice); a day without files leaves an earlier import of it as it is. The latest "
    "label of a request wins (by labelled_at, then arrival).",
)
def labels(context: dg.AssetExecutionContext, monitoring: MonitoringResource) -> dg.MaterializeResult:
    day = context.partition_key
    inbox = monitoring.labels_source()
    paths = monitoring.paths()
    store = paths.labels()
    files = inbox_files(inbox, day)
    metadata: dict[str, object] = {"inbox": dg.MetadataValue.path(str(inbox)), "files": len(files)}
    if files:
        try:
            result = store.import_files(files, batch=f"{BATCH_PREFIX}{day}")
        except ValueError as error:
            raise dg.Failure(str(error)) from error
        metadata.update(
            {
                "dagster/row_count": result.rows,
                "rows_imported": result.rows,
                "rows_refused": 0,
                "requests": result.requests,
                "new_labels": result.new,
                "labels_changed": result.changed,
                "positives": result.positives,
                "replaced_files": result.replaced_files,
                "file_names": ", ".join(path.name for path in files),
            }
        )
    else:
        context.log.info(f"no label files for {day} under {inbox}")
        metadata.update(
            {"rows_imported": 0, "rows_refused": 0, "note": f"no label files for {day}: an earlier import is kept"}
        )
    predictions = read_prediction_log(paths.log_dir, day)
    answered = predictions.loc[predictions["variant"].isin(list(ANSWERED_VARIANTS)), "request_id"].astype(str)
    known = store.read(request_ids=answered.unique())
    covered = int(answered.isin(known["request_id"]).sum())
    metadata.update(
        {
            "predictions_of_day": len(answered),
            "labelled_predictions_of_day": covered,
            "label_coverage": covered / len(answered) if len(answered) else None,
        }
    )
    return dg.MaterializeResult(metadata=metadata)

"""Group data: raw transactions by day, and the validated batch with its checks.

A batch is validated before it is stored: raw_transactions runs the data checks on what the source
delivered, and a batch they reject is not stored as raw data (the days' stored partitions, the last
good ones, stay as they were). It is kept beside them for inspection, under
``<data>/raw_transactions/rejected/``, its path in the failure and in an observation of the asset.
validated_transactions runs the same checks again on what was stored and reports them as asset checks.
"""

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa

from assets.common import (
    DAILY_PARTITIONS,
    TIMESTAMP_METADATA,
    Stopwatch,
    md_table,
    per_day_check_results,
    row_count_metadata,
)
from ml_platform.data.schema import LABEL_COLUMN, TIMESTAMP_COLUMN
from ml_platform.data.sources import SOURCES, load_transactions
from ml_platform.data.synthetic import SyntheticConfig
from ml_platform.data.validation import CheckOutcome, failure_message, validate_transactions
from ml_platform.storage import rows_per_day, write_table
from resources.storage import StateStorage

CHECKS = ("schema", "no_nulls", "value_ranges", "unique_ids")
BATCH_ACCEPTED = "batch_accepted"


class RawTransactionsConfig(dg.Config):
    """Where transactions come from: the seeded synthetic generator (default) or a parquet/CSV file."""

    source: str = "synthetic"
    path: str = ""
    seed: int = 42
    n_customers: int = 5_000
    n_merchants: int = 600
    transactions_per_day: int = 2_000
    fraud_rate: float = 0.02
    drift: float = 0.0
    novel_fraud: float = 0.0  # share of fraud with a look absent from history (see ml_platform.data.synthetic)


def _window(context: dg.AssetExecutionContext) -> tuple[date, date]:
    time_window = context.partition_time_window
    return time_window.start.date(), time_window.end.date()


@dg.asset(
    group_name="data",
    partitions_def=DAILY_PARTITIONS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata=TIMESTAMP_METADATA,
    kinds={"pandas", "parquet"},
    # The batch's verdict as a check of its own, so a rejected batch is an evaluated, failed check (the
    # alert sensor sends every failed check) even though nothing of it is stored and no downstream runs.
    check_specs=[
        dg.AssetCheckSpec(
            name=BATCH_ACCEPTED,
            asset="raw_transactions",
            blocking=True,
            partitions_def=DAILY_PARTITIONS,  # one verdict per day of the batch (per_day_check_results)
            description=f"The delivered batch passed every data check ({', '.join(CHECKS)}), one verdict per "
            "day of the batch; a rejected batch is kept under rejected/ and the days' stored partitions are left "
            "as they were.",
        )
    ],
    description="Card transactions of each UTC day, from the configured source. A batch the data checks "
    "reject is not stored (the day keeps its last good partition); it is kept under rejected/ for inspection.",
)
def raw_transactions(context: dg.AssetExecutionContext, config: RawTransactionsConfig, state: StateStorage):
    if config.source not in SOURCES:
        raise dg.Failure(f"raw_transactions: unknown source {config.source!r}; expected one of {SOURCES}")
    start, end = _window(context)
    timer = Stopwatch()
    with timer.measure():
        synthetic = None
        if config.source == "synthetic":
            synthetic = SyntheticConfig(
                seed=config.seed,
                n_customers=config.n_customers,
                n_merchants=config.n_merchants,
                transactions_per_day=config.transactions_per_day,
                fraud_rate=config.fraud_rate,
                drift=config.drift,
                novel_fraud=config.novel_fraud,
            )
        transactions = load_transactions(config.source, start, end, synthetic=synthetic, path=config.path)
        outcomes = validate_transactions(transactions)
    if not all(outcome.passed for outcome in outcomes):
        yield from _reject(context, state, transactions, outcomes, start, end)
    fraud_rate = float(transactions[LABEL_COLUMN].mean()) if LABEL_COLUMN in transactions and len(transactions) else 0.0
    yield dg.Output(
        transactions,
        metadata={
            **row_count_metadata(context, len(transactions)),
            "days": (end - start).days,
            "first_day": str(start),
            "last_day": str(end - timedelta(days=1)),
            "source": config.source,
            "drift": config.drift,
            "fraud_rate": fraud_rate,
            "preview": md_table(transactions, 5, index=False),
            "compute_seconds": timer.seconds,
        },
    )
    yield from per_day_check_results(
        context,
        [
            dg.AssetCheckResult(
                check_name=BATCH_ACCEPTED,
                passed=True,
                metadata={"rows": len(transactions), "checks": ", ".join(CHECKS)},
            )
        ],
    )


def _reject(
    context: dg.AssetExecutionContext,
    state: StateStorage,
    batch: pd.DataFrame,
    outcomes: list[CheckOutcome],
    start: date,
    end: date,
) -> Iterator[dg.AssetObservation | dg.AssetCheckEvaluation | dg.Output]:
    """Keep a rejected batch beside the stored partitions (which stay as they were), record where (an
    observation of each of the run's days), fail the batch_accepted check (so it is alerted) and the
    step: nothing of the batch is stored as raw data or reaches validated_transactions."""
    last = end - timedelta(days=1)
    label = str(start) if start == last else f"{start}_{last}"
    path = state.rejected_path("raw_transactions", label, context.run.run_id)
    _save_for_inspection(batch, path)
    failed = [outcome.name for outcome in outcomes if not outcome.passed]
    metadata = {
        "rejected_path": dg.MetadataValue.path(str(path)),
        "rejected_rows": len(batch),
        "failed_checks": ", ".join(failed),
        "stored_partitions": "unchanged",
    }
    for partition in context.partition_keys:
        yield dg.AssetObservation(asset_key=context.asset_key, partition=partition, metadata=metadata)
    verdict = dg.AssetCheckResult(
        check_name=BATCH_ACCEPTED,
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"batch for {label} rejected ({', '.join(failed)}); kept at {path}",
        metadata={**metadata, "details": failure_message(outcomes)},
    )
    yield from per_day_check_results(context, [verdict])
    raise dg.Failure(
        description=(
            f"raw_transactions: the batch for {label} ({len(batch)} rows) was rejected and not stored; the days' "
            f"stored partitions are unchanged. It is kept for inspection at {path}\n{failure_message(outcomes)}"
        ),
        metadata=metadata,
    )


def _save_for_inspection(batch: pd.DataFrame, path: Path) -> None:
    """Parquet as delivered; a column parquet cannot hold as delivered (values of mixed types) is
    written as text, so that whatever arrived can still be looked at."""
    try:
        write_table(batch, path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        text = batch.copy()
        for column in text.select_dtypes(include="object").columns:
            text[column] = text[column].map(lambda value: None if pd.isna(value) else str(value))
        write_table(text, path)


@dg.asset(
    group_name="data",
    partitions_def=DAILY_PARTITIONS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata=TIMESTAMP_METADATA,
    kinds={"pandas", "parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            name,
            asset="validated_transactions",
            blocking=True,
            description=description,
            partitions_def=DAILY_PARTITIONS,
        )
        for name, description in zip(
            CHECKS,
            (
                "every column of the schema, with its type, and no others",
                "no nulls in any column",
                "amounts, ids, categories, channels and labels inside their declared ranges",
                "transaction ids are unique",
            ),
            strict=True,
        )
    ],
    description="Transactions that passed every data check, run again on the stored raw batch and reported "
    "as checks (raw_transactions already refused a batch that fails them). A batch failing here stops the "
    "graph, with the columns and rows at fault in the check results; nothing of it is stored.",
)
def validated_transactions(context: dg.AssetExecutionContext, raw_transactions: pd.DataFrame):
    timer = Stopwatch()
    with timer.measure():
        outcomes = validate_transactions(raw_transactions)
    failed = [o for o in outcomes if not o.passed]
    results = [
        dg.AssetCheckResult(
            check_name=outcome.name,
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=outcome.description,
            metadata={
                "failing_rows": outcome.failing_rows,
                "rows_checked": len(raw_transactions),
                "columns": ", ".join(outcome.columns) or "-",
                **{f"examples_{column}": ", ".join(ids) for column, ids in outcome.examples.items()},
            },
        )
        for outcome in outcomes
    ]
    if failed:
        # Report every check, then stop: the bad batch is not stored and nothing downstream runs.
        yield from per_day_check_results(context, results)
        raise dg.Failure(description=failure_message(outcomes), metadata={"failed_checks": len(failed)})
    transactions = raw_transactions
    per_day = pd.Series(rows_per_day(transactions, TIMESTAMP_COLUMN))
    yield dg.Output(
        transactions,
        metadata={
            **row_count_metadata(context, len(transactions)),
            "rows_per_day": md_table(per_day.rename("rows").to_frame(), 40),
            "customers": int(transactions["customer_id"].nunique()),
            "fraud_rate": float(transactions[LABEL_COLUMN].mean()) if len(transactions) else 0.0,
            "compute_seconds": timer.seconds,
        },
    )
    yield from per_day_check_results(context, results)

"""Group data: raw transactions by day, and the validated batch with its checks."""

from datetime import date, timedelta

import dagster as dg
import pandas as pd

from assets.common import DAILY_PARTITIONS, TIMESTAMP_METADATA, Stopwatch, md_table, row_count_metadata
from ml_platform.data.schema import LABEL_COLUMN, TIMESTAMP_COLUMN
from ml_platform.data.sources import SOURCES, load_transactions
from ml_platform.data.synthetic import SyntheticConfig
from ml_platform.data.validation import failure_message, validate_transactions
from ml_platform.storage import split_by_day

CHECKS = ("schema", "no_nulls", "value_ranges", "unique_ids")


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


def _window(context: dg.AssetExecutionContext) -> tuple[date, date]:
    time_window = context.partition_time_window
    return time_window.start.date(), time_window.end.date()


@dg.asset(
    group_name="data",
    partitions_def=DAILY_PARTITIONS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata=TIMESTAMP_METADATA,
    kinds={"pandas", "parquet"},
    description="Card transactions of each UTC day, from the configured source.",
)
def raw_transactions(context: dg.AssetExecutionContext, config: RawTransactionsConfig) -> dg.Output[pd.DataFrame]:
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
            )
        transactions = load_transactions(config.source, start, end, synthetic=synthetic, path=config.path)
    fraud_rate = float(transactions[LABEL_COLUMN].mean()) if LABEL_COLUMN in transactions and len(transactions) else 0.0
    return dg.Output(
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


@dg.asset(
    group_name="data",
    partitions_def=DAILY_PARTITIONS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata=TIMESTAMP_METADATA,
    kinds={"pandas", "parquet"},
    check_specs=[
        dg.AssetCheckSpec(name, asset="validated_transactions", blocking=True, description=description)
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
    description="Transactions that passed every data check. A bad batch fails here and stops the graph, "
    "with the columns and rows at fault in the check results; nothing of it is stored.",
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
        yield from results
        raise dg.Failure(description=failure_message(outcomes), metadata={"failed_checks": len(failed)})
    transactions = raw_transactions
    per_day = pd.Series({day: len(rows) for day, rows in split_by_day(transactions, TIMESTAMP_COLUMN).items()})
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
    yield from results

"""Shared pieces of the asset layer: the daily partitions, metadata helpers, timing."""

import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import pandas as pd

# The daily partitions of the transaction stream; a partition is one UTC day.
DAILY_PARTITIONS = dg.DailyPartitionsDefinition(start_date="2025-01-01")

TIMESTAMP_METADATA = {"partition_column": "event_timestamp"}


def md_table(frame: pd.DataFrame, max_rows: int = 10, floatfmt: str = ".4g", index: bool = True) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.head(max_rows).to_markdown(index=index, floatfmt=floatfmt))


def row_count_metadata(context: dg.AssetExecutionContext, rows: int) -> dict[str, int]:
    """Row count of a partitioned output. A run over several days attaches the same metadata to every
    day's materialization, so there it is reported as the run's total, not as each day's row count."""
    if len(context.partition_keys) == 1:
        return {"dagster/row_count": rows}
    return {"rows_in_run": rows}


def run_key(context: dg.AssetExecutionContext) -> str:
    """The id shared by a run and all its retries (re-executions keep the root run id)."""
    return context.run.root_run_id or context.run.run_id


class Stopwatch:
    """Sums the seconds spent in the core's compute, reported as metadata (the benchmark reads it)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def measure(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - started

"""Shared pieces of the asset layer: the daily partitions, metadata helpers, per-day check results, timing."""

import datetime
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import dagster as dg
import numpy as np
import pandas as pd

from ml_platform.partitions import DAILY_TABLES, partitions_start, stored_days
from ml_platform.settings import ENVIRONMENT_VARIABLES, Settings, SettingsError

PARTITIONS_START_VARIABLE = ENVIRONMENT_VARIABLES["partitions_start"]


def check_partitions_start(settings: Settings) -> None:
    """Refuse a partitions start later than days already stored: those days would drop out of the
    partitions (no run could rewrite them, the UI would not show them) while their files stay and are read
    by the assets that read every stored day (training_set, feature_skew)."""
    start = partitions_start(settings)
    earlier = [day for day in stored_days(settings) if day < start]
    if earlier:
        raise SettingsError(
            f"{PARTITIONS_START_VARIABLE}={start.isoformat()} is later than {len(earlier)} stored day(s) of "
            f"{', '.join(DAILY_TABLES)} under {settings.data_dir} (the first is {earlier[0].isoformat()}): set "
            f"{PARTITIONS_START_VARIABLE} to {earlier[0].isoformat()} or earlier, or unset it (the partitions then "
            "start at the first stored day)"
        )


# Read once, when the asset modules are imported: a partitions definition is part of each asset's definition.
PARTITIONS_START = partitions_start(Settings.from_env())

# The daily partitions of the transaction stream; a partition is one UTC day.
DAILY_PARTITIONS = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START.isoformat())

TIMESTAMP_METADATA = {"partition_column": "event_timestamp"}


def md_table(
    frame: pd.DataFrame, max_rows: int = 10, floatfmt: str = ".4g", index: bool = True
) -> dg.TableMetadataValue:
    """The first ``max_rows`` rows of ``frame`` as Dagster table metadata (a sortable table in the UI, not
    markdown), with a typed schema; the index becomes the first column when ``index`` (named after it, or
    blank). Floats are rounded by ``floatfmt`` (4 significant digits), whole floats kept whole (counts).

    Dagster stores a record's values as JSON and takes only str, int, float, bool and None, so every cell
    is made one: NaN/NA/NaT None, infinities "inf"/"-inf", numpy scalars Python's, times ISO 8601 text,
    anything else its ``str``. (The name is historical: it returned markdown once.)"""
    shown = frame.head(max_rows)
    if index:
        names = [name if name is not None else "" for name in shown.index.names]
        shown = shown.reset_index(names=names if len(names) > 1 else names[0], allow_duplicates=True)
    columns = _unique_names([str(name) for name in shown.columns])
    rows = [[_cell(value, floatfmt) for value in row] for row in shown.itertuples(index=False, name=None)]
    types = [_column_type(shown.iloc[:, i], [row[i] for row in rows]) for i in range(len(columns))]
    return dg.MetadataValue.table(
        records=[dg.TableRecord(data=dict(zip(columns, row, strict=True))) for row in rows],
        schema=dg.TableSchema(
            columns=[dg.TableColumn(name, type=kind) for name, kind in zip(columns, types, strict=True)]
        ),
    )


def _unique_names(names: list[str]) -> list[str]:
    """Column names made unique (a record is a mapping): a repeated name gets ``_2``, ``_3``..."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique


def _column_type(column: pd.Series, cells: list[object]) -> str:
    """The column's type for the schema: from its dtype, or for an object column (bools or ints with a
    missing value) from the cells it holds."""
    if pd.api.types.is_datetime64_any_dtype(column):
        return "datetime"
    known = [cell for cell in cells if cell is not None]
    if known and all(isinstance(cell, bool) for cell in known):
        return "bool"
    if known and all(isinstance(cell, int) and not isinstance(cell, bool) for cell in known):
        return "int"
    if pd.api.types.is_float_dtype(column) or (
        known and all(isinstance(cell, int | float) and not isinstance(cell, bool) for cell in known)
    ):
        return "float"
    return "string"


def _cell(value: object, floatfmt: str) -> str | int | float | bool | None:
    """One table cell as a JSON-safe value Dagster's TableRecord accepts (see :func:`md_table`)."""
    if value is None or (not isinstance(value, str | bytes) and pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        if number.is_integer() and abs(number) < 1e15:
            return number
        return float(format(number, floatfmt))
    if isinstance(value, pd.Timestamp | datetime.datetime | datetime.date | np.datetime64):
        return pd.Timestamp(value).isoformat()
    if isinstance(value, str):
        return value
    return str(value)


def row_count_metadata(context: dg.AssetExecutionContext, rows: int) -> dict[str, int]:
    """Row count of a partitioned output. A run over several days attaches the same metadata to every
    day's materialization, so there it is reported as the run's total, not as each day's row count."""
    if len(context.partition_keys) == 1:
        return {"dagster/row_count": rows}
    return {"rows_in_run": rows}


def per_day_check_results(
    context: dg.AssetExecutionContext, results: Iterable[dg.AssetCheckResult]
) -> Iterator[dg.AssetCheckEvaluation | dg.Output]:
    """Each verdict on a batch of days as one evaluation per day of the run, for checks declared with the
    daily partitions (``partitions_def=DAILY_PARTITIONS`` on the spec).

    Why: Dagster 1.13 plans a check of a run over a range of days once per day, but records an
    ``AssetCheckResult`` of that run once, without a day, so every planned day stays "Skipped" in the
    check's history (a 24-day bootstrap left 24 per check). An evaluation per day is what the plan expects,
    and it says the truth: the batch's verdict is each of its days' verdict. The check's output (the
    result's stand-in for steps downstream) is yielded once, as Dagster does for an ``AssetCheckResult``.
    """
    for result in results:
        check_key = dg.AssetCheckKey(context.asset_key, str(result.check_name))
        for day in context.partition_keys:
            yield dg.AssetCheckEvaluation(
                asset_key=context.asset_key,
                check_name=check_key.name,
                passed=result.passed,
                metadata=result.metadata,
                severity=result.severity,
                description=result.description,
                blocking=context.assets_def.get_spec_for_check_key(check_key).blocking,
                partition=day,
            )
        yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(check_key))


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

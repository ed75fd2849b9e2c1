"""Where raw transactions come from: the synthetic generator or a parquet/CSV file."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd

from ml_platform.data.schema import ID_COLUMN, TIMESTAMP_COLUMN
from ml_platform.data.synthetic import SyntheticConfig, generate_transactions

SOURCES = ("synthetic", "file")


class SourceError(ValueError):
    """The configured source cannot deliver transactions."""


def read_transactions_file(path: str | Path, start: date, end: date) -> pd.DataFrame:
    """Rows of a parquet or CSV file whose ``event_timestamp`` falls on the days [start, end), and every
    row whose ``event_timestamp`` is missing or not a time: no day can be told for those, so they stay in
    the batch for validation to reject, rather than vanish from it.

    Types are not coerced beyond parsing the timestamp: validation reports what is wrong. When every
    present value parses, the column comes back as UTC timestamps (NaT where missing); when some do not,
    it comes back as it was read, and the schema check names those rows.
    """
    path = Path(path)
    if not path.exists():
        raise SourceError(f"transactions file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet" or path.is_dir():
        frame = pd.read_parquet(path)
    elif suffix == ".csv":
        frame = pd.read_csv(path, dtype={ID_COLUMN: str})
    else:
        raise SourceError(f"transactions file {path} must be .parquet or .csv, not {suffix or 'no suffix'}")
    if TIMESTAMP_COLUMN not in frame.columns:
        raise SourceError(f"transactions file {path} has no {TIMESTAMP_COLUMN} column; columns: {list(frame)}")
    timestamps, every_value_parsed = parse_timestamps(frame[TIMESTAMP_COLUMN])
    if every_value_parsed:
        frame[TIMESTAMP_COLUMN] = timestamps
    lower, upper = pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC")
    keep = ((timestamps >= lower) & (timestamps < upper)) | timestamps.isna()
    order = timestamps[keep].sort_values(kind="stable", na_position="last").index  # undated rows last
    return frame.loc[order].reset_index(drop=True)


def parse_timestamps(values: pd.Series) -> tuple[pd.Series, bool]:
    """``values`` as UTC timestamps (NaT where missing or not a time), and whether every present value
    parsed. Values of one format are parsed together (fast); a column that will not parse that way is
    parsed value by value, so one bad value does not hide the good ones."""
    try:
        return pd.to_datetime(values, utc=True), True
    except (ValueError, TypeError, OverflowError):
        parsed = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
        return parsed, bool((parsed.notna() | values.isna()).all())


def load_transactions(
    source: str, start: date, end: date, *, synthetic: SyntheticConfig | None = None, path: str = ""
) -> pd.DataFrame:
    if source == "synthetic":
        return generate_transactions(synthetic or SyntheticConfig(), start, end)
    if source == "file":
        if not path:
            raise SourceError("source 'file' needs a path to a .parquet or .csv file")
        return read_transactions_file(path, start, end)
    raise SourceError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")

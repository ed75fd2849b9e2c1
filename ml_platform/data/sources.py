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
    """Rows of a parquet or CSV file whose ``event_timestamp`` falls on the days [start, end).

    Types are not coerced beyond parsing the timestamp: validation reports what is wrong.
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
    try:
        timestamps = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True)
    except (ValueError, TypeError) as error:
        raise SourceError(f"{path}: column {TIMESTAMP_COLUMN} is not parseable as timestamps: {error}") from error
    frame[TIMESTAMP_COLUMN] = timestamps
    lower, upper = pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC")
    in_window = (timestamps >= lower) & (timestamps < upper)
    return frame.loc[in_window].sort_values(TIMESTAMP_COLUMN, kind="stable").reset_index(drop=True)


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

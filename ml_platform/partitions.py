"""The first day of the daily partitions, from the settings or from the data already stored.

Dagster's daily partitions need a first day. A fixed one far back would make "Materialize all" in the UI
propose hundreds of days that have no data, so the partitions start at ``ML_PLATFORM_PARTITIONS_START`` when it
is set, else at the first day the transactions are stored for, else (nothing stored yet)
:data:`DEFAULT_PARTITIONS_START`. A run that ingests days before the first stored one moves the start back for
its own process (``runs.launch``); the stored days then start earlier, and so do the partitions of every
process that loads the definitions afterwards.
"""

from __future__ import annotations

from datetime import date

from ml_platform.settings import Settings
from ml_platform.storage import table_path

DEFAULT_PARTITIONS_START = date(2025, 1, 1)
# The daily tables whose stored days must all be partitions (their files are read by partition key).
DAILY_TABLES = ("raw_transactions", "validated_transactions")


def stored_days(settings: Settings) -> list[date]:
    """Every day the daily tables hold a file for under the settings' data directory, oldest first."""
    days: set[date] = set()
    for asset in DAILY_TABLES:
        folder = table_path(settings.data_dir, asset, "2000-01-01").parent
        for path in folder.glob("*.parquet") if folder.is_dir() else []:
            try:
                days.add(date.fromisoformat(path.stem))
            except ValueError:  # not a day's file (a temporary, a stray)
                continue
    return sorted(days)


def partitions_start(settings: Settings) -> date:
    """The first day of the daily partitions: ML_PLATFORM_PARTITIONS_START; else the first stored day of
    the transactions (the data's first day); else :data:`DEFAULT_PARTITIONS_START`."""
    if settings.partitions_start:
        return date.fromisoformat(settings.partitions_start)
    days = stored_days(settings)
    return days[0] if days else DEFAULT_PARTITIONS_START

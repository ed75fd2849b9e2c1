"""The labelled training set: transactions, their point-in-time features, and a time-based split."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from ml_platform.data.schema import ENTITY_COLUMN, ID_COLUMN, LABEL_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import MODEL_FEATURES, model_features

SPLITS = ("train", "validation", "test")
SPLIT_COLUMN = "split"
DEFAULT_WINDOW_DAYS = 90


@dataclass(frozen=True)
class TrainingWindow:
    """The stored days (UTC, ``YYYY-MM-DD``) a training set is built from, oldest first."""

    days: tuple[str, ...]

    @property
    def first_day(self) -> str | None:
        return self.days[0] if self.days else None

    @property
    def last_day(self) -> str | None:
        return self.days[-1] if self.days else None


def trailing_window(stored_days: Iterable[str], window_days: int = DEFAULT_WINDOW_DAYS) -> TrainingWindow:
    """The stored days among the ``window_days`` calendar days that end with the newest stored day (every
    stored day when the history is shorter): "the last 90 days of data", a day never ingested included in
    the count. ValueError names ``window_days`` when it is below 1 and any stored day that is not a date.
    """
    if isinstance(window_days, bool) or not isinstance(window_days, int) or window_days < 1:
        raise ValueError(f"window_days must be a whole number of days >= 1, got {window_days!r}")
    days = sorted(set(stored_days))
    not_dates = []
    for day in days:
        try:
            date.fromisoformat(day)
        except (TypeError, ValueError):
            not_dates.append(repr(day))
    if not_dates:
        raise ValueError(f"stored days must be dates (YYYY-MM-DD), got {', '.join(not_dates[:5])}")
    if not days:
        return TrainingWindow(())
    first = date.fromisoformat(days[-1]) - timedelta(days=window_days - 1)
    return TrainingWindow(tuple(day for day in days if date.fromisoformat(day) >= first))


def read_window(window: TrainingWindow, day_path: Callable[[str], Path]) -> pd.DataFrame:
    """The stored rows of every day of ``window``, day after day (``day_path(day)``: that day's parquet file).

    FileNotFoundError names the window when it holds no day, and the file of a day that is not there.
    """
    if not window.days:
        raise FileNotFoundError("the training window holds no stored day: no day has been ingested yet")
    frames = []
    for day in window.days:
        path = Path(day_path(day))
        if not path.is_file():
            raise FileNotFoundError(f"day {day} of the training window has no stored file {path}")
        frames.append(pd.read_parquet(path))
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class SplitFractions:
    train: float = 0.70
    validation: float = 0.15
    test: float = 0.15

    def __post_init__(self) -> None:
        fractions = (self.train, self.validation, self.test)
        if any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
            raise ValueError(f"split fractions must be positive and sum to 1, got {fractions}")


def time_split(timestamps: pd.Series, fractions: SplitFractions = SplitFractions()) -> np.ndarray:
    """Label each row train/validation/test by time: every training row precedes every validation row,
    which precedes every test row. Rows sharing a timestamp always land in the same split."""
    seconds = pd.DatetimeIndex(pd.to_datetime(timestamps, utc=True)).asi8  # nanoseconds, exact
    if len(seconds) < 3:
        raise ValueError(f"a time split needs at least 3 rows, got {len(seconds)}")
    ordered = np.sort(seconds)
    first_validation = ordered[int(len(ordered) * fractions.train)]
    first_test = ordered[int(len(ordered) * (fractions.train + fractions.validation))]
    labels = np.full(len(seconds), SPLITS[0], dtype=object)
    labels[seconds >= first_validation] = SPLITS[1]
    labels[seconds >= first_test] = SPLITS[2]
    present = set(labels)
    missing = [s for s in SPLITS if s not in present]
    if missing:
        raise ValueError(
            f"the time split left {', '.join(missing)} empty: too few distinct timestamps ({len(set(seconds))})"
        )
    return labels


def assemble_training_set(
    transactions: pd.DataFrame, stats: pd.DataFrame, fractions: SplitFractions = SplitFractions()
) -> pd.DataFrame:
    """Ids, time, model features, label and split, one row per transaction (none dropped)."""
    features = model_features(transactions, stats)
    frame = pd.concat(
        [
            transactions[[ID_COLUMN, ENTITY_COLUMN, TIMESTAMP_COLUMN]].reset_index(drop=True),
            features.reset_index(drop=True),
            transactions[[LABEL_COLUMN]].reset_index(drop=True).astype("int64"),
        ],
        axis=1,
    )
    frame[SPLIT_COLUMN] = time_split(frame[TIMESTAMP_COLUMN], fractions)
    return frame


def split_xy(training_set: pd.DataFrame, split: str) -> tuple[pd.DataFrame, np.ndarray]:
    part = training_set[training_set[SPLIT_COLUMN] == split]
    return part[list(MODEL_FEATURES)], part[LABEL_COLUMN].to_numpy()


def split_summary(training_set: pd.DataFrame) -> pd.DataFrame:
    """Rows, fraud rate and time range of each split, for the UI."""
    grouped = training_set.groupby(SPLIT_COLUMN)
    summary = pd.DataFrame(
        {
            "rows": grouped.size(),
            "fraud_rate": grouped[LABEL_COLUMN].mean().round(4),
            "from": grouped[TIMESTAMP_COLUMN].min().astype(str),
            "to": grouped[TIMESTAMP_COLUMN].max().astype(str),
        }
    )
    return summary.reindex([s for s in SPLITS if s in summary.index])

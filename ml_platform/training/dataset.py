"""The labelled training set: transactions, their point-in-time features, and a time-based split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml_platform.data.schema import ENTITY_COLUMN, ID_COLUMN, LABEL_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import MODEL_FEATURES, model_features

SPLITS = ("train", "validation", "test")
SPLIT_COLUMN = "split"


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

"""Training/serving skew: the features the server used against the ones the training set gives.

The platform promises that a served transaction's features are the ones its training row would have:
the server reads its customer's daily snapshot from the online store (loaded nightly through the last
complete day) and the training set joins the same snapshot from the offline table
(``features.store.point_in_time_stats``); ``features.engineering.model_features`` derives the rest
in both. :func:`feature_skew` checks that promise on live traffic: it takes the window's logged
predictions that named a customer, keeps those whose request id is a stored transaction (served
transactions the nightly batch has ingested since), rebuilds their features as the training set does
and compares them row by row. A served transaction that is not stored yet is counted, not compared.

A stale online store (a night's load missing, traffic of two days served before either is ingested)
shows up as mismatched rows: their customers' stats moved in between.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ml_platform.data.schema import ENTITY_COLUMN, ID_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import MODEL_FEATURES, model_features
from ml_platform.monitoring.alerts import AlertRule

SKEW_CHECK = "feature_skew"
DEFAULT_SKEW_THRESHOLD = 0.01  # the share of compared rows that may differ before the check fails
RELATIVE_TOLERANCE = 1e-9  # floats equal within this relative difference (NaN equals NaN)
EXAMPLE_IDS = 5

# What the offline features of a transaction are built from (model_features' inputs and the join keys).
STORED_COLUMNS: tuple[str, ...] = (ID_COLUMN, ENTITY_COLUMN, TIMESTAMP_COLUMN, "amount", "category", "channel")

_PARTITION_FILE = re.compile(r"^\d{4}-\d{2}-\d{2}\.parquet$")


def skew_rule(threshold: float = DEFAULT_SKEW_THRESHOLD) -> AlertRule:
    """The alert rule of the check: the share of mismatched rows above ``threshold`` (WARN).

    WARN, not ERROR: skew is a defect of the pipeline to fix, not a reason to take the model out of
    service (a rollback serves from the same stores). ValueError for a threshold that is not a share."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{SKEW_CHECK} threshold: expected a share between 0 and 1, got {threshold!r}")
    return AlertRule(SKEW_CHECK, "mismatched_share", float(threshold), "WARN")


@dataclass(frozen=True)
class SkewReport:
    """Served features against rebuilt offline ones over a window of logged predictions."""

    served_rows: int  # logged predictions that named a customer
    compared: int  # of those, the rows whose transaction is stored (rebuilt and compared)
    not_stored: int  # served rows whose transaction is not in the offline store yet
    mismatched: int  # compared rows with at least one feature out of tolerance
    mismatches_by_feature: dict[str, int] = field(default_factory=dict)
    examples: tuple[str, ...] = ()  # request ids of a few mismatched rows
    tolerance: float = RELATIVE_TOLERANCE

    @property
    def mismatched_share(self) -> float | None:
        """``mismatched / compared``; None when nothing was compared."""
        return self.mismatched / self.compared if self.compared else None

    def to_frame(self) -> pd.DataFrame:
        """One row per model feature: mismatched rows and their share of the compared ones."""
        counts = [self.mismatches_by_feature.get(name, 0) for name in MODEL_FEATURES]
        return pd.DataFrame(
            {
                "feature": list(MODEL_FEATURES),
                "mismatched_rows": counts,
                "share": [count / self.compared if self.compared else np.nan for count in counts],
            }
        )


def partition_files(folder: str | Path) -> list[Path]:
    """The daily partition files (``YYYY-MM-DD.parquet``) of a stored table, oldest first.

    Anything else in the folder (a rejected batch's folder, a file being written) is not a partition."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_file() and _PARTITION_FILE.match(path.name))


def read_stored_transactions(files: Iterable[str | Path], transaction_ids: Collection[str]) -> pd.DataFrame:
    """The stored transactions with these ids, only :data:`STORED_COLUMNS`, one row per id.

    Each file is read with a pyarrow filter on the id, so only the matching rows and the needed
    columns are loaded, however many days are stored."""
    import pyarrow.parquet as pq

    wanted = sorted({str(value) for value in transaction_ids})
    frames = []
    if wanted:
        for path in files:
            table = pq.read_table(path, columns=list(STORED_COLUMNS), filters=[(ID_COLUMN, "in", wanted)])
            if table.num_rows:
                frames.append(table.to_pandas())
    if not frames:
        return pd.DataFrame({name: pd.Series(dtype="object") for name in STORED_COLUMNS})
    stored = pd.concat(frames, ignore_index=True)
    stored[TIMESTAMP_COLUMN] = pd.to_datetime(stored[TIMESTAMP_COLUMN], utc=True)
    return stored.drop_duplicates(ID_COLUMN, keep="last").reset_index(drop=True)


def mismatches(served: pd.DataFrame, offline: pd.DataFrame, tolerance: float = RELATIVE_TOLERANCE) -> pd.DataFrame:
    """Per row and model feature, True where the two differ: beyond ``tolerance`` relative to the
    offline value, or one missing (NaN) and the other not. Both frames are aligned by position."""
    left = served[list(MODEL_FEATURES)].to_numpy(dtype="float64", na_value=np.nan)
    right = offline[list(MODEL_FEATURES)].to_numpy(dtype="float64", na_value=np.nan)
    same = np.isclose(left, right, rtol=tolerance, atol=0.0, equal_nan=True)
    return pd.DataFrame(~same, columns=list(MODEL_FEATURES), index=served.index)


def feature_skew(
    predictions: pd.DataFrame,
    read_transactions: Callable[[list[str]], pd.DataFrame],
    offline_stats: Callable[[pd.DataFrame], pd.DataFrame],
    *,
    tolerance: float = RELATIVE_TOLERANCE,
    examples: int = EXAMPLE_IDS,
) -> SkewReport:
    """Compare the features logged with ``predictions`` to the ones the training set gives.

    ``predictions`` are prediction log rows (``request_id``, ``customer_id``, :data:`MODEL_FEATURES`).
    ``read_transactions(ids)`` returns the stored transactions among those ids (:data:`STORED_COLUMNS`);
    ``offline_stats(transactions)`` their customers' stats as the training set joins them (Feast's
    ``point_in_time_stats``; ``stats_before`` in memory). Rows without a customer id carried their
    features in the request and are not compared. A request id logged twice (a retry) is compared twice.
    """
    served = predictions[predictions["customer_id"].notna() & predictions["request_id"].notna()]
    served = served.assign(request_id=served["request_id"].astype(str)).reset_index(drop=True)
    if served.empty:
        return SkewReport(served_rows=0, compared=0, not_stored=0, mismatched=0, tolerance=tolerance)
    stored = read_transactions(sorted(set(served["request_id"])))
    stored = stored.assign(**{ID_COLUMN: stored[ID_COLUMN].astype(str)}).drop_duplicates(ID_COLUMN, keep="last")
    is_stored = served["request_id"].isin(set(stored[ID_COLUMN]))
    compared = served[is_stored].reset_index(drop=True)
    if compared.empty:
        return SkewReport(
            served_rows=len(served), compared=0, not_stored=len(served), mismatched=0, tolerance=tolerance
        )
    transactions = (
        compared[["request_id"]]
        .merge(stored, left_on="request_id", right_on=ID_COLUMN, how="left", validate="many_to_one")
        .drop(columns="request_id")
    )
    offline = model_features(transactions, offline_stats(transactions))
    differs = mismatches(compared, offline, tolerance)
    mismatched_rows = differs.any(axis=1)
    return SkewReport(
        served_rows=len(served),
        compared=len(compared),
        not_stored=int((~is_stored).sum()),
        mismatched=int(mismatched_rows.sum()),
        mismatches_by_feature={name: int(differs[name].sum()) for name in MODEL_FEATURES},
        examples=tuple(compared.loc[mismatched_rows, "request_id"].drop_duplicates().head(examples)),
        tolerance=tolerance,
    )

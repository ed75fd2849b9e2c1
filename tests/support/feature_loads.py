"""Customer stats loaded into a Feast repo as the pipeline loads them, and what the store then answers.

``load_stats`` does what the customer_stats, feature_store and online_features assets do: the offline
table written, the repo applied, the online store loaded over the table's whole range. ``FIRST_LOAD`` and
``SECOND_LOAD`` are two small hand-written loads (a later day: customer 101 ordered again, 103 is new,
102 unchanged) for tests that check a materialization is seen by the next request; ``expected_online``
and ``expected_features`` are the references those tests compare with.
"""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pandas as pd

from ml_platform.data.schema import ENTITY_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import STORED_FEATURES
from ml_platform.features.store import (
    FEATURE_SERVICE,
    FeatureRepo,
    feature_definitions,
    load_online_store,
    open_store,
    write_offline_table,
)
from ml_platform.serving.online import feature_vectors, transaction_frame
from ml_platform.serving.schemas import TransactionRequest

# (customer_id, event time (UTC), total_purchases, avg_order_value, lifetime_value, last_order_ts)
FIRST_LOAD = [
    (101, "2026-03-01T10:00:00", 3, 20.5, 61.5, 1772359200.0),
    (102, "2026-03-02T11:30:00", 1, 310.0, 310.0, 1772451000.0),
]
SECOND_LOAD = [  # a later day: 101 ordered again, 103 is new; 102 unchanged
    (101, "2026-03-04T09:15:00", 4, 40.375, 161.5, 1772615700.0),
    (103, "2026-03-04T12:00:00", 2, 95.0, 190.0, 1772625600.0),
]


def stats_frame(rows: list[tuple]) -> pd.DataFrame:
    """Rows as above as a table of the offline store's schema."""
    frame = pd.DataFrame(rows, columns=[ENTITY_COLUMN, TIMESTAMP_COLUMN, *STORED_FEATURES])
    frame[TIMESTAMP_COLUMN] = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True)
    frame["total_purchases"] = frame["total_purchases"].astype("int64")
    return frame


def load_stats(repo: FeatureRepo, stats: pd.DataFrame) -> None:
    """``stats`` written as the offline table, the repo applied and the online store loaded over the
    table's whole range, as the customer_stats, feature_store and online_features assets do."""
    write_offline_table(repo, stats)
    store = open_store(repo)
    store.apply(feature_definitions(repo))
    end = stats[TIMESTAMP_COLUMN].max().to_pydatetime() + timedelta(seconds=1)
    load_online_store(store, stats[TIMESTAMP_COLUMN].min().to_pydatetime(), end)


def materialize(repo: FeatureRepo, rows: list[tuple]) -> None:
    """:func:`load_stats` of hand-written rows (``FIRST_LOAD``, ``FIRST_LOAD + SECOND_LOAD``)."""
    load_stats(repo, stats_frame(rows))


def expected_online(store, customer_ids: list[int]) -> np.ndarray:
    """What Feast's ``get_online_features`` returns for the customers: one row each, NaN where none."""
    answer = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE), entity_rows=[{ENTITY_COLUMN: c} for c in customer_ids]
    ).to_dict()
    return np.array(
        [[math.nan if value is None else float(value) for value in answer[name]] for name in STORED_FEATURES]
    ).T


def expected_features(rows: list[tuple], body: dict) -> list[float]:
    """The model features of an entity request ``body`` when the store holds ``rows``."""
    latest = stats_frame(rows).sort_values(TIMESTAMP_COLUMN).groupby(ENTITY_COLUMN).tail(1).set_index(ENTITY_COLUMN)
    stats = latest.reindex([body["customer_id"]])[list(STORED_FEATURES)].reset_index(drop=True)
    return feature_vectors(transaction_frame([TransactionRequest.model_validate(body)]), stats)[0].tolist()

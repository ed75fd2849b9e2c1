"""Feature engineering shared by training and serving.

``customer_stats`` is the offline feature table: one row per customer and event time, holding the
customer's history *after* the transactions at that time (total_purchases, avg_order_value,
lifetime_value and when the last order was). A model scoring a transaction must only see the
history *before* it, so the training join asks the store for the state just before each
transaction (see :data:`JOIN_OFFSET`), which is also what the online store holds when a new
transaction arrives.

``days_since_last_order`` depends on when it is asked, so the store keeps the time of the last
order and the feature is derived at request time by :func:`model_features`, the one function that
turns a transaction plus its customer's stats into the model's input, in training and in serving.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml_platform.data.schema import CATEGORIES, ENTITY_COLUMN, ID_COLUMN, TIMESTAMP_COLUMN

# The stats a model reads from the feature store (Feast view ``customer_stats``).
STORED_FEATURES: tuple[str, ...] = ("total_purchases", "avg_order_value", "lifetime_value", "last_order_ts")

# The model's input, in this order (the order a caller of /predict with a plain feature list uses).
MODEL_FEATURES: tuple[str, ...] = (
    "amount",
    "hour_of_day",
    "is_online",
    "category_code",
    "total_purchases",
    "avg_order_value",
    "lifetime_value",
    "days_since_last_order",
    "amount_to_avg_ratio",
)

# Features that grow with each customer's history by construction (a count and a sum since the first
# order, the days since the last one): live traffic always looks "older" than any training reference, so
# their distributions move every day without anything being wrong. They are left out of the drift score
# (daily retraining keeps the model current on them); the rest are what drift monitoring compares.
CUMULATIVE_FEATURES: tuple[str, ...] = ("total_purchases", "lifetime_value", "days_since_last_order")
DRIFT_FEATURES: tuple[str, ...] = tuple(name for name in MODEL_FEATURES if name not in CUMULATIVE_FEATURES)

# The request-time fields of a transaction (what a caller sends besides the customer id).
REQUEST_FIELDS: tuple[str, ...] = ("amount", "category", "channel", TIMESTAMP_COLUMN)

# Stats are looked up as of this much before the transaction: strictly earlier history only.
JOIN_OFFSET = pd.Timedelta(microseconds=1)

_CATEGORY_CODES = {name: code for code, name in enumerate(CATEGORIES)}
_SECONDS_PER_DAY = 86_400.0


def epoch_seconds(timestamps: pd.Series) -> np.ndarray:
    """Unix time in seconds (float) of timestamps; naive ones are taken as UTC."""
    return pd.DatetimeIndex(pd.to_datetime(timestamps, utc=True)).asi8 / 1e9


def compute_customer_stats(transactions: pd.DataFrame) -> pd.DataFrame:
    """Each customer's running history after every event time (one row per customer and time).

    Several transactions of one customer at the same second collapse into one row holding all of
    them, so a point-in-time lookup never has to choose between tied rows.
    """
    columns = [ENTITY_COLUMN, TIMESTAMP_COLUMN, "amount"]
    ordered = transactions[columns + ([ID_COLUMN] if ID_COLUMN in transactions else [])].sort_values(
        [ENTITY_COLUMN, TIMESTAMP_COLUMN] + ([ID_COLUMN] if ID_COLUMN in transactions else []),
        kind="stable",
    )
    by_customer = ordered.groupby(ENTITY_COLUMN, sort=False)
    total_purchases = by_customer.cumcount().to_numpy() + 1
    lifetime_value = by_customer["amount"].cumsum().to_numpy()
    stats = pd.DataFrame(
        {
            ENTITY_COLUMN: ordered[ENTITY_COLUMN].to_numpy(),
            TIMESTAMP_COLUMN: ordered[TIMESTAMP_COLUMN].to_numpy(),
            "total_purchases": total_purchases.astype("int64"),
            "avg_order_value": lifetime_value / total_purchases,
            "lifetime_value": lifetime_value,
            "last_order_ts": epoch_seconds(ordered[TIMESTAMP_COLUMN]),
        }
    )
    stats[TIMESTAMP_COLUMN] = pd.to_datetime(stats[TIMESTAMP_COLUMN], utc=True)
    stats = stats.drop_duplicates([ENTITY_COLUMN, TIMESTAMP_COLUMN], keep="last")
    return stats.sort_values([TIMESTAMP_COLUMN, ENTITY_COLUMN], kind="stable").reset_index(drop=True)


def stats_before(transactions: pd.DataFrame, history: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each transaction's customer stats from strictly earlier history, joined in memory (NaN when none).

    The same answer as the Feast point-in-time join (``features.store.point_in_time_stats``) without a
    feature store: for tests, benchmarks and notebooks. ``history`` is the transactions the stats come
    from (default: ``transactions`` themselves). Aligned with ``transactions`` by row.
    """
    stats = compute_customer_stats(transactions if history is None else history)
    events = transactions[[ENTITY_COLUMN, TIMESTAMP_COLUMN]].reset_index(drop=True)
    events["__row"] = np.arange(len(events))
    joined = pd.merge_asof(
        events.sort_values(TIMESTAMP_COLUMN, kind="stable"),
        stats.sort_values(TIMESTAMP_COLUMN, kind="stable"),
        on=TIMESTAMP_COLUMN,
        by=ENTITY_COLUMN,
        direction="backward",
        allow_exact_matches=False,  # strictly earlier: a transaction never sees itself or its same-second twin
    ).sort_values("__row")
    joined.index = transactions.index
    return joined[list(STORED_FEATURES)]


def model_features(transactions: pd.DataFrame, stats: pd.DataFrame | None = None) -> pd.DataFrame:
    """The model's input for transactions, given each one's customer stats (aligned by row).

    ``stats`` holds :data:`STORED_FEATURES` for the same rows (NaN where the customer has no
    history); when omitted they are read from ``transactions`` itself. A customer seen for the first
    time has 0 purchases and 0 lifetime value; their average and recency are unknown (NaN), which
    XGBoost treats as missing.
    """
    stats = transactions if stats is None else stats
    timestamps = pd.to_datetime(transactions[TIMESTAMP_COLUMN], utc=True)
    amount = transactions["amount"].to_numpy(dtype="float64")
    total_purchases = stats["total_purchases"].to_numpy(dtype="float64", na_value=np.nan)
    avg_order_value = stats["avg_order_value"].to_numpy(dtype="float64", na_value=np.nan)
    lifetime_value = stats["lifetime_value"].to_numpy(dtype="float64", na_value=np.nan)
    last_order_ts = stats["last_order_ts"].to_numpy(dtype="float64", na_value=np.nan)
    now = epoch_seconds(timestamps)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(avg_order_value > 0, amount / avg_order_value, np.nan)
    return pd.DataFrame(
        {
            "amount": amount,
            "hour_of_day": (timestamps.dt.hour + timestamps.dt.minute / 60.0).to_numpy(dtype="float64"),
            "is_online": (transactions["channel"].to_numpy() == "online").astype("float64"),
            "category_code": transactions["category"].map(_CATEGORY_CODES).to_numpy(dtype="float64"),
            "total_purchases": np.nan_to_num(total_purchases, nan=0.0),
            "avg_order_value": avg_order_value,
            "lifetime_value": np.nan_to_num(lifetime_value, nan=0.0),
            "days_since_last_order": (now - last_order_ts) / _SECONDS_PER_DAY,
            "amount_to_avg_ratio": ratio,
        },
        index=transactions.index,
    )[list(MODEL_FEATURES)]


def describe_features(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Per-feature statistics for the UI: count, missing, mean, std, min, quartiles, max."""
    described = frame[list(columns)].describe().T
    described.insert(1, "missing", frame[list(columns)].isna().sum())
    return described

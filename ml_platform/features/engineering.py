"""Feature engineering shared by training and serving.

``customer_stats`` is the offline feature table: one row per customer and event time, holding the
customer's history *after* the transactions at that time (total_purchases, avg_order_value,
lifetime_value and when the last order was).

Training and serving read the same daily snapshots. The online store is loaded by the nightly batch
(ingest the day, continue ``customer_stats`` by that day, load its changed customers online) with every customer's stats
through the last complete UTC day, so a transaction of day D is served with its customer's stats as of
the end of day D-1: the stats of all transactions strictly before 00:00 UTC of its own day
(:func:`snapshot_time`). The training set, batch scoring and the in-memory join :func:`stats_before`
give each transaction exactly that snapshot, not the history up to the transaction itself: same-day
activity is not a feature, because the server never sees it. (Updating the online store on every scored
transaction would put a write on the prediction path, race between replicas and count a transaction
twice when it is scored twice; a same-day velocity feature needs a streaming push of its own.)

``days_since_last_order`` and ``amount_to_avg_ratio`` depend on the transaction, so the store keeps
the time of the last order and the average, and the features are derived at request time by
:func:`model_features`, the one function that turns a transaction plus its customer's stats into the
model's input, in training and in serving.
"""

from __future__ import annotations

from collections.abc import Iterator

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
# The drift features whose values are labels, not quantities (a category's code, a 0/1 flag): drift scores
# them by category counts, as Evidently does for categorical columns, instead of as numbers on a line.
CATEGORICAL_FEATURES: tuple[str, ...] = ("category_code", "is_online")

# The request-time fields of a transaction (what a caller sends besides the customer id).
REQUEST_FIELDS: tuple[str, ...] = ("amount", "category", "channel", TIMESTAMP_COLUMN)

# The point-in-time join is inclusive (a stats row at the lookup instant counts), so the feature store is
# asked for the stats as of this much before a snapshot instant: strictly earlier history only.
JOIN_OFFSET = pd.Timedelta(microseconds=1)

_CATEGORY_CODES = {name: code for code, name in enumerate(CATEGORIES)}
_SECONDS_PER_DAY = 86_400.0
_NANOSECONDS_PER_DAY = 86_400 * 10**9
_UTC_NANOSECONDS = "datetime64[ns, UTC]"


def as_utc(timestamps: pd.Series) -> pd.Series:
    """``timestamps`` as UTC datetimes (naive ones taken as UTC), as they are when they already are: a day of
    the offline table is a million of them, and ``pd.to_datetime`` checks values one by one even then."""
    dtype = timestamps.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC":
        return timestamps
    return pd.to_datetime(timestamps, utc=True)


def epoch_nanoseconds(timestamps: pd.Series) -> np.ndarray:
    """Unix time in nanoseconds (int64) of timestamps, whatever their time unit; naive ones are taken as UTC."""
    return pd.DatetimeIndex(as_utc(timestamps)).as_unit("ns").asi8


def epoch_seconds(timestamps: pd.Series) -> np.ndarray:
    """Unix time in seconds (float) of timestamps, whatever their time unit; naive ones are taken as UTC."""
    return epoch_nanoseconds(timestamps) / 1e9


def snapshot_time(timestamps: pd.Series) -> pd.Series:
    """The instant whose stats a transaction at each of ``timestamps`` is scored with: 00:00 UTC of its day.

    The stats come from every transaction strictly before that instant: the previous days', as the
    online store holds them after the nightly load, and none of the same day's (not even at 00:00:00).
    Naive timestamps are taken as UTC; the result is UTC and keeps ``timestamps``' index.
    """
    return as_utc(timestamps).dt.floor("D")


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
            TIMESTAMP_COLUMN: ordered[TIMESTAMP_COLUMN].array,  # not to_numpy(): objects when tz-aware
            "total_purchases": total_purchases.astype("int64"),
            "avg_order_value": lifetime_value / total_purchases,
            "lifetime_value": lifetime_value,
            "last_order_ts": epoch_seconds(ordered[TIMESTAMP_COLUMN]),
        }
    )
    stats[TIMESTAMP_COLUMN] = as_utc(stats[TIMESTAMP_COLUMN])
    stats = stats.drop_duplicates([ENTITY_COLUMN, TIMESTAMP_COLUMN], keep="last")
    return stats.sort_values([TIMESTAMP_COLUMN, ENTITY_COLUMN], kind="stable").reset_index(drop=True)


# What a customer's running stats carry from one day to the next: the stored stats after their latest
# order, and the compensation term of the running sum. compute_customer_stats sums amounts with pandas'
# grouped cumsum, which is Kahan-compensated; carrying the compensation makes the day-by-day sum
# continue with exactly the additions of the whole-history one, so both give bit-identical values.
LIFETIME_COMPENSATION = "lifetime_value_compensation"
STATE_COLUMNS: tuple[str, ...] = (ENTITY_COLUMN, TIMESTAMP_COLUMN, *STORED_FEATURES, LIFETIME_COMPENSATION)


class DayMismatchError(ValueError):
    """Transactions handed to one day's stats step that fall on another day."""


def empty_customer_state() -> pd.DataFrame:
    """The carried state before any transaction: no customer seen."""
    return pd.DataFrame(
        {
            ENTITY_COLUMN: pd.Series(dtype="int64"),
            TIMESTAMP_COLUMN: pd.Series(dtype=_UTC_NANOSECONDS),
            "total_purchases": pd.Series(dtype="int64"),
            "avg_order_value": pd.Series(dtype="float64"),
            "lifetime_value": pd.Series(dtype="float64"),
            "last_order_ts": pd.Series(dtype="float64"),
            LIFETIME_COMPENSATION: pd.Series(dtype="float64"),
        }
    )


def advance_customer_stats(
    state: pd.DataFrame, day: pd.Timestamp | str, transactions: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One UTC day of the running stats: ``(state after the day, the day's rows of the offline table)``.

    ``state`` is the carried state after the previous days (:data:`STATE_COLUMNS`, one row per customer
    seen so far; :func:`empty_customer_state` before the first), ``transactions`` every transaction of
    ``day``. The day's rows are exactly the rows of :func:`compute_customer_stats` over the whole history
    that fall on ``day``, and folding the days in order gives the whole table. A transaction of another
    day raises :class:`DayMismatchError`: the state would no longer be "through the end of the day".
    """
    start = pd.Timestamp(day).tz_localize("UTC") if pd.Timestamp(day).tzinfo is None else pd.Timestamp(day)
    start = start.floor("D")
    nanoseconds = epoch_nanoseconds(transactions[TIMESTAMP_COLUMN])
    outside = (nanoseconds < start.value) | (nanoseconds >= (start + pd.Timedelta(days=1)).value)
    if outside.any():
        example = as_utc(transactions[TIMESTAMP_COLUMN])[outside].iloc[0]
        raise DayMismatchError(
            f"{int(outside.sum())} of {len(transactions)} transactions handed to the stats of {start.date()} fall on "
            f"other days (e.g. {example}); a day's step takes that UTC day's transactions only"
        )
    keys = [ENTITY_COLUMN, TIMESTAMP_COLUMN] + ([ID_COLUMN] if ID_COLUMN in transactions else [])
    ordered = transactions[keys + (["amount"] if "amount" not in keys else [])].sort_values(keys, kind="stable")
    customers = ordered[ENTITY_COLUMN].to_numpy()
    rank = ordered.groupby(ENTITY_COLUMN, sort=False).cumcount().to_numpy()

    carried = state.set_index(ENTITY_COLUMN)
    known = carried.reindex(pd.unique(customers))
    slot = pd.Index(known.index).get_indexer(customers)
    accum = known["lifetime_value"].fillna(0.0).to_numpy(dtype="float64", copy=True)
    compensation = known[LIFETIME_COMPENSATION].fillna(0.0).to_numpy(dtype="float64", copy=True)
    purchases_before = known["total_purchases"].fillna(0).to_numpy(dtype="int64")
    amounts = ordered["amount"].to_numpy(dtype="float64")
    lifetime_value = np.empty(len(ordered), dtype="float64")
    # The k-th transaction of every customer at once: within one rank a customer appears once, so each
    # step is pandas' compensated addition, element by element, in the same order as the whole history.
    for k in range(int(rank.max()) + 1 if len(rank) else 0):
        rows = np.flatnonzero(rank == k)
        at = slot[rows]
        y = amounts[rows] - compensation[at]
        t = accum[at] + y
        compensation[at] = (t - accum[at]) - y
        accum[at] = t
        lifetime_value[rows] = t
    total_purchases = purchases_before[slot] + rank + 1
    rows = pd.DataFrame(
        {
            ENTITY_COLUMN: customers,
            TIMESTAMP_COLUMN: ordered[TIMESTAMP_COLUMN].array,  # not to_numpy(): objects when tz-aware
            "total_purchases": total_purchases.astype("int64"),
            "avg_order_value": lifetime_value / total_purchases,
            "lifetime_value": lifetime_value,
            "last_order_ts": epoch_seconds(ordered[TIMESTAMP_COLUMN]),
        }
    )
    rows[TIMESTAMP_COLUMN] = as_utc(rows[TIMESTAMP_COLUMN])
    rows = rows.drop_duplicates([ENTITY_COLUMN, TIMESTAMP_COLUMN], keep="last")
    day_rows = rows.sort_values([TIMESTAMP_COLUMN, ENTITY_COLUMN], kind="stable").reset_index(drop=True)

    latest = rows.drop_duplicates(ENTITY_COLUMN, keep="last").set_index(ENTITY_COLUMN)
    latest[LIFETIME_COMPENSATION] = pd.Series(compensation, index=known.index)
    latest[TIMESTAMP_COLUMN] = latest[TIMESTAMP_COLUMN].astype(_UTC_NANOSECONDS)
    untouched = carried.drop(index=latest.index, errors="ignore")
    if untouched.empty:  # concat with an empty frame would drop the dtypes
        next_state = latest
    elif latest.empty:
        next_state = untouched
    else:
        next_state = pd.concat([untouched, latest])
    next_state = next_state.reset_index().sort_values(ENTITY_COLUMN, kind="stable").reset_index(drop=True)
    return next_state[list(STATE_COLUMNS)], day_rows


def fold_customer_stats(
    state: pd.DataFrame, days: list[pd.Timestamp | str], transactions: pd.DataFrame
) -> Iterator[tuple[pd.Timestamp, pd.DataFrame, pd.DataFrame]]:
    """:func:`advance_customer_stats` over ``days`` in order: ``(day, state after it, its rows)`` each.

    ``transactions`` holds every transaction of those days (none of another day); a day without any
    gives the state unchanged and no rows.
    """
    day_numbers = epoch_nanoseconds(transactions[TIMESTAMP_COLUMN]) // _NANOSECONDS_PER_DAY
    starts = [
        pd.Timestamp(day).tz_localize("UTC") if pd.Timestamp(day).tzinfo is None else pd.Timestamp(day) for day in days
    ]
    start_numbers = np.array([start.value // _NANOSECONDS_PER_DAY for start in starts], dtype="int64")
    unclaimed = ~np.isin(day_numbers, start_numbers)
    if unclaimed.any():
        raise DayMismatchError(
            f"{int(unclaimed.sum())} transactions fall outside the days {starts[0].date()} .. {starts[-1].date()} "
            f"(e.g. {transactions[TIMESTAMP_COLUMN][unclaimed].iloc[0]})"
        )
    positions = pd.Series(np.arange(len(transactions))).groupby(day_numbers).indices  # one pass
    # Only what the stats read: each day's slice of the other columns (strings among them) costs more than the day.
    read = [column for column in (ENTITY_COLUMN, TIMESTAMP_COLUMN, ID_COLUMN, "amount") if column in transactions]
    transactions = transactions[read]
    for start in sorted(starts):
        day_rows = positions.get(start.value // _NANOSECONDS_PER_DAY, np.empty(0, dtype="int64"))
        state, rows = advance_customer_stats(state, start, transactions.iloc[day_rows])
        yield start, state, rows


def stats_before(transactions: pd.DataFrame, history: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each transaction's customer stats as of its daily snapshot (:func:`snapshot_time`), joined in
    memory (NaN when the customer has no earlier day).

    The same answer as the Feast point-in-time join (``features.store.point_in_time_stats``) without a
    feature store: for tests, benchmarks and notebooks. ``history`` is the transactions the stats come
    from (default: ``transactions`` themselves). Aligned with ``transactions`` by row.
    """
    stats = compute_customer_stats(transactions if history is None else history)
    events = pd.DataFrame(
        {
            ENTITY_COLUMN: transactions[ENTITY_COLUMN].to_numpy(),
            TIMESTAMP_COLUMN: snapshot_time(transactions[TIMESTAMP_COLUMN]).to_numpy(),
            "__row": np.arange(len(transactions)),
        }
    )
    # one time unit on both sides: merge_asof refuses keys of different resolutions
    events[TIMESTAMP_COLUMN] = events[TIMESTAMP_COLUMN].astype(_UTC_NANOSECONDS)
    stats[TIMESTAMP_COLUMN] = stats[TIMESTAMP_COLUMN].astype(_UTC_NANOSECONDS)
    joined = pd.merge_asof(
        events.sort_values(TIMESTAMP_COLUMN, kind="stable"),
        stats.sort_values(TIMESTAMP_COLUMN, kind="stable"),
        on=TIMESTAMP_COLUMN,
        by=ENTITY_COLUMN,
        direction="backward",
        allow_exact_matches=False,  # strictly before the snapshot: a stats row at 00:00:00 is that day's
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
    timestamps = as_utc(transactions[TIMESTAMP_COLUMN])
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

"""The seeded transaction generator: reproducible, shaped like the schema, and with fraud signal."""

import hashlib
from dataclasses import replace
from datetime import date

import numpy as np
import pandas as pd
import pytest

from ml_platform.data.schema import CATEGORIES, RISKY_CATEGORIES, TRANSACTION_COLUMNS, TRANSACTION_SCHEMA
from ml_platform.data.synthetic import SyntheticConfig, generate_day, generate_transactions

SMALL = SyntheticConfig(seed=3, n_customers=300, transactions_per_day=400)
DAY = date(2024, 5, 2)
START, END = date(2024, 5, 1), date(2024, 5, 4)


def kind_of(dtype) -> str:
    if isinstance(dtype, pd.DatetimeTZDtype):
        return "timestamp" if str(dtype.tz) == "UTC" else f"timestamp[{dtype.tz}]"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        return "string"
    return str(dtype)


@pytest.fixture(scope="module")
def big_batch():
    """~20k rows with the default config (fraud_rate 0.02, no drift)."""
    return generate_transactions(SyntheticConfig(), date(2024, 1, 1), date(2024, 1, 11))


def test_same_config_and_day_give_identical_frames():
    first = generate_day(SMALL, DAY)
    second = generate_day(SMALL, DAY)
    assert len(first) > 300
    pd.testing.assert_frame_equal(first, second)


def test_day_alone_equals_the_same_day_inside_a_range():
    alone = generate_day(SMALL, DAY)
    batch = generate_transactions(SMALL, START, END)
    day_start = pd.Timestamp(DAY, tz="UTC")
    inside = batch[
        (batch["event_timestamp"] >= day_start) & (batch["event_timestamp"] < day_start + pd.Timedelta(days=1))
    ]
    assert len(batch) > len(inside) > 0
    pd.testing.assert_frame_equal(alone, inside.reset_index(drop=True))


def test_a_different_seed_gives_different_data():
    base = generate_day(SMALL, DAY)
    other = generate_day(SyntheticConfig(seed=4, n_customers=300, transactions_per_day=400), DAY)
    assert not base["amount"].equals(other["amount"])
    assert not base["customer_id"].equals(other["customer_id"])
    assert not base["event_timestamp"].equals(other["event_timestamp"])


def test_columns_and_dtypes_follow_the_schema():
    batch = generate_transactions(SMALL, START, END)
    assert tuple(batch.columns) == TRANSACTION_COLUMNS
    kinds = {column: kind_of(batch[column].dtype) for column in batch.columns}
    assert kinds == {column.name: column.kind for column in TRANSACTION_SCHEMA}
    assert kinds == {
        "transaction_id": "string",
        "customer_id": "integer",
        "merchant_id": "integer",
        "category": "string",
        "amount": "float",
        "channel": "string",
        "event_timestamp": "timestamp",
        "is_fraud": "integer",
    }
    assert set(batch["category"]) <= set(CATEGORIES)
    assert set(batch["channel"]) == {"in_store", "online"}
    assert set(batch["is_fraud"]) == {0, 1}
    assert batch["event_timestamp"].is_monotonic_increasing  # each day sorted, days in order


def test_transaction_ids_are_unique_across_days():
    batch = generate_transactions(SMALL, START, END)
    assert batch["event_timestamp"].dt.date.nunique() == 3
    assert batch["transaction_id"].is_unique
    # ids carry the day, so two days never collide even though each day counts from 0
    assert batch["transaction_id"].str.startswith("t20240501-").sum() == (batch["event_timestamp"].dt.day == 1).sum()


def test_fraud_rate_is_close_to_the_configured_rate(big_batch):
    assert 19_000 < len(big_batch) < 21_000
    assert 0.01 <= big_batch["is_fraud"].mean() <= 0.03


def test_fraud_has_signal(big_batch):
    fraud = big_batch[big_batch["is_fraud"] == 1]
    legit = big_batch[big_batch["is_fraud"] == 0]
    assert fraud["amount"].median() > 2 * legit["amount"].median()
    assert (fraud["channel"] == "online").mean() > (legit["channel"] == "online").mean()


def test_drift_inflates_amounts_and_moves_spending_online():
    days = (date(2024, 2, 1), date(2024, 2, 4))
    still = generate_transactions(SyntheticConfig(seed=5, transactions_per_day=1_500), *days)
    drifted = generate_transactions(SyntheticConfig(seed=5, transactions_per_day=1_500, drift=0.5), *days)
    assert drifted["amount"].mean() >= 1.3 * still["amount"].mean()
    targets = ["online_retail", "electronics"]
    assert drifted["category"].isin(targets).mean() > still["category"].isin(targets).mean() + 0.1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"drift": -0.1}, "drift"),
        ({"fraud_rate": 0.7}, "fraud_rate"),
        ({"n_merchants": len(CATEGORIES) - 1}, "n_merchants"),
    ],
)
def test_invalid_config_raises_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**overrides)


def test_end_before_start_raises():
    with pytest.raises(ValueError, match="before start"):
        generate_transactions(SMALL, END, START)


def test_an_empty_range_gives_an_empty_frame_with_the_schema():
    empty = generate_transactions(SMALL, START, START)
    assert len(empty) == 0
    assert tuple(empty.columns) == TRANSACTION_COLUMNS
    assert {c: kind_of(empty[c].dtype) for c in empty.columns} == {c.name: c.kind for c in TRANSACTION_SCHEMA}


def test_a_day_with_no_transactions_gives_an_empty_frame():
    empty = generate_day(SyntheticConfig(transactions_per_day=0), DAY)
    assert len(empty) == 0
    assert tuple(empty.columns) == TRANSACTION_COLUMNS


def test_amounts_are_rounded_to_cents_and_inside_the_schema_range(big_batch):
    amounts = big_batch["amount"].to_numpy()
    np.testing.assert_allclose(amounts, np.round(amounts, 2))
    assert amounts.min() >= 0.01 and amounts.max() <= 100_000.0


# ---- novel fraud -----------------------------------------------------------------------------------------
def fingerprint(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes()).hexdigest()


@pytest.mark.parametrize(
    ("config", "day", "rows", "fraud", "digest"),
    [
        (
            SyntheticConfig(),
            date(2024, 1, 3),
            1949,
            38,
            "8c8b6386be6a0b0978d80f20016136d9bcbcbc7cfb5dc50173ac22c00ab86d43",
        ),
        (SMALL, DAY, 430, 12, "16bb557997e2bf25a7f23b87f6d88b32c59ea02377c7c69dff8c816b3053c111"),
        (
            SyntheticConfig(seed=5, transactions_per_day=1_500, drift=0.5),
            date(2024, 2, 2),
            1501,
            28,
            "3f7b6f81cef744d139fa7faaa89780c711d84516bdc19dc505f763d7bd2ae3cf",
        ),
    ],
)
def test_without_novel_fraud_a_day_is_what_the_generator_made_before_the_knob(config, day, rows, fraud, digest):
    """The digests were taken from the generator before ``novel_fraud`` existed: every stored day stays."""
    for same in (config, replace(config, novel_fraud=0.0)):
        frame = generate_day(same, day)
        assert (len(frame), int(frame["is_fraud"].sum())) == (rows, fraud)
        assert fingerprint(frame) == digest


def without_ids(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in a canonical order without the positional id (a fraud moved in time shifts the ids after it)."""
    columns = ["event_timestamp", "customer_id", "amount", "merchant_id"]
    return frame.drop(columns="transaction_id").sort_values(columns, kind="stable").reset_index(drop=True)


def test_novel_fraud_looks_like_the_card_holders_own_habits():
    config = SyntheticConfig(seed=5, transactions_per_day=3_000)
    days = (date(2024, 2, 1), date(2024, 2, 4))
    usual = generate_transactions(config, *days)
    novel = generate_transactions(replace(config, novel_fraud=1.0), *days)
    # the same transactions, the same fraud (by customer): only how the fraud looks changed
    assert len(novel) == len(usual) and usual["is_fraud"].sum() > 100
    by_customer = usual.groupby("customer_id")["is_fraud"].sum()
    pd.testing.assert_series_equal(novel.groupby("customer_id")["is_fraud"].sum(), by_customer)
    pd.testing.assert_frame_equal(
        without_ids(novel[novel["is_fraud"] == 0]), without_ids(usual[usual["is_fraud"] == 0])
    )
    fraud, was = novel[novel["is_fraud"] == 1], usual[usual["is_fraud"] == 1]
    assert (fraud["channel"] == "in_store").all() and (was["channel"] == "online").mean() > 0.6
    assert not fraud["category"].isin(RISKY_CATEGORIES).any() and was["category"].isin(RISKY_CATEGORIES).all()
    assert fraud["event_timestamp"].dt.hour.between(8, 20).all() and (was["event_timestamp"].dt.hour < 6).mean() > 0.2
    # amounts near the customer's usual spend: about legit spending, far below the usual fraud's
    typical = usual[usual["is_fraud"] == 0].groupby("customer_id")["amount"].median()
    ratio = (fraud["amount"] / fraud["customer_id"].map(typical)).dropna()
    old_ratio = (was["amount"] / was["customer_id"].map(typical)).dropna()
    assert 0.9 < ratio.median() < 1.6 and old_ratio.median() > 2.2


def test_a_share_of_novel_fraud():
    config = SyntheticConfig(seed=5, transactions_per_day=3_000, novel_fraud=0.5)
    fraud = generate_transactions(config, date(2024, 2, 1), date(2024, 2, 4)).query("is_fraud == 1")
    # without drift, only novel fraud shops in an everyday category
    assert 0.4 < (~fraud["category"].isin(RISKY_CATEGORIES)).mean() < 0.6


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_novel_fraud_must_be_a_share(share):
    with pytest.raises(ValueError, match=r"novel_fraud must be in \[0, 1\]"):
        SyntheticConfig(novel_fraud=share)

"""A seeded generator of card transactions that is realistic enough to learn from.

Each customer has habits of their own (typical spend, favourite categories, how often they shop
online, how active they are). Legitimate transactions follow those habits; fraud (about
``fraud_rate`` of all transactions) breaks them: amounts far above the card holder's usual spend,
risky categories, card-not-present, odd hours. So the signal is in the features a fraud model uses
(amount against the customer's average, category, channel, hour).

``drift`` (0 = none) shifts the world the way production data shifts: amounts inflate by
``1 + drift``, spending moves towards online retail and electronics, and fraud starts to look
more like normal spending (smaller amounts, daytime, everyday categories), so an old model decays.

``novel_fraud`` (0 = none, at most 1) is the share of fraud that follows a pattern absent from any
history generated without it: the card is present (in store), the category is one of the customer's
own everyday ones, the hour is daytime and the amount is close to the customer's usual spend (a
little above it). The fraud rate does not change, only how that share of fraud looks, so a model
trained before it misses those cases. Which fraud is novel, and its new look, come from a random
stream of their own: with ``novel_fraud=0`` every day is exactly what it was without the knob.

Every day is generated from ``(seed, day)`` alone: a day's data never depends on which other days
were generated with it, so daily partitions are reproducible one by one or as a range.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, timedelta

import numpy as np
import pandas as pd

from ml_platform.data.schema import CATEGORIES, CHANNELS, RISKY_CATEGORIES, TRANSACTION_COLUMNS

_RISKY_INDEX = np.array([CATEGORIES.index(c) for c in RISKY_CATEGORIES])
_EVERYDAY_INDEX = np.array([i for i, c in enumerate(CATEGORIES) if c not in RISKY_CATEGORIES])
_DRIFT_TARGET_INDEX = np.array([CATEGORIES.index("online_retail"), CATEGORIES.index("electronics")])


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 42
    n_customers: int = 5_000
    n_merchants: int = 600
    transactions_per_day: int = 2_000
    fraud_rate: float = 0.02
    drift: float = 0.0
    novel_fraud: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.n_customers < 1:
            problems.append(f"n_customers must be at least 1, got {self.n_customers}")
        if self.n_merchants < len(CATEGORIES):
            problems.append(f"n_merchants must be at least {len(CATEGORIES)}, got {self.n_merchants}")
        if self.transactions_per_day < 0:
            problems.append(f"transactions_per_day must be >= 0, got {self.transactions_per_day}")
        if not 0.0 <= self.fraud_rate < 0.5:
            problems.append(f"fraud_rate must be in [0, 0.5), got {self.fraud_rate}")
        if self.drift < 0.0:
            problems.append(f"drift must be >= 0, got {self.drift}")
        if not 0.0 <= self.novel_fraud <= 1.0:
            problems.append(f"novel_fraud must be in [0, 1], got {self.novel_fraud}")
        if problems:
            raise ValueError("invalid synthetic source config: " + "; ".join(problems))


@dataclass(frozen=True)
class CustomerPopulation:
    log_amount_mean: np.ndarray  # typical log(amount) of each customer
    category_cdf: np.ndarray  # (n_customers, n_categories) cumulative category preferences
    online_propensity: np.ndarray
    activity: np.ndarray  # probability that a given transaction belongs to the customer
    fraud_exposure: np.ndarray  # relative risk of a customer's card being used fraudulently


def customer_population(config: SyntheticConfig) -> CustomerPopulation:
    """The customers' habits, from the seed alone."""
    rng = np.random.default_rng([config.seed, 0])
    n = config.n_customers
    log_amount_mean = rng.normal(3.4, 0.6, n)
    weights = np.full(len(CATEGORIES), 1.0)
    weights[_RISKY_INDEX] = 0.25
    preferences = rng.dirichlet(weights * 0.8, n)
    activity = rng.gamma(2.0, 1.0, n)
    exposure = rng.gamma(2.0, 0.5, n)
    return CustomerPopulation(
        log_amount_mean=log_amount_mean,
        category_cdf=np.cumsum(preferences, axis=1),
        online_propensity=rng.beta(2.0, 5.0, n),
        activity=activity / activity.sum(),
        fraud_exposure=exposure / exposure.mean(),
    )


def generate_day(config: SyntheticConfig, day: date, population: CustomerPopulation | None = None) -> pd.DataFrame:
    """All transactions of one UTC day, sorted by time, with ids unique across days."""
    population = population or customer_population(config)
    rng = np.random.default_rng([config.seed, 1, day.toordinal()])
    n = int(rng.poisson(config.transactions_per_day)) if config.transactions_per_day else 0
    drift = config.drift
    shift = min(drift, 1.0)

    customer = rng.choice(config.n_customers, size=n, p=population.activity)
    fraud_probability = np.clip(config.fraud_rate * population.fraud_exposure[customer], 0.0, 0.9)
    is_fraud = rng.random(n) < fraud_probability

    # Legitimate behaviour: each customer's own category mix, spend and channel habits.
    u = rng.random(n)
    category = (population.category_cdf[customer] < u[:, None]).sum(axis=1)
    category = np.minimum(category, len(CATEGORIES) - 1)
    drifted = rng.random(n) < 0.5 * shift
    category = np.where(drifted, rng.choice(_DRIFT_TARGET_INDEX, size=n), category)
    amount = np.exp(population.log_amount_mean[customer] + rng.normal(0.0, 0.45, n)) * (1.0 + drift)
    online = rng.random(n) < np.clip(population.online_propensity[customer] + 0.3 * shift, 0.0, 1.0)
    hour = np.clip(rng.normal(14.5, 3.5, n), 6.0, 23.99)
    habitual_category, habitual_hour = category.copy(), hour.copy()

    # Fraud breaks the habits; drift makes it blend in.
    n_fraud = int(is_fraud.sum())
    if n_fraud:
        fraud_customer = customer[is_fraud]
        fraud_lift = 1.0 * (1.0 - 0.7 * shift)
        amount[is_fraud] = np.exp(
            population.log_amount_mean[fraud_customer] + fraud_lift + rng.normal(0.0, 0.7, n_fraud)
        ) * (1.0 + drift)
        everyday = rng.random(n_fraud) < 0.6 * shift
        category[is_fraud] = np.where(
            everyday, rng.choice(_EVERYDAY_INDEX, size=n_fraud), rng.choice(_RISKY_INDEX, size=n_fraud)
        )
        online[is_fraud] = rng.random(n_fraud) < 0.75 - 0.35 * shift
        night = rng.random(n_fraud) < 0.35 * (1.0 - shift)
        hour[is_fraud] = np.where(night, rng.uniform(0.0, 6.0, n_fraud), rng.uniform(6.0, 23.99, n_fraud))
    if n_fraud and config.novel_fraud > 0.0:
        _disguise_novel_fraud(
            config,
            day,
            population,
            customer,
            is_fraud,
            habitual_category,
            habitual_hour,
            category,
            amount,
            online,
            hour,
        )

    merchants_per_category = config.n_merchants // len(CATEGORIES)
    merchant = category * merchants_per_category + rng.integers(0, merchants_per_category, n)
    seconds = np.floor(hour * 3600.0 + rng.uniform(0.0, 60.0, n)).astype("int64")
    seconds = np.minimum(seconds, 86_399)
    order = np.argsort(seconds, kind="stable")

    day_start = pd.Timestamp(day, tz="UTC")
    sequence = np.char.zfill(np.arange(n).astype(str), 7) if n else np.array([], dtype=str)
    frame = pd.DataFrame(
        {
            "transaction_id": np.char.add(f"t{day:%Y%m%d}-", sequence),
            "customer_id": customer[order].astype("int64"),
            "merchant_id": merchant[order].astype("int64"),
            "category": pd.Categorical.from_codes(category[order], CATEGORIES).astype(str),
            "amount": np.round(np.clip(amount[order], 0.01, 100_000.0), 2),
            "channel": np.where(online[order], CHANNELS[1], CHANNELS[0]),
            "event_timestamp": day_start + pd.to_timedelta(seconds[order], unit="s"),
            "is_fraud": is_fraud[order].astype("int64"),
        }
    )
    frame["transaction_id"] = frame["transaction_id"].astype(str)
    return frame[list(TRANSACTION_COLUMNS)]


def _disguise_novel_fraud(
    config: SyntheticConfig,
    day: date,
    population: CustomerPopulation,
    customer: np.ndarray,
    is_fraud: np.ndarray,
    habitual_category: np.ndarray,
    habitual_hour: np.ndarray,
    category: np.ndarray,
    amount: np.ndarray,
    online: np.ndarray,
    hour: np.ndarray,
) -> None:
    """Give ``config.novel_fraud`` of the fraud (in place) the look of its card holder's own habits:
    in store, an everyday category of theirs, a daytime hour, an amount a little above their usual
    spend. Draws from a stream of its own, so the day's other draws are the same with or without it."""
    rng = np.random.default_rng([config.seed, 2, day.toordinal()])
    fraud_rows = np.flatnonzero(is_fraud)
    novel = fraud_rows[rng.random(len(fraud_rows)) < config.novel_fraud]
    if not len(novel):
        return
    everyday = habitual_category[novel]
    risky = np.isin(everyday, _RISKY_INDEX)
    category[novel] = np.where(risky, rng.choice(_EVERYDAY_INDEX, size=len(novel)), everyday)
    amount[novel] = np.exp(population.log_amount_mean[customer[novel]] + rng.normal(0.2, 0.3, len(novel))) * (
        1.0 + config.drift
    )
    online[novel] = False
    hour[novel] = np.clip(habitual_hour[novel], 8.0, 20.0)


def generate_transactions(config: SyntheticConfig, start: date, end: date) -> pd.DataFrame:
    """Transactions of the UTC days ``start`` up to and excluding ``end``."""
    if end < start:
        raise ValueError(f"end ({end}) is before start ({start})")
    population = customer_population(config)
    days = [start + timedelta(days=offset) for offset in range((end - start).days)]
    frames = [generate_day(config, day, population) for day in days]
    if not frames:  # an empty range still yields a frame with the schema's columns and dtypes
        frames = [generate_day(replace(config, transactions_per_day=0), start, population)]
    return pd.concat(frames, ignore_index=True)

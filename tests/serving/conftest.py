"""Session fixtures of the serving tests, all from one small serving world (tests/support/serving_world.py).

The world is built once per session in a directory of its own: a champion (registered by the training
job, promoted as the pipeline promotes) and a Feast repo with its customers' stats in the online store.
The session's model is only read: tests that move aliases use models of their own (copies of the
champion's files under other registered names, tests.support.servers.copy_model).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from ml_platform.data.schema import ENTITY_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import MODEL_FEATURES, STORED_FEATURES, model_features
from ml_platform.registry import CHALLENGER, CHAMPION, Registry
from ml_platform.settings import Settings
from tests.support.servers import Running, copy_model, make_config, serve
from tests.support.serving_world import UNKNOWN_CUSTOMER, ServingWorld, build_serving_world


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> ServingWorld:
    return build_serving_world(tmp_path_factory.mktemp("serving_world"))


@pytest.fixture(scope="session")
def settings(world) -> Settings:
    return world.settings


@pytest.fixture(scope="session")
def registry(world) -> Registry:
    return world.registry


@pytest.fixture(scope="session")
def champion_version(world) -> int:
    return world.champion_version


@pytest.fixture(scope="session")
def main_server(settings, champion_version, tmp_path_factory) -> Iterator[Running]:
    """The session's model with the feature store, as deployed: champion only."""
    config = make_config(settings, tmp_path_factory.mktemp("main"))
    with serve(config) as running:
        yield running


@pytest.fixture(scope="session")
def ab_model(settings, registry, champion_version) -> Registry:
    """A model of its own with a champion (v1) and a challenger (v2) for routing tests."""
    other = copy_model(settings, registry, f"serving_ab_{uuid.uuid4().hex[:6]}", versions=2)
    other.set_alias(CHAMPION, 1)
    other.set_alias(CHALLENGER, 2)
    return other


@pytest.fixture(scope="session")
def transactions(world):
    """Transactions of 5 known customers (an hour after their last order) and of a new customer."""
    latest = world.latest_stats().reset_index()
    chosen = latest.sample(5, random_state=3)
    rows = [
        {
            "customer_id": int(row[ENTITY_COLUMN]),
            "amount": amount,
            "category": category,
            "channel": channel,
            "event_timestamp": (row[TIMESTAMP_COLUMN] + pd.Timedelta(hours=1, minutes=17)).isoformat(),
        }
        for (_, row), amount, category, channel in zip(
            chosen.iterrows(),
            [12.5, 980.0, 45.25, 3000.0, 77.7],
            ["grocery", "electronics", "fuel", "jewelry", "travel"],
            ["in_store", "online", "in_store", "online", "online"],
            strict=True,
        )
    ]
    rows.append(
        {
            "customer_id": UNKNOWN_CUSTOMER,
            "amount": 250.0,
            "category": "gift_cards",
            "channel": "online",
            "event_timestamp": "2026-03-15T03:30:00+00:00",
        }
    )
    frame = pd.DataFrame(rows)
    frame[TIMESTAMP_COLUMN] = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True)
    offline_stats = frame[[ENTITY_COLUMN]].merge(latest, on=ENTITY_COLUMN, how="left")[list(STORED_FEATURES)]
    features = model_features(frame, offline_stats)
    return rows, features


@pytest.fixture(scope="session")
def offline(registry, champion_version):
    booster = registry.load_booster(champion_version)
    threshold = registry.threshold(champion_version)

    def predict(features: pd.DataFrame) -> np.ndarray:
        return np.asarray(booster.inplace_predict(features[list(MODEL_FEATURES)].to_numpy("float64")), "float64")

    return predict, threshold

"""Servers for the serving tests: real uvicorn on 127.0.0.1, an ephemeral port, a background thread.

The session's bootstrap run (tests/dagster/conftest.py) materializes the graph once, so a champion and
a loaded online store exist. Tests that move aliases use models of their own (copies of the champion's
files under other registered names), so the session's model is only read.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn

from ml_platform.data.schema import ENTITY_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import MODEL_FEATURES, STORED_FEATURES, model_features
from ml_platform.features.store import FeatureRepo
from ml_platform.registry import CHALLENGER, CHAMPION, THRESHOLD_TAG, Registry
from ml_platform.serving import ServerConfig, create_app
from tests.dagster.conftest import bootstrap_result, bootstrap_run, defs, instance, registry, settings  # noqa: F401

UNKNOWN_CUSTOMER = 987_654_321


@dataclass
class Running:
    url: str
    app: object
    config: ServerConfig

    @property
    def server(self):
        return self.app.state.server

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)

    def flush_log(self) -> None:
        assert self.server.logger.flush(), "the prediction log did not flush"


@contextmanager
def serve(config: ServerConfig, *, wait_ready: bool = True, timeout: float = 60.0) -> Iterator[Running]:
    """Run ``create_app(config)`` under uvicorn in a thread; stop it (gracefully) on exit."""
    app = create_app(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    running = Running(f"http://127.0.0.1:{port}", app, config)
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive(), "uvicorn exited during start-up"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    if wait_ready:
        wait_until_ready(running, deadline)
    try:
        yield running
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def wait_until_ready(running: Running, deadline: float) -> None:
    with running.client() as client:
        while True:
            answer = client.get("/v2/health/ready")
            if answer.status_code == 200:
                return
            assert time.monotonic() < deadline, f"server never became ready: {answer.text}"
            time.sleep(0.02)


def make_config(settings, tmp_path: Path, **overrides) -> ServerConfig:  # noqa: F811
    values = {"log_dir": tmp_path / "predictions", "poll_seconds": 0.2, "log_flush_seconds": 0.5}
    values.update(overrides)
    return ServerConfig.from_settings(settings, environ={}, **values)


def copy_model(settings, registry, name: str, versions: int) -> Registry:  # noqa: F811
    """A registered model ``name`` with ``versions`` versions, each the champion's files and threshold."""
    champion = registry.version_for_alias(CHAMPION)
    source = registry.model_version(champion)
    files = registry.client.get_model_version_download_uri(registry.model_name, str(champion))
    other = Registry(settings.tracking_uri, name, settings.experiment_name, settings.mlflow_artifact_root)
    other.client.create_registered_model(name)
    for _ in range(versions):
        other.client.create_model_version(
            name, files, run_id=source.run_id, tags={THRESHOLD_TAG: source.tags[THRESHOLD_TAG]}
        )
    return other


@pytest.fixture(scope="session")
def champion_version(bootstrap_result, registry):  # noqa: F811
    version = registry.version_for_alias(CHAMPION)
    assert version is not None
    return version


@pytest.fixture(scope="session")
def feature_repo(settings) -> FeatureRepo:  # noqa: F811
    return FeatureRepo.from_settings(settings)


@pytest.fixture(scope="session")
def main_server(settings, champion_version, tmp_path_factory) -> Iterator[Running]:  # noqa: F811
    """The session's model with the feature store, as deployed: champion only."""
    config = make_config(settings, tmp_path_factory.mktemp("main"))
    with serve(config) as running:
        yield running


@pytest.fixture(scope="session")
def ab_model(settings, registry, champion_version) -> Registry:  # noqa: F811
    """A model of its own with a champion (v1) and a challenger (v2) for routing tests."""
    other = copy_model(settings, registry, f"serving_ab_{uuid.uuid4().hex[:6]}", versions=2)
    other.set_alias(CHAMPION, 1)
    other.set_alias(CHALLENGER, 2)
    return other


@pytest.fixture(scope="session")
def transactions(feature_repo, bootstrap_result):  # noqa: F811
    """Transactions of 5 known customers (an hour after their last order) and of a new customer."""
    stats = pd.read_parquet(feature_repo.offline_table_path)
    latest = stats.sort_values(TIMESTAMP_COLUMN).groupby(ENTITY_COLUMN).tail(1).sort_values(ENTITY_COLUMN)
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
def offline(registry, champion_version):  # noqa: F811
    booster = registry.load_booster(champion_version)
    threshold = registry.threshold(champion_version)

    def predict(features: pd.DataFrame) -> np.ndarray:
        return np.asarray(booster.inplace_predict(features[list(MODEL_FEATURES)].to_numpy("float64")), "float64")

    return predict, threshold

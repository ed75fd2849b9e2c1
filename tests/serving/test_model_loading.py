"""Loading a model executes nothing: a version that is not a native XGBoost model is refused.

A ``python_function`` model whose pickled object runs code when it is unpickled (here: creates a
marker file) is registered and made champion while a server runs. The server never unpickles it (the
marker never appears), keeps answering with the version it had, reports the refusal in /health and
/metrics and logs it once. A server that starts while the champion is such a model is not ready and
says why. Loading the same version with MLflow's pyfunc loader does create the marker, so the marker
is a real witness.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pytest

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.registry import CHALLENGER, CHAMPION, THRESHOLD_TAG, ModelRefused, Registry
from tests.support.servers import copy_model, make_config, serve

FEATURES = [420.0, 2.25, 1.0, 10.0, 1.0, 35.0, 35.0, 12.0, 12.0]
INVOCATION = {"inputs": {name: [value] for name, value in zip(MODEL_FEATURES, FEATURES, strict=True)}}
MODELS_LOGGER = "ml_platform.serving.models"


class WritesMarkerWhenUnpickled(mlflow.pyfunc.PythonModel):
    """A pyfunc model whose pickle, when loaded, calls ``open(marker, "w")``: code run by unpickling."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def predict(self, context, model_input, params=None):
        return model_input

    def __reduce__(self):
        return (open, (self.marker, "w"))


def register_pickled_model(model: Registry, marker: Path) -> int:
    """A new version of ``model``: a python_function model logged by MLflow, pickled, with a threshold tag."""
    experiment_id = model.ensure_experiment()
    with model._fluent(), mlflow.start_run(experiment_id=experiment_id, run_name="pickled"):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=WritesMarkerWhenUnpickled(str(marker)), pip_requirements=[]
        )
        version = mlflow.register_model(info.model_uri, model.model_name, tags={THRESHOLD_TAG: "0.5"})
    return int(version.version)


def expected_reason(model: Registry, version: int) -> str:
    return (
        f"{model.model_name} version {version} is not a native XGBoost model: its MLmodel has flavors"
        " python_function only; refusing to load it (loading it could run code)"
    )


def refusal_records(caplog, version: int) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == MODELS_LOGGER and record.getMessage().startswith("refused to load")
        and f" version {version}:" in record.getMessage()
    ]  # fmt: skip


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_pickled_champion_is_refused_and_the_loaded_model_keeps_serving(
    settings, registry, champion_version, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger=MODELS_LOGGER)
    model = copy_model(settings, registry, f"serving_refuse_{uuid.uuid4().hex[:6]}", versions=1)
    model.set_alias(CHAMPION, 1)
    marker = tmp_path / "unpickled-marker"
    pickled = register_pickled_model(model, marker)
    assert pickled == 2
    assert not marker.exists(), "logging the model must not have run it"

    config = make_config(settings, tmp_path, model_name=model.model_name, feast=None, poll_seconds=0.05)
    with serve(config) as running:
        manager = running.server.manager
        with running.client() as client:
            assert client.post("/predict", json={"features": FEATURES}).json()["model_version"] == 1
            model.set_alias(CHAMPION, pickled)
            wait_for(lambda: pickled in manager.refused, "the refusal")
            polls = manager.polls
            wait_for(lambda: manager.polls >= polls + 10, "ten more polls")

            health = client.get("/health")
            answer = client.post("/predict", json={"features": FEATURES})
            invocation = client.post("/invocations", json=INVOCATION)
            metrics = client.get("/metrics").text

    assert not marker.exists(), "the server unpickled the pickled model"
    assert manager.refused == {pickled: expected_reason(model, pickled)}
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["model_version"] == 1
    assert health.json()["refused"] == [{"version": pickled, "reason": expected_reason(model, pickled)}]
    assert answer.status_code == 200 and answer.json()["model_version"] == 1
    assert invocation.status_code == 200 and len(invocation.json()["predictions"]) == 1
    assert f'ml_platform_serving_model_refused{{version="{pickled}"}} 1.0' in metrics
    assert 'ml_platform_serving_model_refused{version="1"}' not in metrics
    assert manager.swaps == 1  # the first load only
    records = refusal_records(caplog, pickled)
    assert len(records) == 1, [record.getMessage() for record in records]
    assert records[0].levelno == logging.WARNING and expected_reason(model, pickled) in records[0].getMessage()

    with pytest.raises(ModelRefused) as refused:
        model.load_booster(pickled)
    assert str(refused.value) == expected_reason(model, pickled)
    assert not marker.exists()

    # The witness works: MLflow's pyfunc loader unpickles the model, and that creates the marker.
    with model._fluent(), pytest.raises(Exception):  # noqa: B017 (what it unpickles is a file, not a model)
        mlflow.pyfunc.load_model(f"models:/{model.model_name}/{pickled}")
    assert marker.exists()


def test_a_server_whose_champion_is_refused_is_not_ready_and_says_why(
    settings, registry, champion_version, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger=MODELS_LOGGER)
    model = Registry.from_settings(settings, model_name=f"serving_refuse_cold_{uuid.uuid4().hex[:6]}")
    model.client.create_registered_model(model.model_name)
    marker = tmp_path / "unpickled-marker"
    pickled = register_pickled_model(model, marker)
    model.set_alias(CHAMPION, pickled)

    config = make_config(settings, tmp_path, model_name=model.model_name, feast=None, poll_seconds=0.05)
    with serve(config, wait_ready=False) as running:
        manager = running.server.manager
        wait_for(lambda: pickled in manager.refused, "the refusal")
        polls = manager.polls
        wait_for(lambda: manager.polls >= polls + 5, "five more polls")
        with running.client() as client:
            health = client.get("/health")
            ready = client.get("/v2/health/ready")
            ping = client.get("/ping")
            answer = client.post("/predict", json={"features": FEATURES})
            invocation = client.post("/invocations", json=INVOCATION)

    reason = f"the champion ({model.model_name} version {pickled}) was refused: {expected_reason(model, pickled)}"
    assert health.status_code == 503
    assert health.json()["status"] == "unavailable" and health.json()["reason"] == reason
    assert health.json()["refused"] == [{"version": pickled, "reason": expected_reason(model, pickled)}]
    assert (ready.status_code, ready.json()) == (503, {"ready": False, "reason": reason})
    assert ping.status_code == 503
    assert answer.status_code == 503 and answer.json()["error"] == f"no model loaded: {reason}"
    assert invocation.status_code == 503
    assert invocation.json() == {"error_code": "TEMPORARILY_UNAVAILABLE", "message": f"no model loaded: {reason}"}
    assert len(refusal_records(caplog, pickled)) == 1
    assert not marker.exists()


def test_a_refused_challenger_is_left_out_and_a_good_one_comes_back(
    settings, registry, champion_version, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger=MODELS_LOGGER)
    model = copy_model(settings, registry, f"serving_refuse_ab_{uuid.uuid4().hex[:6]}", versions=2)
    model.set_alias(CHAMPION, 1)
    model.set_alias(CHALLENGER, 2)
    marker = tmp_path / "unpickled-marker"
    pickled = register_pickled_model(model, marker)
    assert pickled == 3

    config = make_config(
        settings, tmp_path, model_name=model.model_name, feast=None, poll_seconds=0.05, challenger_weight=1.0
    )
    with serve(config) as running:
        manager = running.server.manager
        with running.client() as client:
            before = client.get("/health").json()
            variants = {"before": client.post("/predict", json={"features": FEATURES}).json()["variant"]}
            model.set_alias(CHALLENGER, pickled)
            wait_for(lambda: pickled in manager.refused, "the refusal")
            polls = manager.polls
            wait_for(lambda: manager.polls >= polls + 10, "ten more polls")
            during = client.get("/health").json()
            variants["during"] = client.post("/predict", json={"features": FEATURES}).json()["variant"]
            model.set_alias(CHALLENGER, 2)
            wait_for(lambda: manager.deployment.versions == (1, 2), "the good challenger back")
            after = client.get("/health").json()
            variants["after"] = client.post("/predict", json={"features": FEATURES}).json()["variant"]

    assert (before["model_version"], before["challenger_version"]) == (1, 2)
    assert (during["model_version"], during["challenger_version"]) == (1, None)
    assert during["refused"] == [{"version": pickled, "reason": expected_reason(model, pickled)}]
    # all traffic goes to a challenger when there is one
    assert variants == {"before": "challenger", "during": "champion", "after": "challenger"}
    assert (after["model_version"], after["challenger_version"]) == (1, 2)
    assert after["refused"] == during["refused"]  # remembered: v3 is not read again
    assert manager.swaps == 3  # (1, 2), (1, None), (1, 2)
    assert len(refusal_records(caplog, pickled)) == 1
    assert not marker.exists()

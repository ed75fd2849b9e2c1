"""Open Inference Protocol v2: health, metadata, infer; liveness versus readiness."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.registry import CHAMPION
from tests.serving.conftest import copy_model, make_config, serve


@pytest.fixture(scope="module")
def rows(transactions, offline):
    _, features = transactions
    known = features.dropna().head(3).reset_index(drop=True)
    predict, _ = offline
    return known, predict(known)


def test_metadata(main_server, settings, champion_version):  # noqa: F811
    with main_server.client() as client:
        body = client.get(f"/v2/models/{settings.model_name}").json()
        versioned = client.get(f"/v2/models/{settings.model_name}/versions/{champion_version}")
        ready = client.get(f"/v2/models/{settings.model_name}/ready")
    assert body["name"] == settings.model_name
    assert str(champion_version) in body["versions"]
    assert body["platform"] == "xgboost"
    assert body["inputs"] == [
        {
            "name": "input-0",
            "datatype": "FP64",
            "shape": [-1, 9],
            "parameters": {"feature_names": list(MODEL_FEATURES)},
        }
    ]
    assert body["outputs"] == [{"name": "probability", "datatype": "FP64", "shape": [-1]}]
    assert versioned.status_code == 200 and versioned.json()["versions"] == [str(champion_version)]
    assert ready.status_code == 200


def test_infer_one_tensor(main_server, settings, champion_version, rows):  # noqa: F811
    features, expected = rows
    request = {
        "id": "req-42",
        "inputs": [
            {"name": "input-0", "shape": [len(features), 9], "datatype": "FP64", "data": features.to_numpy().tolist()}
        ],
    }
    flat = {**request, "inputs": [{**request["inputs"][0], "data": features.to_numpy().ravel().tolist()}]}
    with main_server.client() as client:
        nested_answer = client.post(f"/v2/models/{settings.model_name}/infer", json=request)
        flat_answer = client.post(f"/v2/models/{settings.model_name}/versions/{champion_version}/infer", json=flat)
    assert nested_answer.status_code == 200, nested_answer.text
    body = nested_answer.json()
    assert body["model_name"] == settings.model_name
    assert body["model_version"] == str(champion_version)
    assert body["id"] == "req-42"
    (output,) = body["outputs"]
    assert output["name"] == "probability" and output["datatype"] == "FP64" and output["shape"] == [len(features)]
    np.testing.assert_allclose(output["data"], expected, rtol=0, atol=1e-9)
    assert flat_answer.json()["outputs"] == body["outputs"]


def test_infer_one_tensor_per_feature(main_server, settings, rows):  # noqa: F811
    features, expected = rows
    inputs = [
        {
            "name": name,
            "shape": [len(features)],
            "datatype": "FP32" if name == "amount" else "FP64",
            "data": features[name].tolist(),
        }
        for name in reversed(MODEL_FEATURES)
    ]
    with main_server.client() as client:
        answer = client.post(f"/v2/models/{settings.model_name}/infer", json={"inputs": inputs})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["outputs"][0]["data"], expected, rtol=0, atol=1e-9)
    assert answer.json()["id"]


def test_unknown_model_is_404(main_server, settings):  # noqa: F811
    with main_server.client() as client:
        metadata = client.get("/v2/models/nope")
        infer = client.post("/v2/models/nope/infer", json={"inputs": []})
        version = client.get(f"/v2/models/{settings.model_name}/versions/999")
    for answer in (metadata, infer):
        assert answer.status_code == 404
        assert "'nope'" in answer.json()["error"] and settings.model_name in answer.json()["error"]
    assert version.status_code == 404 and "999" in version.json()["error"]


def test_live_before_ready_and_ready_once_a_champion_exists(settings, registry, champion_version, tmp_path):  # noqa: F811
    name = f"serving_late_{uuid.uuid4().hex[:6]}"
    late = copy_model(settings, registry, name, versions=1)  # registered, but no champion alias yet
    config = make_config(settings, tmp_path, model_name=name, feast=None, poll_seconds=0.1)
    with serve(config, wait_ready=False) as running, running.client() as client:
        assert client.get("/v2/health/live").status_code == 200
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503 and "champion" in ready.json()["reason"]
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert "champion" in health.json()["reason"]
        assert client.get("/ping").status_code == 503
        refused = client.post("/predict", json={"features": [1.0] * 9})
        assert refused.status_code == 503 and "no model loaded" in refused.json()["error"]

        late.set_alias(CHAMPION, 1)
        deadline = time.monotonic() + 10
        while client.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.05)
        assert client.get("/health").json()["model_version"] == 1
        assert client.post("/predict", json={"features": [1.0] * 9}).status_code == 200

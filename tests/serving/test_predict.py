"""/predict and /health against the session's champion, compared with offline predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml_platform.features.engineering import MODEL_FEATURES


def as_json_features(row) -> list:
    return [None if math.isnan(value) else float(value) for value in row]


def test_health(main_server, champion_version, settings):
    with main_server.client() as client:
        body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["model_name"] == settings.model_name
    assert body["model_version"] == champion_version
    assert body["challenger_version"] is None or body["challenger_version"] != champion_version
    assert body["uptime_seconds"] > 0


def test_predict_with_customer_id_matches_offline(main_server, transactions, offline, champion_version):
    rows, features = transactions
    predict, threshold = offline
    expected = predict(features)
    assert features.loc[len(rows) - 1, "total_purchases"] == 0  # the new customer has no history
    with main_server.client() as client:
        for row, probability in zip(rows, expected, strict=True):
            answer = client.post("/predict", json={**row, "request_id": f"tx-{row['customer_id']}"})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["probability"] == pytest.approx(probability, abs=1e-9)
            assert body["is_fraud"] == (probability >= threshold)
            assert body["threshold"] == threshold
            assert body["model_version"] == champion_version
            assert body["variant"] == "champion"
            assert body["request_id"] == f"tx-{row['customer_id']}"
            assert body["latency_ms"] > 0


def test_predict_with_features_matches_offline(main_server, transactions, offline, champion_version):
    _, features = transactions
    predict, threshold = offline
    expected = predict(features)
    with main_server.client() as client:
        for values, probability in zip(features.to_numpy(), expected, strict=True):
            body = client.post("/predict", json={"features": as_json_features(values)}).json()
            assert body["probability"] == pytest.approx(probability, abs=1e-9)
            assert body["is_fraud"] == (probability >= threshold)
            assert body["model_version"] == champion_version
            assert len(body["request_id"]) == 32  # one is made up when none is given


def test_event_timestamp_defaults_to_now(main_server, transactions, offline):
    rows, _ = transactions
    row = {key: value for key, value in rows[0].items() if key != "event_timestamp"}
    with main_server.client() as client:
        answer = client.post("/predict", json=row)
    assert answer.status_code == 200, answer.text
    assert 0.0 <= answer.json()["probability"] <= 1.0


def test_batch_mixes_both_shapes(main_server, transactions, offline):
    rows, features = transactions
    predict, _ = offline
    expected = predict(features)
    instances = [*rows, *({"features": as_json_features(values)} for values in features.to_numpy())]
    with main_server.client() as client:
        answer = client.post("/predict", json={"instances": instances, "request_id": "batch-1"})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 2 * len(rows)
    got = [p["probability"] for p in predictions]
    assert got == pytest.approx(list(expected) * 2, abs=1e-9)
    assert predictions[-1]["request_id"] == f"batch-1/{len(instances) - 1}"


def test_logged_rows_carry_inputs_and_answers(main_server, transactions):
    from ml_platform.predictions import read_prediction_log

    rows, features = transactions
    with main_server.client() as client:
        body = client.post("/predict", json={**rows[1], "request_id": "logged-1"}).json()
    main_server.flush_log()
    log = read_prediction_log(main_server.config.log_dir)
    row = log[log["request_id"] == "logged-1"].iloc[0]
    assert row["customer_id"] == rows[1]["customer_id"]
    assert row["probability"] == pytest.approx(body["probability"])
    assert row["model_version"] == body["model_version"]
    assert row["variant"] == "champion"
    assert row["is_fraud"] == body["is_fraud"]
    np.testing.assert_allclose(row[list(MODEL_FEATURES)].to_numpy("float64"), features.iloc[1].to_numpy(), rtol=1e-12)

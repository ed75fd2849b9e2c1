"""POST /feedback over real HTTP: labels for answered requests into the label store the server is configured
with, behind the scoring token, all or nothing, bad rows named; the labelled answers then judged."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from ml_platform.monitoring.labels import LabelStore
from ml_platform.monitoring.performance import live_performance
from ml_platform.predictions import read_prediction_log
from ml_platform.serving.config import ServerConfig
from tests.support.servers import make_config, serve

TOKEN = "feedback-scoring-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEATURES = [120.0, 13.5, 1.0, 8.0, 4.0, 80.0, 320.0, 2.5, 1.5]
MAX_ROWS = 5


@pytest.fixture(scope="module")
def feedback_server(settings, champion_version, tmp_path_factory):
    directory = tmp_path_factory.mktemp("feedback")
    config = make_config(
        settings, directory, feast=None, auth_token=TOKEN, max_batch_rows=MAX_ROWS, labels_dir=directory / "labels"
    )
    with serve(config) as running:
        yield running


def post(running, body, headers=AUTH):
    with running.client() as client:
        content = body if isinstance(body, str) else json.dumps(body)
        return client.post("/feedback", content=content, headers={"Content-Type": "application/json", **headers})


def test_answered_requests_labelled_and_judged(feedback_server):
    """Three answers (one request id is a transaction's id), their labels posted, then one overturned."""
    ids = ["fb-tx-1", "fb-tx-2", "fb-req-3"]
    with feedback_server.client(headers=AUTH) as client:
        answers = [client.post("/predict", json={"features": FEATURES, "request_id": rid}).json() for rid in ids]
    assert [answer["request_id"] for answer in answers] == ids
    feedback_server.flush_log()
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    first = post(
        feedback_server,
        {
            "labels": [
                {"transaction_id": "fb-tx-1", "label": 1, "labelled_at": yesterday},
                {"transaction_id": "fb-tx-2", "label": "legit", "labelled_at": yesterday},
                {"request_id": "fb-req-3", "label": True},
            ]
        },
    )
    assert first.status_code == 200, first.text
    assert first.json() == {"rows": 3, "requests": 3, "new": 3, "changed": 0, "positives": 2}
    review = post(feedback_server, {"labels": [{"request_id": "fb-tx-2", "label": "fraud"}]})
    assert review.json() == {"rows": 1, "requests": 1, "new": 0, "changed": 1, "positives": 1}

    store = LabelStore(feedback_server.config.labels_dir)
    known = store.read(request_ids=ids)
    assert dict(zip(known["request_id"], known["label"], strict=True)) == {
        "fb-tx-1": True,
        "fb-tx-2": True,
        "fb-req-3": True,
    }
    # the day before the review, fb-tx-2 was legit
    before = store.read(as_of=datetime.now(UTC) - timedelta(hours=1), request_ids=ids)
    assert dict(zip(before["request_id"], before["label"], strict=True)) == {"fb-tx-1": True, "fb-tx-2": False}

    logged = read_prediction_log(feedback_server.config.log_dir)
    logged = logged.loc[logged["request_id"].isin(ids)]
    performance = live_performance(logged, store.read(), {})
    assert (performance.labeled_rows, performance.unlabeled_rows) == (3, 0)
    expected_accuracy = float(logged["is_fraud"].astype(bool).mean())  # every label is fraud now
    assert performance.metrics["accuracy"] == pytest.approx(expected_accuracy)


def test_a_bad_row_refuses_the_whole_body_naming_each(feedback_server):
    store = LabelStore(feedback_server.config.labels_dir)
    files_before = store.files()
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    answer = post(
        feedback_server,
        {
            "labels": [
                {"request_id": "fb-good", "label": 0},
                {"label": 1},
                {"request_id": "fb-bad-label", "label": "maybe"},
                {"request_id": "fb-future", "label": 1, "labelled_at": tomorrow},
                {"request_id": "fb-bad-time", "label": 1, "labelled_at": "last tuesday"},
            ]
        },
    )
    assert answer.status_code == 422
    body = answer.json()
    assert body["field"] == "labels[1]"
    error = body["error"]
    assert error.startswith("labels: 4 of 5 rows refused, none written: labels[1]: no request_id or transaction_id")
    assert "labels[2].label: expected 1/0, true/false or fraud/legit, got 'maybe'" in error
    assert "labels[3].labelled_at: " in error and "is in the future" in error
    assert "labels[4].labelled_at: expected an ISO 8601 time" in error
    assert store.files() == files_before  # not even the good row
    assert store.read(request_ids=["fb-good"]).empty


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ("{not json", 400, "body: not valid JSON"),
        ([1, 2], 422, "body: expected a JSON object, got list"),
        ({}, 422, "labels: expected a list of label rows, got nothing"),
        ({"labels": {"request_id": "a"}}, 422, "labels: expected a list of label rows, got dict"),
        ({"labels": []}, 422, f"labels: expected 1 to {MAX_ROWS} label rows, got none"),
        ({"labels": [{"request_id": "a", "label": 1}] * 6}, 413, f"labels: at most {MAX_ROWS} rows per request, got 6"),
        ({"labels": ["a"]}, 422, "labels: 1 of 1 rows refused, none written: labels[0]: expected an object"),
        ({"labels": [{"request_id": 5.5, "label": 1}]}, 422, "labels[0].request_id: expected text or an integer"),
        ({"labels": [{"request_id": "a", "label": 1, "labelled_at": 17}]}, 422, "labels[0].labelled_at: expected"),
    ],
)
def test_bad_bodies_are_refused_with_a_named_4xx(feedback_server, body, status, error):
    answer = post(feedback_server, body)
    assert answer.status_code == status, answer.text
    assert error in answer.json()["error"]


def test_the_scoring_token_guards_feedback(feedback_server):
    body = {"labels": [{"request_id": "fb-unauthorized", "label": 1}]}
    assert post(feedback_server, body, headers={}).status_code == 401
    assert post(feedback_server, body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert LabelStore(feedback_server.config.labels_dir).read(request_ids=["fb-unauthorized"]).empty


def test_the_label_store_comes_from_the_settings(settings, tmp_path):
    config = ServerConfig.from_settings(settings, environ={})
    assert config.labels_dir == settings.home / "monitoring" / "labels"
    moved = ServerConfig.from_settings(settings, environ={"ML_PLATFORM_SERVING_LABELS_DIR": str(tmp_path)})
    assert moved.labels_dir == tmp_path


def test_a_server_without_a_label_store_says_so(settings, champion_version, tmp_path):
    config = make_config(settings, tmp_path, feast=None, labels_dir=None)
    with serve(config, wait_ready=False) as running:
        answer = post(running, {"labels": [{"request_id": "a", "label": 1}]}, headers={})
    assert answer.status_code == 503
    assert answer.json()["error"] == "labels: this server has no label store configured (labels_dir)"

"""POST /feedback into a label store in an object store (a real S3-compatible server on loopback): two
replicas of the model server configured by the one ``labels_uri`` setting, labels posted to either, and
monitoring reading them all back from the bucket, the latest label of a request winning."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from ml_platform.monitoring.health import MonitoringPaths
from tests.support.s3 import s3_bucket
from tests.support.servers import make_config, serve

TOKEN = "feedback-s3-scoring-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
FEATURES = [120.0, 13.5, 1.0, 8.0, 4.0, 80.0, 320.0, 2.5, 1.5]


def post_feedback(running, rows):
    with running.client() as client:
        return client.post("/feedback", content=json.dumps({"labels": rows}), headers=AUTH)


def test_feedback_on_any_replica_lands_where_monitoring_reads(settings, champion_version, tmp_path):
    with s3_bucket(prefix="fraud-detector-labels") as bucket:
        shared = replace(settings, labels_uri=bucket.uri)
        configs = [make_config(shared, tmp_path / name, feast=None, auth_token=TOKEN) for name in ("a", "b")]
        assert [config.labels_dir for config in configs] == [bucket.uri, bucket.uri]
        with serve(configs[0]) as first, serve(configs[1]) as second:
            ids = ["s3fb-1", "s3fb-2", "s3fb-3"]
            with first.client(headers=AUTH) as client:
                for rid in ids:
                    answer = client.post("/predict", json={"features": FEATURES, "request_id": rid})
                    assert answer.status_code == 200, answer.text
            yesterday = datetime.now(UTC) - timedelta(days=1)
            posted = post_feedback(
                first,
                [
                    {"transaction_id": "s3fb-1", "label": 1, "labelled_at": yesterday.isoformat()},
                    {"request_id": "s3fb-2", "label": "legit", "labelled_at": yesterday.isoformat()},
                    {"request_id": "s3fb-3", "label": False},
                ],
            )
            assert posted.status_code == 200, posted.text
            assert posted.json() == {"rows": 3, "requests": 3, "new": 3, "changed": 0, "positives": 1}
            keys = bucket.object_keys()
            assert len(keys) == 2 and all(key.startswith("date=") and "/part-" in key for key in keys), keys

            # The other replica sees the first one's labels: its review of s3fb-2 is a change, not a new label.
            review = post_feedback(second, [{"request_id": "s3fb-2", "label": "fraud"}])
            assert review.status_code == 200, review.text
            assert review.json() == {"rows": 1, "requests": 1, "new": 0, "changed": 1, "positives": 1}

            refused = post_feedback(second, [{"request_id": "s3fb-3", "label": 1}, {"request_id": "s3fb-4"}])
            assert refused.status_code == 422, refused.text
            assert "labels[1]" in refused.json()["error"]
            assert len(bucket.object_keys()) == 3  # the refused body wrote nothing

        store = MonitoringPaths.from_settings(shared, {}).labels()
        assert store.root == bucket.uri
        now = store.read()
        assert dict(zip(now["request_id"], now["label"], strict=True)) == {
            "s3fb-1": True,
            "s3fb-2": True,
            "s3fb-3": False,
        }
        before_review = store.read(as_of=datetime.now(UTC) - timedelta(hours=1))
        assert dict(zip(before_review["request_id"], before_review["label"], strict=True)) == {
            "s3fb-1": True,
            "s3fb-2": False,
        }

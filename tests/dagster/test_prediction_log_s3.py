"""The ``prediction_log`` asset over a log in an object store (a real S3-compatible server on loopback):
monitoring reads and compacts what the servers' replicas wrote there."""

from __future__ import annotations

from datetime import UTC, date, datetime

import dagster as dg
import numpy as np

from assets import ALL_ASSETS
from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.predictions import PredictionBatch, PredictionLogger, read_prediction_log
from resources.monitoring import MonitoringResource
from tests.support.runs import materializations
from tests.support.s3 import s3_bucket


def test_prediction_log_asset_compacts_a_day_of_two_replicas_in_the_bucket(defs, instance, tmp_path):
    day = date(2026, 4, 7)
    start = datetime(2026, 4, 7, 8, tzinfo=UTC).timestamp()
    with s3_bucket() as bucket:
        for replica, version in (("pod-a", 1), ("pod-b", 2)):
            logger = PredictionLogger(bucket.uri, journal_dir=tmp_path / replica, replica=replica, flush_seconds=3600)
            logger.start()
            for part in range(2):
                for row in range(3):
                    logger.log(
                        PredictionBatch(
                            time=start + 60 * (3 * part + row) + version,
                            request_ids=[f"{replica}-{part}-{row}"],
                            customer_ids=[row],
                            features=np.ones((1, len(MODEL_FEATURES))),
                            probabilities=np.array([0.1 * row]),
                            is_fraud=np.array([False]),
                            threshold=0.5,
                            model_version=version,
                            variant="champion",
                            latency_ms=2.0 + row,
                        )
                    )
                assert logger.flush()
            logger.close()
        before = read_prediction_log(bucket.uri, day)
        assert len(bucket.object_keys(f"date={day}/")) == 4 and len(before) == 12

        monitoring = MonitoringResource(log_dir=bucket.uri, monitoring_dir=str(tmp_path / "monitoring"))
        assert monitoring.paths().log_dir == bucket.uri
        result = dg.materialize(
            ALL_ASSETS,
            selection=["prediction_log"],
            resources={**defs.resources, "monitoring": monitoring},
            instance=instance,
            partition_key=str(day),
        )
        (compacted,) = bucket.object_keys(f"date={day}/")
        assert compacted.endswith("-compacted.parquet")
        metadata = materializations(result, "prediction_log")[0]
        assert metadata["dagster/row_count"] == 12 and metadata["versions"] == "v1, v2"
        assert metadata["files_compacted"] == 4 and metadata["files_now"] == 1
        assert metadata["folder"] == f"{bucket.uri}/date={day}"
        after = read_prediction_log(bucket.uri, day)
        assert after["request_id"].tolist() == before["request_id"].tolist()
        assert after["probability"].tolist() == before["probability"].tolist()

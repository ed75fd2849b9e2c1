"""The labels asset for real: label files dropped in the inbox imported into the label store (a re-run
replaces the day's import), live_performance then judging the labelled traffic, and a bad file failing the
run naming the file, the row and the reason, with nothing written."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from assets import ALL_ASSETS
from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.monitoring.labels import LabelStore
from ml_platform.registry import CHAMPION
from tests.support.runs import materializations, monitoring_resources

pytestmark = pytest.mark.xdist_group("graph")  # the session's one graph world: see tests/conftest.py
ROWS = 60
LABELLED = 50  # 40 in a CSV file named after the day, 10 in a parquet file of the day's folder


def logged_answers(log_dir, version: int, now: datetime) -> pd.DataFrame:
    """ROWS answers of ``version`` logged over the last hour (one part file of today's folder), seeded."""
    rng = np.random.default_rng(11)
    probability = rng.random(ROWS)
    frame = pd.DataFrame(
        {
            "time": pd.Series(pd.date_range(now - timedelta(hours=1), periods=ROWS, freq="1min")).dt.as_unit("ns"),
            "request_id": [f"lbl-tx-{i:03d}" for i in range(ROWS)],
            "customer_id": pd.Series(range(ROWS), dtype="Int64"),
            **{name: rng.random(ROWS) for name in MODEL_FEATURES},
            "probability": probability,
            "is_fraud": probability >= 0.5,
            "threshold": 0.5,
            "model_version": np.full(ROWS, version, dtype="int64"),
            "variant": "champion",
            "latency_ms": 1.0,
        }
    )
    folder = log_dir / f"date={now:%Y-%m-%d}"
    folder.mkdir(parents=True)
    frame.to_parquet(folder / "part-0000000000000000001-labels-test.parquet", index=False)
    return frame


def run_labels(defs, instance, resources, day: str):
    return dg.materialize(
        ALL_ASSETS,
        selection=dg.AssetSelection.assets("labels"),
        partition_key=day,
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )


def test_inbox_files_judged_by_live_performance(bootstrap_result, defs, instance, registry, tmp_path):
    now = datetime.now(UTC)
    day = f"{now:%Y-%m-%d}"
    log_dir, monitoring_dir = tmp_path / "log", tmp_path / "monitoring"
    version = registry.version_for_alias(CHAMPION)
    answers = logged_answers(log_dir, version, now)
    truth = np.random.default_rng(5).random(ROWS) < 0.4
    labelled_at = (now - timedelta(minutes=5)).isoformat()
    inbox = monitoring_dir / "labels_inbox"
    (inbox / day).mkdir(parents=True)
    pd.DataFrame(
        {
            "transaction_id": answers["request_id"][:40],
            "label": np.where(truth[:40], "fraud", "legit"),
            "labelled_at": labelled_at,
        }
    ).to_csv(inbox / f"chargebacks-{day}.csv", index=False)
    reviews = {"request_id": answers["request_id"][40:LABELLED], "label": truth[40:LABELLED].astype(int)}
    pd.DataFrame(reviews).to_parquet(inbox / day / "reviews.parquet")  # no labelled_at: labelled when imported
    resources = monitoring_resources(defs, log_dir=str(log_dir), monitoring_dir=str(monitoring_dir))

    first = run_labels(defs, instance, resources, day)
    assert first.success
    [imported] = materializations(first, "labels")
    positives = int(truth[:LABELLED].sum())
    assert (imported["rows_imported"], imported["rows_refused"], imported["files"]) == (LABELLED, 0, 2)
    assert (imported["new_labels"], imported["labels_changed"], imported["positives"]) == (LABELLED, 0, positives)
    assert (imported["predictions_of_day"], imported["labelled_predictions_of_day"]) == (ROWS, LABELLED)
    assert imported["label_coverage"] == pytest.approx(LABELLED / ROWS)

    store = LabelStore(monitoring_dir / "labels")
    files = store.files()
    again = run_labels(defs, instance, resources, day)  # the day's import replaced, not added to
    [replaced] = materializations(again, "labels")
    assert (replaced["rows_imported"], replaced["labels_changed"]) == (LABELLED, 0)
    assert replaced["replaced_files"] == len(files) >= 1
    assert len(store.files()) == len(files) and not set(store.files()) & set(files)
    assert len(store.read()) == LABELLED

    judged = dg.materialize(
        ALL_ASSETS,
        selection=dg.AssetSelection.assets("live_performance"),
        resources=resources,
        instance=instance,
        run_config={"ops": {"live_performance": {"config": {"window": "24h"}}}},
    )
    [performance] = materializations(judged, "live_performance")
    assert (performance["labeled_rows"], performance["unlabeled_rows"]) == (LABELLED, ROWS - LABELLED)
    predicted = answers["is_fraud"].to_numpy()[:LABELLED]
    assert performance["accuracy"] == pytest.approx(float((predicted == truth[:LABELLED]).mean()))
    assert performance["labelled_positives"] == positives


def test_a_bad_file_fails_the_run_naming_the_row(defs, instance, tmp_path):
    day = f"{datetime.now(UTC) - timedelta(days=1):%Y-%m-%d}"
    monitoring_dir = tmp_path / "monitoring"
    inbox = monitoring_dir / "labels_inbox"
    inbox.mkdir(parents=True)
    (inbox / f"good-{day}.csv").write_text("request_id,label\nbad-day-1,1\n")
    (inbox / f"verdicts-{day}.csv").write_text("request_id,label\nbad-day-2,0\nbad-day-3,perhaps\n")
    resources = monitoring_resources(defs, log_dir=str(tmp_path / "log"), monitoring_dir=str(monitoring_dir))
    result = run_labels(defs, instance, resources, day)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.user_failure_data.description
    assert f"verdicts-{day}.csv: 1 of 2 label row(s) refused, none written: row 2: label: expected 1/0" in message
    assert LabelStore(monitoring_dir / "labels").files() == []  # the good file was not written either

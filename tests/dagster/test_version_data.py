"""Each model version owns its training set: a retrain on more data stores a new, content-addressed training
set, the version records its digest (tags, MLflow dataset input, the asset's data version), and after a
rollback the restored champion's drift is judged against its own training set, not its successor's."""

import json
import time
from datetime import date
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from assets import ALL_ASSETS
from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.predictions import PredictionBatch, PredictionLogger
from ml_platform.registry import CHAMPION, TRAINING_DATA_END_TAG, TRAINING_SET_DIGEST_TAG
from ml_platform.storage import file_digest
from ml_platform.training.dataset import SPLIT_COLUMN
from runs.cli import app
from runs.launch import launch
from tests.support.runs import PAST_THE_GATE, SMALL_DATA, materializations, monitoring_resources

pytestmark = pytest.mark.xdist_group("graph")  # the session's one graph world: see tests/conftest.py
runner = CliRunner()
NEW_DAY = date(2026, 3, 17)  # a day no other graph test ingests: the newer version's extra data
JUDGED_ASSETS = ("drift_report", "model_health")


def succeeded(result) -> None:
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]


def data_version(result, asset: str) -> str:
    (event,) = [
        e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key == dg.AssetKey(asset)
    ]
    return event.tags["dagster/data_version"]


def rows_of_test_split(path: Path) -> int:
    return int((pd.read_parquet(path, columns=[SPLIT_COLUMN])[SPLIT_COLUMN] == "test").sum())


def write_traffic(log_dir: Path, rows: int = 300) -> None:
    """Logged answers of the last minutes (any features: the test is about the reference, not the score)."""
    logger = PredictionLogger(log_dir, flush_rows=10**6, flush_seconds=3600)
    logger.start()
    rng = np.random.default_rng(5)
    now = time.time()
    logger.log(
        PredictionBatch(
            time=now - 120,
            request_ids=[f"version-data-{i}" for i in range(rows)],
            customer_ids=list(range(rows)),
            features=rng.random((rows, len(MODEL_FEATURES))) * 100,
            probabilities=rng.random(rows),
            is_fraud=rng.random(rows) > 0.9,
            threshold=0.5,
            model_version=1,
            variant="champion",
            latency_ms=2.0,
        )
    )
    assert logger.flush()
    logger.close()


def judge(defs, instance, log_dir: Path) -> dict[str, dict]:
    """drift_report and model_health over the last day of ``log_dir``: their materialization metadata, and
    the drift check's."""
    result = dg.materialize(
        ALL_ASSETS,
        selection=list(JUDGED_ASSETS),
        resources=monitoring_resources(defs, log_dir=str(log_dir)),
        instance=instance,
        run_config={"ops": {name: {"config": {"window": "24h"}} for name in JUDGED_ASSETS}},
        raise_on_error=False,
    )
    succeeded(result)
    (check,) = result.get_asset_check_evaluations()
    return {
        **{name: materializations(result, name)[0] for name in JUDGED_ASSETS},
        "drift_score": {k: getattr(v, "value", v) for k, v in check.metadata.items()},
    }


@pytest.fixture(scope="module")
def versions(bootstrap_result, defs, registry, settings, instance, tmp_path_factory):
    """v(n): a retrain on the data as it is; v(n+1): a retrain after one more day; then a rollback to v(n),
    and drift_report / model_health judging it over a log of traffic."""
    older = launch("retrain", PAST_THE_GATE, defs=defs)
    succeeded(older)
    restored = registry.version_for_alias(CHAMPION)
    assert materializations(older, "trained_model")[0]["model_version"] == restored
    succeeded(launch("ingest", SMALL_DATA, start=NEW_DAY, end=NEW_DAY, defs=defs))
    newer = launch("retrain", PAST_THE_GATE, defs=defs)
    succeeded(newer)
    successor = registry.version_for_alias(CHAMPION)
    assert successor != restored

    rolled = runner.invoke(app, ["rollback", "--reason", "version data test"], catch_exceptions=False)
    assert rolled.exit_code == 0, rolled.output
    assert registry.version_for_alias(CHAMPION) == restored

    log_dir = tmp_path_factory.mktemp("version_data_log")
    write_traffic(log_dir)
    return {
        "older": older,
        "newer": newer,
        "restored": restored,
        "successor": successor,
        "log_dir": log_dir,
        "judged": judge(defs, instance, log_dir),
    }


def test_each_retrain_stores_its_training_set_and_tags_the_version_with_it(versions, registry, settings):
    stored_dir = settings.data_dir / "training_sets"
    for run, version in ((versions["older"], versions["restored"]), (versions["newer"], versions["successor"])):
        digest = data_version(run, "training_set")
        training = materializations(run, "training_set")[0]
        assert training["training_set_digest"] == digest == registry.training_set_digest(version)
        path = stored_dir / f"{digest}.parquet"
        assert training["training_set_file"] == str(path) and file_digest(path) == digest
        stored = pd.read_parquet(path, columns=["event_timestamp"])
        newest = stored["event_timestamp"].max().isoformat()
        assert training["newest_transaction"] == newest == registry.training_data_end(version)
        assert registry.model_version(version).tags[TRAINING_DATA_END_TAG] == newest
        assert materializations(run, "trained_model")[0]["training_set_digest"] == digest

        # MLflow's run input: the stored file, with the digest (MLflow keeps its first 32 hex digits)
        run_id = registry.model_version(version).run_id
        (logged,) = registry.client.get_run(run_id).inputs.dataset_inputs
        assert logged.dataset.digest == digest[:32]
        assert json.loads(logged.dataset.source) == {"uri": str(path)}

    older, newer = data_version(versions["older"], "training_set"), data_version(versions["newer"], "training_set")
    assert older != newer
    # The newer set holds NEW_DAY's transactions and the older does not (other tests may have stored later days,
    # so NEW_DAY need not be either set's newest).
    days = {
        name: set(
            pd.read_parquet(stored_dir / f"{digest}.parquet", columns=["event_timestamp"])["event_timestamp"].dt.date
        )
        for name, digest in (("older", older), ("newer", newer))
    }
    assert NEW_DAY in days["newer"] and NEW_DAY not in days["older"]
    assert days["older"] < days["newer"]
    # the current training set is the newer one, byte for byte
    assert file_digest(settings.data_dir / "training_set.parquet") == newer


def test_the_restored_champion_is_judged_against_its_own_training_set(versions, registry, settings):
    restored, successor = versions["restored"], versions["successor"]
    own = registry.training_set_digest(restored)
    newer = registry.training_set_digest(successor)
    own_rows = rows_of_test_split(settings.data_dir / "training_sets" / f"{own}.parquet")
    assert own_rows != rows_of_test_split(settings.data_dir / "training_sets" / f"{newer}.parquet")

    judged = versions["judged"]
    report = judged["drift_report"]
    assert (report["model_version"], report["training_set_digest"]) == (restored, own)
    assert report["reference_rows"] == own_rows and report["rows"] == 300
    assert report["reference_file"] == str(settings.data_dir / "training_sets" / f"{own}.parquet")
    assert "reference_note" not in report
    check = judged["drift_score"]
    assert (check["model_version"], check["training_set_digest"]) == (restored, own)
    health = judged["model_health"]
    assert (health["model_version"], health["training_set_digest"]) == (restored, own)
    assert own != newer


def test_a_version_without_a_digest_is_judged_against_the_current_training_set_and_says_so(
    versions, registry, defs, instance, settings
):
    restored = versions["restored"]
    own = registry.training_set_digest(restored)
    registry.client.delete_model_version_tag(registry.model_name, str(restored), TRAINING_SET_DIGEST_TAG)
    try:
        judged = judge(defs, instance, versions["log_dir"])
    finally:
        registry.client.set_model_version_tag(registry.model_name, str(restored), TRAINING_SET_DIGEST_TAG, own)
    current = settings.data_dir / "training_set.parquet"
    report = judged["drift_report"]
    assert report["model_version"] == restored
    assert report["training_set_digest"] == file_digest(current) == registry.training_set_digest(versions["successor"])
    assert report["reference_rows"] == rows_of_test_split(current)
    assert report["reference_note"] == (
        f"v{restored} has no {TRAINING_SET_DIGEST_TAG} tag (registered before training sets were kept, or pinned "
        "from elsewhere): judged against the current training set"
    )
    assert judged["drift_score"]["reference_note"] == report["reference_note"]
    assert judged["model_health"]["training_set_digest"] == report["training_set_digest"]

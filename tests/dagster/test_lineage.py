"""What the bootstrap's champion learned from, read back by ``ml-platform lineage``: the days of validated
transactions the bootstrap ingested, each with the row count of its stored partition, the code version, and
the Dagster run that trained it; and the same facts on the training assets' materializations."""

import json
from datetime import timedelta

import pandas as pd
import pytest
from typer.testing import CliRunner

from ml_platform.cli import app
from ml_platform.lineage import current_code_version
from ml_platform.registry import CHAMPION
from ml_platform.storage import table_path
from tests.support.runs import FIRST_DAY, LAST_DAY, materializations

pytestmark = pytest.mark.xdist_group("graph")  # the session's one graph world: see tests/conftest.py
runner = CliRunner()


@pytest.fixture(scope="module")
def stored_rows_by_day(settings, bootstrap_run) -> dict[str, int]:
    """Rows of each stored partition of validated_transactions the bootstrap wrote."""
    days = [FIRST_DAY + timedelta(days=offset) for offset in range((LAST_DAY - FIRST_DAY).days + 1)]
    return {
        day.isoformat(): len(pd.read_parquet(table_path(settings.data_dir, "validated_transactions", day.isoformat())))
        for day in days
    }


@pytest.fixture(scope="module")
def champion_lineage(bootstrap_run) -> dict:
    _, aliases = bootstrap_run
    result = runner.invoke(app, ["lineage", "--version", str(aliases[CHAMPION]), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_champion_learned_from_the_bootstrap_days(champion_lineage, stored_rows_by_day, bootstrap_run):
    assert len(stored_rows_by_day) == 14 and min(stored_rows_by_day.values()) > 0
    assert champion_lineage["version"] == bootstrap_run[1][CHAMPION]
    assert champion_lineage["raw_partitions"] == {
        "first_day": "2026-03-01",
        "last_day": "2026-03-14",
        "count": 14,
        "total_rows": sum(stored_rows_by_day.values()),
        "rows_by_day": stored_rows_by_day,
    }
    assert champion_lineage["not_recorded"] == []
    assert champion_lineage["code_version"] == current_code_version()


def test_the_champion_was_trained_by_the_bootstrap_run(champion_lineage, bootstrap_result):
    (trained,) = materializations(bootstrap_result, "trained_model")
    assert trained["model_version"] == champion_lineage["version"]
    assert champion_lineage["dagster_run"] == {
        "id": bootstrap_result.run_id,
        "url": f"http://127.0.0.1:3000/runs/{bootstrap_result.run_id}",
    }
    assert champion_lineage["mlflow_run"]["id"] == trained["mlflow_run_id"]
    assert champion_lineage["training_set"]["digest"] == trained["training_set_digest"]


def test_the_training_assets_show_the_same_facts(champion_lineage, stored_rows_by_day, bootstrap_result):
    (built,) = materializations(bootstrap_result, "training_set")
    (trained,) = materializations(bootstrap_result, "trained_model")
    (promoted,) = materializations(bootstrap_result, "champion_model")
    assert built["raw_partitions"] == stored_rows_by_day
    assert (built["partitions_first_day"], built["partitions_last_day"], built["partition_count"]) == (
        "2026-03-01",
        "2026-03-14",
        14,
    )
    for shown in (trained, promoted):
        assert shown["raw_partitions"] == stored_rows_by_day
        assert shown["partition_count"] == 14
        assert shown["dagster_run"] == bootstrap_result.run_id
        assert shown["code_version"] == champion_lineage["code_version"]
        assert shown["training_set_digest"] == champion_lineage["training_set"]["digest"]
        assert shown["mlflow_run"].endswith(f"/runs/{champion_lineage['mlflow_run']['id']}")
    # The bootstrap's promotion; another test may have promoted the same version again since (a pin back to
    # the session's champion), and lineage reports the latest promotion.
    assert promoted["champion_history_entry"]["version"] == champion_lineage["version"]
    assert promoted["champion_history_entry"]["promoted_at"] == promoted["promoted_at"]
    assert promoted["promoted_at"] <= champion_lineage["promotion"]["promoted_at"]

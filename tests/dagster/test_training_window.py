"""training_set over a trailing window: only the stored days of the last ``window_days`` days are read and
joined, every labelled transaction of those days exactly once, each with the features it has in a training
set over the whole history; a window longer than the history gives the training set of every stored day.

A world of its own (a temporary home, an ephemeral Dagster instance): six stored days of seeded data,
ingested and featurized in one run, so the stored days are known whatever the other graph tests ingest.
"""

from datetime import date, timedelta

import dagster as dg
import pandas as pd
import pytest

from assets import ALL_ASSETS
from ml_platform.data.schema import ID_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.features.store import point_in_time_stats
from ml_platform.settings import Settings
from ml_platform.storage import table_path
from ml_platform.training.dataset import SPLIT_COLUMN, assemble_training_set
from ml_platform.training.datasets import store_training_set
from resources import build_resources
from tests.support.runs import materializations

FIRST_DAY = date(2026, 2, 1)
DAYS = [(FIRST_DAY + timedelta(days=offset)).isoformat() for offset in range(6)]
SOURCE = {"raw_transactions": {"n_customers": 400, "transactions_per_day": 300, "seed": 11}}
INGESTED = ("raw_transactions", "validated_transactions", "customer_stats", "feature_store", "online_features")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Six days ingested and featurized in one run under a home of this module's own."""
    home = tmp_path_factory.mktemp("training_window_home")
    settings = Settings.from_env({"ML_PLATFORM_HOME": str(home)})
    settings.prepare()
    resources = build_resources(settings)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        ALL_ASSETS,
        selection=dg.AssetSelection.assets(*INGESTED),
        resources=resources,
        instance=instance,
        run_config={"ops": {name: {"config": config} for name, config in SOURCE.items()}},
        tags={"dagster/asset_partition_range_start": DAYS[0], "dagster/asset_partition_range_end": DAYS[-1]},
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return settings, resources, instance


def build_training_set(world, window_days: int | None):
    settings, resources, instance = world
    config = {} if window_days is None else {"window_days": window_days}
    result = dg.materialize(
        ALL_ASSETS,
        selection=dg.AssetSelection.assets("training_set"),
        resources=resources,
        instance=instance,
        run_config={"ops": {"training_set": {"config": config}}},
    )
    frame = pd.read_parquet(table_path(settings.data_dir, "training_set"))
    (metadata,) = materializations(result, "training_set")
    return frame, metadata


def stored_rows(settings, days) -> pd.DataFrame:
    """Brute force: the stored validated_transactions of ``days``, read file by file."""
    return pd.concat(
        [pd.read_parquet(table_path(settings.data_dir, "validated_transactions", day)) for day in days],
        ignore_index=True,
    )


def test_a_window_shorter_than_the_history_holds_exactly_the_rows_of_its_days(world):
    settings, resources, _ = world
    frame, metadata = build_training_set(world, window_days=2)

    expected = stored_rows(settings, DAYS[-2:])
    assert len(expected) > 0
    assert len(frame) == len(expected)
    assert not frame[ID_COLUMN].duplicated().any()
    assert set(frame[ID_COLUMN]) == set(expected[ID_COLUMN])
    days = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True).dt.strftime("%Y-%m-%d")
    assert sorted(days.unique()) == DAYS[-2:]
    assert set(frame[SPLIT_COLUMN]) == {"train", "validation", "test"}

    assert metadata["window_first_day"] == DAYS[-2]
    assert metadata["window_last_day"] == DAYS[-1]
    assert metadata["window_days"] == 2
    assert metadata["window_days_requested"] == 2
    assert metadata["window_rows"] == len(expected)
    assert metadata["dagster/row_count"] == len(expected)
    assert metadata["partition_count"] == 2
    assert metadata["partitions_first_day"] == DAYS[-2]

    # Customers' stats come from their whole history, not from the window: each row has the features it
    # has in the training set of every stored day.
    everything = stored_rows(settings, DAYS)
    full = assemble_training_set(everything, point_in_time_stats(resources["feast"].store(), everything))
    by_id = full.set_index(ID_COLUMN).loc[frame[ID_COLUMN], list(MODEL_FEATURES)]
    pd.testing.assert_frame_equal(
        frame[list(MODEL_FEATURES)].reset_index(drop=True), by_id.reset_index(drop=True), check_exact=True
    )
    assert frame["total_purchases"].gt(0).any()  # history before the window was joined


def test_a_window_longer_than_the_history_gives_the_training_set_of_every_stored_day(world, tmp_path):
    settings, resources, _ = world
    frame, metadata = build_training_set(world, window_days=30)

    everything = stored_rows(settings, DAYS)
    expected = assemble_training_set(everything, point_in_time_stats(resources["feast"].store(), everything))
    pd.testing.assert_frame_equal(frame, expected, check_exact=True)
    assert metadata["training_set_digest"] == store_training_set(expected, tmp_path).digest
    assert (metadata["window_first_day"], metadata["window_last_day"]) == (DAYS[0], DAYS[-1])
    assert (metadata["window_days"], metadata["window_days_requested"]) == (6, 30)
    assert metadata["window_rows"] == len(everything)


def test_the_default_window_of_90_days_covers_a_shorter_history(world):
    frame, metadata = build_training_set(world, window_days=None)
    assert metadata["window_days_requested"] == 90
    assert metadata["window_days"] == len(DAYS)
    assert len(frame) == metadata["window_rows"]


def test_a_window_of_no_days_fails_naming_window_days(world):
    settings, resources, instance = world
    result = dg.materialize(
        ALL_ASSETS,
        selection=dg.AssetSelection.assets("training_set"),
        resources=resources,
        instance=instance,
        run_config={"ops": {"training_set": {"config": {"window_days": 0}}}},
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "window_days must be a whole number of days >= 1, got 0" in failure.event_specific_data.error.message

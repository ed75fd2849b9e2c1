"""The asset graph materialized for real (in process, small seeded data): what each stage produced,
the promotion gate, retries, and a bad batch."""

from datetime import date

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from ml_platform.data.synthetic import SyntheticConfig, generate_transactions
from ml_platform.features.store import FEATURE_SERVICE, FeatureRepo, open_store
from ml_platform.registry import CHALLENGER, CHAMPION, PREVIOUS, RUN_KEY_TAG
from ml_platform.storage import write_table
from runs.launch import launch
from tests.support.runs import FIRST_DAY, LAST_DAY, PAST_THE_GATE, SMALL_DATA, check_results, materializations

pytestmark = pytest.mark.xdist_group("graph")  # the session's one graph world: see tests/conftest.py


def test_whole_graph_produces_a_champion(bootstrap_run, settings):
    bootstrap_result, aliases = bootstrap_run
    days = (LAST_DAY - FIRST_DAY).days + 1
    raw = materializations(bootstrap_result, "raw_transactions")
    assert len(raw) == days  # one materialization per daily partition, from one run
    expected = generate_transactions(
        SyntheticConfig(n_customers=1_500, transactions_per_day=1_200, seed=7),
        FIRST_DAY,
        date.fromordinal(LAST_DAY.toordinal() + 1),
    )
    assert raw[0]["rows_in_run"] == len(expected)

    stored_day = pd.read_parquet(settings.data_dir / "validated_transactions" / "2026-03-05.parquet")
    assert len(stored_day) == (expected["event_timestamp"].dt.date == date(2026, 3, 5)).sum()

    training = materializations(bootstrap_result, "training_set")[0]
    assert training["dagster/row_count"] == len(expected)  # the point-in-time join dropped no row
    assert training["rows_without_prior_history"] >= expected["customer_id"].nunique()

    assert all(check_results(bootstrap_result).values())
    evaluation = bootstrap_result.output_for_node("model_evaluation")
    assert evaluation["passed"] is True
    assert evaluation["champion_version"] is None  # the first model ever
    challenger = evaluation["metrics"]["challenger"]
    assert challenger["accuracy"] >= 0.85
    assert challenger["pr_auc"] >= 0.30
    assert challenger["rows"] == evaluation["test_rows"] > 0

    trained = materializations(bootstrap_result, "trained_model")[0]
    assert trained["device"] == "cpu"  # no GPU on this machine, and that is what was recorded
    assert trained["reused_existing_version"] is False
    version = trained["model_version"]
    assert aliases == {CHAMPION: version, CHALLENGER: version}  # no PREVIOUS: the first champion
    assert materializations(bootstrap_result, "champion_model")[0]["champion_version"] == version


def test_online_store_holds_each_customers_latest_stats(bootstrap_result, settings):
    stats = pd.read_parquet(FeatureRepo.from_settings(settings).offline_table_path)
    latest = stats.sort_values("event_timestamp").groupby("customer_id").tail(1).set_index("customer_id")
    customers = latest.index[:5].tolist()
    store = open_store(FeatureRepo.from_settings(settings))
    online = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE),
        entity_rows=[{"customer_id": c} for c in customers] + [{"customer_id": 10**9}],
    ).to_df()
    np.testing.assert_array_equal(
        online["total_purchases"].iloc[:5].to_numpy(), latest.loc[customers, "total_purchases"]
    )
    np.testing.assert_allclose(online["lifetime_value"].iloc[:5].to_numpy(), latest.loc[customers, "lifetime_value"])
    assert pd.isna(online["total_purchases"].iloc[5])  # an unknown customer has no stats


def test_a_worse_model_is_stopped_by_the_gate_and_the_champion_stays(bootstrap_result, registry, defs):
    champion_before = registry.version_for_alias(CHAMPION)
    weak = {"trained_model": {"n_estimators": 1, "max_depth": 1, "learning_rate": 0.05, "early_stopping_rounds": 0}}
    result = launch("retrain", weak, defs=defs)
    assert not result.success
    checks = check_results(result)
    assert checks[("model_evaluation", "beats_champion")] is False
    evaluation = result.output_for_node("model_evaluation")
    assert evaluation["champion_version"] == champion_before
    assert evaluation["metrics"]["challenger"]["pr_auc"] < evaluation["metrics"]["champion"]["pr_auc"] + 0.005
    assert evaluation["gates"]["beats_champion"]["description"].endswith("below the margin: the champion stays")
    skipped_or_absent = not materializations(result, "champion_model")
    assert skipped_or_absent
    assert registry.version_for_alias(CHAMPION) == champion_before
    assert registry.version_for_alias(CHALLENGER) == evaluation["challenger_version"] != champion_before


def test_a_retrain_that_makes_the_champions_model_again_keeps_the_champion(bootstrap_result, registry, defs):
    # A champion of a known config, then that config retrained on the same days: the same model, a tie.
    config = {"trained_model": {"n_estimators": 60, "max_depth": 5}}
    assert launch("retrain", {**config, **PAST_THE_GATE}, defs=defs).success
    aliases_before = registry.aliases()
    result = launch("retrain", config, defs=defs)
    assert not result.success
    assert check_results(result)[("model_evaluation", "beats_champion")] is False
    evaluation = result.output_for_node("model_evaluation")
    assert evaluation["champion_version"] == aliases_before[CHAMPION] != evaluation["challenger_version"]
    scores = evaluation["metrics"]
    assert scores["challenger"]["pr_auc"] == scores["champion"]["pr_auc"]
    assert evaluation["gates"]["beats_champion"]["description"].endswith("below the margin: the champion stays")
    after = registry.aliases()
    assert (after[CHAMPION], after.get(PREVIOUS)) == (aliases_before[CHAMPION], aliases_before.get(PREVIOUS))


def test_quality_floor_blocks_promotion(bootstrap_result, registry, defs):
    champion_before = registry.version_for_alias(CHAMPION)
    strict = {"model_evaluation": {"min_accuracy": 0.85, "min_pr_auc": 0.999}}
    result = launch("retrain", strict, defs=defs)
    assert not result.success
    assert check_results(result)[("model_evaluation", "quality_floor")] is False
    assert (
        "below the floor 0.9990" in result.output_for_node("model_evaluation")["gates"]["quality_floor"]["description"]
    )
    assert registry.version_for_alias(CHAMPION) == champion_before


def retrain_job():
    from definitions import defs

    return defs.resolve_job_def("retrain")


def test_a_retried_run_registers_one_version_not_two(bootstrap_result, registry, defs, instance):
    first = launch("retrain", PAST_THE_GATE, defs=defs)  # a first run that registers and succeeds
    assert first.success
    version = materializations(first, "trained_model")[0]["model_version"]
    count_before = len(registry.client.search_model_versions(f"name='{registry.model_name}'"))

    # Re-execute trained_model from the first run, as the UI's "Re-execute" does (a new run, same root).
    with dg.execute_job(
        dg.reconstructable(retrain_job),
        instance=instance,
        reexecution_options=dg.ReexecutionOptions(parent_run_id=first.run_id, step_selection=["trained_model"]),
    ) as retried:
        assert retried.success
        assert retried.dagster_run.root_run_id == first.run_id
        metadata = materializations(retried, "trained_model")[0]
    assert metadata["model_version"] == version
    assert metadata["reused_existing_version"] is True
    versions = registry.client.search_model_versions(f"name='{registry.model_name}'")
    assert len(versions) == count_before
    assert [v.tags[RUN_KEY_TAG] for v in versions].count(first.run_id) == 1


def step_failure(result, step: str) -> str:
    failures = [
        e.event_specific_data.error.message
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE" and e.step_key == step
    ]
    assert len(failures) == 1, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return failures[0]


def steps_started(result) -> set[str]:
    return {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}


def rejected_files(settings) -> set:
    return set((settings.data_dir / "raw_transactions" / "rejected").glob("*.parquet"))


def test_a_bad_batch_is_rejected_before_it_is_stored(bootstrap_result, defs, settings, tmp_path):
    day = date(2026, 4, 2)
    batch = generate_transactions(SyntheticConfig(seed=3, transactions_per_day=300), day, date(2026, 4, 3))
    batch.loc[[4, 9], "amount"] = np.nan
    batch.loc[12, "transaction_id"] = batch.loc[13, "transaction_id"]
    path = tmp_path / "bad_batch.parquet"
    write_table(batch, path)
    before = rejected_files(settings)

    result = launch(
        "ingest", {"raw_transactions": {"source": "file", "path": str(path)}}, start=day, end=day, defs=defs
    )
    assert not result.success
    message = step_failure(result, "raw_transactions")
    assert "2 of 4 data checks failed" in message
    assert "- no_nulls: amount: 2 null" in message
    assert "- unique_ids: transaction_id: 1 ids appear more than once (2 rows)" in message
    assert batch.loc[4, "transaction_id"] in message
    assert batch.loc[12, "transaction_id"] in message
    assert steps_started(result) == {"raw_transactions"}  # validated_transactions never ran
    (rejected,) = rejected_files(settings) - before
    assert rejected.name.startswith("2026-04-02-") and str(rejected) in message
    pd.testing.assert_frame_equal(pd.read_parquet(rejected), batch)
    # the verdict is an evaluated, failed check (what the alert sensor sends), not only a failed run
    (verdict,) = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert (verdict.asset_key.to_user_string(), verdict.check_name, verdict.passed) == (
        "raw_transactions",
        "batch_accepted",
        False,
    )
    assert "no_nulls, unique_ids" in verdict.description and str(rejected) in verdict.description
    assert not (settings.data_dir / "raw_transactions" / "2026-04-02.parquet").exists()
    assert not (settings.data_dir / "validated_transactions" / "2026-04-02.parquet").exists()


def test_a_rejected_batch_keeps_the_days_last_good_partition(bootstrap_result, defs, settings, tmp_path):
    """A good day is ingested; then a batch for the same day with 50 of its 200 timestamps missing. It
    fails naming the column and the ids, is kept under rejected/, and nothing of it is stored."""
    day = date(2026, 4, 5)
    good = generate_transactions(SyntheticConfig(seed=8, transactions_per_day=300), day, date(2026, 4, 6))
    good = good.head(200).reset_index(drop=True)
    good_path, bad_path = tmp_path / "good.parquet", tmp_path / "null_times.parquet"
    write_table(good, good_path)
    ingested = launch(
        "ingest", {"raw_transactions": {"source": "file", "path": str(good_path)}}, start=day, end=day, defs=defs
    )
    assert ingested.success
    raw_file = settings.data_dir / "raw_transactions" / f"{day}.parquet"
    validated_file = settings.data_dir / "validated_transactions" / f"{day}.parquet"
    stored_raw, stored_validated = pd.read_parquet(raw_file), pd.read_parquet(validated_file)
    assert len(stored_raw) == len(stored_validated) == 200

    bad = good.copy()
    bad["amount"] = bad["amount"] * 2  # a different batch: had any of it been stored, it would show
    null_rows = list(range(1, 200, 4))
    bad.loc[null_rows, "event_timestamp"] = pd.NaT
    write_table(bad, bad_path)
    before = rejected_files(settings)
    result = launch(
        "ingest", {"raw_transactions": {"source": "file", "path": str(bad_path)}}, start=day, end=day, defs=defs
    )

    assert not result.success
    message = step_failure(result, "raw_transactions")
    assert "- no_nulls: event_timestamp: 50 null" in message
    for transaction_id in bad.loc[null_rows[:5], "transaction_id"]:
        assert transaction_id in message
    assert steps_started(result) == {"raw_transactions"}
    # the day's good partitions are untouched
    pd.testing.assert_frame_equal(pd.read_parquet(raw_file), stored_raw)
    pd.testing.assert_frame_equal(pd.read_parquet(validated_file), stored_validated)
    assert not materializations(result, "raw_transactions") and not materializations(result, "validated_transactions")
    # the whole rejected batch (undated rows included) is kept for inspection, named in the failure and
    # in an observation of raw_transactions for that day
    (rejected,) = rejected_files(settings) - before
    assert str(rejected) in message
    kept = pd.read_parquet(rejected)
    assert len(kept) == 200 and kept["event_timestamp"].isna().sum() == 50
    assert sorted(kept["transaction_id"]) == sorted(bad["transaction_id"])
    observations = [
        e.event_specific_data.asset_observation for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert [(o.asset_key.to_user_string(), o.partition) for o in observations] == [("raw_transactions", str(day))]
    metadata = observations[0].metadata
    assert metadata["rejected_path"].value == str(rejected)
    assert (metadata["rejected_rows"].value, metadata["failed_checks"].value) == (200, "no_nulls")


@pytest.mark.parametrize(
    "partitions",
    [{"partition_key": "2026-04-02"}, {"asset_partition_key_range": dg.PartitionKeyRange("2026-04-02", "2026-04-03")}],
)
def test_the_io_manager_stores_no_row_without_a_day(tmp_path, partitions):
    """Rows without a timestamp belong to no daily partition: the IO manager refuses the output rather
    than dropping them (one day) or filing them under a nonsense day (a range)."""
    from resources.storage import StateIOManager

    frame = pd.DataFrame(
        {"event_timestamp": pd.to_datetime(["2026-04-02T10:00Z", None, "2026-04-03T01:00Z"], utc=True), "x": [1, 2, 3]}
    )
    context = dg.build_output_context(
        asset_key=dg.AssetKey("raw_transactions"),
        asset_partitions_def=dg.DailyPartitionsDefinition(start_date="2025-01-01"),
        definition_metadata={"partition_column": "event_timestamp"},
        **partitions,
    )
    with pytest.raises(ValueError, match="raw_transactions: 1 rows have no event_timestamp, so they belong to no day"):
        StateIOManager(base_dir=str(tmp_path)).handle_output(context, frame)
    assert list(tmp_path.rglob("*.parquet")) == []


@pytest.mark.parametrize("days", [1])
def test_single_day_ingest_reports_that_days_row_count(bootstrap_result, defs, settings, days):
    day = date(2026, 3, 20)
    result = launch("ingest", SMALL_DATA, start=day, end=day, defs=defs)
    assert result.success
    stored = pd.read_parquet(settings.data_dir / "validated_transactions" / "2026-03-20.parquet")
    assert materializations(result, "validated_transactions")[0]["dagster/row_count"] == len(stored) > 0

"""Lineage on a real MLflow store (SQLite under a temporary home): what the training job records about a
version's origin, and ``ml-platform lineage`` reading it back as text and JSON, for a version that
recorded it, for one registered before it was recorded, and for versions that do not exist."""

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import ml_platform.lineage as lineage_module
from ml_platform.cli import app
from ml_platform.lineage import (
    CODE_VERSION_ENV,
    DIRTY_SUFFIX,
    current_code_version,
    daily_row_counts,
    version_lineage,
)
from ml_platform.registry import (
    CODE_VERSION_TAG,
    DAGSTER_RUN_ID_TAG,
    LINEAGE_ARTIFACT,
    MODEL_DIGEST_TAG,
    PARTITION_COUNT_TAG,
    PARTITIONS_FIRST_DAY_TAG,
    PARTITIONS_LAST_DAY_TAG,
    Registry,
)
from ml_platform.settings import Settings
from ml_platform.training.dataset import split_xy
from ml_platform.training.datasets import store_training_set, training_sets_dir
from ml_platform.training.job import TrainingJob, run_training_job
from ml_platform.training.train import model_signature

runner = CliRunner()
LAUNCHER_VERSION = "launcher-1.2.3"
DAGSTER_RUN = "dagster-run-0001"


def expected_rows_by_day(frame: pd.DataFrame) -> dict[str, int]:
    days = pd.to_datetime(frame["event_timestamp"], utc=True).dt.strftime("%Y-%m-%d")
    return {day: int(rows) for day, rows in days.value_counts().sort_index().items()}


def home_env(home: Path) -> dict[str, str]:
    return {"ML_PLATFORM_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}


def lineage_cli(home: Path, *args: str):
    return runner.invoke(app, ["lineage", *args], env=home_env(home))


@pytest.fixture(scope="module")
def world(tmp_path_factory, training_set, trained_model):
    """v1 trained by the job on a stored training set (outside a checkout: the launcher's code version is
    recorded), v2 registered as versions were before lineage was recorded; v1 promoted, then v2, then v2
    rolled back."""
    home = tmp_path_factory.mktemp("lineage_home")
    settings = Settings.from_env(home_env(home))
    settings.prepare()
    registry = Registry.from_settings(settings)
    stored = store_training_set(training_set, training_sets_dir(settings.data_dir))
    job = TrainingJob(
        training_set_path=str(stored.path),
        training_set_digest=stored.digest,
        tracking_uri=settings.tracking_uri,
        model_name=settings.model_name,
        experiment_name=settings.experiment_name,
        artifact_root=settings.mlflow_artifact_root,
        run_key="lineage-run-1",
        params={"n_estimators": 20, "max_depth": 3, "device": "cpu", "n_jobs": 2},
        run_tags={"dagster_run_id": DAGSTER_RUN},
        dagster_run_id=DAGSTER_RUN,
        code_version=LAUNCHER_VERSION,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lineage_module, "PACKAGE_DIR", home)  # not a checkout
        patch.delenv(CODE_VERSION_ENV, raising=False)
        first = run_training_job(job, log=lambda _: None)
        retry = run_training_job(job, log=lambda _: None)
    x_valid, _ = split_xy(training_set, "validation")
    old = registry.log_and_register(
        trained_model,
        params={"n_estimators": 40},
        run_key="before-lineage",
        signature=model_signature(trained_model.booster, x_valid.head(5)),
        example=x_valid.head(5),
        run_tags={},
        figures={},
    )
    registry.client.delete_model_version_tag(registry.model_name, str(old.version), MODEL_DIGEST_TAG)
    registry.promote(first["model_version"], promoted_at="2024-04-01T00:00:00+00:00")
    registry.promote(old.version, promoted_at="2024-04-02T00:00:00+00:00")
    registry.rollback(rolled_back_at="2024-04-03T00:00:00+00:00", reason="accuracy dropped")
    return {
        "home": home,
        "registry": registry,
        "stored": stored,
        "first": first,
        "retry": retry,
        "old": old,
        "rows_by_day": expected_rows_by_day(training_set),
    }


# ---- recording ---------------------------------------------------------------------------------------
def test_daily_row_counts_are_per_utc_day():
    moments = ["2024-03-01T00:00:00Z", "2024-03-01T23:59:59Z", "2024-03-02T00:30:00+01:00", "2024-03-03T12:00:00Z"]
    frame = pd.DataFrame({"event_timestamp": pd.to_datetime(moments, utc=True)})
    assert daily_row_counts(frame) == {"2024-03-01": 3, "2024-03-03": 1}
    assert daily_row_counts(frame.iloc[0:0]) == {}


def test_daily_row_counts_refuse_rows_without_a_day():
    with pytest.raises(ValueError, match="no event_timestamp column"):
        daily_row_counts(pd.DataFrame({"amount": [1.0]}))
    undated = pd.DataFrame({"event_timestamp": pd.to_datetime(["2024-03-01T00:00Z", None], utc=True)})
    with pytest.raises(ValueError, match="1 rows have no event_timestamp"):
        daily_row_counts(undated)


def test_code_version_is_the_checkout_commit_with_a_dirty_flag(tmp_path):
    import git

    repo = git.Repo.init(tmp_path / "checkout")
    package = Path(repo.working_tree_dir) / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    repo.index.add(["pkg/__init__.py"])
    author = git.Actor("Test", "test@example.invalid")
    commit = repo.index.commit("first", author=author, committer=author).hexsha
    declared = {CODE_VERSION_ENV: "image-9"}
    assert current_code_version(declared, package_dir=package) == commit  # the checkout wins over the variable
    (package / "__init__.py").write_text("changed = True\n")
    assert current_code_version({}, package_dir=package) == commit + DIRTY_SUFFIX
    repo.close()


def test_code_version_outside_a_checkout_is_what_the_environment_declares(tmp_path):
    assert current_code_version({CODE_VERSION_ENV: "v2.4.0"}, package_dir=tmp_path) == "v2.4.0"
    assert current_code_version({}, package_dir=tmp_path) is None
    with pytest.raises(ValueError, match=f"{CODE_VERSION_ENV}='two words' is not a code version"):
        current_code_version({CODE_VERSION_ENV: "two words"}, package_dir=tmp_path)


def test_a_package_installed_inside_another_repository_is_not_its_commit(tmp_path):
    import git

    repo = git.Repo.init(tmp_path / "project")
    author = git.Actor("Test", "test@example.invalid")
    repo.index.commit("empty", author=author, committer=author)
    installed = Path(repo.working_tree_dir) / ".venv" / "site-packages" / "pkg"
    installed.mkdir(parents=True)
    assert current_code_version({CODE_VERSION_ENV: "wheel-1.0"}, package_dir=installed) == "wheel-1.0"
    repo.close()


def test_the_job_records_lineage_on_the_version_and_its_run(world):
    registry, first, rows_by_day = world["registry"], world["first"], world["rows_by_day"]
    assert list(rows_by_day) == ["2024-03-01", "2024-03-02", "2024-03-03"]
    expected = {
        CODE_VERSION_TAG: LAUNCHER_VERSION,
        DAGSTER_RUN_ID_TAG: DAGSTER_RUN,
        PARTITIONS_FIRST_DAY_TAG: "2024-03-01",
        PARTITIONS_LAST_DAY_TAG: "2024-03-03",
        PARTITION_COUNT_TAG: "3",
    }
    version_tags = registry.version_tags(first["model_version"])
    run_tags = registry.client.get_run(first["mlflow_run_id"]).data.tags
    assert {key: version_tags.get(key) for key in expected} == expected
    assert {key: run_tags.get(key) for key in expected} == expected
    document = registry.run_document(first["model_version"], LINEAGE_ARTIFACT)
    assert document == {
        "format": 1,
        "training_set": {"digest": world["stored"].digest, "file": str(world["stored"].path)},
        "raw_partitions": {
            "first_day": "2024-03-01",
            "last_day": "2024-03-03",
            "count": 3,
            "total_rows": sum(rows_by_day.values()),
            "rows_by_day": rows_by_day,
        },
        "code_version": LAUNCHER_VERSION,
        "dagster_run_id": DAGSTER_RUN,
    }
    summary = ("partitions_first_day", "partitions_last_day", "partition_count", "code_version", "dagster_run_id")
    assert [first[key] for key in summary] == ["2024-03-01", "2024-03-03", 3, LAUNCHER_VERSION, DAGSTER_RUN]
    assert world["retry"]["reused_existing_version"] is True
    assert [world["retry"][key] for key in summary] == [first[key] for key in summary]


# ---- reading back ------------------------------------------------------------------------------------
def test_lineage_of_the_champion_as_text(world):
    result = lineage_cli(world["home"])
    assert result.exit_code == 0, result.output
    first, stored, rows_by_day = world["first"], world["stored"], world["rows_by_day"]
    registry = world["registry"]
    experiment = registry.client.get_run(first["mlflow_run_id"]).info.experiment_id
    model_digest = registry.version_tags(first["model_version"])[MODEL_DIGEST_TAG]
    assert result.output.splitlines() == [
        f"fraud_detector v{first['model_version']} (aliases: champion)",
        f"  training set:        {stored.digest}",
        f"    file:              {stored.path}",
        f"  newest transaction:  {stored.data_end}",
        f"  raw partitions:      3 days, 2024-03-01 .. 2024-03-03, {sum(rows_by_day.values()):,} rows",
        *(f"    {day}         {rows:>10,}" for day, rows in rows_by_day.items()),
        f"  code version:        {LAUNCHER_VERSION}",
        f"  dagster run:         {DAGSTER_RUN}  http://127.0.0.1:3000/runs/{DAGSTER_RUN}",
        f"  mlflow run:          {first['mlflow_run_id']}  "
        f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{first['mlflow_run_id']}",
        f"  mlflow version:      http://127.0.0.1:5000/#/models/fraud_detector/versions/{first['model_version']}",
        f"  model digest:        {model_digest}",
        "  promoted:            2024-04-01T00:00:00+00:00",
        "  rolled back:         no",
    ]


def test_lineage_as_json(world):
    result = lineage_cli(world["home"], "--version", str(world["first"]["model_version"]), "--json")
    assert result.exit_code == 0, result.output
    first, stored, rows_by_day, registry = world["first"], world["stored"], world["rows_by_day"], world["registry"]
    run_id = first["mlflow_run_id"]
    experiment = registry.client.get_run(run_id).info.experiment_id
    assert json.loads(result.stdout) == {
        "format": 1,
        "model": "fraud_detector",
        "version": first["model_version"],
        "aliases": ["champion"],
        "training_set": {"digest": stored.digest, "file": str(stored.path), "newest_transaction": stored.data_end},
        "raw_partitions": {
            "first_day": "2024-03-01",
            "last_day": "2024-03-03",
            "count": 3,
            "total_rows": sum(rows_by_day.values()),
            "rows_by_day": rows_by_day,
        },
        "code_version": LAUNCHER_VERSION,
        "dagster_run": {"id": DAGSTER_RUN, "url": f"http://127.0.0.1:3000/runs/{DAGSTER_RUN}"},
        "mlflow_run": {"id": run_id, "url": f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run_id}"},
        "mlflow_model_version": {
            "url": f"http://127.0.0.1:5000/#/models/fraud_detector/versions/{first['model_version']}"
        },
        "model_digest": registry.version_tags(first["model_version"])[MODEL_DIGEST_TAG],
        "promotion": {
            "promoted": True,
            "promoted_at": "2024-04-01T00:00:00+00:00",
            "rolled_back_at": None,
            "rollback_reason": None,
        },
        "not_recorded": [],
        "notes": [],
    }


def test_a_version_registered_before_lineage_reads_as_not_recorded(world):
    old = world["old"]
    text = lineage_cli(world["home"], "--version", str(old.version))
    assert text.exit_code == 0, text.output
    experiment = world["registry"].client.get_run(old.run_id).info.experiment_id
    assert text.output.splitlines() == [
        f"fraud_detector v{old.version} (aliases: challenger)",
        "  training set:        not recorded",
        "  newest transaction:  not recorded",
        "  raw partitions:      not recorded",
        "  code version:        not recorded",
        "  dagster run:         not recorded",
        f"  mlflow run:          {old.run_id}  http://127.0.0.1:5000/#/experiments/{experiment}/runs/{old.run_id}",
        f"  mlflow version:      http://127.0.0.1:5000/#/models/fraud_detector/versions/{old.version}",
        "  model digest:        not recorded",
        "  promoted:            2024-04-02T00:00:00+00:00",
        "  rolled back:         2024-04-03T00:00:00+00:00 (accuracy dropped)",
    ]

    found = json.loads(lineage_cli(world["home"], "--version", str(old.version), "--json").stdout)
    assert found["not_recorded"] == [
        "training_set.digest",
        "training_set.newest_transaction",
        "raw_partitions",
        "raw_partitions.rows_by_day",
        "code_version",
        "dagster_run",
        "model_digest",
    ]
    assert found["raw_partitions"] == {
        "first_day": None,
        "last_day": None,
        "count": None,
        "total_rows": None,
        "rows_by_day": None,
    }
    assert found["mlflow_run"]["id"] == old.run_id
    assert found["promotion"] == {
        "promoted": True,
        "promoted_at": "2024-04-02T00:00:00+00:00",
        "rolled_back_at": "2024-04-03T00:00:00+00:00",
        "rollback_reason": "accuracy dropped",
    }


def test_an_unknown_version_exits_2_naming_it(world):
    result = lineage_cli(world["home"], "--version", "99")
    assert result.exit_code == 2
    assert "error: fraud_detector has no version 99" in result.output


def test_no_champion_exits_2_saying_so(tmp_path):
    result = lineage_cli(tmp_path)
    assert result.exit_code == 2
    assert "error: fraud_detector has no champion yet; name a version with --version" in result.output


def test_a_malformed_lineage_file_is_a_note_not_a_crash(world, trained_model, training_set):
    registry = Registry(
        world["registry"].tracking_uri, "lineage_malformed", "lineage_malformed", world["registry"].artifact_root
    )
    x_valid, _ = split_xy(training_set, "validation")
    bad = registry.log_and_register(
        trained_model,
        params={},
        run_key="malformed",
        signature=model_signature(trained_model.booster, x_valid.head(5)),
        example=x_valid.head(5),
        run_tags={},
        figures={},
        version_tags={PARTITION_COUNT_TAG: "2"},
        documents={LINEAGE_ARTIFACT: {"raw_partitions": {"rows_by_day": {"yesterday": 3}}}},
    )
    found = version_lineage(registry, bad.version)
    assert found.rows_by_day is None
    assert found.partition_count == 2
    assert found.notes == (
        f"{LINEAGE_ARTIFACT} of run {bad.run_id} cannot be used: raw_partitions.rows_by_day has 'yesterday', "
        "not a day (YYYY-MM-DD)",
    )

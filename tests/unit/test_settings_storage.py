"""Settings derive every location from one home; prepare() is idempotent; storage writes are atomic;
file locks are shared or exclusive."""

import fcntl
import os
from pathlib import Path

import pandas as pd
import pytest

from ml_platform.settings import Settings, SettingsError, write_text_atomic
from ml_platform.storage import asset_path, file_lock, read_record, write_record, write_table


def test_relative_home_is_resolved_to_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"ML_PLATFORM_HOME": "state/here"})
    assert settings.home.is_absolute()
    assert settings.home == (tmp_path / "state" / "here").resolve()


def test_default_home_is_dot_ml_platform_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({}).home == (tmp_path / ".ml_platform").resolve()


def test_every_derived_location_lies_under_home(tmp_path):
    settings = Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path / "home")})
    home = settings.home
    for path in (
        settings.dagster_home,
        settings.data_dir,
        settings.mlflow_dir,
        settings.feast_dir,
        settings.offline_features_dir,
        settings.logs_dir,
        settings.cache_dir,
    ):
        assert path.is_relative_to(home), path
    assert settings.tracking_uri == f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    assert Path(settings.tracking_uri.removeprefix("sqlite:///")).is_relative_to(home)
    assert settings.mlflow_artifact_root == (home / "mlflow" / "artifacts").as_uri()
    env = settings.process_environment()
    assert env["ML_PLATFORM_HOME"] == str(home) and env["DAGSTER_HOME"] == str(home / "dagster")
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_environment_overrides(tmp_path):
    settings = Settings.from_env(
        {
            "ML_PLATFORM_HOME": str(tmp_path),
            "ML_PLATFORM_MODEL_NAME": "m",
            "ML_PLATFORM_EXPERIMENT": "e",
            "ML_PLATFORM_MLFLOW_URI": "sqlite:////elsewhere/db.sqlite",
        }
    )
    assert (settings.model_name, settings.experiment_name) == ("m", "e")
    assert settings.tracking_uri == "sqlite:////elsewhere/db.sqlite"


def test_unknown_profile_raises_naming_it(tmp_path):
    with pytest.raises(SettingsError, match="'cloud'"):
        Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path), "ML_PLATFORM_PROFILE": "cloud"})


def test_prepare_creates_the_layout_and_a_telemetry_free_dagster_yaml(tmp_path):
    settings = Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path / "home")})
    settings.prepare()
    for directory in (
        settings.dagster_home,
        settings.data_dir,
        settings.mlflow_dir,
        settings.offline_features_dir,
        settings.logs_dir,
        settings.cache_dir / "matplotlib",
    ):
        assert directory.is_dir(), directory
    text = (settings.dagster_home / "dagster.yaml").read_text()
    assert "telemetry:\n  enabled: false\n" in text
    import yaml

    assert yaml.safe_load(text)["telemetry"] == {"enabled": False}


def test_prepare_is_idempotent_and_keeps_an_edited_dagster_yaml(tmp_path):
    settings = Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path / "home")})
    settings.prepare()
    dagster_yaml = settings.dagster_home / "dagster.yaml"
    dagster_yaml.write_text("telemetry:\n  enabled: false\n# edited by hand\n")
    settings.prepare()
    assert dagster_yaml.read_text() == "telemetry:\n  enabled: false\n# edited by hand\n"
    assert sorted(p.name for p in settings.dagster_home.iterdir()) == ["dagster.yaml"]


# ---- storage -----------------------------------------------------------------------------------


def test_write_table_round_trips_and_leaves_no_temporary_file(tmp_path):
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "n": [1, 2, 3],
            "x": [0.5, float("nan"), 2.25],
            "t": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"], utc=True),
        }
    )
    path = tmp_path / "nested" / "table.parquet"
    write_table(frame, path)
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)
    write_table(frame.iloc[:1], path)  # overwrite in place
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame.iloc[:1])
    assert [p.name for p in path.parent.iterdir()] == ["table.parquet"]


def test_write_record_round_trips_and_leaves_no_temporary_file(tmp_path):
    record = {"b": [1, 2.5, None], "a": {"nested": "yes"}, "when": pd.Timestamp("2024-01-01", tz="UTC")}
    path = tmp_path / "records" / "result.json"
    write_record(record, path)
    assert read_record(path) == {"a": {"nested": "yes"}, "b": [1, 2.5, None], "when": "2024-01-01 00:00:00+00:00"}
    assert path.read_text().startswith('{\n  "a"')  # sorted keys, indented
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "table.parquet"
    write_table(pd.DataFrame({"a": [1, 2]}), path)
    with pytest.raises(ValueError, match="Conversion failed for column a"):  # pyarrow.ArrowInvalid
        write_table(pd.DataFrame({"a": [object(), 1]}), path)
    pd.testing.assert_frame_equal(pd.read_parquet(path), pd.DataFrame({"a": [1, 2]}))
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_write_text_atomic_replaces_the_file(tmp_path):
    path = tmp_path / "a" / "file.txt"
    write_text_atomic(path, "one")
    write_text_atomic(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["file.txt"]


def test_asset_path_with_and_without_partition(tmp_path):
    assert asset_path(tmp_path, ["features", "stats"], "2024-01-01", ".parquet") == (
        tmp_path / "features" / "stats" / "2024-01-01.parquet"
    )
    assert asset_path(tmp_path, ["features", "stats"], None, ".json") == tmp_path / "features" / "stats.json"


def _can_lock(path: Path, operation: int) -> bool:
    """Whether another open file description could take ``operation`` on ``path`` right now."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)


def test_file_lock_is_shared_or_exclusive_and_released_after_the_block(tmp_path):
    path = tmp_path / ".lock"
    with file_lock(path, shared=True):
        assert path.exists()  # created on first use
        assert _can_lock(path, fcntl.LOCK_SH)  # readers together
        assert not _can_lock(path, fcntl.LOCK_EX)  # a writer waits for them
    with file_lock(path):
        assert not _can_lock(path, fcntl.LOCK_SH)
    assert _can_lock(path, fcntl.LOCK_EX)  # released

    with pytest.raises(RuntimeError), file_lock(path):
        raise RuntimeError("boom")
    assert _can_lock(path, fcntl.LOCK_EX)  # released on error too

"""Settings derive every location from one home; prepare() is idempotent; storage writes are atomic;
file locks are shared or exclusive."""

import contextlib
import fcntl
import os
from pathlib import Path

import pandas as pd
import pytest

from ml_platform.settings import Settings, SettingsError
from ml_platform.storage import (
    asset_path,
    content_path,
    file_lock,
    read_record,
    rows_per_day,
    split_by_day,
    store_file_content_addressed,
    write_record,
    write_table,
    write_table_content_addressed,
    write_text_atomic,
)


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


def test_the_local_instance_fails_runs_whose_process_died(tmp_path):
    """The local dagster.yaml turns run monitoring on, with a run launcher that can tell a dead run."""
    import dagster as dg
    import yaml

    from resources.run_launcher import LocalRunLauncher

    settings = Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path / "home")})
    settings.prepare()
    config = yaml.safe_load((settings.dagster_home / "dagster.yaml").read_text())
    assert config["run_monitoring"] == {
        "enabled": True,
        "start_timeout_seconds": 180,
        "max_resume_run_attempts": 0,  # neither launcher can resume a run
        "poll_interval_seconds": 15,
    }
    assert config["run_launcher"] == {"module": "resources.run_launcher", "class": "LocalRunLauncher"}
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        assert instance.run_monitoring_enabled
        assert (instance.run_monitoring_start_timeout_seconds, instance.run_monitoring_poll_interval_seconds) == (
            180,
            15,
        )
        assert "MONITORING" in instance.get_required_daemon_types()  # `dagster dev` starts the daemon for it
        assert isinstance(instance.run_launcher, LocalRunLauncher)
        assert instance.run_launcher.supports_check_run_worker_health


SLOW_JOB = """
import os
import time

import dagster as dg


@dg.op
def wait(context):
    with open(os.environ["STARTED_FILE"], "w") as started:
        started.write(context.run.run_id)
    time.sleep(600)


@dg.job
def slow():
    wait()


if __name__ == "__main__":
    slow.execute_in_process(instance=dg.DagsterInstance.get())
"""


@pytest.mark.parametrize("worker", ["in process", "run worker"])
def test_run_monitoring_fails_a_run_whose_process_was_killed(tmp_path, worker):
    """A run executed in the process that started it (``ml-platform run``), or by a run worker process of
    its own (what the code server under ``dagster dev`` starts), is SIGKILLed: one iteration of the
    daemon's run monitoring marks it FAILURE, naming the process; while it lived it was left alone."""
    import logging
    import signal
    import subprocess
    import sys
    import time

    import dagster as dg
    from dagster._core.definitions.reconstruct import ReconstructableJob
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import EmptyWorkspaceTarget
    from dagster._daemon.monitoring import execute_run_monitoring_iteration
    from dagster._grpc.types import ExecuteRunArgs
    from dagster._serdes import serialize_value

    settings = Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path / "home")})
    settings.prepare()
    script, started = tmp_path / "slow_job.py", tmp_path / "started"
    script.write_text(SLOW_JOB)
    env = {**os.environ, "DAGSTER_HOME": str(settings.dagster_home), "STARTED_FILE": str(started)}
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        if worker == "in process":
            command = [sys.executable, str(script)]
        else:
            job = ReconstructableJob.for_file(str(script), "slow")
            run = instance.create_run_for_job(job_def=job.get_definition(), job_code_origin=job.get_python_origin())
            args = ExecuteRunArgs(
                job_origin=job.get_python_origin(), run_id=run.run_id, instance_ref=instance.get_ref()
            )
            command = [sys.executable, "-m", "dagster", "api", "execute_run", serialize_value(args)]
        # A session of its own: the run's step processes (multiprocess executor) go with it at the end.
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 120
            while not (started.exists() and started.read_text()):
                assert process.poll() is None, process.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "the run did not reach its op within 2 minutes"
                time.sleep(0.1)
            run_id = started.read_text()

            def monitor() -> dg.DagsterRunStatus:
                with WorkspaceProcessContext(instance, EmptyWorkspaceTarget()) as context:
                    iteration = execute_run_monitoring_iteration(context, logging.getLogger(__name__))
                    assert [error for error in iteration if error is not None] == []
                return instance.get_run_by_id(run_id).status

            assert monitor() == dg.DagsterRunStatus.STARTED  # alive: left alone
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED  # nothing else notices
            assert monitor() == dg.DagsterRunStatus.FAILURE
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        messages = [record.message for record in instance.all_logs(run_id)]
        assert any(f"the run's process {process.pid} is gone" in message for message in messages), messages


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


def shuffled_days() -> pd.DataFrame:
    """Rows of three UTC days (one of them a timestamp a second before midnight) in no order, with strings,
    ints, floats with a NaN and a category, and frame attrs: what a range run hands the IO manager."""
    frame = pd.DataFrame(
        {
            "id": [f"t{i}" for i in range(7)],
            "n": [5, 3, 9, 1, 7, 2, 8],
            "x": [0.5, float("nan"), 2.25, 3.0, -1.5, 0.0, 9.75],
            "kind": pd.Categorical(["a", "b", "a", "c", "b", "a", "c"]),
            "event_timestamp": pd.to_datetime(
                [
                    "2024-03-02T10:00:00Z",
                    "2024-03-01T23:59:59Z",
                    "2024-03-04T00:00:00Z",
                    "2024-03-02T01:00:00Z",
                    "2024-03-01T00:00:00Z",
                    "2024-03-04T12:00:00Z",
                    "2024-03-02T05:00:00Z",
                ],
                utc=True,
            ),
        },
        index=[10, 4, 7, 2, 99, 0, 5],
    )
    frame.attrs = {"source": "test"}
    return frame


def test_rows_per_day_counts_what_split_by_day_splits():
    frame = shuffled_days()
    assert rows_per_day(frame, "event_timestamp") == {"2024-03-01": 2, "2024-03-02": 3, "2024-03-04": 2}
    assert rows_per_day(frame, "event_timestamp") == {
        day: len(part) for day, part in split_by_day(frame, "event_timestamp").items()
    }
    assert rows_per_day(frame.iloc[0:0], "event_timestamp") == {}


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


# ---- content-addressed tables ------------------------------------------------------------------------
def small_table(amount: float = 1.5) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "amount": [amount, 2.0, float("nan")],
            "t": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"], utc=True),
        }
    )


def test_a_table_is_stored_once_under_the_sha256_of_its_bytes(tmp_path):
    import hashlib

    first = write_table_content_addressed(small_table(), tmp_path / "sets")
    assert first.created is True
    assert first.path == tmp_path / "sets" / f"{first.digest}.parquet"
    assert hashlib.sha256(first.path.read_bytes()).hexdigest() == first.digest
    pd.testing.assert_frame_equal(pd.read_parquet(first.path), small_table())
    inode, modified = first.path.stat().st_ino, first.path.stat().st_mtime_ns

    again = write_table_content_addressed(small_table(), tmp_path / "sets")  # equal content, a new frame
    assert (again.digest, again.path, again.created) == (first.digest, first.path, False)
    assert (first.path.stat().st_ino, first.path.stat().st_mtime_ns) == (inode, modified)  # not rewritten

    other = write_table_content_addressed(small_table(amount=1.25), tmp_path / "sets")
    assert other.created is True and other.digest != first.digest
    assert sorted(p.name for p in (tmp_path / "sets").iterdir()) == sorted(
        [f"{first.digest}.parquet", f"{other.digest}.parquet"]
    )  # no temporary file left
    assert first.path.stat().st_mode & 0o777 == 0o444  # stored content is read-only


def test_a_copied_file_gets_the_digest_of_its_bytes_and_is_stored_once(tmp_path):
    table = tmp_path / "table.parquet"
    write_table(small_table(), table)
    written = write_table_content_addressed(small_table(), tmp_path / "sets")
    copied = store_file_content_addressed(table, tmp_path / "sets")
    assert (copied.digest, copied.path, copied.created) == (written.digest, written.path, False)
    assert table.exists()  # the source stays where it was


def test_a_failed_content_addressed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="Conversion failed for column a"):
        write_table_content_addressed(pd.DataFrame({"a": [object(), 1]}), tmp_path / "sets")
    assert list((tmp_path / "sets").iterdir()) == []


@pytest.mark.parametrize("digest", ["../x", "ABCDEF" + "0" * 58, "0" * 63, "0" * 64 + "/", 7])
def test_content_path_accepts_only_a_sha256(tmp_path, digest):
    with pytest.raises(ValueError, match="is not a sha256 digest"):
        content_path(tmp_path, digest)
    assert content_path(tmp_path, "0a" * 32) == tmp_path / f"{'0a' * 32}.parquet"

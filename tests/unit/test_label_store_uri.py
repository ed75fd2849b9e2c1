"""The label store at a URI: the same behaviour on a local folder and on a real S3-compatible server (moto
on loopback), and the ``labels_uri`` setting that points the server and monitoring at it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from ml_platform.monitoring.health import MonitoringPaths
from ml_platform.monitoring.labels import LABEL_COLUMNS, LabelStore
from ml_platform.predictions import LogLocationError
from ml_platform.serving import ServerConfig
from ml_platform.settings import Settings, SettingsError
from tests.support.s3 import s3_bucket

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def bucket():
    with s3_bucket(prefix="labels") as started:
        yield started


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A fresh label store location: a local folder, or a fresh prefix in the module's bucket."""
    if request.param == "local":
        return tmp_path / "labels"
    bucket = request.getfixturevalue("bucket")
    return f"{bucket.uri}/{request.node.name.replace('[', '-').rstrip(']')}"


def labels(rows: list[tuple[str, bool, datetime]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(LABEL_COLUMNS))


def known(frame: pd.DataFrame) -> dict[str, bool]:
    return dict(zip(frame["request_id"], frame["label"], strict=True))


def test_as_of_reads_and_a_relabel_winning(root):
    store = LabelStore(root)
    assert store.read().empty and store.files() == []  # nothing written yet: no folder, no prefix
    assert store.write(labels([("a", False, T0), ("b", True, T0), ("c", False, T0 + timedelta(hours=1))])) == 3
    assert store.write(labels([("a", True, T0 + timedelta(days=2))])) == 1  # a review overturns "a"

    now = store.read()
    assert now["request_id"].tolist() == ["b", "c", "a"]  # ordered by labeled_at
    assert known(now) == {"a": True, "b": True, "c": False}
    assert now["label"].dtype == bool and str(now["labeled_at"].dt.tz) == "UTC"
    assert known(store.read(as_of=T0 + timedelta(days=1))) == {"a": False, "b": True, "c": False}
    assert sorted(store.read(as_of=T0)["request_id"]) == ["a", "b"]  # inclusive: labeled_at <= as_of
    assert store.read(as_of=T0 - timedelta(seconds=1)).empty
    assert known(store.read(request_ids=["a", "zzz"])) == {"a": True}
    assert store.read(request_ids=[]).empty

    files = store.files()
    days = [str(file).rsplit("/", 2)[-2] for file in files]
    assert days == ["date=2026-11-20", "date=2026-11-22"]
    assert len(store.files(until=T0 + timedelta(days=1))) == 1
    if isinstance(root, Path):
        assert store.root == root and all(isinstance(file, Path) and file.is_file() for file in files)
        assert not list(root.rglob(".*"))  # no temporary file left behind
    else:
        assert store.root == root and all(str(file).startswith(f"{root}/date=") for file in files)


def test_a_tie_goes_to_the_label_written_last(root):
    store = LabelStore(root)
    store.write(labels([("x", False, T0)]))
    store.write(labels([("x", True, T0)]))
    store.write(labels([("y", True, T0)]))
    store.write(labels([("y", False, T0)]))
    assert known(store.read()) == {"x": True, "y": False}


def test_writing_a_batch_again_replaces_it(root):
    store = LabelStore(root)
    first = store.write(labels([("p", True, T0), ("q", False, T0 + timedelta(days=1))]), batch="inbox-2026-11-21")
    assert first == 2 and len(store.batch_files("inbox-2026-11-21")) == 2
    store.write(labels([("other", True, T0)]))
    store.write(labels([("p", False, T0)]), batch="inbox-2026-11-21")
    assert len(store.batch_files("inbox-2026-11-21")) == 1
    assert known(store.read()) == {"p": False, "other": True}  # q's file went with the batch's first write
    assert len(store.files()) == 2


def test_import_counts_new_and_changed_labels(root):
    store = LabelStore(root)
    now = T0 + timedelta(days=3)
    first = store.import_labels([{"request_id": "r1", "label": 1}, {"transaction_id": "r2", "label": "legit"}], now=now)
    assert (first.rows, first.new, first.changed, first.positives) == (2, 2, 0, 1)
    review = store.import_labels([{"request_id": "r2", "label": "fraud"}], now=now + timedelta(minutes=1))
    assert (review.rows, review.new, review.changed, review.positives) == (1, 0, 1, 1)
    assert known(store.read(as_of=now + timedelta(minutes=1))) == {"r1": True, "r2": True}


def test_writers_at_the_same_moment_never_overwrite_each_other(root):
    """Eight writers (the replicas of a Deployment) appending at once: every file and every label kept."""
    writers, writes = 8, 5
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(number: int) -> None:
        store = LabelStore(root)  # a store of its own, as each replica has
        start.wait()
        try:
            for index in range(writes):
                store.write(labels([(f"w{number}-{index}", bool(index % 2), T0)]))
        except BaseException as error:  # collected: a failure in a thread must fail the test
            errors.append(error)

    threads = [threading.Thread(target=write, args=(number,)) for number in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = LabelStore(root)
    assert len(store.files()) == writers * writes
    # Two writers of the same nanosecond (replicas on two machines) still differ: a 64-bit random part.
    randoms = {str(file).rsplit("/", 1)[-1].split("-")[2].removesuffix(".parquet") for file in store.files()}
    assert len(randoms) == writers * writes and all(len(part) == 16 for part in randoms)
    read = store.read()
    assert len(read) == writers * writes
    assert sorted(read["request_id"]) == sorted(f"w{n}-{i}" for n in range(writers) for i in range(writes))


def test_only_whole_label_files_are_read(bucket):
    """A hidden temporary object and objects that are no label file lie beside the labels: never read."""
    root = f"{bucket.uri}/stray"
    store = LabelStore(root)
    store.write(labels([("kept", True, T0)]))
    client = bucket.client()
    for key in ("date=2026-11-20/.part-1.parquet.tmp-7", "date=2026-11-20/notes.txt", "README"):
        client.put_object(Bucket=bucket.bucket, Key=f"{bucket.prefix}/stray/{key}", Body=b"not parquet")
    assert store.read()["request_id"].tolist() == ["kept"]
    assert len(store.files()) == 1


def test_a_failed_write_leaves_nothing_of_itself(tmp_path):
    """Two days to publish and the second cannot be: the first day's file is taken back, nothing is read."""
    store = LabelStore(tmp_path)
    store.write(labels([("before", True, T0)]))
    (tmp_path / "date=2026-11-21").write_bytes(b"a file where the day's folder should be")
    with pytest.raises(OSError):
        store.write(labels([("x", True, T0), ("y", True, T0 + timedelta(days=1))]))
    assert store.read()["request_id"].tolist() == ["before"]
    assert len(store.files()) == 1
    assert not [path for path in tmp_path.rglob("*") if path.name.startswith(".")]


def test_an_unreachable_bucket_is_an_os_error_naming_it(bucket):
    store = LabelStore("s3://no-such-bucket-for-labels/labels")
    with pytest.raises(OSError, match="no-such-bucket-for-labels"):
        store.import_labels([{"request_id": "r", "label": 1}])


def test_unsupported_locations_are_named():
    with pytest.raises(LogLocationError, match=r"label store location 'ftp://host/labels': unsupported scheme 'ftp'"):
        LabelStore("ftp://host/labels")
    with pytest.raises(LogLocationError, match=r"label store location 's3://' names no bucket"):
        LabelStore("s3://")
    # what pyarrow refuses in the URI itself is named the same way
    with pytest.raises(LogLocationError, match=r"'s3://b/x\?no_such_option=1': Unexpected query parameter"):
        LabelStore("s3://b/x?no_such_option=1")


def test_the_setting_points_server_and_monitoring_at_one_store(tmp_path, bucket):
    # The module's bucket on loopback: opening an S3 store asks the endpoint for the bucket's region,
    # so a bucket on the internet would make this test depend on the network.
    shared = f"s3://{bucket.bucket}/fraud-detector-labels"
    env = {"ML_PLATFORM_HOME": str(tmp_path), "ML_PLATFORM_LABELS_URI": shared}
    settings = Settings.from_env(env)
    assert settings.labels_location == shared
    paths = MonitoringPaths.from_settings(settings, env)
    assert paths.labels_dir == shared
    assert paths.labels().root == shared
    assert paths.reports_dir == tmp_path / "monitoring" / "reports"  # the rest of monitoring stays local
    config = ServerConfig.from_settings(settings, environ={}, model_name="m", feast=None)
    assert config.labels_dir == shared
    assert settings.environment_for_pods()["ML_PLATFORM_LABELS_URI"] == shared

    # The server's own variable still moves the server's store (only); a local one is a Path.
    moved = ServerConfig.from_settings(
        settings, environ={"ML_PLATFORM_SERVING_LABELS_DIR": str(tmp_path / "mine")}, model_name="m", feast=None
    )
    assert moved.labels_dir == tmp_path / "mine"
    local = Settings.from_env({**env, "ML_PLATFORM_LABELS_URI": f"file://{tmp_path}/elsewhere"})
    assert local.labels_location == tmp_path / "elsewhere"
    assert MonitoringPaths.from_settings(local, {}).labels_dir == tmp_path / "elsewhere"

    # Unset: <home>/monitoring/labels, a Path, as before; and no variable passed on to pods.
    default = Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path)})
    assert MonitoringPaths.from_settings(default, {}).labels_dir == tmp_path / "monitoring" / "labels"
    assert ServerConfig.from_settings(default, environ={}, feast=None).labels_dir == tmp_path / "monitoring" / "labels"
    assert "ML_PLATFORM_LABELS_URI" not in default.environment_for_pods()

    with pytest.raises(SettingsError, match="ML_PLATFORM_LABELS_URI.*label store location.*unsupported scheme 'ftp'"):
        Settings.from_env({**env, "ML_PLATFORM_LABELS_URI": "ftp://host/labels"})
    with pytest.raises(SettingsError, match="ML_PLATFORM_SERVING_LABELS_DIR.*unsupported scheme 'http'"):
        ServerConfig.from_settings(settings, environ={"ML_PLATFORM_SERVING_LABELS_DIR": "http://x/y"}, feast=None)
    with pytest.raises(SettingsError, match="labels_dir: label store location 'gopher://x': unsupported scheme"):
        ServerConfig(model_name="m", tracking_uri="t", artifact_root="a", log_dir=tmp_path, labels_dir="gopher://x")

"""MLflow UI links: the base address per setting and profile (ML_PLATFORM_MLFLOW_UI_URL, a tracking server,
`make mlflow-ui` locally, none in production), the exact page URLs, and monitoring files logged to a run
of their own on a real SQLite MLflow store."""

from pathlib import Path

import pytest

from ml_platform.mlflow_ui import LOCAL_MLFLOW_UI, artifact_url, mlflow_ui_base, model_version_url, run_url
from ml_platform.monitoring.artifacts import (
    SERIES_TAG,
    log_monitoring_run,
    monitoring_experiment,
    monitoring_experiment_name,
)
from ml_platform.registry import Registry
from ml_platform.settings import Settings, SettingsError

PRODUCTION = {
    "ML_PLATFORM_PROFILE": "production",
    "ML_PLATFORM_MLFLOW_URI": "postgresql://mlflow@db:5432/mlflow",
    "ML_PLATFORM_REDIS_URL": "redis://redis:6379/0",
    "ML_PLATFORM_TRAINING_BACKEND": "local",
}


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path), **env})


# ---- the base address -------------------------------------------------------------------------------------
def test_the_local_profile_links_to_make_mlflow_ui(tmp_path):
    assert LOCAL_MLFLOW_UI == "http://127.0.0.1:5000"
    assert settings(tmp_path).mlflow_ui == "http://127.0.0.1:5000"


def test_the_setting_wins_in_every_profile(tmp_path):
    configured = {"ML_PLATFORM_MLFLOW_UI_URL": "https://mlflow.example.com/ui/"}
    assert settings(tmp_path, **configured).mlflow_ui == "https://mlflow.example.com/ui"
    assert settings(tmp_path, **PRODUCTION, **configured).mlflow_ui == "https://mlflow.example.com/ui"
    assert settings(tmp_path, **PRODUCTION, **configured).environment_for_pods()["ML_PLATFORM_MLFLOW_UI_URL"] == (
        "https://mlflow.example.com/ui/"
    )


def test_production_on_postgresql_has_no_local_guess(tmp_path):
    assert settings(tmp_path, **PRODUCTION).mlflow_ui is None


def test_a_tracking_server_is_its_own_ui_without_its_credentials(tmp_path):
    server = {**PRODUCTION, "ML_PLATFORM_MLFLOW_URI": "https://bot:s3cret@mlflow.internal:8443/"}
    assert settings(tmp_path, **server).mlflow_ui == "https://mlflow.internal:8443"
    assert mlflow_ui_base("http://[::1]:5001/mlflow", "production") == "http://[::1]:5001/mlflow"


@pytest.mark.parametrize("bad", ["mlflow.example.com", "file:///tmp/ui", "https://"])
def test_a_setting_that_is_not_an_http_url_is_refused_by_name(tmp_path, bad):
    with pytest.raises(SettingsError, match=r"ML_PLATFORM_MLFLOW_UI_URL=.* is not valid: expected an http\(s\) URL"):
        settings(tmp_path, ML_PLATFORM_MLFLOW_UI_URL=bad)


# ---- the pages ------------------------------------------------------------------------------------------
def test_page_urls_are_the_routes_of_the_mlflow_ui():
    base = "https://mlflow.example.com/ui/"
    assert run_url(base, "3", "abc123") == "https://mlflow.example.com/ui/#/experiments/3/runs/abc123"
    assert model_version_url(base, "fraud detector", 12) == (
        "https://mlflow.example.com/ui/#/models/fraud%20detector/versions/12"
    )
    assert artifact_url(base, "3", "abc123", "drift_report.html") == (
        "https://mlflow.example.com/ui/#/experiments/3/runs/abc123/artifacts/drift_report.html"
    )


# ---- monitoring files in MLflow --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    home = tmp_path_factory.mktemp("mlflow_ui")
    return Registry(f"sqlite:///{home / 'mlflow.db'}", "fraud_detector", "fraud_detector", (home / "art").as_uri())


def test_a_monitoring_run_holds_the_files_under_their_names(registry, tmp_path):
    report = tmp_path / "drift-20261130T000000Z-abcd.html"
    report.write_text("<html>drift</html>")
    run = log_monitoring_run(
        registry,
        run_name="drift_report now",
        files={"drift_report.html": report},
        metrics={"drift_score": 0.25, "unknown": None, "nan": float("nan")},
        tags={"dagster_run_id": "r-1"},
    )
    client = registry.client
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED" and stored.info.run_name == "drift_report now"
    assert client.get_experiment(run.experiment_id).name == monitoring_experiment_name("fraud_detector")
    assert monitoring_experiment_name("fraud_detector") == "fraud_detector-monitoring"
    assert client.get_experiment(run.experiment_id).artifact_location == f"{registry.artifact_root}/monitoring"
    assert stored.data.metrics == {"drift_score": 0.25} and stored.data.tags["dagster_run_id"] == "r-1"
    assert [entry.path for entry in client.list_artifacts(run.run_id)] == ["drift_report.html"]
    downloaded = client.download_artifacts(run.run_id, "drift_report.html", str(tmp_path / "down"))
    assert Path(downloaded).read_text() == "<html>drift</html>"
    assert run.artifact_uri("drift_report.html") == f"runs:/{run.run_id}/drift_report.html"
    again = log_monitoring_run(registry, run_name="second", files={"drift_report.html": report})
    assert again.experiment_id == run.experiment_id and again.run_id != run.run_id


def test_a_missing_file_or_a_path_as_name_starts_no_run(registry, tmp_path):
    experiment = monitoring_experiment(registry)
    before = len(registry.client.search_runs([experiment]))
    with pytest.raises(FileNotFoundError, match="no file to log to MLflow: .*gone.png"):
        log_monitoring_run(registry, run_name="x", files={"dashboard.png": tmp_path / "gone.png"})
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="artifact name '../a.png': expected a plain file name"):
        log_monitoring_run(registry, run_name="x", files={"../a.png": tmp_path / "a.png"})
    assert len(registry.client.search_runs([experiment])) == before


def test_only_the_newest_runs_of_a_series_are_kept_with_their_files(registry, tmp_path):
    """An hourly monitor logs a drift report of several MB each hour: a series keeps its newest ``keep``
    runs; an older one loses its artifacts in the store and the run itself. Another series is untouched."""
    report = tmp_path / "report.html"
    report.write_text("<html>drift</html>")
    other = log_monitoring_run(registry, run_name="health", files={"dashboard.png": report}, series="model_health")
    logged = [
        log_monitoring_run(
            registry, run_name=f"drift {n}", files={"drift_report.html": report}, series="drift_report", keep=2
        )
        for n in range(4)
    ]
    assert [run.pruned for run in logged] == [0, 0, 1, 1] and all(run.prune_error is None for run in logged)
    client = registry.client
    kept = client.search_runs(
        [logged[0].experiment_id],
        filter_string=f"tags.`{SERIES_TAG}` = 'drift_report'",
        order_by=["attributes.start_time ASC"],
    )
    assert [run.info.run_id for run in kept] == [logged[2].run_id, logged[3].run_id]
    for gone in logged[:2]:
        assert client.get_run(gone.run_id).info.lifecycle_stage == "deleted"
        folder = Path(client.get_run(gone.run_id).info.artifact_uri.removeprefix("file://"))
        assert not folder.exists() or not any(folder.iterdir())  # the report's bytes are gone from the store
    assert [entry.path for entry in client.list_artifacts(logged[3].run_id)] == ["drift_report.html"]
    assert client.get_run(other.run_id).info.lifecycle_stage == "active"
    with pytest.raises(ValueError, match="keeping runs needs a series"):
        log_monitoring_run(registry, run_name="x", files={"drift_report.html": report}, keep=2)

"""What the Dagster UI shows opens and is readable: every MLflow link is an http(s) URL into the configured
MLflow UI (the registered version's page, the run, a monitoring run's artifact view), the file it names is
in that MLflow run, no ``file://`` link is left, the health dashboard is a PNG inside its Markdown, and
tables are Dagster tables of JSON-safe values with floats rounded to 4 significant digits.

The graph world's bootstrap (training, evaluation, promotion) and one run of drift_report + model_health
over a log of seeded predictions written here."""

import base64
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import numpy as np
import pytest

from assets import ALL_ASSETS
from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.monitoring.images import PNG_MAGIC, png_size
from ml_platform.predictions import PredictionBatch, PredictionLogger
from ml_platform.registry import CHAMPION
from resources.mlflow import MLflowResource
from resources.monitoring import MonitoringResource
from tests.support.runs import materializations

pytestmark = pytest.mark.xdist_group("graph")  # the session's one graph world: see tests/conftest.py
LOCAL_UI = "http://127.0.0.1:5000"
ARTIFACT_LINK = re.compile(
    r"^(?P<base>.+)/#/experiments/(?P<experiment>[^/]+)/runs/(?P<run>[0-9a-f]+)/artifacts/(?P<path>.+)$"
)
INLINE_PNG = re.compile(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


def raw_metadata(result, asset: str) -> dict[str, dg.MetadataValue]:
    """The metadata values (not unwrapped) of the one materialization of ``asset`` in the run ``result``."""
    [event] = [
        e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key == dg.AssetKey(asset)
    ]
    return dict(event.metadata)


def all_metadata(*results) -> list[tuple[str, str, dg.MetadataValue]]:
    """(asset, key, value) of every materialization in the runs."""
    return [
        (event.asset_key.to_user_string(), key, value)
        for result in results
        for event in (e.event_specific_data.materialization for e in result.get_asset_materialization_events())
        for key, value in event.metadata.items()
    ]


def write_predictions(log_dir: Path, version: int, rows: int = 300) -> None:
    """``rows`` seeded predictions of ``version`` over the last hour, through the server's own log writer."""
    rng = np.random.default_rng(16)
    logger = PredictionLogger(log_dir, flush_rows=10**6, flush_seconds=3600)
    logger.start()
    start = datetime.now(UTC).timestamp() - 3600
    for row in range(rows):
        logger.log(
            PredictionBatch(
                time=start + 10 * row,
                request_ids=[f"links-{row}"],
                customer_ids=[row],
                features=rng.random((1, len(MODEL_FEATURES))) * 100,
                probabilities=rng.beta(1, 8, 1),
                is_fraud=np.array([False]),
                threshold=0.5,
                model_version=version,
                variant="champion",
                latency_ms=float(rng.gamma(2.0, 3.0)),
            )
        )
    assert logger.flush()
    logger.close()


def monitored(defs, instance, monitoring: MonitoringResource, assets: list[str], mlflow: MLflowResource | None = None):
    resources = {**defs.resources, "monitoring": monitoring, **({"mlflow": mlflow} if mlflow else {})}
    result = dg.materialize(ALL_ASSETS, selection=assets, resources=resources, instance=instance)
    assert result.success
    return result


def resource_with_ui(defs, ui_url: str) -> MLflowResource:
    base = defs.resources["mlflow"]
    return MLflowResource(
        tracking_uri=base.tracking_uri,
        artifact_root=base.artifact_root,
        model_name=base.model_name,
        experiment_name=base.experiment_name,
        ui_url=ui_url,
    )


@pytest.fixture(scope="module")
def monitoring(bootstrap_run, tmp_path_factory) -> MonitoringResource:
    root = tmp_path_factory.mktemp("ui_links")
    write_predictions(root / "predictions", bootstrap_run[1][CHAMPION])
    return MonitoringResource(log_dir=str(root / "predictions"), monitoring_dir=str(root / "monitoring"))


@pytest.fixture(scope="module")
def monitor_result(defs, instance, monitoring):
    return monitored(defs, instance, monitoring, ["drift_report", "model_health"])


# ---- MLflow links --------------------------------------------------------------------------------------
def test_the_trained_version_links_to_its_registered_version_page_and_run(bootstrap_result, registry, settings):
    assert settings.mlflow_ui == LOCAL_UI  # the local profile: `make mlflow-ui`
    trained = materializations(bootstrap_result, "trained_model")[0]
    version = trained["model_version"]
    experiment = registry.client.get_run(trained["mlflow_run_id"]).info.experiment_id
    assert trained["mlflow_model_version"] == f"{LOCAL_UI}/#/models/fraud_detector/versions/{version}"
    assert trained["mlflow_run"] == f"{LOCAL_UI}/#/experiments/{experiment}/runs/{trained['mlflow_run_id']}"
    assert trained["model_uri"] == f"models:/fraud_detector/{version}"  # not the logged model's models:/m-...
    assert trained["logged_model_uri"].startswith("models:/m-")
    promoted = materializations(bootstrap_result, "champion_model")[0]
    assert promoted["mlflow_model_version"] == f"{LOCAL_UI}/#/models/fraud_detector/versions/{version}"


def test_the_drift_report_opens_from_its_mlflow_run(monitor_result, registry):
    metadata = raw_metadata(monitor_result, "drift_report")
    link = metadata["report_url"]
    assert isinstance(link, dg.UrlMetadataValue)
    parts = ARTIFACT_LINK.match(link.url)
    assert parts is not None, link.url
    assert (parts["base"], parts["path"]) == (LOCAL_UI, "drift_report.html")
    run = registry.client.get_run(parts["run"])
    assert run.info.experiment_id == parts["experiment"] and run.info.status == "FINISHED"
    assert registry.client.get_experiment(parts["experiment"]).name == "fraud_detector-monitoring"
    assert run.data.tags["dagster_run_id"] == monitor_result.run_id and run.data.tags["dagster_asset"] == "drift_report"
    assert run.data.metrics["drift_score"] == metadata["drift_score"].value
    assert metadata["mlflow_monitoring_run"].value == parts["run"]
    logged = Path(registry.client.download_artifacts(parts["run"], "drift_report.html"))
    assert logged.read_bytes() == Path(metadata["report"].value).read_bytes()  # the local file, kept as well
    assert "Drifted Columns" in logged.read_text()


def test_the_dashboard_png_opens_from_its_mlflow_run_and_sits_in_the_markdown(monitor_result, registry):
    metadata = raw_metadata(monitor_result, "model_health")
    parts = ARTIFACT_LINK.match(metadata["dashboard_url"].url)
    assert parts is not None and (parts["base"], parts["path"]) == (LOCAL_UI, "dashboard.png")
    logged = Path(registry.client.download_artifacts(parts["run"], "dashboard.png")).read_bytes()
    assert logged == Path(metadata["dashboard_png"].value).read_bytes() and png_size(logged) == (1200, 800)
    markdown = metadata["dashboard"].value
    dashboard, *histogram = [base64.b64decode(data, validate=True) for data in INLINE_PNG.findall(markdown)]
    assert dashboard[:8] == PNG_MAGIC and png_size(dashboard) == (720, 480)
    assert len(histogram) == 1 and histogram[0][:8] == PNG_MAGIC  # the score histogram, as an image
    assert len(markdown) < 250_000  # measured: about 60 kB with both images
    # shown in place on the asset page (Dagster inlines Markdown under 1,000 characters): a thumbnail logged
    # beside the dashboard, as the MLflow server serves it, linked to the full one
    preview = metadata["dashboard_preview"].value
    thumbnail = f"{LOCAL_UI}/get-artifact?path=dashboard_preview.png&run_uuid={parts['run']}"
    assert preview == f"[![{metadata['status'].value}]({thumbnail})]({metadata['dashboard_url'].url})"
    assert len(preview) < 1000
    small = Path(registry.client.download_artifacts(parts["run"], "dashboard_preview.png")).read_bytes()
    assert png_size(small) == (480, 320)


def test_links_follow_the_configured_ui_and_say_so_without_one(defs, instance, monitoring, registry):
    elsewhere = monitored(
        defs, instance, monitoring, ["drift_report"], resource_with_ui(defs, "https://mlflow.example.com/ui")
    )
    parts = ARTIFACT_LINK.match(raw_metadata(elsewhere, "drift_report")["report_url"].url)
    assert parts is not None and parts["base"] == "https://mlflow.example.com/ui"
    assert "drift_report.html" in [a.path for a in registry.client.list_artifacts(parts["run"])]

    nowhere = monitored(defs, instance, monitoring, ["model_health"], resource_with_ui(defs, ""))
    shown = raw_metadata(nowhere, "model_health")
    run_id = shown["mlflow_monitoring_run"].value
    assert shown["dashboard_url"] == dg.MetadataValue.text(
        f"runs:/{run_id}/dashboard.png (set ML_PLATFORM_MLFLOW_UI_URL to link it)"
    )
    assert [a.path for a in registry.client.list_artifacts(run_id)] == ["dashboard.png", "dashboard_preview.png"]
    assert "dashboard_preview" not in shown  # no UI to serve the image: the Markdown's own copy only


def test_no_file_links_left(bootstrap_result, monitor_result):
    for asset, key, value in all_metadata(bootstrap_result, monitor_result):
        if isinstance(value, dg.UrlMetadataValue):
            assert urlsplit(value.url).scheme in ("http", "https"), (asset, key, value.url)
        text = value.value if isinstance(value, dg.TextMetadataValue | dg.MarkdownMetadataValue) else ""
        assert "file://" not in str(text), (asset, key)


# ---- tables --------------------------------------------------------------------------------------------
def test_tables_are_dagster_tables_with_rounded_json_safe_values(bootstrap_result, monitor_result):
    found = {}
    for asset, key, value in all_metadata(bootstrap_result, monitor_result):
        if isinstance(value, dg.MarkdownMetadataValue):
            assert "|---" not in value.value or key == "dashboard", (asset, key)  # no markdown tables left
        if not isinstance(value, dg.TableMetadataValue):
            continue
        found[(asset, key)] = value
        names = [column.name for column in value.schema.columns]
        for record in value.records:
            assert list(record.data) == names, (asset, key)
            json.dumps(record.data, allow_nan=False)  # JSON-safe: no NaN, no inf, no numpy or time objects
            for cell in record.data.values():
                assert cell is None or type(cell) in (str, int, float, bool), (asset, key, cell)
                if type(cell) is float:
                    assert cell == float(f"{cell:.4g}") or cell.is_integer(), (asset, key, cell)
    for expected in (
        ("training_set", "splits"),
        ("training_set", "feature_statistics"),
        ("trained_model", "feature_importance"),  # reported through Pipes
        ("model_evaluation", "comparison"),
        ("drift_report", "features"),
    ):
        assert expected in found, sorted(found)
    comparison = found[("model_evaluation", "comparison")]
    assert [column.name for column in comparison.schema.columns][:2] == ["", "challenger"]
    assert {column.type for column in comparison.schema.columns[1:]} == {"float"}
    assert any(
        isinstance(cell, float) and not cell.is_integer() for r in comparison.records for cell in r.data.values()
    )

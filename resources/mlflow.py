"""MLflow tracking and registry, as a resource that hands out the core's Registry."""

from collections.abc import Mapping
from pathlib import Path

import dagster as dg
from pydantic import Field

from ml_platform.mlflow_ui import artifact_url, model_version_url, run_url
from ml_platform.monitoring.artifacts import MonitoringRun, log_monitoring_run
from ml_platform.registry import Registry
from ml_platform.settings import normalize_tracking_uri, redact


class MLflowResource(dg.ConfigurableResource):
    """Connection settings for MLflow; no business logic (that lives in ml_platform.registry).

    ``tracking_uri`` is a ``dg.EnvVar`` when it carries a password (production), so the UI shows the
    variable's name, never the password; :attr:`store_uri` is what is connected to. ``ui_url`` is the
    MLflow UI every link points into (``Settings.mlflow_ui``: ``ML_PLATFORM_MLFLOW_UI_URL``, the tracking
    server, or ``make mlflow-ui`` locally); empty, no link is made (metadata then names the run instead).
    """

    tracking_uri: str
    artifact_root: str
    model_name: str
    experiment_name: str
    ui_url: str = Field(default="", description="MLflow UI base address for links; empty: no links")

    @property
    def store_uri(self) -> str:
        """The tracking URI with a driver-less ``postgresql://`` pinned to psycopg2 (the driver we ship)."""
        return normalize_tracking_uri(self.tracking_uri)

    @property
    def public_uri(self) -> str:
        """The tracking URI for messages and metadata: the password, if any, shown as ``***``."""
        return redact(self.store_uri)

    @property
    def ui(self) -> str | None:
        """The MLflow UI base address, or None when none is configured."""
        return self.ui_url.strip().rstrip("/") or None

    def registry(self) -> Registry:
        return Registry(self.store_uri, self.model_name, self.experiment_name, self.artifact_root)

    def run_url(self, run_id: str) -> str | None:
        """The run's page in the MLflow UI (in whichever experiment the run is); None without a UI."""
        if self.ui is None:
            return None
        experiment_id = self.registry().client.get_run(run_id).info.experiment_id
        return run_url(self.ui, experiment_id, run_id)

    def version_url(self, version: int) -> str | None:
        """The registered model version's page in the MLflow UI; None without a UI."""
        return model_version_url(self.ui, self.model_name, version) if self.ui is not None else None

    def log_monitoring_run(
        self,
        *,
        run_name: str,
        files: Mapping[str, Path],
        metrics: Mapping[str, float | None] | None = None,
        tags: Mapping[str, str] | None = None,
        series: str = "",
        keep: int | None = None,
    ) -> MonitoringRun:
        """``files`` logged as artifacts of a new run in ``<model>-monitoring``, the newest ``keep`` runs of
        ``series`` kept (ml_platform.monitoring.artifacts)."""
        return log_monitoring_run(
            self.registry(), run_name=run_name, files=files, metrics=metrics, tags=tags, series=series, keep=keep
        )

    def artifact_link(self, run: MonitoringRun, path: str) -> dg.MetadataValue:
        """Metadata for a logged file: the run's artifact view in the MLflow UI (an http(s) URL a browser
        opens), or without a UI the ``runs:/`` URI MLflow clients download it by."""
        if self.ui is None:
            return dg.MetadataValue.text(f"{run.artifact_uri(path)} (set ML_PLATFORM_MLFLOW_UI_URL to link it)")
        return dg.MetadataValue.url(artifact_url(self.ui, run.experiment_id, run.run_id, path))

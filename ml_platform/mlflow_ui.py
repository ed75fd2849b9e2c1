"""Links into the MLflow UI: a run, a registered model version, an artifact of a run.

Every link the platform shows (asset metadata, ``ml-platform lineage``) is built here from one base
address, :attr:`ml_platform.settings.Settings.mlflow_ui` (``ML_PLATFORM_MLFLOW_UI_URL``), so a link opens
in a browser wherever the UI is served: ``make mlflow-ui`` locally, an ingress in a cluster. The MLflow
UI is a single-page app; its pages live after ``#/`` (the routes of MLflow 3's UI bundle):

- a run: ``#/experiments/<experiment id>/runs/<run id>``;
- a file of a run, opened in the run's artifact view (Evidently's HTML rendered, a PNG shown):
  ``#/experiments/<experiment id>/runs/<run id>/artifacts/<path>``;
- a registered model version: ``#/models/<model name>/versions/<version>``.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

# The UI `make mlflow-ui` serves for the local profile's store.
LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"


def mlflow_ui_base(tracking_uri: str, profile: str = "local", configured: str = "") -> str | None:
    """The MLflow UI of a store: ``configured`` (``ML_PLATFORM_MLFLOW_UI_URL``) when given; else a tracking
    server's own address (it serves the UI; credentials left out); else the local UI (``make mlflow-ui``)
    for the local profile; else None: a production store reached directly (PostgreSQL) has no UI this
    process can know of, and a guess of 127.0.0.1 would open nothing on anyone's browser."""
    if configured.strip():
        return configured.strip().rstrip("/")
    parts = urlsplit(tracking_uri)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return LOCAL_MLFLOW_UI if profile == "local" else None


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The run's page."""
    return f"{base.rstrip('/')}/#/experiments/{quote(str(experiment_id), safe='')}/runs/{quote(run_id, safe='')}"


def artifact_url(base: str, experiment_id: str, run_id: str, path: str) -> str:
    """The run's artifact view with ``path`` (relative to the run's artifact root) selected and shown."""
    return f"{run_url(base, experiment_id, run_id)}/artifacts/{quote(path.strip('/'), safe='/')}"


def artifact_file_url(base: str, run_id: str, path: str) -> str:
    """The file itself as the MLflow server serves it (``/get-artifact``): what an ``<img>`` can show inline."""
    return f"{base.rstrip('/')}/get-artifact?path={quote(path.strip('/'), safe='')}&run_uuid={quote(run_id, safe='')}"


def model_version_url(base: str, model_name: str, version: int) -> str:
    """The registered model version's page (its run, source, tags and aliases)."""
    return f"{base.rstrip('/')}/#/models/{quote(model_name, safe='')}/versions/{int(version)}"

"""Monitoring outputs kept in MLflow, where a browser can open them.

A file on the monitoring step's disk (Evidently's HTML report, the dashboard PNG) cannot be linked: a
browser refuses ``file://`` links from a web page, and on Kubernetes the file sits on a volume nobody
outside the cluster reaches. So each monitoring materialization that draws one also logs it as an
artifact of an MLflow run of its own, in the experiment ``<model>-monitoring`` (kept apart from the
training runs the experiment of the model holds), and the asset links to the run's artifact view in the
MLflow UI (:mod:`ml_platform.mlflow_ui`). The run carries the figures it was drawn from as metrics and the
Dagster run as tags, so the monitoring history is also browsable in MLflow.

The run is finished only once every file is stored; a failure marks it FAILED (never a RUNNING run with
half its files), and the error goes to the caller.

The runs of one series (one asset's) are kept as the local files are: the newest ``keep``. An older run's
artifacts are deleted from the artifact store and the run is deleted, so an hourly monitor does not add a
drift report of several MB to the store every hour for ever.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ml_platform.registry import Registry

MONITORING_EXPERIMENT_SUFFIX = "-monitoring"
# The tag naming a run's series: the runs kept or pruned together (one per monitoring asset).
SERIES_TAG = "ml_platform.monitoring_series"


@dataclass(frozen=True)
class MonitoringRun:
    """An MLflow run holding one materialization's files (paths relative to the run's artifact root)."""

    experiment_id: str
    run_id: str
    artifacts: tuple[str, ...]
    pruned: int = 0  # older runs of the series deleted, with their artifacts
    prune_error: str | None = None  # why pruning stopped (the run itself is logged whatever it says)

    def artifact_uri(self, path: str) -> str:
        """Where MLflow clients find ``path`` (``runs:/<run id>/<path>``), for metadata without a UI."""
        return f"runs:/{self.run_id}/{path}"


def monitoring_experiment_name(model_name: str) -> str:
    return f"{model_name}{MONITORING_EXPERIMENT_SUFFIX}"


def monitoring_experiment(registry: Registry) -> str:
    """The id of ``<model>-monitoring``, created on first use with its artifacts under
    ``<artifact root>/monitoring``. Two steps creating it at once (drift_report and model_health run in
    parallel) both get the one that exists."""
    from mlflow.exceptions import MlflowException

    name = monitoring_experiment_name(registry.model_name)
    client = registry.client
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=f"{registry.artifact_root.rstrip('/')}/monitoring")
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def log_monitoring_run(
    registry: Registry,
    *,
    run_name: str,
    files: Mapping[str, Path],
    metrics: Mapping[str, float | None] | None = None,
    tags: Mapping[str, str] | None = None,
    series: str = "",
    keep: int | None = None,
) -> MonitoringRun:
    """One finished MLflow run in ``<model>-monitoring`` holding ``files`` (artifact name -> local file),
    the finite ``metrics`` and ``tags``. Raises what MLflow or the artifact store raised, the run then
    marked FAILED. With ``series`` (tagged :data:`SERIES_TAG`) and ``keep``, the runs of that series older
    than the newest ``keep`` are then deleted (:func:`prune_monitoring_runs`); a failure to prune is
    reported in the result, not raised: the new run is stored either way."""
    missing = [str(path) for path in files.values() if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"no file to log to MLflow: {', '.join(missing)}")
    for name in files:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"artifact name {name!r}: expected a plain file name")
    if keep is not None and (keep < 1 or not series):
        raise ValueError(f"keep={keep}: keeping runs needs a series and at least 1 run (the one logged now)")
    client = registry.client
    experiment_id = monitoring_experiment(registry)
    run_tags = {k: str(v) for k, v in (tags or {}).items()} | ({SERIES_TAG: series} if series else {})
    run = client.create_run(experiment_id, run_name=run_name, tags=run_tags)
    run_id = run.info.run_id
    try:
        finite = {key: float(value) for key, value in (metrics or {}).items() if _finite(value)}
        if finite:
            from mlflow.entities import Metric

            stamp = run.info.start_time
            client.log_batch(run_id, metrics=[Metric(key, value, stamp, 0) for key, value in finite.items()])
        with tempfile.TemporaryDirectory(prefix="ml-platform-monitoring-") as scratch:
            for name, path in files.items():
                source = Path(path)
                if source.name != name:  # the artifact is named for what it is, not for the local file's stamp
                    source = Path(shutil.copyfile(source, Path(scratch) / name))
                client.log_artifact(run_id, str(source))
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    logged = MonitoringRun(experiment_id, run_id, tuple(files))
    if keep is None:
        return logged
    try:
        pruned = prune_monitoring_runs(registry, experiment_id, series, keep)
    except Exception as error:  # the artifact store's or the tracking store's: the new run stands
        return replace(logged, prune_error=f"{type(error).__name__}: {error}")
    return replace(logged, pruned=pruned)


def prune_monitoring_runs(registry: Registry, experiment_id: str, series: str, keep: int) -> int:
    """Delete the runs of ``series`` in the monitoring experiment but the newest ``keep`` (by start time):
    each one's artifacts from the artifact store first, then the run. Returns how many were deleted."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if "'" in series or "`" in series:
        raise ValueError(f"series {series!r}: quotes are not allowed in a series name")
    client = registry.client
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SERIES_TAG}` = '{series}'",
        order_by=["attributes.start_time DESC"],
        max_results=keep + 1000,  # at most one run per materialization since the last prune, normally one
    )
    for old in runs[keep:]:
        get_artifact_repository(old.info.artifact_uri).delete_artifacts()
        client.delete_run(old.info.run_id)
    return max(0, len(runs) - keep)


def _finite(value: object) -> bool:
    try:
        return value is not None and not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False

"""Launching runs of the code location's jobs in this process on the local instance, and reading their results.

``dagster`` and the code location are imported when first needed, not with this module: the
``ml-platform`` entry point imports it for every command, and the Dagster-free ones should start fast.
"""

from __future__ import annotations

import warnings
from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg

QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

# The figures worth a line per materialized asset, and the labels some of them are printed under.
FIGURES = {
    "raw_transactions": ("dagster/row_count", "rows_in_run", "days", "fraud_rate"),
    "validated_transactions": ("dagster/row_count", "rows_in_run", "customers"),
    "customer_stats": ("dagster/row_count", "customers"),
    "feature_store": ("feature_view", "feature_service"),
    "online_features": ("customers",),
    "training_set": ("dagster/row_count", "rows_without_prior_history", "fraud_rate"),
    "trained_model": ("model_version", "device", "best_iteration", "train_seconds", "reused_existing_version"),
    "model_evaluation": ("challenger_version", "champion_version", "accuracy", "pr_auc", "roc_auc", "f1"),
    "champion_model": ("champion_version", "previous_version", "alias_moved"),
}
_LABELS = {"dagster/row_count": "rows", "rows_in_run": "rows"}


class CliError(Exception):
    """A problem with what the user asked for; printed without a traceback."""


def quiet_warnings() -> None:
    """Library deprecation and preview notices are for us, not for the user of the command."""
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    for module in ("dagster", "mlflow", "feast", "sqlalchemy", "pydantic"):
        warnings.filterwarnings("ignore", module=rf"{module}(\..*)?$")


def load_definitions() -> dg.Definitions:
    """The code location (``definitions.defs``), built from the environment's settings."""
    quiet_warnings()
    from definitions import defs

    return defs


def _partition_tags(start: date, end: date) -> dict[str, str]:
    """Tags of a single run over the daily partitions [start, end] (both inclusive)."""
    return {
        "dagster/asset_partition_range_start": start.isoformat(),
        "dagster/asset_partition_range_end": end.isoformat(),
    }


def launch(
    job_name: str,
    params: dict[str, Any] | None = None,
    *,
    start: date | None = None,
    end: date | None = None,
    tags: dict[str, str] | None = None,
    defs: dg.Definitions | None = None,
    ops_config: dict[str, Any] | None = None,
) -> dg.ExecuteInProcessResult:
    """Run a job of the code location in this process on the local instance; returns the result."""
    import dagster as dg

    defs = defs or load_definitions()
    job = defs.resolve_job_def(job_name)
    merged = {**(params or {}), **(ops_config or {})}
    run_config = {**QUIET_LOGGERS, "ops": {node: {"config": cfg} for node, cfg in merged.items()}}
    run_tags = dict(tags or {})
    if start is not None and end is not None:
        run_tags.update(_partition_tags(start, end))
    try:
        return job.execute_in_process(
            run_config=run_config, instance=dg.DagsterInstance.get(), tags=run_tags, raise_on_error=False
        )
    except dg.DagsterInvalidConfigError as error:
        problems = "\n".join(f"  - {e.message}" for e in error.errors)
        raise CliError(f"the parameters do not fit pipeline {job_name}:\n{problems}") from error


def launch_run_request(request: dg.RunRequest, defs: dg.Definitions | None = None) -> dg.ExecuteInProcessResult:
    """Run what a sensor asked for, as the daemon would launch it: the request's job with its run config
    (the ops' config) and its tags (why it was requested)."""
    ops = dict((request.run_config or {}).get("ops", {}))
    ops_config = {node: dict(entry.get("config", {})) for node, entry in ops.items()}
    return launch(request.job_name, tags=dict(request.tags), ops_config=ops_config, defs=defs)


def job_assets(job_name: str, defs: dg.Definitions | None = None) -> set[str]:
    """The assets a job materializes, as ``asset`` strings."""
    defs = defs or load_definitions()
    job = defs.resolve_job_def(job_name)
    return {key.to_user_string() for key in job.asset_layer.executable_asset_keys}


def failure_report(result: dg.ExecuteInProcessResult) -> str:
    """Why a run failed: one line per failed step and per failed check."""
    lines = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error
            message = error.message.strip() if error else "unknown error"
            lines.append(f"step {event.step_key} failed: {message}")
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                lines.append(
                    f"check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} failed: "
                    f"{evaluation.description}"
                )
    return "\n".join(lines) or "the run failed"


def summarize(result: dg.ExecuteInProcessResult) -> list[tuple[str, str]]:
    """One line per materialized asset with the figures that matter."""
    seen: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        name = materialization.asset_key.to_user_string()
        merged = seen.setdefault(name, {})
        for key, value in materialization.metadata.items():
            merged[key] = getattr(value, "value", value)
    lines = []
    for name, metadata in seen.items():
        parts = []
        for key in FIGURES.get(name, ()):
            if key in metadata:
                value = metadata[key]
                parts.append(f"{_LABELS.get(key, key)}={_shown(value)}")
        lines.append((name, ", ".join(parts)))
    return lines


def deployment_outcome(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """What a deploy or rollback run did to ``model_deployment``: ``environment``, ``version``, ``endpoint``,
    ``pinned`` (None for what the run did not get to record), the smoke verdict ``smoke_passed`` (None when
    the check did not run) with its ``smoke`` description, and ``success`` and ``run_id``."""
    outcome: dict[str, Any] = {"success": result.success, "run_id": result.run_id}
    outcome.update(environment=None, version=None, endpoint=None, pinned=None, smoke_passed=None, smoke="")
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        if materialization.asset_key.to_user_string() != "model_deployment":
            continue
        metadata = {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}
        outcome.update(
            environment=metadata.get("environment"),
            version=metadata.get("model_version"),
            endpoint=metadata.get("endpoint"),
            pinned=metadata.get("pinned"),
        )
        if "smoke_passed" in metadata:  # a rollback records its verdict on the materialization
            outcome.update(smoke_passed=metadata["smoke_passed"], smoke=metadata.get("smoke", ""))
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION" and event.event_specific_data.check_name == "smoke":
            evaluation = event.event_specific_data
            outcome.update(smoke_passed=evaluation.passed, smoke=evaluation.description or "")
    return outcome


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)

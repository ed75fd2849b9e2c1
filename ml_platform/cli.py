"""The ``ml-platform`` command.

Like ``definitions.py`` this is an entry point, the one module of the core allowed to reach the Dagster
layer: it launches runs of the code location's jobs on the local Dagster instance (so they show up in
the UI next to scheduled and sensor runs) and prints what they produced.
"""

from __future__ import annotations

import os
import sys
import warnings
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from ml_platform.settings import Settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="ml_platform: the lifecycle of a tabular model as one Dagster asset graph.",
)

PIPELINES = {
    "training": "retrain",  # training_set -> trained_model -> model_evaluation -> champion_model
    "features": "refresh_features",  # customer_stats -> feature_store -> online_features
    "ingest": "ingest",  # raw_transactions -> validated_transactions, per day
    "all": "bootstrap",  # the whole graph over a range of days
}
PARTITIONED_PIPELINES = {"ingest", "all"}
FEATURE_VIEWS = ("customer_stats",)
QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class CliError(Exception):
    """A problem with what the user asked for; printed without a traceback."""


def _settings() -> Settings:
    settings = Settings.from_env()
    settings.apply_environment()
    settings.prepare()
    return settings


def _quiet_warnings() -> None:
    """Library deprecation and preview notices are for us, not for the user of the command."""
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    for module in ("dagster", "mlflow", "feast", "sqlalchemy", "pydantic"):
        warnings.filterwarnings("ignore", module=rf"{module}(\..*)?$")


def _definitions():
    _quiet_warnings()
    from definitions import defs

    return defs


def load_params(path: Path | None, job_assets: set[str]) -> dict[str, Any]:
    """Read a params file: top-level keys are assets of the pipeline, values their config."""
    if path is None:
        return {}
    if not path.exists():
        raise CliError(f"params file {path} does not exist")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise CliError(f"params file {path} is not valid YAML: {error}") from error
    if not isinstance(params, dict):
        raise CliError(f"params file {path} must map asset names to their config, got {type(params).__name__}")
    unknown = sorted(set(params) - job_assets)
    if unknown:
        raise CliError(
            f"params file {path} names {', '.join(unknown)}, not assets of this pipeline; "
            f"expected some of: {', '.join(sorted(job_assets))}"
        )
    for asset, config in params.items():
        if not isinstance(config, dict):
            raise CliError(f"params file {path}: '{asset}' must be a mapping of config fields")
    return params


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
    defs=None,
    ops_config: dict[str, Any] | None = None,
):
    """Run a job of the code location in this process on the local instance; returns the result."""
    import dagster as dg

    defs = defs or _definitions()
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


def job_assets(job_name: str, defs=None) -> set[str]:
    defs = defs or _definitions()
    job = defs.resolve_job_def(job_name)
    return {key.to_user_string() for key in job.asset_layer.executable_asset_keys}


def failure_report(result) -> str:
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


def summarize(result) -> list[tuple[str, str]]:
    """One line per materialized asset with the figures that matter."""
    figures = {
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
        for key in figures.get(name, ()):
            if key in metadata:
                value = metadata[key]
                parts.append(f"{_LABELS.get(key, key)}={_shown(value)}")
        lines.append((name, ", ".join(parts)))
    return lines


_LABELS = {"dagster/row_count": "rows", "rows_in_run": "rows"}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _print_result(result, title: str) -> None:
    if not result.success:
        typer.secho(f"{title}: FAILED (run {result.run_id})", fg="red", err=True)
        typer.echo(failure_report(result), err=True)
        raise typer.Exit(1)
    typer.secho(f"{title}: succeeded (run {result.run_id})", fg="green")
    width = max((len(name) for name, _ in summarize(result)), default=0)
    for name, figures in summarize(result):
        typer.echo(f"  {name:<{width}}  {figures}")


def _run_cli(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except CliError as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from error


def _last_complete_days(days: int) -> tuple[date, date]:
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    return yesterday - timedelta(days=days - 1), yesterday


@app.command()
def init() -> None:
    """Prepare the state directory: Dagster home (telemetry off), MLflow store, Feast repo folders."""
    settings = _settings()
    from ml_platform.registry import Registry

    registry = Registry(
        settings.tracking_uri, settings.model_name, settings.experiment_name, settings.mlflow_artifact_root
    )
    registry.ensure_experiment()  # creates the MLflow tables once, before any parallel step could race
    typer.echo(f"state directory: {settings.home}")
    typer.echo(f"  dagster home:  {settings.dagster_home}")
    typer.echo(f"  mlflow store:  {settings.tracking_uri}")
    typer.echo(f"  feast repo:    {settings.feast_dir}")


@app.command()
def demo(
    days: Annotated[int, typer.Option(min=3, help="How many complete days of transactions (ending yesterday).")] = 28,
    transactions_per_day: Annotated[int, typer.Option(min=10)] = 2_000,
    customers: Annotated[int, typer.Option(min=10)] = 5_000,
) -> None:
    """Materialize the whole graph headless over the last DAYS days and print what it produced."""
    _settings()
    start, end = _last_complete_days(days)
    params = {"raw_transactions": {"transactions_per_day": transactions_per_day, "n_customers": customers}}
    typer.echo(f"materializing the whole graph over {start} .. {end} ({days} daily partitions) ...")
    result = _run_cli(launch, "bootstrap", params, start=start, end=end)
    _print_result(result, "demo")
    evaluation = result.output_for_node("model_evaluation")
    challenger = evaluation["metrics"]["challenger"]
    typer.echo(
        f"\n{evaluation['model_name']} v{evaluation['challenger_version']} on {evaluation['test_rows']:,} test rows: "
        + ", ".join(f"{m}={challenger[m]:.4f}" for m in ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc"))
    )
    typer.echo("open the UI with `make dev` (http://127.0.0.1:3000) to see every materialization and check")


@app.command()
def run(
    pipeline: Annotated[str, typer.Option(help=f"One of: {', '.join(PIPELINES)}.")] = "training",
    params: Annotated[Path | None, typer.Option(help="YAML: asset name -> that asset's config.")] = None,
    start: Annotated[str | None, typer.Option(help="First day (YYYY-MM-DD) for ingest/all.")] = None,
    end: Annotated[str | None, typer.Option(help="Last day, inclusive (YYYY-MM-DD) for ingest/all.")] = None,
) -> None:
    """Run a pipeline with parameters from a file (the original design's run_pipeline script)."""
    _settings()
    if pipeline not in PIPELINES:
        typer.secho(f"error: unknown pipeline {pipeline!r}; expected one of {', '.join(PIPELINES)}", fg="red", err=True)
        raise typer.Exit(2)
    job_name = PIPELINES[pipeline]
    first = last = None
    if pipeline in PARTITIONED_PIPELINES:
        first, last = _run_cli(_parse_range, start, end)
    elif start or end:
        typer.secho(f"error: --start/--end apply to {' and '.join(PARTITIONED_PIPELINES)} only", fg="red", err=True)
        raise typer.Exit(2)
    defs = _definitions()
    run_params = _run_cli(load_params, params, job_assets(job_name, defs))
    result = _run_cli(launch, job_name, run_params, start=first, end=last, defs=defs)
    _print_result(result, f"pipeline {pipeline}")


def _parse_range(start: str | None, end: str | None) -> tuple[date, date]:
    if not start and not end:
        return _last_complete_days(1)
    try:
        first = date.fromisoformat(start or end)
        last = date.fromisoformat(end or start)
    except ValueError as error:
        raise CliError(f"--start/--end must be dates as YYYY-MM-DD: {error}") from error
    if last < first:
        raise CliError(f"--end {last} is before --start {first}")
    if last >= datetime.now(UTC).date():
        raise CliError(f"--end {last} is not a complete day yet; the last complete day is yesterday")
    return first, last


@app.command("materialize-features")
def materialize_features(
    feature_view: Annotated[str, typer.Option(help="The feature view to rebuild and load online.")] = "customer_stats",
) -> None:
    """Rebuild a feature view from every stored day and load it into the online store."""
    _settings()
    if feature_view not in FEATURE_VIEWS:
        typer.secho(
            f"error: unknown feature view {feature_view!r}; expected one of {', '.join(FEATURE_VIEWS)}",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    result = _run_cli(launch, "refresh_features")
    _print_result(result, f"feature view {feature_view}")


@app.command()
def status() -> None:
    """Where the registry stands: the versions behind champion, challenger and previous."""
    settings = _settings()
    _quiet_warnings()
    from ml_platform.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry

    registry = Registry(
        settings.tracking_uri, settings.model_name, settings.experiment_name, settings.mlflow_artifact_root
    )
    aliases = registry.aliases()
    if not aliases:
        typer.echo(f"{settings.model_name}: no registered model yet (run `make demo`)")
        raise typer.Exit(0)
    typer.echo(f"{settings.model_name} ({settings.tracking_uri})")
    for alias in (CHAMPION, CHALLENGER, PREVIOUS):
        version = aliases.get(alias)
        typer.echo(f"  {alias:<10} {'v' + str(version) if version is not None else '-'}")


ENVIRONMENTS = ("local", "staging", "prod")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 unless you mean to expose it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
) -> None:
    """Run the model server in the foreground (Ctrl-C drains and flushes the prediction log)."""
    _settings()
    os.execv(sys.executable, [sys.executable, "-m", "ml_platform.serving", "--host", host, "--port", str(port)])


@app.command()
def deploy(
    model: Annotated[str, typer.Option(help="Registered model name.")] = "",
    version: Annotated[int | None, typer.Option(min=1, help="Version to serve; default: the champion.")] = None,
    env: Annotated[str, typer.Option(help=f"One of: {', '.join(ENVIRONMENTS)}.")] = "local",
) -> None:
    """Deploy a model version to an environment (the original design's deploy script).

    A version other than the champion becomes the champion first (the old one becomes 'previous'), so
    a rollback can undo it. Local: the managed server process, then the smoke check. staging/prod: the
    Kubernetes overlay applied with the version pinned, waiting for the rollout.
    """
    settings = _settings()
    if env not in ENVIRONMENTS:
        _fail(f"unknown environment {env!r}; expected one of {', '.join(ENVIRONMENTS)}")
    if model and model != settings.model_name:
        _fail(f"this platform serves model {settings.model_name!r} (ML_PLATFORM_MODEL_NAME), not {model!r}")
    _quiet_warnings()
    from mlflow.exceptions import MlflowException

    from ml_platform.registry import CHAMPION, Registry

    registry = Registry(
        settings.tracking_uri, settings.model_name, settings.experiment_name, settings.mlflow_artifact_root
    )
    if version is not None and version != registry.version_for_alias(CHAMPION):
        try:
            registry.pin(version, promoted_at=datetime.now(UTC).isoformat())
        except MlflowException as error:  # the version does not exist
            _fail(f"{settings.model_name} v{version} cannot be deployed: {error}")
        typer.echo(f"{settings.model_name}: champion is now v{version}")
    if env == "local":
        result = _run_cli(launch, "deploy")
        _print_result(result, f"deploy to {env}")
        return
    _deploy_kubernetes(settings, registry, env)


def _deploy_kubernetes(settings: Settings, registry, env: str) -> None:
    from ml_platform.deploy.kubernetes import KubernetesTarget
    from ml_platform.deploy.local import DeploymentError
    from ml_platform.registry import CHAMPION

    overlay = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "overlays" / env
    version = registry.version_for_alias(CHAMPION)
    if version is None:
        _fail(f"{settings.model_name} has no champion to deploy")
    try:
        statuses = KubernetesTarget().deploy(overlay, version, alias=CHAMPION)
    except DeploymentError as error:
        _fail(f"deploy to {env}: {error}")
    typer.secho(f"deploy to {env}: v{version} rolled out", fg="green")
    for status in statuses:
        typer.echo(f"  {status.namespace}/{status.name}: {status.message}")


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Recorded on the version taken out of service.")] = "manual rollback",
) -> None:
    """Put the previous champion back, redeploy it and verify what is serving."""
    _settings()
    result = _run_cli(launch, "rollback", ops_config={"roll_back_champion": {"reason": reason}})
    _print_result(result, "rollback")
    outcome = result.output_for_node("redeploy_and_verify")
    typer.echo(f"  serving v{outcome['to_version']} (was v{outcome['from_version']}) at {outcome['endpoint']}")


@app.command("stop-server")
def stop_server() -> None:
    """Stop the local model server started by `deploy` (it drains and flushes its prediction log)."""
    settings = _settings()
    from ml_platform.deploy.local import LocalProcessTarget

    stopped = LocalProcessTarget(settings.home / "serving", port=settings.serving_port).stop()
    typer.echo("model server stopped" if stopped else "no model server was running")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

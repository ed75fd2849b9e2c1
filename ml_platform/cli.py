"""The ``ml-platform`` command.

Like ``definitions.py`` this is an entry point, the one module of the core allowed to reach the Dagster
layer: it launches runs of the code location's jobs on the local Dagster instance (so they show up in
the UI next to scheduled and sensor runs) and prints what they produced.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, fields
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


def launch_run_request(request, defs=None):
    """Run what a sensor asked for, as the daemon would launch it: the request's job with its run config
    (the ops' config) and its tags (why it was requested)."""
    ops = dict((request.run_config or {}).get("ops", {}))
    ops_config = {node: dict(entry.get("config", {})) for node, entry in ops.items()}
    return launch(request.job_name, tags=dict(request.tags), ops_config=ops_config, defs=defs)


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
    typer.echo(f"  mlflow store:  {settings.public_tracking_uri}")
    typer.echo(f"  feast repo:    {settings.feast_dir}")


@app.command()
def demo(
    days: Annotated[int, typer.Option(min=3, help="How many complete days of transactions (ending yesterday).")] = 28,
    transactions_per_day: Annotated[int, typer.Option(min=10)] = 2_000,
    customers: Annotated[int, typer.Option(min=10)] = 5_000,
    loop: Annotated[
        bool,
        typer.Option(
            "--loop/--no-loop",
            help="Then close the loop: serve the champion, send drifted traffic, let the sensors retrain and "
            "deploy, turn the labels bad, let them roll back.",
        ),
    ] = True,
    drift: Annotated[float, typer.Option(min=0.0, help="The drift knob of the loop's new days.")] = 0.3,
    drift_days: Annotated[int, typer.Option(min=1, help="How many of the DAYS are the loop's drifted days.")] = 4,
    keep_serving: Annotated[bool, typer.Option(help="Leave the model server running after the loop.")] = False,
) -> None:
    """Materialize the whole graph headless over the last DAYS days and print what it produced; with
    --loop (the default) the last DRIFT_DAYS of them arrive later, drifted, and the platform reacts."""
    settings = _settings()
    if loop and drift_days >= days:
        _fail(f"--drift-days {drift_days} must be fewer than --days {days} (the rest is the clean history)")
    start, end = _last_complete_days(days)
    history_end = end - timedelta(days=drift_days) if loop else end
    data = {"transactions_per_day": transactions_per_day, "n_customers": customers}
    typer.echo(
        f"materializing the whole graph over {start} .. {history_end} ({(history_end - start).days + 1} daily "
        "partitions) ..."
    )
    result = _run_cli(launch, "bootstrap", {"raw_transactions": data}, start=start, end=history_end)
    if loop and not result.success and _only_the_gates_failed(result, settings):
        # A state directory used before: the new model did not beat the champion of the last demo, which
        # stays (as a gate should have it); the loop goes on with that champion.
        typer.secho(f"demo: the new model was not promoted (run {result.run_id}):", fg="yellow")
        typer.echo(failure_report(result))
    else:
        _print_result(result, "demo")
    evaluation = result.output_for_node("model_evaluation")
    challenger = evaluation["metrics"]["challenger"]
    typer.echo(
        f"\n{evaluation['model_name']} v{evaluation['challenger_version']} on {evaluation['test_rows']:,} test rows: "
        + ", ".join(f"{m}={challenger[m]:.4f}" for m in ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc"))
    )
    if loop:
        plan = LoopPlan.for_history(
            data,
            history_days=(history_end - start).days + 1,
            drift_start=history_end + timedelta(days=1),
            drift_days=drift_days,
            drift=drift,
        )
        closed = ClosedLoop(settings, _definitions(), echo=typer.echo)
        try:
            report = closed.run_scenario(plan)
        except LoopError as error:
            typer.secho(f"the loop did not close: {error}", fg="red", err=True)
            raise typer.Exit(1) from error
        finally:
            if not keep_serving:
                closed.stop_server()
        typer.echo("")
        typer.echo(report.summary())
        if not keep_serving:
            typer.echo(
                "the model server was stopped (--keep-serving leaves it running; `ml-platform deploy` restarts it)"
            )
    typer.echo("open the UI with `make dev` (http://127.0.0.1:3000) to see every materialization and check")


def _only_the_gates_failed(result, settings: Settings) -> bool:
    """The run failed at the promotion gates alone, and a champion from before is there to go on with."""
    from ml_platform.registry import CHAMPION, Registry

    failed_steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"}
    failed_checks = {
        e.event_specific_data.check_name
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed
    }
    registry = Registry(
        settings.tracking_uri, settings.model_name, settings.experiment_name, settings.mlflow_artifact_root
    )
    return (
        failed_steps == {"model_evaluation"}
        and bool(failed_checks)
        and failed_checks <= {"quality_floor", "no_regression"}
        and registry.version_for_alias(CHAMPION) is not None
    )


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
def status(
    window: Annotated[str, typer.Option(help='Trailing window of traffic to judge: "24h", "7d", "90m".')] = "24h",
) -> None:
    """Where the registry stands (champion, challenger, previous) and the champion's health: status,
    uptime, latency, errors, live accuracy against its baseline, drift and the alerts firing."""
    settings = _settings()
    _quiet_warnings()
    from ml_platform.monitoring.dashboard import render_terminal
    from ml_platform.monitoring.health import collect_model_health
    from ml_platform.monitoring.window import Window
    from ml_platform.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry

    try:
        span = Window.parse(window)
    except ValueError as error:
        _fail(str(error))
    registry = Registry(
        settings.tracking_uri, settings.model_name, settings.experiment_name, settings.mlflow_artifact_root
    )
    aliases = registry.aliases()
    if not aliases:
        typer.echo(f"{settings.model_name}: no registered model yet (run `make demo`)")
        raise typer.Exit(0)
    typer.echo(f"{settings.model_name} ({settings.public_tracking_uri})")
    for alias in (CHAMPION, CHALLENGER, PREVIOUS):
        version = aliases.get(alias)
        typer.echo(f"  {alias:<10} {'v' + str(version) if version is not None else '-'}")
    defs = _definitions()
    monitoring, deployment = defs.resources["monitoring"], defs.resources["deployment"]
    try:
        rules, drift_config = monitoring.rules(), monitoring.drift_config()
    except ValueError as error:
        _fail(f"monitoring resource: {error}")
    health = collect_model_health(
        registry,
        monitoring.paths(),
        span,
        endpoint=deployment.endpoint(),
        token=deployment.token(),
        training_set_path=defs.resources["state"].table_path("training_set"),
        drift_config=drift_config,
        rules=rules,
    )
    typer.echo("")
    typer.echo(render_terminal(health), nl=False)


@app.command()
def drift(
    model: Annotated[str, typer.Option(help="Registered model name (default: the platform's model).")] = "",
    window: Annotated[str, typer.Option(help='Trailing window of logged traffic: "7d", "24h", "90m".')] = "7d",
    method: Annotated[str, typer.Option(help="wasserstein (normed distance) or ks (Kolmogorov-Smirnov p-value).")] = (
        "wasserstein"
    ),
    threshold: Annotated[
        float | None,
        typer.Option(help="Per-feature threshold; default: the method's (distance >= 0.1, p-value <= 0.05)."),
    ] = None,
    max_drift_score: Annotated[
        float | None,
        typer.Option(help="Exit 1 when the share of drifted features is over this (default: the alert rule, 0.15)."),
    ] = None,
) -> None:
    """The drift analyzer: each feature of the logged traffic against the training data, and the dataset's
    drift score. Exits 1 when the score is over the threshold, 0 when not, 2 for bad input."""
    settings = _settings()
    from tabulate import tabulate

    from ml_platform.features.engineering import CUMULATIVE_FEATURES, DRIFT_FEATURES
    from ml_platform.monitoring.alerts import DEFAULT_RULES
    from ml_platform.monitoring.drift import METHOD_TITLES, DriftConfig, compute_drift
    from ml_platform.monitoring.health import MonitoringPaths, reference_features, rules_with_thresholds
    from ml_platform.monitoring.window import Window, read_predictions
    from ml_platform.storage import TABLE_SUFFIX, asset_path

    if model and model != settings.model_name:
        _fail(f"this platform monitors model {settings.model_name!r} (ML_PLATFORM_MODEL_NAME), not {model!r}")
    try:
        span = Window.parse(window)
        config = DriftConfig(method=method, feature_threshold=threshold)
        rule = DEFAULT_RULES["drift_score"]
        if max_drift_score is not None:
            rule = rules_with_thresholds({"drift_score": max_drift_score})["drift_score"]
    except ValueError as error:
        _fail(str(error))
    paths = MonitoringPaths.from_settings(settings)
    training_set = asset_path(settings.data_dir, ["training_set"], None, TABLE_SUFFIX)
    if not training_set.exists():
        _fail(f"no training set at {training_set} to compare with; run `make demo` (or the training pipeline) first")
    current = read_predictions(paths.log_dir, span)
    if current.empty:
        _fail(f"no predictions logged over {span.label} under {paths.log_dir}; send traffic to the model server first")
    try:
        report = compute_drift(reference_features(training_set), current, DRIFT_FEATURES, config)
    except ValueError as error:
        _fail(str(error))
    typer.echo(
        f"{settings.model_name}: drift of {report.current_rows:,} predictions over {span.label} against "
        f"{report.reference_rows:,} training rows ({METHOD_TITLES.get(config.method, config.method)}, "
        f"feature threshold {config.threshold:g}; not scored: {', '.join(CUMULATIVE_FEATURES)}, which grow with "
        "each customer's history)\n"
    )
    rows = [[f.feature, f.score, f.threshold, "DRIFT" if f.drifted else "ok"] for f in report.features]
    typer.echo(tabulate(rows, headers=["feature", "score", "threshold", "drifted"], floatfmt=".4g"))
    drifted = rule.fires(report.drift_score)
    typer.echo(
        f"\ndataset drift score {report.drift_score:.3f} ({len(report.drifted_features)} of {len(report.features)} "
        f"features drifted); the rule fires above {rule.threshold:g}: " + ("DRIFT" if drifted else "no drift")
    )
    raise typer.Exit(1 if drifted else 0)


ENVIRONMENTS = ("local", "staging", "prod")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 unless you mean to expose it.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port to bind (default: ML_PLATFORM_SERVING_PORT, else 8080).")
    ] = None,
) -> None:
    """Run the model server in the foreground (Ctrl-C drains and flushes the prediction log).

    Its bearer tokens come from the variables the settings name (``serving_token_env``,
    ``serving_admin_token_env``), as for a server ``deploy`` starts."""
    settings = _settings()
    from ml_platform.deploy.local import LocalProcessTarget

    env = LocalProcessTarget(
        settings.home / "serving",
        token=os.environ.get(settings.serving_token_env),
        admin_token=os.environ.get(settings.serving_admin_token_env),
    ).server_environment()
    port = settings.serving_port if port is None else port
    command = [sys.executable, "-m", "ml_platform.serving", "--host", host, "--port", str(port)]
    os.execve(sys.executable, command, env)


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


# ---- the closed loop (`make demo`, tests/e2e) ---------------------------------------------------------------
# What the Dagster daemon does under `make dev`, done step by step in this process so it can be shown and
# timed: sensors are evaluated tick by tick (each keeps its cursor), and what they request is launched with
# the request's own config and tags, so the runs look in the UI exactly as the daemon's would.


class LoopError(RuntimeError):
    """A step of the closed loop did not happen as it should; the message says what was seen instead."""


@dataclass(frozen=True)
class LoopPlan:
    """What the loop sends.

    Leg 1: ``drift_days`` new days of the synthetic source (``data``: its seed, customers, ...) with the
    drift knob at ``drift``, ``drift_rows_per_day`` transactions each, sent as live traffic; their labels
    arrive ``late_label_delay`` later (after the monitoring run: fraud is known late). The days are then
    ingested as the nightly batch would, so the retraining the drift check triggers learns from them.
    Leg 2: one more drifted day (``bad_day``) answered by the retrained model, whose labels come back
    after ``bad_label_delay`` with ``flip_fraction`` of them inverted: the accuracy drop.
    """

    data: dict[str, Any]
    drift_start: date
    drift_days: int
    drift: float
    drift_rows_per_day: int
    flip_fraction: float = 0.3
    late_label_delay: timedelta = timedelta(hours=1)
    bad_label_delay: timedelta = timedelta(seconds=1)

    @classmethod
    def for_history(
        cls,
        data: dict[str, Any],
        *,
        history_days: int,
        drift_start: date,
        drift_days: int,
        drift: float,
        share: float = 0.6,
        **options: Any,
    ) -> LoopPlan:
        """A plan whose drifted days hold ``share`` as many transactions as the clean history: enough
        that the time split puts drifted rows in the retraining's train split, so the new model learns
        the new world (with a handful of drifted rows it is a coin toss whether it beats the champion)."""
        from ml_platform.data.synthetic import SyntheticConfig

        per_day = int(data.get("transactions_per_day", SyntheticConfig().transactions_per_day))
        rows = math.ceil(share * history_days * per_day / drift_days)
        return cls(dict(data), drift_start, drift_days, drift, rows, **options)

    @property
    def drift_end(self) -> date:
        return self.drift_start + timedelta(days=self.drift_days - 1)

    @property
    def bad_day(self) -> date:
        return self.drift_end + timedelta(days=1)

    def drifted_data(self) -> dict[str, Any]:
        """raw_transactions config of the drifted days."""
        return {**self.data, "drift": self.drift, "transactions_per_day": self.drift_rows_per_day}

    def transactions(self, first: date, last: date, rows_per_day: int):
        """The synthetic source's drifted transactions of ``first`` .. ``last`` (the same rows ingestion makes)."""
        from ml_platform.data.synthetic import SyntheticConfig, generate_transactions

        known = {f.name for f in fields(SyntheticConfig)}
        values = {k: v for k, v in self.data.items() if k in known}
        config = SyntheticConfig(**{**values, "drift": self.drift, "transactions_per_day": rows_per_day})
        return generate_transactions(config, first, last + timedelta(days=1))


@dataclass(frozen=True)
class LoopLeg:
    """One reaction: a failed check, the sensor's request, the run, the version serving afterwards."""

    check: str  # asset:check that failed
    check_run_id: str  # the run that evaluated it (a monitoring run)
    value: float | None
    threshold: float | None
    sensor: str
    job: str
    run_id: str
    run_key: str
    tags: dict[str, str]
    from_version: int
    to_version: int
    sensor_seconds: float  # failed evaluation -> run requested
    run_seconds: float  # run requested -> run finished (the new version is serving when it finishes)
    total_seconds: float  # failed evaluation -> the new version answering /predict

    def line(self) -> str:
        return (
            f"{self.check} failed -> {self.sensor} requested {self.job} -> v{self.to_version} serving "
            f"(was v{self.from_version}): {self.total_seconds:.1f} s from the failed check "
            f"(sensor {self.sensor_seconds:.1f} s, run {self.run_seconds:.1f} s)"
        )


@dataclass
class LoopReport:
    champion: int
    endpoint: str
    legs: list[LoopLeg] = field(default_factory=list)
    checks: list[dict[str, bool]] = field(default_factory=list)  # each monitoring run's check results
    traffic: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # sensor -> why it did not request a run
    alerts: list[str] = field(default_factory=list)  # checks alerted, as asset:check
    alert_summary: str = ""  # what the alert sensor's tick said (alerts delivered / recorded undelivered)
    alerts_path: str = ""

    def summary(self) -> str:
        lines = [f"closed loop at {self.endpoint} (champion v{self.champion} at the start):"]
        for number, leg in enumerate(self.legs, 1):
            lines.append(f"  leg {number}: {leg.line()}")
            lines.append(f"         run {leg.run_id}, reason: {leg.tags.get('ml_platform/reason', '')}")
        for sensor, message in self.skipped.items():
            lines.append(f"  {sensor} declined: {message}")
        lines.append(f"  alerts: {self.alert_summary} for {', '.join(self.alerts)} -> {self.alerts_path}")
        return "\n".join(lines)


class ClosedLoop:
    """The loop's steps against one code location (``defs``) and its local instance; see :class:`LoopPlan`."""

    SENSORS = ("retrain_on_drift", "rollback_on_failure", "alert_on_failed_checks")

    def __init__(self, settings: Settings, defs, *, echo=None) -> None:
        import dagster as dg

        self.settings = settings
        self.defs = defs
        self.echo = echo or (lambda text: None)
        self.instance = dg.DagsterInstance.get()
        self.registry = defs.resources["mlflow"].registry()
        deployment = defs.resources["deployment"]
        self.endpoint, self.token = deployment.endpoint(), deployment.token()
        self.paths = defs.resources["monitoring"].paths()
        self.alerts_path = str(defs.resources["alerts"].jsonl_path)
        # Sensors start from now: evaluations older than this loop were someone else's to act on.
        self.cursors: dict[str, str] = {name: self._cursor_at_now(name) for name in self.SENSORS}

    # ---- the steps ---------------------------------------------------------------------------------------
    def run(self, job_name: str, params: dict | None = None, **options: Any):
        result = launch(job_name, params, defs=self.defs, **options)
        if not result.success:
            raise LoopError(f"the {job_name} run {result.run_id} failed:\n{failure_report(result)}")
        return result

    def serve(self) -> int:
        """Deploy the champion; returns the version answering."""
        self.run("deploy")
        return self.wait_for_version(self.registry.version_for_alias("champion"))

    def served_version(self) -> int | None:
        from ml_platform.deploy.local import http_json

        try:
            status, answer = http_json(
                f"{self.endpoint}/predict", body={"features": [50.0] * 9}, token=self.token, timeout=5.0
            )
        except OSError:
            return None
        return answer.get("model_version") if status == 200 else None

    def wait_for_version(self, version: int | None, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.served_version()
            if seen == version:
                return seen
            time.sleep(0.2)
        raise LoopError(f"{self.endpoint} still answers with v{seen} after {timeout:.0f} s, not v{version}")

    def send(self, transactions, *, label_delay: timedelta, flip_fraction: float = 0.0, seed: int = 0):
        """The transactions as live traffic, then their labels (due ``label_delay`` after sending); returns
        once the server has logged every answer (its log is written in batches)."""
        from ml_platform.monitoring.labels import delayed_labels
        from ml_platform.monitoring.traffic import send_traffic

        sent_at = datetime.now(UTC)
        traffic = send_traffic(self.endpoint, transactions, token=self.token)
        if traffic.failed:
            raise LoopError(f"{traffic.failed} of {traffic.rows} transactions got no answer: {traffic.errors}")
        labels = delayed_labels(
            transactions, sent_at=sent_at, delay=label_delay, flip_fraction=flip_fraction, seed=seed
        )
        self.paths.labels().write(labels)
        self._wait_for_log(set(transactions["transaction_id"].astype(str)), since=sent_at)
        due = sent_at + label_delay
        if due - datetime.now(UTC) < timedelta(seconds=10):  # a short delay: wait, so the labels are known
            time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
        return traffic

    def monitor(self) -> dict[str, Any]:
        """A monitoring run; returns each check's evaluation by name."""
        result = self.run("monitor")
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        return evaluations

    def tick(self, sensor_name: str):
        """One evaluation of a sensor, as the daemon's tick (its cursor carried to the next)."""
        import dagster as dg

        sensor = self.defs.resolve_sensor_def(sensor_name)
        context = dg.build_sensor_context(
            instance=self.instance,
            definitions=self.defs,
            resources=self.defs.resources,
            cursor=self.cursors.get(sensor_name),
            sensor_name=sensor_name,
        )
        result = sensor.evaluate_tick(context)
        if result.cursor is not None:
            self.cursors[sensor_name] = result.cursor
        return result

    def react(self, sensor_name: str) -> LoopLeg:
        """Tick ``sensor_name``, which must request one run; launch it; wait for the new version to answer."""
        before = self.served_version()
        result = self.tick(sensor_name)
        if len(result.run_requests) != 1:
            raise LoopError(f"{sensor_name} requested {len(result.run_requests)} runs: {result.skip_message}")
        requested_at = time.time()
        request = result.run_requests[0]
        record = self._trigger_record(sensor_name, request)
        run = launch_run_request(request, self.defs)
        finished_at = time.time()
        if not run.success:
            raise LoopError(f"the {request.job_name} run {run.run_id} failed:\n{failure_report(run)}")
        expected = self.registry.version_for_alias("champion")
        served = self.wait_for_version(expected)
        serving_at = time.time()
        if served == before:
            raise LoopError(f"{request.job_name} finished but v{before} still answers")
        failed_at = record.event.timestamp
        metadata = {k: getattr(v, "value", v) for k, v in record.evaluation.metadata.items()}
        return LoopLeg(
            check=record.key.to_user_string(),
            check_run_id=record.run_id,
            value=metadata.get("value"),
            threshold=metadata.get("threshold"),
            sensor=sensor_name,
            job=request.job_name,
            run_id=run.run_id,
            run_key=request.run_key,
            tags={k: v for k, v in request.tags.items() if k.startswith("ml_platform/")},
            from_version=before,
            to_version=served,
            sensor_seconds=requested_at - failed_at,
            run_seconds=finished_at - requested_at,
            total_seconds=serving_at - failed_at,
        )

    def stop_server(self) -> bool:
        from ml_platform.deploy.local import LocalProcessTarget

        deployment = self.defs.resources["deployment"]
        if not hasattr(deployment, "state_dir"):
            return False  # not a local process: nothing of ours to stop
        return LocalProcessTarget(Path(deployment.state_dir), host=deployment.host, port=deployment.port).stop()

    # ---- the scenario ------------------------------------------------------------------------------------
    def run_scenario(self, plan: LoopPlan) -> LoopReport:
        """Drift -> retrain -> serve the new model; labels turn bad -> roll back -> serve the old one."""
        champion = self.serve()
        report = LoopReport(champion=champion, endpoint=self.endpoint, alerts_path=self.alerts_path)
        self.echo(f"\nclosing the loop: v{champion} serving at {self.endpoint}")

        drifted = plan.transactions(plan.drift_start, plan.drift_end, plan.drift_rows_per_day)
        traffic = self.send(drifted, label_delay=plan.late_label_delay)
        report.traffic.append({"leg": 1, **traffic.to_dict()})
        self.echo(
            f"  {traffic.rows:,} transactions of {plan.drift_start} .. {plan.drift_end} with drift {plan.drift} "
            f"answered by {_versions(traffic.model_versions)} in {traffic.seconds:.1f} s; labels due in "
            f"{plan.late_label_delay}"
        )
        self.run("ingest", {"raw_transactions": plan.drifted_data()}, start=plan.drift_start, end=plan.drift_end)
        self.run("refresh_features")
        self.echo(f"  the nightly batch: {plan.drift_start} .. {plan.drift_end} ingested, features refreshed")
        checks = self._monitor_expecting("drift_score", report)
        self.echo(f"  monitor: drift_score FAILED: {checks['drift_score'].description}")
        leg = self.react("retrain_on_drift")
        report.legs.append(leg)
        self.echo(f"  {leg.line()}")

        bad = plan.transactions(plan.bad_day, plan.bad_day, int(plan.data.get("transactions_per_day", 2_000)))
        traffic = self.send(bad, label_delay=plan.bad_label_delay, flip_fraction=plan.flip_fraction, seed=1)
        report.traffic.append({"leg": 2, **traffic.to_dict()})
        self.echo(
            f"  {traffic.rows:,} transactions of {plan.bad_day} answered by {_versions(traffic.model_versions)}; "
            f"their labels arrived with {plan.flip_fraction:.0%} inverted"
        )
        checks = self._monitor_expecting("accuracy_drop", report)
        self.echo(f"  monitor: accuracy_drop FAILED: {checks['accuracy_drop'].description}")
        retrain_again = self.tick("retrain_on_drift")
        if retrain_again.run_requests:
            raise LoopError("retrain_on_drift requested another retrain during its cooldown")
        report.skipped["retrain_on_drift"] = retrain_again.skip_message or ""
        leg = self.react("rollback_on_failure")
        report.legs.append(leg)
        self.echo(f"  {leg.line()}")

        before = json.loads(self.cursors["alert_on_failed_checks"])
        alerted = self.tick("alert_on_failed_checks")
        after = json.loads(self.cursors["alert_on_failed_checks"])
        report.alerts = sorted(name for name, record_id in after.items() if before.get(name) != record_id)
        report.alert_summary = alerted.skip_message or ""
        self.echo(f"  alerts: {report.alert_summary} -> {self.alerts_path}")
        return report

    # ---- internals ---------------------------------------------------------------------------------------
    def _monitor_expecting(self, check: str, report: LoopReport) -> dict[str, Any]:
        checks = self.monitor()
        report.checks.append({name: evaluation.passed for name, evaluation in checks.items()})
        if check not in checks or checks[check].passed:
            seen = checks[check].description if check in checks else "it did not run"
            raise LoopError(f"the monitoring run did not fail {check}: {seen}")
        return checks

    def _trigger_record(self, sensor_name: str, request):
        from sensors.monitoring import DRIFT_CHECKS, ROLLBACK_CHECKS

        trigger = request.tags["ml_platform/trigger"]
        keys = DRIFT_CHECKS if sensor_name == "retrain_on_drift" else ROLLBACK_CHECKS
        key = next(k for k in keys if k.name == trigger)
        return self.instance.get_latest_asset_check_evaluation_record(key)

    def _wait_for_log(self, request_ids: set[str], since: datetime, timeout: float = 60.0) -> None:
        from ml_platform.monitoring.window import Window, read_predictions

        deadline = time.monotonic() + timeout
        logged = 0
        while time.monotonic() < deadline:
            window = Window(start=since - timedelta(seconds=1), end=datetime.now(UTC) + timedelta(seconds=1))
            logged = read_predictions(self.paths.log_dir, window, variants=None)["request_id"].isin(request_ids).sum()
            if logged >= len(request_ids):
                return
            time.sleep(0.5)
        raise LoopError(f"the server logged {logged} of {len(request_ids)} answers within {timeout:.0f} s")

    def _cursor_at_now(self, sensor_name: str) -> str:
        """The cursor of a sensor that has already handled every evaluation recorded so far."""
        from sensors.monitoring import DRIFT_CHECKS, ROLLBACK_CHECKS, check_name

        keys = (
            DRIFT_CHECKS
            if sensor_name == "retrain_on_drift"
            else ROLLBACK_CHECKS
            if sensor_name == "rollback_on_failure"
            else self.defs.resolve_asset_graph().asset_check_keys
        )
        latest = {}
        for key in keys:
            record = self.instance.get_latest_asset_check_evaluation_record(key)
            if record is not None:
                latest[check_name(key)] = record.id
        if sensor_name == "alert_on_failed_checks":
            return json.dumps(latest, sort_keys=True)
        return json.dumps({"seen": latest, "fired_at": None}, sort_keys=True)


def _versions(counts: dict[int, int]) -> str:
    return ", ".join(f"v{version} ({rows:,})" for version, rows in sorted(counts.items())) or "no model"


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``ml-platform`` console entry point: the commands that launch runs of the code location's jobs or
need its resources (``demo``, ``run``, ``materialize-features``, ``deploy``, ``rollback``, ``status``),
added to the core's typer app, whose Dagster-free commands are in ``ml_platform/cli.py``.

``python -m runs.cli`` runs it too. :func:`main` ends the process without the interpreter's teardown once a
command is done (``ml_platform.shutdown``: about 1.8 s after a 30-day run).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from ml_platform.cli import (
    EXIT_FAILED,
    JSON_DOCUMENTS,
    VERBOSITY_HOOKS,
    CommandError,
    app,
    emit_json,
    fail,
    prepared_settings,
)
from ml_platform.settings import DEPLOYMENT_ENVIRONMENTS, Settings
from ml_platform.shutdown import exit_code, exit_without_teardown
from runs.launch import (
    CliError,
    asset_figures,
    deployment_outcome,
    failure_causes,
    failure_report,
    job_assets,
    launch,
    launch_graph,
    load_definitions,
    quiet_warnings,
    reach_partitions_back_to,
    set_run_log_level,
    summarize,
)

PIPELINES = {
    "training": "retrain",  # training_set -> trained_model -> model_evaluation -> champion_model
    "features": "refresh_features",  # customer_stats -> feature_store -> online_features
    "ingest": "ingest",  # raw_transactions -> validated_transactions, per day
    "all": "bootstrap",  # the whole graph over a range of days, in two runs (runs.launch.launch_graph)
}
PARTITIONED_PIPELINES = {"ingest", "features", "all"}
FEATURE_VIEWS = ("customer_stats",)
ENVIRONMENTS = DEPLOYMENT_ENVIRONMENTS
# The run tag naming a deploy's or a rollback's environment (assets.deployment.ENVIRONMENT_TAG; not imported
# from there, which would load the code location for every command).
ENVIRONMENT_TAG = "ml_platform/environment"
# A failed step logs an ERROR with its stack trace; the command explains the failure itself (--verbose: both).
VERBOSITY_HOOKS.append(lambda verbose: set_run_log_level("WARNING" if verbose else "CRITICAL"))


def load_params(path: Path | None, pipeline_assets: set[str]) -> dict[str, Any]:
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
    unknown = sorted(set(params) - pipeline_assets)
    if unknown:
        raise CliError(
            f"params file {path} names {', '.join(unknown)}, not assets of this pipeline; "
            f"expected some of: {', '.join(sorted(pipeline_assets))}"
        )
    for asset, config in params.items():
        if not isinstance(config, dict):
            raise CliError(f"params file {path}: '{asset}' must be a mapping of config fields")
    return params


def _print_result(result, title: str) -> None:
    """The run's outcome and one line of figures per materialized asset; a failed run raises
    :func:`run_failed` (exit 1)."""
    if not result.success:
        raise run_failed(result, title)
    typer.secho(f"{title}: succeeded ({_runs_shown(result)})", fg="green")
    width = max((len(name) for name, _ in summarize(result)), default=0)
    for name, figures in summarize(result):
        typer.echo(f"  {name:<{width}}  {figures}")


def _runs_shown(result) -> str:
    """``run <id>``, or ``runs <id>, <id>`` for the graph's runs (the last one trained the model)."""
    run_ids = getattr(result, "run_ids", [result.run_id])
    return f"run{'s' if len(run_ids) > 1 else ''} {', '.join(run_ids)}"


def run_failed(result, title: str, document: dict[str, Any] | None = None) -> CommandError:
    """A failed run as the command's failure (exit 1): each failed step down to the user's own error, each
    failed check (``--verbose`` shows the run's log with the steps' stack traces above it). ``document``:
    what ``--json`` prints with it."""
    return CommandError(
        f"{title}: FAILED (run {result.run_id})",
        causes=failure_causes(result) or ["the run failed"],
        hint=f"`ml-platform --verbose ...` shows the stack traces; `make dev` opens run {result.run_id} in the UI",
        exit_code=EXIT_FAILED,
        document=document,
    )


def _last_complete_days(days: int) -> tuple[date, date]:
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    return yesterday - timedelta(days=days - 1), yesterday


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
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Model server port (default: ML_PLATFORM_SERVING_PORT, else 8080)."),
    ] = None,
) -> None:
    """Materialize the whole graph headless over the last DAYS days and print what it produced; with
    --loop (the default) the last DRIFT_DAYS of them arrive later, drifted, and the platform reacts.

    Exit status: 0 done, 1 a run failed or the loop did not close, 2 bad options or a loop closed before."""
    settings = prepared_settings()
    if loop and drift_days >= days:
        fail(f"--drift-days {drift_days} must be fewer than --days {days} (the rest is the clean history)")
    reach_partitions_back_to(_last_complete_days(days)[0])  # before the definitions are built
    defs = _serving_on(settings, port)
    if loop:
        import dagster as dg

        from runs.closed_loop import earlier_remediation  # imports the sensors and so the assets

        earlier = earlier_remediation(dg.DagsterInstance.get())
        if earlier is not None:
            fail(
                f"the loop already closed in {settings.home}: {earlier}. The sensors remember it (their cursors, "
                "cooldowns and the versions rolled back), so they would rightly decline the same scenario again. "
                "`make clean-state` and then `make demo` shows it afresh; `--no-loop` materializes the graph only"
            )
    start, end = _last_complete_days(days)
    history_end = end - timedelta(days=drift_days) if loop else end
    data = {"transactions_per_day": transactions_per_day, "n_customers": customers}
    typer.echo(
        f"materializing the whole graph over {start} .. {history_end} ({(history_end - start).days + 1} daily "
        "partitions) ..."
    )
    result = launch_graph({"raw_transactions": data}, start=start, end=history_end, defs=defs)
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
        from runs.closed_loop import ClosedLoop, LoopError, LoopPlan  # imports the sensors and so the assets

        plan = LoopPlan.for_history(
            data,
            history_days=(history_end - start).days + 1,
            drift_start=history_end + timedelta(days=1),
            drift_days=drift_days,
            drift=drift,
        )
        closed = ClosedLoop(settings, defs, echo=typer.echo)
        try:
            report = closed.run_scenario(plan)
        except LoopError as error:
            raise CommandError("the loop did not close", exit_code=EXIT_FAILED) from error
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


def _serving_on(settings: Settings, port: int | None):
    """The code location, its deployments serving on ``port`` (None: the settings' port,
    ML_PLATFORM_SERVING_PORT else 8080)."""
    if port is None or port == settings.serving_port:
        return load_definitions()
    from dataclasses import replace

    quiet_warnings()
    from definitions import build_definitions

    return build_definitions(replace(settings, serving_port=port))


def _only_the_gates_failed(result, settings: Settings) -> bool:
    """The run failed at the promotion gates alone, and a champion from before is there to go on with."""
    from ml_platform.registry import CHAMPION, Registry

    failed_steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"}
    failed_checks = {
        e.event_specific_data.check_name
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed
    }
    registry = Registry.from_settings(settings)
    return (
        failed_steps == {"model_evaluation"}
        and bool(failed_checks)
        and failed_checks <= {"quality_floor", "beats_champion"}
        and registry.version_for_alias(CHAMPION) is not None
    )


RUN_KEYS = ("pipeline", "job", "start", "end", "run_id", "run_ids", "success", "assets", "failures", "note")
JSON_DOCUMENTS["run"] = lambda: dict.fromkeys(RUN_KEYS)
INGEST_HINT = (
    "`ml-platform run --pipeline ingest --start YYYY-MM-DD --end YYYY-MM-DD` and then `ml-platform run --pipeline "
    "features`; or `ml-platform demo`, which does it all"
)


@app.command()
def run(
    pipeline: Annotated[str, typer.Option(help=f"One of: {', '.join(PIPELINES)}.")] = "training",
    params: Annotated[Path | None, typer.Option(help="YAML: asset name -> that asset's config.")] = None,
    start: Annotated[str | None, typer.Option(help="First day (YYYY-MM-DD) for ingest/features/all.")] = None,
    end: Annotated[str | None, typer.Option(help="Last day, inclusive (YYYY-MM-DD) for ingest/features/all.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout (see the README).")] = False,
) -> None:
    """Run a pipeline with parameters from a file. Without --start/--end, ingest and all take yesterday and
    features every stored day its running stats have not reached yet.

    Exit status: 0 the run succeeded (or there was nothing to do), 1 the run failed, 2 bad options or a
    missing input (training before any features: nothing is launched)."""
    settings = prepared_settings()
    if pipeline not in PIPELINES:
        fail(f"unknown pipeline {pipeline!r}; expected one of {', '.join(PIPELINES)}")
    job_name = PIPELINES[pipeline]
    document = {**dict.fromkeys(RUN_KEYS), "pipeline": pipeline, "job": job_name}
    first = last = None
    if pipeline == "features" and not start and not end:
        days = _days_without_features(settings)
        if days is None:
            note = "features are up to date: customer_stats has every stored day"
            if as_json:
                emit_json(
                    {
                        **document,
                        "success": True,
                        "run_ids": [],
                        "assets": {},
                        "failures": [],
                        "note": note,
                        "error": None,
                    }
                )
            else:
                typer.echo(note)
            return
        first, last = days
    elif pipeline in PARTITIONED_PIPELINES:
        first, last = _parse_range(start, end)
    elif start or end:
        fail(f"--start/--end apply to {' and '.join(PARTITIONED_PIPELINES)} only")
    if first is not None:
        reach_partitions_back_to(first)  # before the definitions are built
    defs = load_definitions()
    run_params = load_params(params, job_assets(job_name, defs))
    if pipeline == "training":
        _check_training_inputs(settings)
    if pipeline == "all":
        result = launch_graph(run_params, start=first, end=last, defs=defs)
    else:
        result = launch(job_name, run_params, start=first, end=last, defs=defs)
    document.update(
        start=first and first.isoformat(),
        end=last and last.isoformat(),
        run_id=result.run_id,
        run_ids=getattr(result, "run_ids", [result.run_id]),
        success=result.success,
        assets=_jsonable(asset_figures(result)),
        failures=failure_causes(result),
    )
    if not as_json:
        _print_result(result, f"pipeline {pipeline}")
    elif not result.success:
        raise run_failed(result, f"pipeline {pipeline}", document)
    else:
        emit_json({**document, "error": None})


def _check_training_inputs(settings: Settings) -> None:
    """The training pipeline's inputs, before any run: stored transactions and their customers' features;
    a usage error naming the one missing and the command that makes it."""
    from ml_platform.features.store import FeatureRepo, offline_days

    if not _stored_days(settings.data_dir, "validated_transactions"):
        fail("no transactions yet: no day of validated_transactions is stored to train on", INGEST_HINT)
    if not offline_days(FeatureRepo.from_settings(settings)):
        fail(
            "no features yet: customer_stats has no stored day to join the transactions with",
            "`ml-platform run --pipeline features` makes them from the stored days (or `ml-platform demo`)",
        )


def _jsonable(value: Any) -> Any:
    """Run metadata as JSON values: numbers, text, booleans and None as they are, anything else as text."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


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
    """Rebuild a feature view from every stored day, in one run from the first, and load the online store."""
    settings = prepared_settings()
    if feature_view not in FEATURE_VIEWS:
        fail(f"unknown feature view {feature_view!r}; expected one of {', '.join(FEATURE_VIEWS)}")
    days = _stored_days(settings.data_dir, "validated_transactions")
    if not days:
        fail("no stored day of validated_transactions to make features from", INGEST_HINT)
    result = launch("refresh_features", start=days[0], end=days[-1])
    _print_result(result, f"feature view {feature_view}")


def _days_without_features(settings: Settings) -> tuple[date, date] | None:
    """The stored days of validated_transactions after the newest day customer_stats has reached: the
    range a features run continues with (the days in between have no transactions of their own); None
    when customer_stats has every stored day. A usage error when no day is stored at all."""
    from ml_platform.features.store import FeatureRepo, offline_days

    stored = _stored_days(settings.data_dir, "validated_transactions")
    if not stored:
        fail("no transactions yet: no day of validated_transactions is stored to make features from", INGEST_HINT)
    reached = offline_days(FeatureRepo.from_settings(settings))
    days = [day for day in stored if not reached or day > reached[-1]]
    return (days[0], days[-1]) if days else None


def _stored_days(data_dir: Path, asset: str) -> list[date]:
    """The days a daily-partitioned asset has a stored partition for, oldest first."""
    from ml_platform.storage import table_path

    folder = table_path(data_dir, asset, "day").parent
    days = []
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        try:
            days.append(date.fromisoformat(path.stem))
        except ValueError:
            continue
    return days


STATUS_KEYS = ("model", "tracking_uri", "window", "aliases", "history", "health", "healthy")
JSON_DOCUMENTS["status"] = lambda: dict.fromkeys(STATUS_KEYS)


@app.command()
def status(
    window: Annotated[str, typer.Option(help='Trailing window of traffic to judge: "24h", "7d", "90m".')] = "24h",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout (see the README).")] = False,
) -> None:
    """Where the registry stands (champion, challenger, previous: the rollback target), the champion
    history, and the champion's health: status, uptime, latency, errors, live accuracy against its
    baseline, drift and the alerts firing.

    Exit status: 0 healthy, 1 degraded, down or an alert firing, 2 bad input or no registered model yet."""
    settings = prepared_settings()
    quiet_warnings()
    from ml_platform.monitoring.dashboard import render_terminal
    from ml_platform.monitoring.health import collect_model_health
    from ml_platform.monitoring.window import Window
    from ml_platform.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry

    try:
        span = Window.parse(window)
    except ValueError as error:
        fail(str(error))
    registry = Registry.from_settings(settings)
    aliases = registry.aliases()
    if not aliases:
        fail(
            f"{settings.model_name}: no registered model yet in {settings.public_tracking_uri}",
            "`ml-platform demo` trains, registers and promotes one (or `ml-platform run --pipeline training`)",
        )
    history = registry.champion_history()
    defs = load_definitions()
    monitoring, deployment = defs.resources["monitoring"], defs.resources["deployment"]
    try:
        rules, drift_config = monitoring.rules(), monitoring.drift_config()
    except ValueError as error:
        fail(f"monitoring resource: {error}")
    from ml_platform.monitoring.serving_metrics import PrometheusError

    try:
        health = collect_model_health(
            registry,
            monitoring.paths(),
            span,
            endpoint=deployment.endpoint(),
            token=deployment.token(),
            training_set_path=defs.resources["state"].table_path("training_set"),
            drift_config=drift_config,
            rules=rules,
            prometheus_url=monitoring.prometheus_url,
        )
    except PrometheusError as error:
        fail(f"serving metrics: {error}")
    healthy = health.status == "healthy" and not health.alerts
    if as_json:
        emit_json(
            {
                "model": settings.model_name,
                "tracking_uri": settings.public_tracking_uri,
                "window": span.label,
                "aliases": {alias: aliases.get(alias) for alias in (CHAMPION, CHALLENGER, PREVIOUS)},
                "history": [_jsonable(asdict(entry)) for entry in history],
                "health": _health_document(health),
                "healthy": healthy,
                "error": None,
            }
        )
    else:
        typer.echo(f"{settings.model_name} ({settings.public_tracking_uri})")
        for alias in (CHAMPION, CHALLENGER, PREVIOUS):
            version = aliases.get(alias)
            typer.echo(f"  {alias:<10} {'v' + str(version) if version is not None else '-'}")
        _echo_champion_history(history)
        typer.echo("")
        typer.echo(render_terminal(health), nl=False)
    raise typer.Exit(0 if healthy else EXIT_FAILED)


def _health_document(health) -> dict[str, Any]:
    """The champion's health (``ModelHealth``) as JSON: what ``status`` prints, no histogram."""
    performance, drift = health.performance, health.drift
    return _jsonable(
        {
            "status": health.status,
            "model_version": health.model_version,
            "deployed_at": health.deployed_at,
            "uptime_seconds": health.uptime_seconds,
            "endpoint": health.endpoint,
            "serving": health.serving.to_dict() if health.serving else None,
            "performance": None
            if performance is None
            else {
                "labeled_rows": performance.labeled_rows,
                "unlabeled_rows": performance.unlabeled_rows,
                "metrics": performance.metrics,
                "baseline": performance.baseline,
            },
            "drift": None
            if drift is None
            else {"drift_score": drift.drift_score, "drifted_features": drift.drifted_features},
            "alerts": [alert.to_dict() for alert in health.alerts],
        }
    )


HISTORY_ROWS = 10


def _echo_champion_history(history) -> None:
    """The newest promotions as a short table: version, when promoted, when and why rolled back."""
    if not history:
        return
    typer.echo("")
    typer.echo("champion history (newest promotion first)")
    typer.echo(f"  {'version':<8} {'promoted at':<20} {'rolled back at':<20} reason")
    for entry in history[:HISTORY_ROWS]:
        rolled_back = _when(entry.rolled_back_at) if entry.rolled_back_at else "-"
        reason = _shortened(entry.rollback_reason or "", 60)
        typer.echo(
            f"  {'v' + str(entry.version):<8} {_when(entry.promoted_at):<20} {rolled_back:<20} {reason}".rstrip()
        )
    if len(history) > HISTORY_ROWS:
        typer.echo(f"  ... and {len(history) - HISTORY_ROWS} earlier")


def _when(text: str) -> str:
    """An ISO 8601 time as 'YYYY-MM-DD HH:MM:SS' in UTC; anything else as it was written."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return _shortened(text, 20)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _shortened(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


@app.command()
def deploy(
    model: Annotated[str, typer.Option(help="Registered model name.")] = "",
    version: Annotated[int | None, typer.Option(min=1, help="Version to serve; default: the champion.")] = None,
    env: Annotated[
        str, typer.Option(help=f"One of: {', '.join(ENVIRONMENTS)}; default: the profile's deployment environment.")
    ] = "",
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object on stdout: environment, version, smoke verdict, run.")
    ] = False,
) -> None:
    """Deploy a model version to an environment through the Dagster `deploy` job, then smoke-test it.

    A version other than the champion becomes the champion first (the old one becomes 'previous'), so
    a rollback can undo it. local: the managed server process (it follows the champion alias).
    staging/prod: the Kubernetes overlay applied with the version pinned, waiting for the rollout. Either
    way the run records model_deployment with its smoke check, which the rollback sensor watches. Prints
    the environment, the version and the smoke verdict.

    Exit status: 0 deployed and smoke-checked, 1 the deploy or the smoke check failed, 2 bad options or
    nothing to deploy (no champion and no --version)."""
    settings = prepared_settings()
    environment = env or settings.deployment_environment
    if environment not in ENVIRONMENTS:
        fail(f"unknown environment {environment!r}; expected one of {', '.join(ENVIRONMENTS)}")
    if model and model != settings.model_name:
        fail(f"this platform serves model {settings.model_name!r} (ML_PLATFORM_MODEL_NAME), not {model!r}")
    quiet_warnings()
    from ml_platform.registry import CHAMPION, Registry

    registry = Registry.from_settings(settings)
    if version is not None:
        from mlflow.exceptions import MlflowException

        try:
            registry.model_version(version)
        except MlflowException as error:  # the version does not exist
            fail(f"{settings.model_name} v{version} cannot be deployed: {error}")
    elif registry.version_for_alias(CHAMPION) is None:
        fail(
            f"nothing to deploy: {settings.model_name} has no champion yet",
            "`ml-platform run --pipeline training` trains one (or `ml-platform demo`); or name a registered "
            "version with --version N",
        )
    config = {"environment": environment, "version": version or 0}
    result = launch("deploy", {"model_deployment": config}, tags={ENVIRONMENT_TAG: environment})
    outcome = deployment_outcome(result)
    outcome["environment"] = outcome["environment"] or environment
    if outcome["version"] is None:
        outcome["version"] = version
    if not as_json:
        _print_deployment(result, outcome, f"deploy to {environment}")
    elif not result.success:
        raise run_failed(result, f"deploy to {environment}", outcome)
    else:
        emit_json({**outcome, "error": None})


def _print_deployment(result, outcome: dict, title: str) -> None:
    """The run's outcome, the environment, the version and the smoke verdict; a failed run raises
    :func:`run_failed` (exit 1) after them."""
    if result.success:
        typer.secho(f"{title}: succeeded (run {result.run_id})", fg="green")
    version = outcome["version"]
    pinned = {True: " (pinned)", False: " (follows the champion alias)"}.get(outcome["pinned"], "")
    typer.echo(f"  environment  {outcome['environment']}")
    typer.echo(f"  version      {'v' + str(version) if version is not None else '-'}{pinned}")
    if outcome["endpoint"]:
        typer.echo(f"  endpoint     {outcome['endpoint']}")
    verdict = {True: "passed", False: "FAILED", None: "not run"}[outcome["smoke_passed"]]
    typer.echo(f"  smoke        {verdict}{': ' + outcome['smoke'] if outcome['smoke'] else ''}")
    if not result.success:
        raise run_failed(result, title)


DEPLOYMENT_KEYS = ("success", "run_id", "environment", "version", "endpoint", "pinned", "smoke_passed", "smoke")
JSON_DOCUMENTS["deploy"] = lambda: dict.fromkeys(DEPLOYMENT_KEYS)
ROLLBACK_KEYS = ("success", "run_id", "environment", "from_version", "to_version", "endpoint", "next_version")
JSON_DOCUMENTS["rollback"] = lambda: dict.fromkeys(ROLLBACK_KEYS)


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Recorded on the version taken out of service.")] = "manual rollback",
    env: Annotated[
        str, typer.Option(help=f"One of: {', '.join(ENVIRONMENTS)}; default: the profile's deployment environment.")
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout (see the README).")] = False,
) -> None:
    """Put the last different known-good champion back (the 'previous' alias), redeploy it to the environment
    (a rollout of that version where the environment pins) and verify what is serving. Run again, it goes
    back one more known-good version.

    Exit status: 0 rolled back and verified, 1 the rollback failed or no known-good version is left to
    roll back to (then nothing is changed), 2 bad options."""
    settings = prepared_settings()
    environment = env or settings.deployment_environment
    if environment not in ENVIRONMENTS:
        fail(f"unknown environment {environment!r}; expected one of {', '.join(ENVIRONMENTS)}")
    quiet_warnings()
    from ml_platform.registry import CHAMPION, Registry

    registry = Registry.from_settings(settings)
    if registry.rollback_target() is None:
        champion = registry.version_for_alias(CHAMPION)
        raise CommandError(
            f"cannot roll back {settings.model_name}: the champion is "
            f"{'v' + str(champion) if champion is not None else 'not set'} and no known-good version remains to "
            "return to",
            hint="deploy a version you trust with `ml-platform deploy --version N` (`ml-platform status` lists them)",
            exit_code=EXIT_FAILED,
        )
    result = launch(
        "rollback",
        ops_config={"roll_back_champion": {"reason": reason, "environment": environment}},
        tags={ENVIRONMENT_TAG: environment},
    )
    document = {**dict.fromkeys(ROLLBACK_KEYS), "success": result.success, "run_id": result.run_id}
    document["environment"] = environment
    if not result.success:
        raise run_failed(result, f"rollback in {environment}", document)
    outcome = result.output_for_node("redeploy_and_verify")
    document.update({key: outcome.get(key) for key in ("from_version", "to_version", "endpoint", "next_version")})
    if as_json:
        emit_json({**_jsonable(document), "error": None})
        return
    _print_result(result, f"rollback in {environment}")
    typer.echo(f"  serving v{outcome['to_version']} (was v{outcome['from_version']}) at {outcome['endpoint']}")
    further = outcome.get("next_version")
    typer.echo(
        f"  a further rollback would go to v{further}"
        if further is not None
        else "  no known-good version is left to roll back to"
    )


@app.command("bootstrap")
def bootstrap_first_look(
    days: Annotated[
        int,
        typer.Option(
            min=3,
            help="Days of history, ending the day before yesterday. With a multiple of 20 the drift check's "
            "reference (the 15% test split) is whole days; others can show hour_of_day drift on clean traffic.",
        ),
    ] = 20,
    transactions_per_day: Annotated[int, typer.Option(min=10)] = 1_000,
    customers: Annotated[int, typer.Option(min=10)] = 1_000,
    keep_serving: Annotated[bool, typer.Option(help="Leave the model server running afterwards.")] = False,
) -> None:
    """The first look (`make dev` runs it): on an EMPTY state directory, the demo's graph on small data, the
    champion served, a day of live traffic with its labels, a monitoring run, the server stopped again; so
    the UI opens on a champion, evaluated checks and the monitoring group. Any other state is left as it is.
    Progress goes to stderr, a line per finished step."""
    settings = prepared_settings()
    quiet_warnings()
    from runs.first_look import FirstLookError, bootstrap
    from runs.progress import current

    options = {"days": days, "transactions_per_day": transactions_per_day, "customers": customers}
    try:
        look = bootstrap(settings, current(), keep_serving=keep_serving, **options)
    except FirstLookError as error:
        fail(f"the first look failed: {error}")
    typer.echo(look.summary())


def main() -> None:
    """The console entry point: the typer app, then the exit with its status, without the teardown."""
    try:
        app()  # ends with SystemExit, carrying the command's status, unless an exception escapes it
    except SystemExit as stop:
        exit_without_teardown(exit_code(stop.code))


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``ml-platform`` command: its typer app and the commands that need no Dagster.

``init``, ``drift``, ``lineage``, ``serve`` and ``stop-server`` work on the core alone. The commands that launch runs
of the code location's jobs or need its resources (``demo``, ``run``, ``materialize-features``,
``deploy``, ``rollback``, ``status``) are in ``runs/cli.py``, which adds them to this ``app`` and is the
console entry point.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ml_platform.settings import Settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="ml_platform: the lifecycle of a tabular model as one Dagster asset graph.",
)


def prepared_settings() -> Settings:
    """The settings from the environment, applied to it (library variables) and with the state directory made."""
    settings = Settings.from_env()
    settings.apply_environment()
    settings.prepare()
    return settings


def fail(message: str) -> NoReturn:
    """Print ``message`` as an error and exit with status 2 (bad input)."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


@app.command()
def init() -> None:
    """Prepare the state directory: Dagster home (telemetry off), MLflow store, Feast repo folders."""
    settings = prepared_settings()
    from ml_platform.registry import Registry

    registry = Registry.from_settings(settings)
    registry.ensure_experiment()  # creates the MLflow tables once, before any parallel step could race
    typer.echo(f"state directory: {settings.home}")
    typer.echo(f"  dagster home:  {settings.dagster_home}")
    typer.echo(f"  mlflow store:  {settings.public_tracking_uri}")
    typer.echo(f"  feast repo:    {settings.feast_dir}")


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
    """The drift analyzer: each feature of the logged traffic against the champion's own training data (the
    current training set for a version that does not name its own), and the dataset's drift score. Exits 1
    when the score is over the threshold, 0 when not, 2 for bad input."""
    settings = prepared_settings()
    from tabulate import tabulate

    from ml_platform.features.engineering import CUMULATIVE_FEATURES, DRIFT_FEATURES
    from ml_platform.monitoring.alerts import DEFAULT_RULES
    from ml_platform.monitoring.drift import METHOD_TITLES, DriftConfig, compute_drift
    from ml_platform.monitoring.health import (
        MonitoringPaths,
        reference_features,
        rules_with_thresholds,
        training_reference,
    )
    from ml_platform.monitoring.window import Window, read_predictions
    from ml_platform.registry import CHAMPION, Registry
    from ml_platform.storage import table_path
    from ml_platform.training.datasets import training_sets_dir

    if model and model != settings.model_name:
        fail(f"this platform monitors model {settings.model_name!r} (ML_PLATFORM_MODEL_NAME), not {model!r}")
    try:
        span = Window.parse(window)
        config = DriftConfig(method=method, feature_threshold=threshold)
        rule = DEFAULT_RULES["drift_score"]
        if max_drift_score is not None:
            rule = rules_with_thresholds({"drift_score": max_drift_score})["drift_score"]
    except ValueError as error:
        fail(str(error))
    paths = MonitoringPaths.from_settings(settings)
    training_set = table_path(settings.data_dir, "training_set")
    registry = Registry.from_settings(settings)
    champion = registry.version_for_alias(CHAMPION)
    try:
        source = training_reference(registry, champion, training_set, training_sets_dir(settings.data_dir))
    except FileNotFoundError:
        fail(f"no training set at {training_set} to compare with; run `make demo` (or the training pipeline) first")
    current = read_predictions(paths.log_dir, span)
    if current.empty:
        fail(f"no predictions logged over {span.label} under {paths.log_dir}; send traffic to the model server first")
    try:
        report = compute_drift(reference_features(source.path), current, DRIFT_FEATURES, config)
    except ValueError as error:
        fail(str(error))
    judged = (
        f"v{champion}'s own training set {source.digest[:12]}"
        if source.fallback_reason is None
        else f"the current training set {source.digest[:12]} ({source.fallback_reason})"
    )
    typer.echo(
        f"{settings.model_name}: drift of {report.current_rows:,} predictions over {span.label} against "
        f"{report.reference_rows:,} rows of {judged} ({METHOD_TITLES.get(config.method, config.method)}, "
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


@app.command()
def lineage(
    version: Annotated[int | None, typer.Option(min=1, help="The model version (default: the champion).")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON of a fixed shape (ml_platform.lineage.lineage_document).")
    ] = False,
    mlflow_ui: Annotated[
        str, typer.Option(help="MLflow UI address for run links (default: the tracking server; locally :5000).")
    ] = "",
    dagster_ui: Annotated[
        str, typer.Option(help="Dagster UI address for run links (default: locally http://127.0.0.1:3000).")
    ] = "",
) -> None:
    """What a version learned from: its training set (digest, file, newest transaction), the raw daily
    partitions with their row counts, the code version, the Dagster and MLflow runs that made it, its model
    digest, when it was promoted or rolled back and why, and its aliases. "not recorded" for what a version
    registered before these were kept did not record. Exits 2 for a version that does not exist."""
    settings = prepared_settings()
    import json

    from ml_platform.lineage import (
        LOCAL_DAGSTER_UI,
        UnknownVersion,
        lineage_document,
        lineage_text,
        mlflow_ui_base,
        version_lineage,
    )
    from ml_platform.registry import Registry
    from ml_platform.training.datasets import training_sets_dir

    try:
        found = version_lineage(
            Registry.from_settings(settings),
            version,
            training_sets_dir=training_sets_dir(settings.data_dir),
            mlflow_ui=mlflow_ui or mlflow_ui_base(settings.tracking_uri, settings.profile),
            dagster_ui=dagster_ui or (LOCAL_DAGSTER_UI if settings.profile == "local" else None),
        )
    except UnknownVersion as error:
        fail(str(error))
    typer.echo(json.dumps(lineage_document(found), indent=2) if as_json else lineage_text(found))


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
    settings = prepared_settings()
    from ml_platform.deploy.local import LocalProcessTarget

    env = LocalProcessTarget(
        settings.home / "serving",
        token=os.environ.get(settings.serving_token_env),
        admin_token=os.environ.get(settings.serving_admin_token_env),
    ).server_environment()
    port = settings.serving_port if port is None else port
    command = [sys.executable, "-m", "ml_platform.serving", "--host", host, "--port", str(port)]
    os.execve(sys.executable, command, env)


@app.command("stop-server")
def stop_server() -> None:
    """Stop the local model server started by `deploy` (it drains and flushes its prediction log)."""
    settings = prepared_settings()
    from ml_platform.deploy.local import LocalProcessTarget

    stopped = LocalProcessTarget(settings.home / "serving", port=settings.serving_port).stop()
    typer.echo("model server stopped" if stopped else "no model server was running")


labels_app = typer.Typer(
    no_args_is_help=True,
    help="Real labels (chargebacks, analysts' verdicts) for the predictions the model server logged.",
)
app.add_typer(labels_app, name="labels")


@labels_app.command("import")
def labels_import(
    file: Annotated[Path, typer.Argument(help="A .csv (with a header row) or .parquet label file.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the result (or the refusal) as JSON.")] = False,
) -> None:
    """Validate a label file and append it to the label store live_performance reads.

    A row: request_id or transaction_id, label (1/0, true/false or fraud/legit), labelled_at (ISO 8601,
    UTC when no offset; empty: now). All or nothing: a file with a bad row writes nothing and exits 2,
    naming each bad row (1 = the first after the header) and why. The latest label of a request wins.
    """
    settings = prepared_settings()
    from ml_platform.monitoring.health import MonitoringPaths
    from ml_platform.monitoring.labels import LabelValidationError

    store = MonitoringPaths.from_settings(settings).labels()
    try:
        result = store.import_files([file])
    except ValueError as error:
        if json_output:
            problems = error.problems if isinstance(error, LabelValidationError) else ()
            refused = [
                {"row": None if p.index is None else p.index + 1, "column": p.column, "reason": p.reason}
                for p in problems
            ]
            typer.echo(json.dumps({"error": str(error), "refused": refused}))
            raise typer.Exit(2) from None
        fail(str(error))
    if json_output:
        typer.echo(json.dumps({"file": str(file), "store": str(store.root), **result.as_dict()}))
        return
    typer.echo(
        f"{file}: {result.rows} label row(s) written to {store.root}: {result.requests} request(s), "
        f"{result.new} new, {result.changed} changed, {result.positives} positive (fraud)"
    )

"""The ``ml-platform`` command: its typer app and the commands that need no Dagster.

``init``, ``drift``, ``lineage``, ``serve`` and ``stop-server`` work on the core alone. The commands that launch runs
of the code location's jobs or need its resources (``demo``, ``run``, ``materialize-features``,
``deploy``, ``rollback``, ``status``) are in ``runs/cli.py``, which adds them to this ``app`` and is the
console entry point.

What every command shares is here, in one place (:class:`_Commands`, the app's click group): a failure is
one paragraph on stderr (:func:`error_paragraph`: what went wrong, the causes down to the root error, what to
do next; the stack trace only with ``--verbose``) and, with ``--json``, one object on stdout with the command's
keys and ``error`` (:func:`emit_json`, :data:`JSON_DOCUMENTS`); no escape codes reach a stream that is not a
terminal; and the help is click's plain help, whose option names are never cut at 80 columns.

Exit status: 0 success, 1 the work failed (a run, a check, an unhealthy model), 2 a usage error or an unmet
precondition (nothing was started).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, NoReturn, TextIO

import typer
from typer.core import TyperGroup

from ml_platform.settings import Settings

EXIT_FAILED, EXIT_USAGE = 1, 2
_COMMAND = "ml_platform.command"  # the root context's meta: the command that runs
# The real stdout while a command runs (under --json, sys.stdout is stderr then); the --verbose flag.
_REAL_STDOUT: ContextVar[TextIO | None] = ContextVar("ml_platform_cli_stdout", default=None)
_VERBOSE_FLAG: ContextVar[bool] = ContextVar("ml_platform_cli_verbose", default=False)
# The JSON document of each command with --json, every key present and null: what it prints, with "error"
# filled in, when it fails before it has anything to say (runs/cli.py adds its commands').
JSON_DOCUMENTS: dict[str, Callable[[], dict[str, Any]]] = {}
# Called with the --verbose flag before a command runs (runs/cli.py: how much of a Dagster run's log shows).
VERBOSITY_HOOKS: list[Callable[[bool], None]] = []


class CommandError(Exception):
    """A failure a command explains: ``message`` (what went wrong), ``causes`` (why, outermost first, when
    they are not Python exceptions chained as ``__cause__``, e.g. a Dagster run's step errors), ``hint``
    (what to do next) and ``exit_code`` (2: bad input or an unmet precondition, nothing was started; 1: the
    work itself failed). ``document``: what the command had to say when it failed, printed under ``--json``
    with ``error``."""

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        exit_code: int = EXIT_USAGE,
        causes: Sequence[str] = (),
        document: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.hint, self.exit_code = message, hint, exit_code
        self.causes, self.document = list(causes), dict(document or {})


def fail(message: str, hint: str = "") -> NoReturn:
    """Stop the command: ``message`` (and ``hint``, what to do next) reported as a usage error, exit 2."""
    raise CommandError(message, hint=hint)


def cause_chain(error: BaseException) -> list[str]:
    """``Type: message`` of each exception ``error`` came from (its ``__cause__``, else the ``__context__`` it
    was raised in unless suppressed), outermost first; one whose message an earlier line already says is
    left out, so a wrapper that repeats its cause's text costs no line."""
    chain, seen, link = [], {id(error)}, _origin(error)
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        text = str(link).strip()
        said = [str(error), *chain]
        if not text or not any(text in earlier for earlier in said):
            chain.append(f"{type(link).__name__}: {text}" if text else type(link).__name__)
        link = _origin(link)
    return chain


def _origin(error: BaseException) -> BaseException | None:
    return error.__cause__ or (None if error.__suppress_context__ else error.__context__)


def error_document(error: BaseException) -> dict[str, Any]:
    """A failure as the ``error`` value of a JSON document: ``message`` (str), ``causes`` (list of str,
    outermost first, the root error last), ``hint`` (str or null) and ``exit_code`` (int)."""
    if isinstance(error, CommandError):
        message, hint, code, causes = error.message, error.hint, error.exit_code, error.causes
    elif isinstance(error, typer.TyperException):  # click's usage errors (typer vendors click)
        message, hint, code, causes = error.format_message(), "see --help", error.exit_code, []
    else:
        message, hint, code, causes = f"{type(error).__name__}: {error}", "--verbose shows the stack trace", 1, []
    return {"message": message, "causes": [*causes, *cause_chain(error)], "hint": hint or None, "exit_code": code}


def error_paragraph(document: dict[str, Any]) -> str:
    """The text form of :func:`error_document`: one paragraph, ``error: <message>``, a line per cause (the
    root error last), ``what to do: <hint>``."""
    lines = [f"error: {document['message']}", *document["causes"]]
    if document["hint"]:
        lines.append(f"what to do: {document['hint']}")
    return "\n".join(lines)


def emit_json(document: dict[str, Any], *, indent: int | None = None) -> None:
    """Print a command's JSON document on the real stdout (under ``--json`` everything else written to
    stdout meanwhile, ours or a library's, went to stderr)."""
    stream = _REAL_STDOUT.get() or sys.stdout
    stream.write(json.dumps(document, indent=indent) + "\n")
    stream.flush()


def verbose() -> bool:
    """Whether ``--verbose`` was given (False outside a command)."""
    return _VERBOSE_FLAG.get()


def wants_colour() -> bool:
    """NO_COLOR (any value) or TERM=dumb turn colour off, on a terminal too (https://no-color.org)."""
    return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


@contextmanager
def _plain_streams() -> Iterator[None]:
    """stdout and stderr with escape codes stripped where they are not terminals: ours, and those libraries
    write (Feast's colorama colours, a progress bar's cursor moves), for as long as a command runs."""
    from colorama.ansitowin32 import AnsiToWin32

    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (AnsiToWin32(stream, convert=False).stream for stream in saved)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


class _Commands(TyperGroup):
    """The app's click group: every command runs through :meth:`invoke`, which reports its failure (one
    paragraph on stderr; with ``--json`` also the command's document with ``error`` on stdout) and exits
    with its status. ``--json`` among a command's arguments sends stdout to stderr while it runs, so its
    one JSON object (:func:`emit_json`) is all that reaches stdout."""

    def resolve_command(self, ctx: typer.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta[_COMMAND] = name
        return name, command, rest

    def invoke(self, ctx: typer.Context) -> Any:
        as_json = "--json" in ctx.args
        if not wants_colour():
            ctx.color = False
        with _plain_streams():
            saved, token = sys.stdout, _REAL_STDOUT.set(sys.stdout)
            if as_json:
                sys.stdout = sys.stderr
            try:
                return super().invoke(ctx)
            except (typer.Exit, typer.Abort):
                raise
            except typer.TyperException as error:  # a usage error click found: its own message, unless --json
                if not as_json:
                    raise
                raise typer.Exit(_report(ctx, error, as_json=True)) from None
            except Exception as error:  # every other failure, explained in one place
                raise typer.Exit(_report(ctx, error, as_json=as_json)) from None
            finally:
                sys.stdout = saved
                _REAL_STDOUT.reset(token)


def _report(ctx: typer.Context, error: BaseException, *, as_json: bool) -> int:
    """Print ``error`` as one paragraph on stderr (``--verbose``: its stack trace first) and, under
    ``--json``, the command's document with ``error`` on stdout; the exit status."""
    document = error_document(error)
    if verbose():
        typer.echo(_stack_trace(error), err=True, nl=False)
    typer.secho(error_paragraph(document), fg="red" if wants_colour() else None, err=True)
    if as_json:
        said = error.document if isinstance(error, CommandError) else {}
        emit_json({**JSON_DOCUMENTS.get(ctx.meta.get(_COMMAND, ""), dict)(), **said, "error": document})
    return document["exit_code"]


def _stack_trace(error: BaseException) -> str:
    """What ``--verbose`` adds: this process's stack trace; nothing for a :class:`CommandError` that came
    from no exception (a failed run's step stacks are in its log, which ``--verbose`` shows)."""
    if isinstance(error, CommandError) and _origin(error) is None:
        return ""
    return "".join(traceback.format_exception(error))


app = typer.Typer(
    cls=_Commands,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # click's plain help: option names whole at 80 columns, no box drawing in a pipe
    help="ml_platform: the lifecycle of a tabular model as one Dagster asset graph. Exit status: 0 success, "
    "1 the work failed, 2 a usage error or an unmet precondition (nothing started).",
)


@app.callback()
def _options(
    ctx: typer.Context,
    verbose_flag: Annotated[
        bool, typer.Option("--verbose", "-v", help="On failure, the stack trace and the Dagster run's log too.")
    ] = False,
) -> None:
    _VERBOSE_FLAG.set(verbose_flag)
    if not verbose_flag:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's INFO lines (creating tables ...)
    for hook in VERBOSITY_HOOKS:
        hook(verbose_flag)


def prepared_settings() -> Settings:
    """The settings from the environment, applied to it (library variables) and with the state directory made."""
    settings = Settings.from_env()
    settings.apply_environment()
    settings.prepare()
    return settings


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


DRIFT_KEYS = (
    "model", "champion_version", "window", "method", "feature_threshold", "rule_threshold", "reference",
    "reference_rows", "current_rows", "features", "drift_score", "drifted_features", "drift",
)  # fmt: skip
JSON_DOCUMENTS["drift"] = lambda: dict.fromkeys(DRIFT_KEYS)


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
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout (see the README).")] = False,
) -> None:
    """The drift analyzer: each feature of the logged traffic against the champion's own training data (the
    current training set for a version that does not name its own), and the dataset's drift score.

    Exit status: 0 no drift, 1 the score is over the threshold, 2 bad input or nothing to compare (no
    training set, no logged traffic)."""
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
        fail(f"no training set at {training_set} to compare with", "run `ml-platform demo` (or the training pipeline)")
    current = read_predictions(paths.log_dir, span)
    if current.empty:
        fail(f"no predictions logged over {span.label} under {paths.log_dir}", "send traffic to the model server first")
    try:
        report = compute_drift(reference_features(source.path), current, DRIFT_FEATURES, config)
    except ValueError as error:
        fail(str(error))
    drifted = rule.fires(report.drift_score)
    if as_json:
        emit_json(
            {
                "model": settings.model_name,
                "champion_version": champion,
                "window": span.label,
                "method": config.method,
                "feature_threshold": config.threshold,
                "rule_threshold": rule.threshold,
                "reference": {"digest": source.digest, "fallback_reason": source.fallback_reason},
                "reference_rows": report.reference_rows,
                "current_rows": report.current_rows,
                "features": [asdict(feature) for feature in report.features],  # feature, score, threshold, ...
                "drift_score": report.drift_score,
                "drifted_features": report.drifted_features,
                "drift": drifted,
                "error": None,
            }
        )
        raise typer.Exit(1 if drifted else 0)
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
        str,
        typer.Option(
            help="MLflow UI address for run and version links (default: ML_PLATFORM_MLFLOW_UI_URL, else the "
            "tracking server, else locally http://127.0.0.1:5000)."
        ),
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
    from ml_platform.lineage import (
        LOCAL_DAGSTER_UI,
        UnknownVersion,
        lineage_document,
        lineage_text,
        version_lineage,
    )
    from ml_platform.registry import Registry
    from ml_platform.training.datasets import training_sets_dir

    try:
        found = version_lineage(
            Registry.from_settings(settings),
            version,
            training_sets_dir=training_sets_dir(settings.data_dir),
            mlflow_ui=mlflow_ui or settings.mlflow_ui,
            dagster_ui=dagster_ui or (LOCAL_DAGSTER_UI if settings.profile == "local" else None),
        )
    except UnknownVersion as error:
        fail(str(error))
    if as_json:
        emit_json(lineage_document(found), indent=2)
    else:
        typer.echo(lineage_text(found))


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
    rich_markup_mode=None,
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
            emit_json({"error": str(error), "refused": refused})
            raise typer.Exit(2) from None
        fail(str(error))
    if json_output:
        emit_json({"file": str(file), "store": str(store.root), **result.as_dict()})
        return
    typer.echo(
        f"{file}: {result.rows} label row(s) written to {store.root}: {result.requests} request(s), "
        f"{result.new} new, {result.changed} changed, {result.positives} positive (fraud)"
    )

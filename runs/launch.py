"""Launching runs of the code location's jobs in this process on the local instance, and reading their results.

``dagster`` and the code location are imported when first needed, not with this module: the
``ml-platform`` entry point imports it for every command, and the Dagster-free ones should start fast.
"""

from __future__ import annotations

import os
import sys
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from ml_platform.cli import CommandError
from runs.progress import watch_run

if TYPE_CHECKING:
    import dagster as dg

TRAINING_RESOURCE = "training_compute"  # the resource of the step that trains (resources/__init__.py)
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


class CliError(CommandError):
    """A problem with what the user asked for (exit 2); printed without a traceback."""


def quiet_warnings() -> None:
    """Library deprecation and preview notices are for us, not for the user of the command."""
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    for module in ("dagster", "mlflow", "feast", "sqlalchemy", "pydantic"):
        warnings.filterwarnings("ignore", module=rf"{module}(\..*)?$")
    # Dagster's BetaWarning/PreviewWarning, attributed to our modules that use those parameters
    warnings.filterwarnings("ignore", message=r".* is currently in (beta|preview)")


def set_run_log_level(level: str) -> None:
    """The level of the console log of the runs :func:`launch` starts from now on (default WARNING). The
    command line sets CRITICAL unless ``--verbose``: a failed step's ERROR lines carry its stack trace, and
    the command says why the run failed itself (:func:`failure_causes`)."""
    QUIET_LOGGERS["loggers"]["console"]["config"]["log_level"] = level


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
    assets: Iterable[str] | None = None,
) -> dg.ExecuteInProcessResult:
    """Run a job of the code location in this process on the local instance; returns the result.
    ``assets``: only these of the job's assets (and their checks), as ``asset`` strings; default all."""
    import dagster as dg

    if start is not None:
        reach_partitions_back_to(start)
    defs = defs or load_definitions()
    job = defs.resolve_job_def(job_name)
    merged = {**(params or {}), **(ops_config or {})}
    run_config = {**QUIET_LOGGERS, "ops": {node: {"config": cfg} for node, cfg in merged.items()}}
    run_tags = dict(tags or {})
    if start is not None and end is not None:
        run_tags.update(_partition_tags(start, end))
    instance, run_id = dg.DagsterInstance.get(), str(uuid.uuid4())
    watch_run(instance, run_id, job_name)  # a line per finished step on stderr as it happens (runs.progress)
    try:
        return job.execute_in_process(
            run_config=run_config,
            instance=instance,
            tags=run_tags,
            raise_on_error=False,
            run_id=run_id,
            asset_selection=None if assets is None else [dg.AssetKey.from_user_string(a) for a in sorted(assets)],
        )
    except dg.DagsterInvalidConfigError as error:
        problems = "\n".join(f"  - {e.message}" for e in error.errors)
        raise CliError(f"the parameters do not fit pipeline {job_name}:\n{problems}") from error


# The job of the whole graph, raw data to champion (sensors.bootstrap); :func:`launch_graph` runs it.
GRAPH_JOB = "bootstrap"


@dataclass
class GraphResult:
    """The runs one launch of the graph made (:func:`launch_graph`), read as one run's result is read
    (``dg.ExecuteInProcessResult``): ``success``, ``run_id``, ``all_events``, the materializations and
    check evaluations, ``output_for_node``.

    ``run_id`` is the last run launched: on success the run that trained, evaluated and promoted the model,
    the one a version's lineage records as ``ml_platform.dagster_run_id``; after a failure the run that
    failed. ``runs`` are the runs' own results in the order they ran (the first: the days' assets over the
    range), ``not_launched`` the assets of the runs left out because a run before them failed.
    """

    runs: list[dg.ExecuteInProcessResult]
    not_launched: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return not self.not_launched and all(run.success for run in self.runs)

    @property
    def run_id(self) -> str:
        return self.runs[-1].run_id

    @property
    def run_ids(self) -> list[str]:
        return [run.run_id for run in self.runs]

    @property
    def all_events(self) -> list[dg.DagsterEvent]:
        return [event for run in self.runs for event in run.all_events]

    def get_asset_materialization_events(self) -> list[dg.DagsterEvent]:
        return [event for run in self.runs for event in run.get_asset_materialization_events()]

    def get_asset_check_evaluations(self) -> list[dg.AssetCheckEvaluation]:
        return [evaluation for run in self.runs for evaluation in run.get_asset_check_evaluations()]

    def output_for_node(self, node: str, output_name: str = "result") -> Any:
        """The output of ``node`` from the run that executed it (Dagster's error when none did)."""
        ran = [run for run in self.runs if run.job_def.has_node_named(node)]
        return (ran or self.runs)[-1].output_for_node(node, output_name)


def launch_graph(
    params: dict[str, Any] | None = None,
    *,
    start: date,
    end: date,
    defs: dg.Definitions | None = None,
    tags: dict[str, str] | None = None,
) -> GraphResult:
    """The whole graph (job ``bootstrap``) over the days [start, end]: two runs, as a backfill from the
    Dagster UI splits it. First the assets of the daily partitions over the range in one run, then the
    assets of no partition after them (training_set -> trained_model -> model_evaluation -> champion_model)
    in a run without partition tags; the second is not launched when the first failed.

    Why not one run: Dagster 1.13 plans every asset and check of a run tagged with a partition range for each
    day of the range, the unpartitioned ones too (the run's ``partitions_subset``). They materialize once,
    with no day, so each day's planned materialization and check evaluation stays behind: a "Skipped" row
    per day under model_evaluation's gates, forever. feature_store, unpartitioned between customer_stats
    and online_features, stays in the first run (splitting it out would cost two more runs): its planned
    days are the same as those of every ``refresh_features`` run.

    ``params`` (asset -> its config) are split between the runs by the assets each holds; both runs'
    config is checked before the first is launched, so a mistake in the second's is not found after the
    first has written its days.
    """
    import dagster as dg

    reach_partitions_back_to(start)
    defs = defs or load_definitions()
    stages = graph_stages(GRAPH_JOB, defs)
    params = params or {}
    unknown = sorted(set(params) - set().union(*stages))
    if unknown:
        raise CliError(
            f"the parameters name {', '.join(unknown)}, not assets of pipeline {GRAPH_JOB}; "
            f"expected some of: {', '.join(sorted(set().union(*stages)))}"
        )
    split = [{asset: config for asset, config in params.items() if asset in stage} for stage in stages]
    job = defs.resolve_job_def(GRAPH_JOB)
    for stage, stage_params in zip(stages, split, strict=True):
        subset = job.get_subset(asset_selection={dg.AssetKey.from_user_string(a) for a in stage})
        try:
            dg.validate_run_config(subset, {"ops": {node: {"config": c} for node, c in stage_params.items()}})
        except dg.DagsterInvalidConfigError as error:
            problems = "\n".join(f"  - {e.message}" for e in error.errors)
            raise CliError(f"the parameters do not fit pipeline {GRAPH_JOB}:\n{problems}") from error
    from resources.training import discard_training_ahead, start_training_ahead

    graph = defs.resolve_asset_graph()
    if any(
        TRAINING_RESOURCE in graph.get(dg.AssetKey.from_user_string(asset)).assets_def.required_resource_keys
        for stage in stages[1:]
        for asset in stage
    ):  # a later run trains: its process imports while the first run's steps leave a core idle
        start_training_ahead(defs.resources.get(TRAINING_RESOURCE))
    result = GraphResult(runs=[])
    try:
        for index, (stage, stage_params) in enumerate(zip(stages, split, strict=True)):
            if result.runs and not result.runs[-1].success:
                result.not_launched = sorted(set().union(*stages[index:]))
                break
            days = {"start": start, "end": end} if index == 0 else {}
            result.runs.append(launch(GRAPH_JOB, stage_params, defs=defs, tags=tags, assets=stage, **days))
    finally:
        discard_training_ahead()  # not taken: the training run was not launched
    return result


def graph_stages(job_name: str, defs: dg.Definitions) -> list[set[str]]:
    """A job's assets in the runs :func:`launch_graph` makes of it over a range of days: the assets of no
    partition that no partitioned asset of the job depends on (the tail: training to promotion), after
    all the others (the days' assets, with any unpartitioned one between them). One run when there is
    no such tail, or nothing before it."""
    graph = defs.resolve_asset_graph()
    keys = defs.resolve_job_def(job_name).asset_layer.executable_asset_keys
    tail: set[dg.AssetKey] = set()
    for key in reversed(graph.toposorted_asset_keys):
        node = graph.get(key)
        if key in keys and node.partitions_def is None and all(c in tail or c not in keys for c in node.child_keys):
            tail.add(key)
    stages = [keys - tail, tail] if tail and tail != keys else [set(keys)]
    return [{key.to_user_string() for key in stage} for stage in stages]


def reach_partitions_back_to(day: date) -> None:
    """Make ``day`` a daily partition of the definitions this process loads, or say why it cannot be one.

    Without ``ML_PLATFORM_PARTITIONS_START`` the partitions start at the first stored day
    (:mod:`ml_platform.partitions`), so a run over earlier days (ingesting older history) moves the start
    back to ``day`` for this process: the definitions are built when first loaded. Once they are loaded,
    or when the setting names a later day, the days before the start are not partitions, and the run is
    refused here with what to change, instead of failing in Dagster's partition checks.
    """
    from ml_platform.partitions import partitions_start
    from ml_platform.settings import ENVIRONMENT_VARIABLES, Settings

    variable = ENVIRONMENT_VARIABLES["partitions_start"]
    settings = Settings.from_env()
    if "assets.common" in sys.modules:  # the definitions are built: their first day is fixed
        first = sys.modules["assets.common"].PARTITIONS_START
    elif settings.partitions_start:
        first = partitions_start(settings)
    else:
        if day < partitions_start(settings):
            os.environ[variable] = day.isoformat()
        return
    if day < first:
        raise CliError(
            f"{day} is before the first daily partition, {first}",
            hint=f"set {variable}={day} (or earlier) and run again; a Dagster UI already running reads it "
            "when it is restarted",
        )


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


def failure_causes(result: dg.ExecuteInProcessResult | GraphResult) -> list[str]:
    """Why a run failed: a line per failed step with the user's own error (:func:`error_chain`) and a
    line per failed check with its description; for the graph's runs, the assets not run after it."""
    lines = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error
            chain = error_chain(error) if error else []
            lines.append(f"step {event.step_key} failed: {chain[0] if chain else 'unknown error'}")
            lines += [f"step {event.step_key}, caused by: {link}" for link in chain[1:]]
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                lines.append(
                    f"check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} failed: "
                    f"{evaluation.description}"
                )
    not_launched = getattr(result, "not_launched", [])
    if not_launched:
        lines.append(f"not run after run {result.run_id} failed: {', '.join(not_launched)}")
    return lines


def failure_report(result: dg.ExecuteInProcessResult | GraphResult) -> str:
    """Why a run failed, one line per failed step and per failed check (:func:`failure_causes`)."""
    return "\n".join(failure_causes(result)) or "the run failed"


def error_chain(error: Any) -> list[str]:
    """A step's error (a ``SerializableErrorInfo``) down to the user's own: its links (``cause``, else the
    ``context`` it was raised in), outermost first, without Dagster's wrappers ("Error occurred while
    executing op training_set:"). A link whose message the one before it repeats is folded into that one,
    with its type: ``dg.Failure("training_set: " + str(error)) from error`` reads
    ``training_set: FileNotFoundError: <the error>``, one line."""
    links: list[str] = []
    link, seen = error, set()
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        qualified, text = _split_message(link.message, link.cls_name)
        if not qualified.startswith("dagster.") or link.cls_name == "Failure":  # not one of Dagster's wrappers
            shown = text if qualified.startswith("dagster.") or not qualified else f"{link.cls_name}: {text}"
            if links and text and text in links[-1]:
                links[-1] = links[-1].replace(text, shown, 1)
            elif text or shown:
                links.append(shown.rstrip(": "))
        link = link.cause or link.context
    return links


def _split_message(message: str, cls_name: str | None) -> tuple[str, str]:
    """("pkg.module.Class", "text") from a formatted ``pkg.module.Class: text``; ("", message) otherwise."""
    head, _, text = message.strip().partition(":")
    if cls_name and head.split(".")[-1] == cls_name and " " not in head:
        return head, text.strip()
    return "", message.strip()


def asset_figures(result: dg.ExecuteInProcessResult | GraphResult) -> dict[str, dict[str, Any]]:
    """Per materialized asset, the figures that matter (:data:`FIGURES`), by metadata key."""
    seen: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        name = materialization.asset_key.to_user_string()
        merged = seen.setdefault(name, {})
        for key, value in materialization.metadata.items():
            merged[key] = getattr(value, "value", value)
    return {
        name: {key: metadata[key] for key in FIGURES.get(name, ()) if key in metadata}
        for name, metadata in seen.items()
    }


def summarize(result: dg.ExecuteInProcessResult | GraphResult) -> list[tuple[str, str]]:
    """One line per materialized asset with the figures that matter."""
    return [
        (name, ", ".join(f"{_LABELS.get(key, key)}={_shown(value)}" for key, value in figures.items()))
        for name, figures in asset_figures(result).items()
    ]


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

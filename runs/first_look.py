"""The first look (``ml-platform bootstrap``, what ``make dev`` runs before opening the UI): on an empty state
directory, a small platform with something in every group, so the UI shows a champion, evaluated checks and
the monitoring group's values instead of a graph with nothing materialized.

What it does is the demo's first half on small data, in the Dagster instance the UI reads:

1. job ``bootstrap`` over :data:`HISTORY_DAYS` days of the synthetic source ending the day before yesterday
   (data, features, training, evaluation with its gates, the champion), as two runs
   (``runs.launch.launch_graph``: the days' assets, then training to promotion);
2. job ``deploy``: the champion served by the local model server, with its smoke check;
3. yesterday's transactions as live traffic, and their labels (arrived at once: a first look cannot wait
   weeks for chargebacks);
4. job ``monitor``: drift, prediction drift, live performance, serving figures, feature skew and the health
   summary, with their checks;
5. the model server stopped again, as the demo stops it (``--keep-serving`` leaves it running).

A state directory that is not empty (a run in the Dagster instance, or a registered model version) is left
as it is: the first look never writes over someone's work, and a second ``make dev`` starts at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ml_platform.settings import Settings
from runs.progress import Progress

if TYPE_CHECKING:
    import dagster as dg

# 20 days: the time split's test share (15%, the drift check's reference) is then 3 whole days. With another
# count it starts inside a day, and the hours of that day's tail weigh too much: next-day traffic from the
# same source then showed hour_of_day "drift" in up to a third of the days tried (1 of 6 features drifted
# fails drift_score at 0.15). At 1,000 a day the day counts vary little, so the cut stays near midnight.
HISTORY_DAYS = 20
TRANSACTIONS_PER_DAY = 1_000
CUSTOMERS = 1_000
# Yesterday's traffic: enough labelled fraud (~2%) for live performance to judge the window (its
# min_labelled_positives, 20 by default), few enough that it is sent in a second or two.
TRAFFIC_ROWS = 2_000


class FirstLookError(RuntimeError):
    """A step of the first look failed; the message says which and why."""


@dataclass
class FirstLook:
    """What the first look did (``skipped``: why it did nothing, the state not being empty)."""

    skipped: str = ""
    days: tuple[date, date] | None = None
    champion: int | None = None
    checks: dict[str, bool] = field(default_factory=dict)  # asset:check -> passed, the latest evaluation of each
    monitoring: list[str] = field(default_factory=list)  # the monitoring assets materialized
    traffic_rows: int = 0
    server_stopped: bool = False

    def summary(self) -> str:
        if self.skipped:
            return f"first look: nothing to do, {self.skipped}"
        failed = sorted(name for name, passed in self.checks.items() if not passed)
        first, last = self.days or ("-", "-")
        lines = [
            f"first look: {first} .. {last} materialized, champion v{self.champion}",
            f"  checks: {len(self.checks) - len(failed)} of {len(self.checks)} passed"
            + (f" (failed: {', '.join(failed)})" if failed else ""),
            f"  monitoring: {', '.join(self.monitoring)} over {self.traffic_rows:,} predictions",
        ]
        if self.server_stopped:
            lines.append("  the model server was stopped again (`ml-platform deploy` serves the champion)")
        return "\n".join(lines)


def existing_state(instance: dg.DagsterInstance, settings: Settings) -> str:
    """Why the state directory is not empty ("" when it is): the runs in the instance, the registered model."""
    from ml_platform.registry import CHAMPION, Registry

    registry = Registry.from_settings(settings)
    runs = instance.get_runs_count()
    aliases = registry.aliases()
    versions = registry.tags_by_version() if not aliases else {}
    if not runs and not aliases and not versions:
        return ""
    found = [f"{runs} run{'s' if runs != 1 else ''} in the Dagster instance"] if runs else []
    if aliases.get(CHAMPION) is not None:
        found.append(f"champion v{aliases[CHAMPION]}")
    elif aliases or versions:
        found.append(f"model {settings.model_name} registered, no champion")
    return f"{settings.home} already holds {' and '.join(found)}"


def bootstrap(
    settings: Settings,
    progress: Progress,
    *,
    days: int = HISTORY_DAYS,
    transactions_per_day: int = TRANSACTIONS_PER_DAY,
    customers: int = CUSTOMERS,
    keep_serving: bool = False,
    today: date | None = None,
) -> FirstLook:
    """The first look on an empty state directory; nothing on any other (see the module's docstring)."""
    import dagster as dg

    from runs.launch import failure_report, launch_graph, load_definitions, reach_partitions_back_to

    instance = dg.DagsterInstance.get()
    skipped = existing_state(instance, settings)
    if skipped:
        return FirstLook(skipped=skipped)
    today = today or datetime.now(UTC).date()
    live_day = today - timedelta(days=1)
    first, last = live_day - timedelta(days=days), live_day - timedelta(days=1)
    data = {"transactions_per_day": transactions_per_day, "n_customers": customers}
    look = FirstLook(days=(first, last))
    progress.line(f"first look: {days} days of {transactions_per_day:,} transactions, {first} .. {last}")

    reach_partitions_back_to(first)  # before the definitions are built
    defs = load_definitions()
    result = launch_graph({"raw_transactions": data}, start=first, end=last, defs=defs)
    if not result.success:
        raise FirstLookError(f"the bootstrap run {result.run_id} failed:\n{failure_report(result)}")

    from runs.closed_loop import ClosedLoop, LoopError, LoopPlan  # imports the sensors and so the assets

    loop = ClosedLoop(settings, defs)
    try:
        look.champion = loop.serve()
        plan = LoopPlan(data, drift_start=live_day, drift_days=1, drift=0.0, drift_rows_per_day=TRAFFIC_ROWS)
        with progress.stage(f"{TRAFFIC_ROWS:,} of {live_day}'s transactions sent to v{look.champion}, labels in"):
            traffic = loop.send(plan.transactions(live_day, live_day, TRAFFIC_ROWS), label_delay=timedelta(0))
        look.traffic_rows = traffic.answered
        monitored = loop.run("monitor")
    except LoopError as error:
        raise FirstLookError(str(error)) from error
    finally:
        if not keep_serving:
            look.server_stopped = loop.stop_server()
    look.monitoring = sorted(
        {e.event_specific_data.materialization.asset_key.to_user_string() for e in _materializations(monitored)}
    )
    look.checks = latest_check_verdicts(instance, defs)
    return look


def latest_check_verdicts(instance: dg.DagsterInstance, defs: dg.Definitions) -> dict[str, bool]:
    """Every check of the graph that was evaluated: asset:check -> whether its latest evaluation passed."""
    import dagster as dg

    verdicts = {}
    for key in defs.resolve_asset_graph().asset_check_keys:
        record = instance.get_latest_asset_check_evaluation_record(key)
        evaluation = record.evaluation if record is not None else None
        if isinstance(evaluation, dg.AssetCheckEvaluation):
            verdicts[key.to_user_string()] = evaluation.passed
    return verdicts


def _materializations(result: Any) -> list:
    return list(result.get_asset_materialization_events())

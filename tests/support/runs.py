"""The graph tests' shared vocabulary: the session's small data, what a run produced, and live traffic.

- ``SMALL_DATA``, ``FIRST_DAY``, ``LAST_DAY``: the seeded synthetic source and the 14 days the session's
  bootstrap run materializes (the production-profile tests bootstrap the same data on their services);
  ``PAST_THE_GATE``, a retrain's config that promotes whatever the comparison with the champion says.
- ``materializations``, ``check_results``: a Dagster run result's materialization metadata and check
  verdicts as plain values.
- ``drifted_transactions``, ``send_with_labels``, ``wait_until_logged``: traffic for the served champion
  and its (already arrived) labels, returning once the server's log holds every answer.
- ``monitoring_resources``, ``run_monitor``: the monitor job's assets and checks with the monitoring
  resource's fields changed (thresholds, the log directory, the cooldown).
- ``catch_up_features``: the features of every stored day through a day, in one run.
- ``forget_days``: a module's own ingested days removed again (features included), the online store reloaded.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pandas as pd

from assets import ALL_ASSETS
from assets.monitoring import WINDOW_ASSETS
from ml_platform.data.synthetic import SyntheticConfig, generate_transactions
from ml_platform.monitoring.labels import delayed_labels
from ml_platform.monitoring.traffic import send_traffic
from ml_platform.predictions import read_prediction_log
from resources.monitoring import MonitoringResource

SMALL_DATA = {"raw_transactions": {"n_customers": 1_500, "transactions_per_day": 1_200, "seed": 7}}
FIRST_DAY, LAST_DAY = date(2026, 3, 1), date(2026, 3, 14)
# Config of a retrain that must get past the beats_champion gate whatever the graph tests did before it (a
# retrain on the same days ties the champion or falls a little short of it, after a drift retrain more):
# a margin of -1.0 promotes whatever the comparison says, for the tests whose subject is what comes after
# the gate, not the gate itself.
PAST_THE_GATE = {"model_evaluation": {"min_improvement": -1.0}}

# A server's log reaches disk in batches (every 2 s by default); on a busy machine much later than that.
LOG_DEADLINE_SECONDS = 60.0


def materializations(result, asset: str) -> list[dict]:
    """The metadata of each materialization of ``asset`` in the run ``result``, as plain values."""
    found = []
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        if materialization.asset_key == dg.AssetKey(asset):
            found.append({k: getattr(v, "value", v) for k, v in materialization.metadata.items()})
    return found


def check_results(result) -> dict[tuple[str, str], bool]:
    """Each check evaluated in the run ``result``: (asset, check) -> passed."""
    return {
        (
            e.event_specific_data.asset_key.to_user_string(),
            e.event_specific_data.check_name,
        ): e.event_specific_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def drifted_transactions(day: date, rows: int = 600, drift: float = 1.0) -> pd.DataFrame:
    """A day of the session's synthetic customers, drifted, as live traffic (never ingested)."""
    source = SMALL_DATA["raw_transactions"]
    config = SyntheticConfig(
        n_customers=source["n_customers"], seed=source["seed"], transactions_per_day=rows, drift=drift
    )
    return generate_transactions(config, day, day + timedelta(days=1))


def endpoint(settings) -> str:
    return f"http://127.0.0.1:{settings.serving_port}"


def wait_until_logged(log_dir, request_ids: set[str], timeout: float = LOG_DEADLINE_SECONDS) -> pd.DataFrame:
    """The log once every answer in ``request_ids`` is on disk (or the deadline passed: the caller's
    assertions then say what is missing)."""
    deadline = time.monotonic() + timeout
    while True:
        logged = read_prediction_log(log_dir)
        if set(request_ids) <= set(logged["request_id"]) or time.monotonic() > deadline:
            return logged
        time.sleep(0.25)


def send_with_labels(settings, defs, transactions: pd.DataFrame, flip_fraction: float, seed: int = 0) -> dict:
    """Send ``transactions`` to the served model and store their (already arrived) labels."""
    paths = defs.resources["monitoring"].paths()
    traffic = send_traffic(endpoint(settings), transactions)
    assert traffic.failed == 0, traffic.errors
    labels = delayed_labels(
        transactions,
        sent_at=datetime.now(UTC) - timedelta(minutes=1),
        delay=timedelta(0),
        flip_fraction=flip_fraction,
        seed=seed,
    )
    paths.labels().write(labels)
    wait_until_logged(paths.log_dir, set(transactions["transaction_id"]))
    return {"traffic": traffic, "labels": labels}


def monitoring_resources(defs, **overrides) -> dict:
    """The code location's resources with the monitoring resource's fields changed."""
    base = defs.resources["monitoring"]
    fields = {"log_dir": base.log_dir, "monitoring_dir": base.monitoring_dir, **overrides}
    return {**defs.resources, "monitoring": MonitoringResource(**fields)}


def run_monitor(defs, instance, *, window: str = "24h", **overrides):
    """The monitor job's assets and checks, with the monitoring resource changed by ``overrides``."""
    config = {"ops": {name: {"config": {"window": window}} for name in WINDOW_ASSETS}}
    return dg.materialize(
        ALL_ASSETS,
        selection=dg.AssetSelection.assets(*WINDOW_ASSETS),
        resources=monitoring_resources(defs, **overrides),
        instance=instance,
        run_config=config,
        raise_on_error=False,
    )


def catch_up_features(defs, through: date) -> None:
    """customer_stats and the online store brought up to every stored day through ``through``, in one run
    from the session's first day (some modules ingest days without refreshing the features)."""
    from runs.launch import launch

    result = launch("refresh_features", start=FIRST_DAY, end=through, defs=defs)
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]


def forget_days(defs, days: list[date]) -> None:
    """The days' stored transactions and features deleted (readers of every stored day skip a missing one;
    the SQLite event log cannot wipe partitions, so Dagster still lists them), the online store emptied and
    loaded again from the offline table: for a module that ingested days of its own, so the online store of
    the tests after it holds no day they do not expect. The days must be the newest stored ones (no later
    day's running stats continue from them). The model server must be stopped (it holds the online store
    open)."""
    from ml_platform.features.store import offline_days
    from runs.launch import launch

    repo = defs.resources["feast"].repo()
    later = [day for day in offline_days(repo) if day > min(days) and day not in days]
    assert not later, f"days {later} continue from the days to forget; forget them too"
    for asset in ("raw_transactions", "validated_transactions"):
        for day in days:
            defs.resources["state"].table_path(asset, day.isoformat()).unlink(missing_ok=True)
    for day in days:
        repo.offline_day_path(day).unlink(missing_ok=True)
        repo.state_path(day).unlink(missing_ok=True)
        repo.dropped_path(day).unlink(missing_ok=True)
    # A load writes every customer of the offline table and deletes no one: a customer first seen on one of
    # these days would keep their stats online. The SQLite online store starts empty again instead (the
    # reload applies the repo, which creates its table, then loads every customer).
    repo.online_store_path.unlink(missing_ok=True)
    assert launch("reload_online_store", defs=defs).success
    offline = pd.read_parquet(repo.offline_table_path, columns=["event_timestamp"])
    assert offline["event_timestamp"].max() < pd.Timestamp(min(days), tz="UTC")

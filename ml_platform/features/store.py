"""The Feast feature repository, defined in code, and the point-in-time join.

The join gives each transaction its customer's stats as of the transaction's daily snapshot
(``features.engineering.snapshot_time``: everything strictly before 00:00 UTC of its day), which is
what the online store, loaded nightly through the last complete day, serves for that transaction: the
training set, batch scoring and the skew check read the rows serving reads.

The offline table is a folder of parquet files, one per UTC day (``customer_stats/<YYYY-MM-DD>.parquet``,
the rows of that day's partition of asset customer_stats); the Feast file source names them with a glob,
which the DuckDB offline store reads as one table. Beside it, ``customer_stats_state/<YYYY-MM-DD>.parquet``
holds the carried state after each day (one row per customer seen so far), from which the next day
continues. A day without transactions has neither file.

The repo config is built from :class:`~ml_platform.settings.Settings` (DuckDB offline store over the
parquet feature table, file registry, all under the state directory; the online store is SQLite there
too in the local profile and Redis in the production profile). DuckDB runs
the point-in-time join as one range join: 1M events join in ~7 s where Feast's dask file store takes
~30-60 s (it merges every event with every row of its customer first), and it keeps events that have no
earlier row instead of dropping them. A ``feature_store.yaml`` with the same
content is written beside it so the ``feast`` CLI works on the same repo.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from ml_platform.data.schema import ENTITY_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import (
    JOIN_OFFSET,
    STATE_COLUMNS,
    STORED_FEATURES,
    empty_customer_state,
    snapshot_time,
)
from ml_platform.settings import REDIS_PASSWORD_ENV, Settings
from ml_platform.storage import TABLE_SUFFIX, split_by_day, write_table, write_text_atomic

FEATURE_VIEW = "customer_stats"
FEATURE_SERVICE = "fraud_model_v1"
ENTITY = "customer"
OFFLINE_FOLDER = "customer_stats"  # <offline_dir>/customer_stats/<YYYY-MM-DD>.parquet: the offline table
STATE_FOLDER = "customer_stats_state"  # <offline_dir>/customer_stats_state/<YYYY-MM-DD>.parquet
ROW_ID = "__row_id"


# redis-py options for a server that must answer at once: no retries with back-off (redis-py's default
# retries a refused connection for ~5 s) and short socket timeouts, so a lookup against a Redis that is
# down fails in milliseconds and the model server answers 503 straight away.
FAIL_FAST_REDIS_OPTIONS = {"retry": "null", "socket_connect_timeout": "2", "socket_timeout": "2"}


@dataclass(frozen=True)
class FeatureRepo:
    """Where one Feast repo lives, and its online store: SQLite beside the repo, or Redis.

    ``redis_connection`` is Feast's ``connection_string`` (``host:port,db=N[,password=...]``); empty means
    the SQLite online store. It may hold a password, so it is left out of ``repr``.
    """

    repo_dir: Path
    offline_dir: Path
    project: str
    redis_connection: str = field(default="", repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> FeatureRepo:
        return cls(
            settings.feast_dir, settings.offline_features_dir, settings.feast_project, settings.redis_connection_string
        )

    @property
    def online_store_kind(self) -> str:
        return "redis" if self.redis_connection else "sqlite"

    def describe_online_store(self) -> str:
        """Where the online store is, for messages and metadata (no password)."""
        if not self.redis_connection:
            return f"SQLite online store {self.online_store_path}"
        address, *options = self.redis_connection.split(",")
        database = next((o.removeprefix("db=") for o in options if o.startswith("db=")), "0")
        return f"Redis online store at {address} (db {database})"

    def online_store_config(self, *, fail_fast: bool = False) -> dict[str, object]:
        """Feast's ``online_store`` section; ``fail_fast`` for request paths (see FAIL_FAST_REDIS_OPTIONS)."""
        if not self.redis_connection:
            return {"type": "sqlite", "path": str(self.online_store_path)}
        connection = self.redis_connection
        if fail_fast:
            present = {piece.split("=", 1)[0] for piece in connection.split(",") if "=" in piece}
            extra = [f"{key}={value}" for key, value in FAIL_FAST_REDIS_OPTIONS.items() if key not in present]
            connection = ",".join([connection, *extra])
        return {"type": "redis", "connection_string": connection}

    @property
    def registry_path(self) -> Path:
        return self.repo_dir / "registry.db"

    @property
    def online_store_path(self) -> Path:
        return self.repo_dir / "online_store.db"

    @property
    def offline_table_path(self) -> Path:
        """The offline table: a folder of one parquet file per day (``pd.read_parquet`` reads it whole)."""
        return self.offline_dir / OFFLINE_FOLDER

    @property
    def offline_source_path(self) -> str:
        """What the Feast file source reads: every day's file of the offline table."""
        return str(self.offline_table_path / f"*{TABLE_SUFFIX}")

    def offline_day_path(self, day: date) -> Path:
        return self.offline_table_path / f"{day.isoformat()}{TABLE_SUFFIX}"

    @property
    def state_dir(self) -> Path:
        return self.offline_dir / STATE_FOLDER

    def state_path(self, day: date) -> Path:
        """The carried customer state after ``day`` (one row per customer seen through that day)."""
        return self.state_dir / f"{day.isoformat()}{TABLE_SUFFIX}"

    def dropped_path(self, day: date) -> Path:
        """The customers a recomputation of ``day`` took out of that day (they had rows, have none now)."""
        return self.state_dir / "dropped" / f"{day.isoformat()}{TABLE_SUFFIX}"

    def config_yaml(self) -> str:
        """The repo's feature_store.yaml for the ``feast`` CLI. A Redis password is not written: Feast
        substitutes ``${ML_PLATFORM_REDIS_PASSWORD}`` from the environment when it reads the file."""
        if self.redis_connection:
            pieces = [
                f"password=${{{REDIS_PASSWORD_ENV}}}" if piece.startswith("password=") else piece
                for piece in self.redis_connection.split(",")
            ]
            online = f'online_store:\n  type: redis\n  connection_string: "{",".join(pieces)}"\n'
        else:
            online = f"online_store:\n  type: sqlite\n  path: {self.online_store_path}\n"
        return (
            f"project: {self.project}\n"
            "provider: local\n"
            f"registry: {self.registry_path}\n"
            f"{online}"
            "offline_store:\n  type: duckdb\n"
            "entity_key_serialization_version: 3\n"
        )


_FEAST_IMPORT = threading.Lock()


def import_feast() -> None:
    """Import Feast, once per process, without typeguard instrumenting it on the way in.

    Feast decorates its classes with typeguard's ``@typechecked``, which reads the source of every method
    and recompiles it with argument checks when the module loads: about 2 of the 3 s that ``import feast``
    takes on 2 cores (0.9 s without), paid by every process that opens the store (a Dagster step, the
    model server with an online store, the command line). The only Feast objects built here are the fixed
    definitions of :func:`feature_definitions`, so those run-time checks guard nothing of ours. While Feast's
    modules load, ``typechecked`` returns what it decorates unchanged (what typeguard does itself under
    ``python -O``); it is put back right after, for any other user of typeguard in the process.
    """
    with _FEAST_IMPORT:
        if "feast" in sys.modules:
            return
        import typeguard

        instrumenting = typeguard.typechecked

        def unchanged(target=None, **_options):
            return unchanged if target is None else target

        typeguard.typechecked = unchanged
        try:
            import feast  # noqa: F401  (every decorated module of Feast's that the store uses loads with it)
        finally:
            typeguard.typechecked = instrumenting


def open_store(repo: FeatureRepo, *, fail_fast: bool = False):
    """A FeatureStore on ``repo``; also (re)writes its feature_store.yaml for the feast CLI.

    ``fail_fast`` (the model server): a Redis online store that is down fails a lookup at once instead of
    after redis-py's retries. Batch loads keep the retries, which ride out a short blip.
    """
    import_feast()
    from feast import FeatureStore, RepoConfig
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig
    from feast.repo_config import RegistryConfig

    repo.repo_dir.mkdir(parents=True, exist_ok=True)
    yaml_path = repo.repo_dir / "feature_store.yaml"
    if not yaml_path.exists() or yaml_path.read_text() != repo.config_yaml():
        write_text_atomic(yaml_path, repo.config_yaml())
    config = RepoConfig(
        project=repo.project,
        provider="local",
        registry=RegistryConfig(registry_type="file", path=str(repo.registry_path)),
        online_store=repo.online_store_config(fail_fast=fail_fast),
        offline_store=DuckDBOfflineStoreConfig(),
        entity_key_serialization_version=3,
        repo_path=str(repo.repo_dir),
    )
    return FeatureStore(config=config)


def feature_definitions(repo: FeatureRepo) -> list:
    """Entity ``customer``, the parquet source, the ``customer_stats`` view and the model's service."""
    import_feast()
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    customer = Entity(
        name=ENTITY,
        join_keys=[ENTITY_COLUMN],
        value_type=ValueType.INT64,
        description="A card holder.",
    )
    source = FileSource(
        name="customer_stats_source",
        path=repo.offline_source_path,
        timestamp_field=TIMESTAMP_COLUMN,
        description="Each customer's history after every event time (asset customer_stats).",
    )
    view = FeatureView(
        name=FEATURE_VIEW,
        entities=[customer],
        # ttl 0 = the latest state never expires: a customer's history stays valid however long ago
        # the last order was (recency is a feature of its own).
        ttl=timedelta(0),
        schema=[
            Field(name="total_purchases", dtype=Int64, description="orders so far"),
            Field(name="avg_order_value", dtype=Float64, description="mean order amount so far"),
            Field(name="lifetime_value", dtype=Float64, description="sum of order amounts so far"),
            Field(name="last_order_ts", dtype=Float64, description="unix time of the latest order"),
        ],
        source=source,
        online=True,
        description="Customer spending history; days_since_last_order is derived from last_order_ts.",
    )
    service = FeatureService(
        name=FEATURE_SERVICE,
        features=[view],
        description="Features the fraud model reads from the store.",
    )
    return [customer, source, view, service]


def point_in_time_stats(store, events: pd.DataFrame) -> pd.DataFrame:
    """Each event's customer stats as of its daily snapshot, aligned with ``events``.

    The snapshot of an event is its customer's stats from every transaction strictly before 00:00 UTC
    of the event's day (:func:`~ml_platform.features.engineering.snapshot_time`): the store is asked as
    of the snapshot instant minus :data:`~ml_platform.features.engineering.JOIN_OFFSET`, so even an
    event at exactly 00:00:00 sees only earlier days. Events of one customer and day share a snapshot,
    so each (customer, day) is looked up once.

    The join carries a row id per lookup and is merged back onto every event, so an event comes back
    exactly once and in its place whatever the offline store does with lookups that have no earlier row
    (Feast's dask store silently drops one whose customer has rows, but none inside ``[ts - ttl, ts]``,
    even with ttl 0): a customer's first day has missing stats, never goes missing itself.
    """
    if events.empty:
        return pd.DataFrame({name: pd.Series(dtype="float64") for name in STORED_FEATURES}, index=events.index)
    snapshots = pd.DataFrame(
        {
            ENTITY_COLUMN: events[ENTITY_COLUMN].reset_index(drop=True),
            TIMESTAMP_COLUMN: snapshot_time(events[TIMESTAMP_COLUMN]).reset_index(drop=True),
        }
    )
    lookups = snapshots.drop_duplicates(ignore_index=True)
    entity_df = pd.DataFrame(
        {
            ROW_ID: np.arange(len(lookups)),
            ENTITY_COLUMN: lookups[ENTITY_COLUMN].to_numpy(),
            TIMESTAMP_COLUMN: lookups[TIMESTAMP_COLUMN] - JOIN_OFFSET,
        }
    )
    joined = store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service(FEATURE_SERVICE)
    ).to_df()
    if joined[ROW_ID].duplicated().any():
        raise RuntimeError("the point-in-time join returned some lookups twice")
    found = lookups.assign(**{ROW_ID: entity_df[ROW_ID]}).merge(
        joined[[ROW_ID, *STORED_FEATURES]], on=ROW_ID, how="left", validate="one_to_one"
    )
    aligned = snapshots.merge(
        found.drop(columns=ROW_ID), on=[ENTITY_COLUMN, TIMESTAMP_COLUMN], how="left", validate="many_to_one"
    )
    aligned.index = events.index
    return aligned[list(STORED_FEATURES)]


def _stored_days(directory: Path) -> list[date]:
    """The days that have a file in ``directory`` (``<YYYY-MM-DD>.parquet``), oldest first."""
    if not directory.is_dir():
        return []
    days = []
    for path in directory.glob(f"*{TABLE_SUFFIX}"):
        try:
            days.append(date.fromisoformat(path.name.removesuffix(TABLE_SUFFIX)))
        except ValueError:
            continue  # not a day's file (nothing else is written here)
    return sorted(days)


def offline_days(repo: FeatureRepo) -> list[date]:
    """The days the offline table has rows for, oldest first."""
    return _stored_days(repo.offline_table_path)


def store_day(repo: FeatureRepo, day: date, state: pd.DataFrame, rows: pd.DataFrame) -> None:
    """Keep one day's result of the running stats: its rows of the offline table and the state after it.

    Each file is written under a temporary name and renamed. A day without rows keeps neither file (an
    earlier run's files for it are removed): the next day continues from the newest state before it. When
    the day is recomputed, the customers its earlier rows had and its new rows lack are kept too: their
    online stats came from the earlier rows, so the day's online load must write them again.
    """
    earlier = repo.offline_day_path(day)
    before = pd.read_parquet(earlier, columns=[ENTITY_COLUMN]) if earlier.exists() else None
    dropped = before[~before[ENTITY_COLUMN].isin(rows[ENTITY_COLUMN])].drop_duplicates() if before is not None else None
    if dropped is not None and not dropped.empty:
        write_table(dropped.reset_index(drop=True), repo.dropped_path(day))
    if rows.empty:
        repo.offline_day_path(day).unlink(missing_ok=True)
        repo.state_path(day).unlink(missing_ok=True)
        return
    write_table(rows.reset_index(drop=True), repo.offline_day_path(day))
    write_table(state[list(STATE_COLUMNS)].reset_index(drop=True), repo.state_path(day))


def state_before(repo: FeatureRepo, day: date) -> tuple[date | None, pd.DataFrame]:
    """The newest carried state of a day before ``day``, and that day (None and no customers if none)."""
    earlier = [stored for stored in _stored_days(repo.state_dir) if stored < day]
    if not earlier:
        return None, empty_customer_state()
    state = pd.read_parquet(repo.state_path(earlier[-1]))
    missing = sorted(set(STATE_COLUMNS) - set(state.columns))
    if missing:
        raise ValueError(f"carried state {repo.state_path(earlier[-1])} lacks the columns {', '.join(missing)}")
    return earlier[-1], state[list(STATE_COLUMNS)]


def write_offline_table(repo: FeatureRepo, stats: pd.DataFrame) -> None:
    """Replace the whole offline table with ``stats`` (rows of :func:`compute_customer_stats`), one file
    per day, for loads outside the pipeline (tests, benchmarks). Days not in ``stats`` are removed, and so
    is the carried state, which described the table replaced."""
    by_day = split_by_day(stats, TIMESTAMP_COLUMN)
    for day in offline_days(repo):
        if day.isoformat() not in by_day:
            repo.offline_day_path(day).unlink()
    for day in _stored_days(repo.state_dir):
        repo.state_path(day).unlink()
    for name, rows in by_day.items():
        write_table(rows.reset_index(drop=True), repo.offline_day_path(date.fromisoformat(name)))


def last_changes(repo: FeatureRepo, first: date, last: date) -> pd.DataFrame:
    """The customers whose online stats the days [first, last] settle, each with their newest row through
    ``last`` (from the carried state after it).

    Those are the customers with rows on these days, and the ones a recomputation took out of them, except
    any who also have rows on a later stored day: that day's load writes them. So every customer is
    written by the load of the day of their newest row, with that row, whatever order the days are loaded
    in, and loading every day gives what a full load gives. A customer left with no row at all is not
    written (the online store cannot forget one; job ``reload_online_store`` into an empty store does).
    """
    columns = [ENTITY_COLUMN, TIMESTAMP_COLUMN, *STORED_FEATURES]
    days = offline_days(repo)
    touched = [
        pd.read_parquet(path, columns=[ENTITY_COLUMN])
        for day in sorted(set(days) | set(_stored_days(repo.dropped_path(first).parent)))
        if first <= day <= last
        for path in (repo.offline_day_path(day), repo.dropped_path(day))
        if path.exists()
    ]
    _, state = state_before(repo, last + timedelta(days=1))
    if not touched or state.empty:
        return pd.DataFrame(columns=columns)
    customers = pd.concat(touched)[ENTITY_COLUMN]
    later = [pd.read_parquet(repo.offline_day_path(day), columns=[ENTITY_COLUMN]) for day in days if day > last]
    if later:
        customers = customers[~customers.isin(pd.concat(later)[ENTITY_COLUMN])]
    settled = state[state[ENTITY_COLUMN].isin(customers)]
    return settled[columns].sort_values(ENTITY_COLUMN, kind="stable").reset_index(drop=True)


def write_online_changes(store, changes: pd.DataFrame) -> int:
    """Write :func:`last_changes` rows to the online store (through Feast, as a load over their window
    writes them); returns how many customers were written."""
    if not changes.empty:
        store.write_to_online_store(FEATURE_VIEW, changes)
    return len(changes)


def load_online_store(store, start: datetime, end: datetime) -> None:
    """Load every customer's latest stats in [start, end) into the online store: the full load.

    The pipeline loads the online store day by day (:func:`last_changes`); this loads it whole from the
    offline table, to repair it (job ``reload_online_store``) or to fill a new one. It holds each
    customer's stats through the last complete day: the daily snapshot that the next day's transactions
    are served with, and that :func:`point_in_time_stats` gives them for training.

    It writes every customer with rows in the window and deletes no one. (Feast's
    ``materialize_incremental`` is not used: on a view never loaded it looks back only one ttl, so older
    rows would never reach the store.)
    """
    if end <= start:
        raise ValueError(f"online store window is empty: start {start} is not before end {end}")
    store.materialize(start_date=start, end_date=end, feature_views=[FEATURE_VIEW])


def offline_window(repo: FeatureRepo) -> tuple[datetime, datetime]:
    """[first row's time, last row's time + 1 s) of the offline table: the window of a full load."""
    table = pd.read_parquet(repo.offline_table_path, columns=[TIMESTAMP_COLUMN]) if offline_days(repo) else None
    if table is None or table.empty:
        raise ValueError(f"the offline table {repo.offline_table_path} has no rows; nothing to load")
    return (
        table[TIMESTAMP_COLUMN].min().to_pydatetime(),
        table[TIMESTAMP_COLUMN].max().to_pydatetime() + timedelta(seconds=1),
    )

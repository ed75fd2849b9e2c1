"""The IO manager: tables as parquet and small results as JSON under the state directory."""

from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import pandas as pd

from ml_platform.storage import (
    RECORD_SUFFIX,
    TABLE_SUFFIX,
    asset_path,
    read_record,
    split_by_day,
    table_path,
    write_record,
    write_table,
)
from ml_platform.training.datasets import training_sets_dir


class StateIOManager(dg.ConfigurableIOManager):
    """Stores DataFrames as parquet (one file per partition) and dicts as JSON. Never pickles.

    A run over a range of daily partitions (single-run backfill) hands over one frame; it is split
    into one file per partition by the asset's ``partition_column`` metadata. An unpartitioned asset
    reading a partitioned one gets every stored partition concatenated; partitions never
    materialized are skipped only when the input says ``allow_missing_partitions``.
    """

    base_dir: str

    def path(self, asset_key: dg.AssetKey, partition: str | None = None, suffix: str = TABLE_SUFFIX) -> Path:
        return asset_path(self.base_dir, asset_key.path, partition, suffix)

    def op_output_path(self, run_id: str, step_key: str, name: str) -> Path:
        """Where an op (not an asset) keeps its result: per run, so runs never overwrite each other."""
        return Path(self.base_dir) / "_runs" / run_id / step_key / f"{name}{RECORD_SUFFIX}"

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if obj is None:
            return
        if not context.has_asset_key:
            if not isinstance(obj, dict):
                raise TypeError(f"op {context.step_key} returned {type(obj).__name__}; ops here return dicts (JSON)")
            write_record(obj, self.op_output_path(context.run_id, context.step_key, context.name))
            return
        key = context.asset_key
        if isinstance(obj, pd.DataFrame):
            if context.has_asset_partitions:
                written = self._write_partitions(context, obj)
                context.add_output_metadata({"partitions_written": len(written)})
            else:
                path = self.path(key)
                write_table(obj, path)
                context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})
        elif isinstance(obj, dict):
            if context.has_asset_partitions:
                raise TypeError(f"{key.to_user_string()}: partitioned assets must return DataFrames")
            path = self.path(key, suffix=RECORD_SUFFIX)
            write_record(obj, path)
            context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})
        else:
            raise TypeError(
                f"{key.to_user_string()} returned {type(obj).__name__}; "
                "this IO manager stores pandas DataFrames (parquet) and dicts (JSON)"
            )

    def _write_partitions(self, context: dg.OutputContext, frame: pd.DataFrame) -> list[str]:
        keys = list(context.asset_partition_keys)
        column = context.definition_metadata.get("partition_column")
        if column and column in frame.columns:
            undated = int(frame[column].isna().sum())
            if undated:
                raise ValueError(
                    f"{context.asset_key.to_user_string()}: {undated} rows have no {column}, so they belong to "
                    "no day's partition; nothing was written"
                )
        if len(keys) == 1:
            write_table(frame, self.path(context.asset_key, keys[0]))
            return keys
        if not column or column not in frame.columns:
            raise ValueError(
                f"{context.asset_key.to_user_string()}: a run over {len(keys)} partitions needs the asset's "
                f"metadata 'partition_column' to name a timestamp column of its output"
            )
        parts = split_by_day(frame, column)
        outside = sorted(set(parts) - set(keys))
        if outside:
            raise ValueError(
                f"{context.asset_key.to_user_string()}: rows fall on days outside this run's partitions: "
                f"{', '.join(outside[:5])}"
            )
        empty = frame.iloc[0:0]
        # Each day's file is replaced atomically: a failure part-way never leaves a half-written day.
        for partition in keys:
            write_table(parts.get(partition, empty).reset_index(drop=True), self.path(context.asset_key, partition))
        return keys

    def load_input(self, context: dg.InputContext) -> object:
        if not context.has_asset_key:
            upstream = context.upstream_output
            return read_record(self.op_output_path(upstream.run_id, upstream.step_key, upstream.name))
        key = context.asset_key
        if context.has_asset_partitions:
            return self._read_partitions(context)
        table, record = self.path(key), self.path(key, suffix=RECORD_SUFFIX)
        if table.exists():
            return pd.read_parquet(table)
        if record.exists():
            return read_record(record)
        raise FileNotFoundError(f"{key.to_user_string()} has not been materialized yet (no {table} or {record})")

    def _read_partitions(self, context: dg.InputContext) -> pd.DataFrame:
        key = context.asset_key
        allow_missing = bool((context.definition_metadata or {}).get("allow_missing_partitions"))
        frames, missing = [], []
        for partition in context.asset_partition_keys:
            path = self.path(key, partition)
            if path.exists():
                frames.append(pd.read_parquet(path))
            else:
                missing.append(partition)
        if missing and not allow_missing:
            raise FileNotFoundError(
                f"{key.to_user_string()}: {len(missing)} partitions are not materialized: {', '.join(missing[:5])}"
            )
        if not frames:
            raise FileNotFoundError(f"{key.to_user_string()}: no partition has been materialized yet")
        context.log.info(f"loaded {len(frames)} partitions of {key.to_user_string()} ({len(missing)} not materialized)")
        return pd.concat(frames, ignore_index=True)


class StateStorage(dg.ConfigurableResource):
    """Paths of stored assets, for code that hands a file to another process (the training job), where
    every training set is kept (content-addressed), and where rejected batches are kept for inspection."""

    base_dir: str

    def table_path(self, asset: str, partition: str | None = None) -> Path:
        return table_path(self.base_dir, asset, partition)

    def stored_days(self, asset: str) -> list[date]:
        """The days a daily-partitioned table asset has a stored file for (the partitions the IO manager
        reads), oldest first."""
        folder = table_path(self.base_dir, asset, "2000-01-01").parent
        days = []
        for path in folder.glob(f"*{TABLE_SUFFIX}") if folder.is_dir() else []:
            try:
                days.append(date.fromisoformat(path.name.removesuffix(TABLE_SUFFIX)))
            except ValueError:  # not a day's file (a temporary, a stray)
                continue
        return sorted(days)

    def training_sets_dir(self) -> Path:
        """``<base>/training_sets``: each training set once, as ``<sha256>.parquet``, never overwritten."""
        return training_sets_dir(self.base_dir)

    def rejected_path(self, asset: str, label: str, run_id: str) -> Path:
        """``<asset dir>/rejected/<label>-<UTC time>-<run>.parquet``: beside the asset's partitions, never
        one of them (the IO manager reads partitions by name, so a rejected batch is never read as data)."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        directory = Path(self.base_dir).joinpath(*dg.AssetKey.from_user_string(asset).path, "rejected")
        return directory / f"{label}-{stamp}-{run_id[:8]}{TABLE_SUFFIX}"

"""Lineage: what a model version learned from, and where it came from.

Recorded when a version is trained (:class:`TrainingLineage`, by :mod:`ml_platform.training.job`):

- as version tags, also set on the version's MLflow run: the code version (:data:`CODE_VERSION_TAG`), the
  Dagster run that trained it (:data:`DAGSTER_RUN_ID_TAG`) and a summary of the raw daily partitions its
  training set was built from (first day, last day, how many);
- as the run's artifact ``lineage.json`` (:data:`LINEAGE_ARTIFACT`): the row count of every day. It is an
  artifact, not a tag, because an MLflow tag value holds at most 5000 characters and a year of days does
  not fit in one.

The raw partitions are the UTC days of the transactions (the daily partitions of the validated
transactions): the training set keeps every validated transaction, so its rows per day of
``event_timestamp`` are the row counts of the partitions it was built from.

The code version is the git commit of the checkout the package runs from, with ``+dirty`` when its
working tree has changes (untracked files included); outside a checkout (an image) it is what the
environment variable :data:`CODE_VERSION_ENV` declares, and None when neither says.

Read back by :func:`version_lineage` from the registry alone (tags, the run, its artifact, the champion
history) and the stored training sets; a version registered before these were recorded reads as "not
recorded" field by field. :func:`lineage_document` is the stable JSON shape of ``ml-platform lineage
--json`` (:data:`LINEAGE_FORMAT`), :func:`lineage_text` its text form.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from ml_platform.data.schema import TIMESTAMP_COLUMN
from ml_platform.mlflow_ui import model_version_url, run_url
from ml_platform.registry import (
    CHAMPION,
    CODE_VERSION_TAG,
    DAGSTER_RUN_ID_TAG,
    LINEAGE_ARTIFACT,
    MODEL_DIGEST_TAG,
    PARTITION_COUNT_TAG,
    PARTITIONS_FIRST_DAY_TAG,
    PARTITIONS_LAST_DAY_TAG,
    TRAINING_DATA_END_TAG,
    TRAINING_SET_DIGEST_TAG,
    ChampionHistoryEntry,
    Registry,
)
from ml_platform.training.datasets import stored_training_set_path

if TYPE_CHECKING:
    import pandas as pd

CODE_VERSION_ENV = "ML_PLATFORM_CODE_VERSION"
DIRTY_SUFFIX = "+dirty"
# A declared code version: a commit, a tag or an image version; no spaces, quotes or control characters.
_DECLARED_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
PACKAGE_DIR = Path(__file__).resolve().parent
# The run tag the orchestrator sets on a training run: the Dagster run that trained it (read for versions
# registered before DAGSTER_RUN_ID_TAG was set on the version).
RUN_TAG_DAGSTER_RUN_ID = "dagster_run_id"
# The Dagster UI of the local profile (`make dev`); the MLflow UI's links are made by ml_platform.mlflow_ui.
LOCAL_DAGSTER_UI = "http://127.0.0.1:3000"
LINEAGE_FORMAT = 1
NOT_RECORDED = "not recorded"
_NS_PER_DAY = 86_400_000_000_000


class UnknownVersion(LookupError):
    """The model has no such version."""


# ---- recording, at training time ----------------------------------------------------------------------
def current_code_version(environ: Mapping[str, str] | None = None, package_dir: Path | None = None) -> str | None:
    """The version of the code running: the git commit of the checkout ``package_dir`` (default: this
    package's directory) is part of, with :data:`DIRTY_SUFFIX` when its working tree has changes; else the
    value of :data:`CODE_VERSION_ENV` in ``environ`` (default: the process's); else None. A declared value
    that is not a plain version string raises ValueError naming the variable."""
    commit = _git_commit(PACKAGE_DIR if package_dir is None else package_dir)
    if commit is not None:
        return commit
    declared = (os.environ if environ is None else environ).get(CODE_VERSION_ENV, "").strip()
    if not declared:
        return None
    if not _DECLARED_VERSION.fullmatch(declared):
        raise ValueError(
            f"{CODE_VERSION_ENV}={declared[:80]!r} is not a code version: expected a commit, tag or image version "
            "(letters, digits and . _ : / @ + -, at most 128 characters)"
        )
    return declared


def _git_commit(package_dir: Path) -> str | None:
    """HEAD of the git checkout whose ``<root>/<package name>`` is ``package_dir``, or None (no checkout, no
    git, no commit yet, or a package installed elsewhere inside some other repository)."""
    try:
        import git
    except ImportError:  # GitPython raises ImportError when it finds no git executable
        return None
    try:
        with git.Repo(package_dir, search_parent_directories=True) as repo:
            root = repo.working_tree_dir
            if root is None or Path(root).resolve() / package_dir.name != package_dir.resolve():
                return None
            commit = repo.head.commit.hexsha
            dirty = repo.is_dirty(untracked_files=True)
    except (git.GitError, OSError, ValueError):  # ValueError: a repository without a commit
        return None
    return commit + (DIRTY_SUFFIX if dirty else "")


def daily_row_counts(frame: pd.DataFrame, column: str = TIMESTAMP_COLUMN) -> dict[str, int]:
    """Rows of ``frame`` per UTC day of ``column`` (YYYY-MM-DD, like the daily partitions), oldest first.
    ValueError when the column is missing or a row has no time (it would belong to no day)."""
    import pandas as pd

    if column not in frame.columns:
        raise ValueError(f"no {column} column to count rows per day by (columns: {', '.join(map(str, frame.columns))})")
    times = pd.DatetimeIndex(pd.to_datetime(frame[column], utc=True))
    undated = int(times.isna().sum())
    if undated:
        raise ValueError(f"{undated} rows have no {column}, so they belong to no day")
    days = pd.Series(times.asi8 // _NS_PER_DAY).value_counts().sort_index()
    return {pd.Timestamp(int(day) * 86_400, unit="s").strftime("%Y-%m-%d"): int(rows) for day, rows in days.items()}


def partitions_summary(rows_by_day: Mapping[str, int]) -> dict[str, object]:
    """First day, last day, how many days and rows (None for the days of an empty mapping)."""
    days = sorted(rows_by_day)
    return {
        "first_day": days[0] if days else None,
        "last_day": days[-1] if days else None,
        "count": len(days),
        "total_rows": int(sum(rows_by_day.values())),
    }


@dataclass(frozen=True)
class TrainingLineage:
    """What a training run records about its origin (see the module docstring)."""

    rows_by_day: dict[str, int]
    code_version: str | None
    dagster_run_id: str | None

    def tags(self) -> dict[str, str]:
        """Version (and run) tags: what is known, nothing for what is not."""
        summary = partitions_summary(self.rows_by_day)
        tags = {PARTITION_COUNT_TAG: str(summary["count"])}
        if summary["first_day"] is not None:
            tags[PARTITIONS_FIRST_DAY_TAG] = str(summary["first_day"])
            tags[PARTITIONS_LAST_DAY_TAG] = str(summary["last_day"])
        if self.code_version:
            tags[CODE_VERSION_TAG] = self.code_version
        if self.dagster_run_id:
            tags[DAGSTER_RUN_ID_TAG] = self.dagster_run_id
        return tags

    def document(self, *, training_set_digest: str, training_set_file: str) -> dict[str, object]:
        """The run's ``lineage.json``."""
        return {
            "format": LINEAGE_FORMAT,
            "training_set": {"digest": training_set_digest, "file": training_set_file},
            "raw_partitions": {**partitions_summary(self.rows_by_day), "rows_by_day": dict(self.rows_by_day)},
            "code_version": self.code_version,
            "dagster_run_id": self.dagster_run_id,
        }


# ---- reading back -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionLineage:
    """What the registry and the stored training sets say about one version; None: not recorded."""

    model_name: str
    version: int
    aliases: tuple[str, ...]
    training_set_digest: str | None
    training_set_file: str | None  # the stored file, when it is kept under the training sets directory
    newest_transaction: str | None
    partitions_first_day: str | None
    partitions_last_day: str | None
    partition_count: int | None
    rows_by_day: dict[str, int] | None
    code_version: str | None
    dagster_run_id: str | None
    dagster_run_url: str | None
    mlflow_run_id: str | None
    mlflow_run_url: str | None
    model_digest: str | None
    promotion: ChampionHistoryEntry | None  # None: never promoted
    notes: tuple[str, ...] = ()  # why something recorded could not be read or found
    mlflow_version_url: str | None = None  # the registered version's page in the MLflow UI

    @property
    def total_rows(self) -> int | None:
        return sum(self.rows_by_day.values()) if self.rows_by_day is not None else None


def version_lineage(
    registry: Registry,
    version: int | None = None,
    *,
    training_sets_dir: Path | None = None,
    mlflow_ui: str | None = None,
    dagster_ui: str | None = None,
) -> VersionLineage:
    """The lineage of ``version`` (default: the champion). URLs are made from the UI bases given (none:
    no URL; ``mlflow_ui``: :attr:`ml_platform.settings.Settings.mlflow_ui`); ``training_sets_dir`` is where
    the stored training set file is looked for.
    :class:`UnknownVersion` names the version (or the missing champion) when there is none."""
    from mlflow.exceptions import MlflowException

    aliases = registry.aliases()
    if version is None:
        version = aliases.get(CHAMPION)
        if version is None:
            raise UnknownVersion(f"{registry.model_name} has no champion yet; name a version with --version")
    try:
        found = registry.model_version(version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise UnknownVersion(f"{registry.model_name} has no version {version}") from None
        raise
    tags = dict(found.tags)
    notes: list[str] = []

    run_id = found.run_id or None
    run_tags: dict[str, str] = {}
    mlflow_run_url = None
    run_readable = False
    if run_id is not None:
        try:
            run = registry.client.get_run(run_id)
        except MlflowException as error:
            notes.append(f"MLflow run {run_id} cannot be read: {error.message}")
        else:
            run_readable = True
            run_tags = dict(run.data.tags)
            if mlflow_ui:
                mlflow_run_url = run_url(mlflow_ui, run.info.experiment_id, run_id)

    digest = tags.get(TRAINING_SET_DIGEST_TAG) or None
    training_set_file = None
    if digest is not None and training_sets_dir is not None:
        try:
            training_set_file = str(stored_training_set_path(training_sets_dir, digest))
        except (FileNotFoundError, ValueError) as error:
            notes.append(f"training set file: {error}")

    rows_by_day = None
    if run_readable:
        try:
            rows_by_day = _recorded_rows_by_day(registry.run_document(version, LINEAGE_ARTIFACT))
        except ValueError as error:
            notes.append(f"{LINEAGE_ARTIFACT} of run {run_id} cannot be used: {error}")
    summary = partitions_summary(rows_by_day) if rows_by_day is not None else {}
    count_tag = tags.get(PARTITION_COUNT_TAG)
    dagster_run_id = tags.get(DAGSTER_RUN_ID_TAG) or run_tags.get(RUN_TAG_DAGSTER_RUN_ID) or None
    history = {entry.version: entry for entry in registry.champion_history()}
    return VersionLineage(
        model_name=registry.model_name,
        version=int(version),
        aliases=tuple(sorted(alias for alias, target in aliases.items() if target == int(version))),
        training_set_digest=digest,
        training_set_file=training_set_file,
        newest_transaction=tags.get(TRAINING_DATA_END_TAG) or None,
        partitions_first_day=tags.get(PARTITIONS_FIRST_DAY_TAG) or summary.get("first_day"),
        partitions_last_day=tags.get(PARTITIONS_LAST_DAY_TAG) or summary.get("last_day"),
        partition_count=int(count_tag) if count_tag and count_tag.isdigit() else summary.get("count"),
        rows_by_day=rows_by_day,
        code_version=tags.get(CODE_VERSION_TAG) or None,
        dagster_run_id=dagster_run_id,
        dagster_run_url=f"{dagster_ui.rstrip('/')}/runs/{dagster_run_id}" if dagster_ui and dagster_run_id else None,
        mlflow_run_id=run_id,
        mlflow_run_url=mlflow_run_url,
        model_digest=tags.get(MODEL_DIGEST_TAG) or None,
        promotion=history.get(int(version)),
        notes=tuple(notes),
        mlflow_version_url=model_version_url(mlflow_ui, registry.model_name, version) if mlflow_ui else None,
    )


def _recorded_rows_by_day(document: object) -> dict[str, int] | None:
    """The per-day row counts of a ``lineage.json`` (None when there is none); ValueError saying what is
    wrong with one that is not of the recorded shape."""
    if document is None:
        return None
    partitions = document.get("raw_partitions") if isinstance(document, dict) else None
    rows_by_day = partitions.get("rows_by_day") if isinstance(partitions, dict) else None
    if not isinstance(rows_by_day, dict):
        raise ValueError("expected an object with raw_partitions.rows_by_day")
    counts: dict[str, int] = {}
    for day, rows in rows_by_day.items():
        try:
            date.fromisoformat(day)
        except ValueError:
            raise ValueError(f"raw_partitions.rows_by_day has {day!r}, not a day (YYYY-MM-DD)") from None
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"raw_partitions.rows_by_day[{day!r}] is {rows!r}, not a row count")
        counts[day] = rows
    return dict(sorted(counts.items()))


# ---- output -------------------------------------------------------------------------------------------
def lineage_document(lineage: VersionLineage) -> dict[str, object]:
    """The stable JSON shape (``format`` :data:`LINEAGE_FORMAT`): every key is always there; null is "not
    recorded" (or, for a URL or the training set file, not known here), and ``not_recorded`` lists the
    fields the version did not record.

    ``{"format", "model", "version", "aliases": [..],
    "training_set": {"digest", "file", "newest_transaction"},
    "raw_partitions": {"first_day", "last_day", "count", "total_rows", "rows_by_day": {"YYYY-MM-DD": rows}},
    "code_version", "dagster_run": {"id", "url"}, "mlflow_run": {"id", "url"}, "mlflow_model_version": {"url"},
    "model_digest",
    "promotion": {"promoted", "promoted_at", "rolled_back_at", "rollback_reason"},
    "not_recorded": [..], "notes": [..]}``
    """
    promotion = lineage.promotion
    return {
        "format": LINEAGE_FORMAT,
        "model": lineage.model_name,
        "version": lineage.version,
        "aliases": list(lineage.aliases),
        "training_set": {
            "digest": lineage.training_set_digest,
            "file": lineage.training_set_file,
            "newest_transaction": lineage.newest_transaction,
        },
        "raw_partitions": {
            "first_day": lineage.partitions_first_day,
            "last_day": lineage.partitions_last_day,
            "count": lineage.partition_count,
            "total_rows": lineage.total_rows,
            "rows_by_day": dict(lineage.rows_by_day) if lineage.rows_by_day is not None else None,
        },
        "code_version": lineage.code_version,
        "dagster_run": {"id": lineage.dagster_run_id, "url": lineage.dagster_run_url},
        "mlflow_run": {"id": lineage.mlflow_run_id, "url": lineage.mlflow_run_url},
        "mlflow_model_version": {"url": lineage.mlflow_version_url},
        "model_digest": lineage.model_digest,
        "promotion": {
            "promoted": promotion is not None,
            "promoted_at": promotion.promoted_at if promotion else None,
            "rolled_back_at": promotion.rolled_back_at if promotion else None,
            "rollback_reason": promotion.rollback_reason if promotion else None,
        },
        "not_recorded": not_recorded(lineage),
        "notes": list(lineage.notes),
    }


def not_recorded(lineage: VersionLineage) -> list[str]:
    """The fields of the JSON shape the version did not record (dotted paths)."""
    recorded = {
        "training_set.digest": lineage.training_set_digest,
        "training_set.newest_transaction": lineage.newest_transaction,
        "raw_partitions": lineage.partition_count,
        "raw_partitions.rows_by_day": lineage.rows_by_day,
        "code_version": lineage.code_version,
        "dagster_run": lineage.dagster_run_id,
        "mlflow_run": lineage.mlflow_run_id,
        "model_digest": lineage.model_digest,
    }
    return [name for name, value in recorded.items() if value is None]


def lineage_text(lineage: VersionLineage) -> str:
    """The lineage for people: one fact a line, "not recorded" where the version did not record it."""

    def shown(value: object) -> str:
        return NOT_RECORDED if value is None else str(value)

    def with_url(run_id: str | None, url: str | None) -> str:
        return NOT_RECORDED if run_id is None else f"{run_id}" + (f"  {url}" if url else "")

    lines = [
        f"{lineage.model_name} v{lineage.version}"
        + (f" (aliases: {', '.join(lineage.aliases)})" if lineage.aliases else " (no alias)"),
        f"  training set:        {shown(lineage.training_set_digest)}",
    ]
    if lineage.training_set_digest is not None:
        lines.append(f"    file:              {lineage.training_set_file or 'not kept here'}")
    lines.append(f"  newest transaction:  {shown(lineage.newest_transaction)}")
    if lineage.partition_count is None:
        lines.append(f"  raw partitions:      {NOT_RECORDED}")
    else:
        span = (
            f"{lineage.partitions_first_day} .. {lineage.partitions_last_day}"
            if lineage.partitions_first_day
            else "none"
        )
        rows = f", {lineage.total_rows:,} rows" if lineage.total_rows is not None else ""
        lines.append(f"  raw partitions:      {lineage.partition_count} days, {span}{rows}")
        if lineage.rows_by_day is None:
            lines.append(f"    rows per day:      {NOT_RECORDED}")
        else:
            lines.extend(f"    {day}         {rows:>10,}" for day, rows in lineage.rows_by_day.items())
    promotion = lineage.promotion
    lines += [
        f"  code version:        {shown(lineage.code_version)}",
        f"  dagster run:         {with_url(lineage.dagster_run_id, lineage.dagster_run_url)}",
        f"  mlflow run:          {with_url(lineage.mlflow_run_id, lineage.mlflow_run_url)}",
        *([f"  mlflow version:      {lineage.mlflow_version_url}"] if lineage.mlflow_version_url else []),
        f"  model digest:        {shown(lineage.model_digest)}",
        f"  promoted:            {promotion.promoted_at if promotion else 'never'}",
    ]
    if promotion is not None:
        rolled_back = (
            f"{promotion.rolled_back_at} ({promotion.rollback_reason or 'no reason recorded'})"
            if promotion.rolled_back_at
            else "no"
        )
        lines.append(f"  rolled back:         {rolled_back}")
    lines.extend(f"  note: {note}" for note in lineage.notes)
    return "\n".join(lines)

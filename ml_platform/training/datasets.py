"""The training sets models are trained on, kept for good: immutable, content-addressed files.

:mod:`ml_platform.training.dataset` builds a training set; this module keeps each one that was built,
once per content, at ``<state dir>/training_sets/<sha256>.parquet``. The digest is the sha256 of the
parquet file's bytes (so ``sha256sum`` of a stored file gives its name back), and it is what a model
version records as the data it was trained on (its ``training_set_digest`` tag): monitoring judges a
version against the data of that file, whatever training set is current.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ml_platform.data.schema import LABEL_COLUMN, TIMESTAMP_COLUMN
from ml_platform.storage import (
    content_path,
    file_digest,
    store_file_content_addressed,
    write_table_content_addressed,
)

if TYPE_CHECKING:
    import pandas as pd

TRAINING_SETS_DIR = "training_sets"
DATASET_NAME = "training_set"
# MLflow keeps a dataset's digest in a column of at most 36 characters (it refuses longer ones), so the
# dataset logged with a run carries the first 32 hex digits (128 bits) of the sha256; its source, the
# stored file, is named by the whole digest.
MLFLOW_DIGEST_CHARS = 32


def training_sets_dir(state_dir: str | Path) -> Path:
    """Where the training sets are kept under the state directory ``state_dir`` (the tables' base)."""
    return Path(state_dir) / TRAINING_SETS_DIR


@dataclass(frozen=True)
class StoredTrainingSet:
    digest: str  # sha256 of the stored parquet file's bytes
    path: Path
    rows: int
    data_end: str | None  # ISO 8601 time (UTC) of the newest transaction, None for an empty set
    created: bool  # False when this content was already stored


def newest_transaction_time(frame: pd.DataFrame) -> str | None:
    """The event time of the newest transaction in ``frame``, ISO 8601 in UTC (None when it has no rows)."""
    import pandas as pd

    if TIMESTAMP_COLUMN not in frame.columns:
        raise ValueError(f"the training set has no {TIMESTAMP_COLUMN} column (columns: {', '.join(frame.columns)})")
    newest = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True).max()
    return None if pd.isna(newest) else newest.isoformat()


def store_training_set(frame: pd.DataFrame, directory: Path) -> StoredTrainingSet:
    """Keep ``frame`` at ``<directory>/<sha256>.parquet`` (written atomically, once per content)."""
    data_end = newest_transaction_time(frame)
    stored = write_table_content_addressed(frame, directory)
    return StoredTrainingSet(stored.digest, stored.path, len(frame), data_end, stored.created)


def store_training_set_file(path: Path, directory: Path) -> StoredTrainingSet:
    """Keep a copy of the parquet file ``path`` as it is (for a training set written before they were kept)."""
    import pyarrow.parquet as pq

    stored = store_file_content_addressed(Path(path), directory)
    timestamps = pq.read_table(stored.path, columns=[TIMESTAMP_COLUMN]).to_pandas()
    return StoredTrainingSet(
        stored.digest, stored.path, len(timestamps), newest_transaction_time(timestamps), stored.created
    )


def stored_training_set_path(directory: Path, digest: str) -> Path:
    """The stored file of the training set ``digest``; FileNotFoundError naming it when it is not kept
    there, ValueError when ``digest`` is not a sha256."""
    path = content_path(directory, digest)
    if not path.is_file():
        raise FileNotFoundError(f"training set {digest} is not stored under {directory} (no {path.name})")
    return path


def verified_digest(path: Path, expected: str | None = None) -> str:
    """The sha256 of the file ``path``; ValueError when it is not ``expected`` (a file changed or mixed up
    after it was stored, which training must not use)."""
    digest = file_digest(path)
    if expected and digest != expected:
        raise ValueError(
            f"training set {path} has sha256 {digest}, not the {expected} it was stored as; refusing to use it"
        )
    return digest


def mlflow_training_dataset(frame: pd.DataFrame, path: Path, digest: str):
    """The training set as an MLflow dataset (to log as a run's input): ``frame``, the rows already read
    (MLflow takes their schema and row count), named after the stored file ``path`` as its source, with the
    content digest (its first :data:`MLFLOW_DIGEST_CHARS` hex digits) as the dataset's digest."""
    import warnings

    import mlflow.data

    with warnings.catch_warnings():
        # A local path matches MLflow's local artifact source twice over (as a path and as file://); it
        # says so in a warning, and takes that source, which is the one meant. The dataset's schema is a
        # record, never enforced: the hint about integer columns and missing values does not apply.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        dataset = mlflow.data.from_pandas(
            frame,
            source=str(path),
            targets=LABEL_COLUMN if LABEL_COLUMN in frame.columns else None,
            name=DATASET_NAME,
            digest=digest[:MLFLOW_DIGEST_CHARS],
        )
        # MLflow keeps the schema it infers (a cached property): the one set here is what it logs.
        dataset.__dict__["schema"] = dataset_schema(frame)
    return dataset


def dataset_schema(frame: pd.DataFrame):
    """The MLflow schema of ``frame``: the one ``mlflow.data.from_pandas(frame).schema`` infers, made in
    milliseconds instead of seconds.

    MLflow looks at every value of every column in Python for a missing one (a column's ``required``
    flag) and at every value of an object column for its type: about 2.5 s for 200,000 training rows.
    Here MLflow's own inference runs on a few rows that hold every distinct value of each object column
    (a column of strings only needs one; the type of any other column follows from its dtype alone), and
    the ``required`` flags come from pandas over the whole frame (``notna`` counts None, NaN, NaT and NA
    as missing, as MLflow does). An object column whose cells cannot be hashed (lists) is read whole, as
    MLflow reads it. None, as from MLflow, when the frame has a column MLflow cannot describe (mixed types).
    """
    import pandas as pd
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.pandas_dataset import PandasDataset
    from mlflow.types import ColSpec, Schema

    distinct: dict[str, pd.Series] = {}
    for name in frame.columns:
        column = frame[name]
        if column.dtype.kind != "O":
            continue
        if pd.api.types.infer_dtype(column, skipna=False) == "string":  # str in every cell: one tells the type
            distinct[name] = column.iloc[:1].reset_index(drop=True)
            continue
        try:
            distinct[name] = pd.Series(column.unique(), dtype=object)
        except TypeError:  # unhashable cells
            distinct[name] = column.reset_index(drop=True)
    rows = max([len(values) for values in distinct.values()] + [min(len(frame), 1)])
    if rows == 0:
        return PandasDataset(frame, source=CodeDatasetSource(tags={})).schema
    # Each column as long as the longest list of distinct values: an object column's own values padded
    # with its first one, any other column its first value (its dtype, which is all MLflow reads of it).
    sample = pd.DataFrame(
        {
            name: (
                pd.concat([distinct[name], distinct[name].iloc[[0] * (rows - len(distinct[name]))]], ignore_index=True)
                if name in distinct
                else frame[name].iloc[[0] * rows].reset_index(drop=True)
            )
            for name in frame.columns
        }
    )
    inferred = PandasDataset(sample, source=CodeDatasetSource(tags={})).schema
    if inferred is None:
        return None
    required = frame.notna().all()
    return Schema(
        [ColSpec(type=spec.type, name=spec.name, required=bool(required[spec.name])) for spec in inferred.inputs]
    )

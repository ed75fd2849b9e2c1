"""Group training: the point-in-time training set and the trained model (through Pipes)."""

import importlib
import threading

import dagster as dg
import pandas as pd
from pydantic import Field

from assets.common import Stopwatch, md_table, run_key
from assets.features import feature_store
from ml_platform.data.schema import LABEL_COLUMN
from ml_platform.features.engineering import MODEL_FEATURES, describe_features
from ml_platform.features.store import point_in_time_stats
from ml_platform.lineage import (
    NOT_RECORDED,
    VersionLineage,
    current_code_version,
    daily_row_counts,
    partitions_summary,
    version_lineage,
)
from ml_platform.settings import Settings
from ml_platform.training.dataset import (
    DEFAULT_WINDOW_DAYS,
    SplitFractions,
    TrainingWindow,
    assemble_training_set,
    read_window,
    split_summary,
    trailing_window,
)
from ml_platform.training.datasets import (
    StoredTrainingSet,
    store_training_set,
    store_training_set_file,
    stored_training_set_path,
)
from ml_platform.training.job import TrainingJob
from resources.feast import FeastResource
from resources.mlflow import MLflowResource
from resources.storage import StateStorage
from resources.training import TrainingCompute, training_step_tags

VALIDATED_TRANSACTIONS = "validated_transactions"


class TrainingSetConfig(dg.Config):
    train_fraction: float = 0.70
    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    window_days: int = Field(
        default=DEFAULT_WINDOW_DAYS,
        description="How many calendar days, ending with the newest stored day of validated_transactions, the "
        "training set is built from (every stored day when the history is shorter).",
    )


@dg.asset(
    group_name="training",
    deps=[VALIDATED_TRANSACTIONS, feature_store],
    kinds={"feast", "pandas", "parquet"},
    description="Every labelled transaction of the last days of validated_transactions (config window_days, 90 "
    "calendar days ending with the newest stored day, by default) with its customer's stats as the online store "
    "serves them on the transaction's day: through the end of the day before (Feast point-in-time join; no row "
    "dropped), split by time into train/validation/test. Each content is also kept for good as "
    "training_sets/<sha256>.parquet; the sha256 is the asset's data version. Records its window (first and "
    "last day, days, rows), the days it was built from with their row counts, and the code version.",
)
def training_set(config: TrainingSetConfig, feast: FeastResource, state: StateStorage) -> dg.Output[pd.DataFrame]:
    try:
        fractions = SplitFractions(config.train_fraction, config.validation_fraction, config.test_fraction)
        window = trailing_window([str(day) for day in state.stored_days(VALIDATED_TRANSACTIONS)], config.window_days)
        validated_transactions = read_window(window, lambda day: state.table_path(VALIDATED_TRANSACTIONS, day))
    except (ValueError, FileNotFoundError) as error:
        raise dg.Failure(f"training_set: {error}") from error
    store = feast.store()
    timer = Stopwatch()
    with timer.measure():
        stats = point_in_time_stats(store, validated_transactions)
        frame = assemble_training_set(validated_transactions, stats, fractions)
    if len(frame) != len(validated_transactions):
        raise dg.Failure(f"training_set has {len(frame)} rows for {len(validated_transactions)} transactions")
    no_history = int(stats["total_purchases"].isna().sum())
    try:
        rows_by_day = daily_row_counts(validated_transactions)
        code_version = current_code_version()
    except ValueError as error:
        raise dg.Failure(f"training_set: {error}") from error
    stored = store_training_set(frame, state.training_sets_dir())
    return dg.Output(
        frame,
        data_version=dg.DataVersion(stored.digest),
        metadata={
            **stored_metadata(stored),
            "dagster/row_count": len(frame),
            "splits": md_table(split_summary(frame)),
            "fraud_rate": float(frame[LABEL_COLUMN].mean()),
            "rows_without_prior_history": no_history,
            "features": ", ".join(MODEL_FEATURES),
            "feature_statistics": md_table(describe_features(frame, MODEL_FEATURES), 20),
            "compute_seconds": timer.seconds,
            **window_metadata(window, config.window_days, len(validated_transactions)),
            **partitions_metadata(rows_by_day),
            "code_version": code_version or NOT_RECORDED,
        },
    )


def window_metadata(window: TrainingWindow, requested_days: int, rows: int) -> dict[str, object]:
    """The stored days a training set was built from: first and last, how many (of how many asked), rows."""
    return {
        "window_first_day": window.first_day or "none",
        "window_last_day": window.last_day or "none",
        "window_days": len(window.days),
        "window_days_requested": requested_days,
        "window_rows": rows,
    }


def partitions_metadata(rows_by_day: dict[str, int]) -> dict[str, object]:
    """The raw daily partitions a training set was built from: each day's row count, first/last day, count."""
    summary = partitions_summary(rows_by_day)
    return {
        "raw_partitions": dg.MetadataValue.json(rows_by_day),
        "partitions_first_day": summary["first_day"] or "none",
        "partitions_last_day": summary["last_day"] or "none",
        "partition_count": summary["count"],
    }


def lineage_metadata(lineage: VersionLineage, mlflow_run_url: str | None) -> dict[str, object]:
    """What a version learned from and where it came from, as recorded (see ml_platform.lineage)."""

    def recorded(value: object) -> object:
        return NOT_RECORDED if value is None else value

    metadata: dict[str, object] = {
        "model_version": lineage.version,
        "training_set_digest": recorded(lineage.training_set_digest),
        "newest_transaction": recorded(lineage.newest_transaction),
        "raw_partitions": (
            dg.MetadataValue.json(lineage.rows_by_day) if lineage.rows_by_day is not None else NOT_RECORDED
        ),
        "partitions_first_day": recorded(lineage.partitions_first_day),
        "partitions_last_day": recorded(lineage.partitions_last_day),
        "partition_count": recorded(lineage.partition_count),
        "code_version": recorded(lineage.code_version),
        "dagster_run": dg.MetadataValue.dagster_run(lineage.dagster_run_id) if lineage.dagster_run_id else NOT_RECORDED,
        "model_digest": recorded(lineage.model_digest),
    }
    if lineage.training_set_file is not None:
        metadata["training_set_file"] = dg.MetadataValue.path(lineage.training_set_file)
    if mlflow_run_url is not None:
        metadata["mlflow_run"] = dg.MetadataValue.url(mlflow_run_url)
    if lineage.mlflow_version_url is not None:
        metadata["mlflow_model_version"] = dg.MetadataValue.url(lineage.mlflow_version_url)
    return metadata


DIGEST_KEY = "training_set_digest"


def stored_metadata(stored: StoredTrainingSet) -> dict[str, object]:
    return {
        DIGEST_KEY: stored.digest,
        "training_set_file": dg.MetadataValue.path(str(stored.path)),
        "newest_transaction": stored.data_end or "none",
        "stored_now": stored.created,  # False: the same content was already kept
    }


def current_training_set(context: dg.AssetExecutionContext, state: StateStorage) -> tuple[str, str]:
    """The digest and stored file of the newest training_set materialization.

    One materialized before training sets were kept has no digest: the current file is kept now.
    """
    event = context.instance.get_latest_materialization_event(dg.AssetKey("training_set"))
    materialization = event.asset_materialization if event is not None else None
    entry = materialization.metadata.get(DIGEST_KEY) if materialization is not None else None
    digest = getattr(entry, "value", entry)
    if isinstance(digest, str):
        try:
            return digest, str(stored_training_set_path(state.training_sets_dir(), digest))
        except (FileNotFoundError, ValueError) as error:
            raise dg.Failure(f"trained_model: {error}; materialize training_set again") from error
    path = state.table_path("training_set")
    if not path.exists():
        raise dg.Failure(f"trained_model: {path} is missing; materialize training_set first")
    stored = store_training_set_file(path, state.training_sets_dir())
    context.log.info(f"kept the current training set (materialized before training sets were kept) as {stored.path}")
    return stored.digest, str(stored.path)


class TrainingConfig(dg.Config):
    """XGBoost hyperparameters (the defaults of ``ml_platform.training.train.TrainingParams``) and the device
    (auto: cuda if visible)."""

    n_estimators: int = 100
    max_depth: int = 6
    learning_rate: float = 0.1
    early_stopping_rounds: int = 10
    min_child_weight: float = 1.0
    subsample: float = 1.0
    colsample_bytree: float = 1.0
    scale_pos_weight: float = 1.0
    device: str = "auto"
    seed: int = 42


@dg.asset(
    group_name="training",
    deps=["training_set"],
    kinds={"xgboost", "mlflow"},
    # Under the Kubernetes step executor with training in the step itself, this step's pod asks for the
    # GPU (limits, node selector, tolerations from the settings); no tag otherwise (resources.training).
    op_tags=training_step_tags(Settings.from_env()),
    description="XGBoost trained with early stopping through Dagster Pipes (a subprocess here, a GPU pod on "
    "Kubernetes) on the stored file of the current training set, tracked in MLflow (the training set as the "
    "run's dataset input) and registered as a new version with alias 'challenger', tagged with the training "
    "set's digest, its newest transaction time and the model file's digest, and with its lineage: the raw "
    "partitions of its training set (first/last day, count; each day's rows in the run's lineage.json), the "
    "code version and this Dagster run. Exactly one version per run, retries included.",
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    mlflow: MLflowResource,
    training_compute: TrainingCompute,
    state: StateStorage,
) -> dg.MaterializeResult:
    digest, path = current_training_set(context, state)
    key = run_key(context)
    job = TrainingJob(
        training_set_path=path,
        training_set_digest=digest,
        tracking_uri=mlflow.tracking_uri,
        model_name=mlflow.model_name,
        experiment_name=mlflow.experiment_name,
        artifact_root=mlflow.artifact_root,
        run_key=key,
        params=config.model_dump(),
        dagster_run_id=context.run.run_id,
        code_version=_code_version(),
        run_tags={
            "dagster_run_id": context.run.run_id,
            "dagster_root_run_id": key,
            "dagster_asset": "trained_model",
        },
    )
    # Training runs in another process (or pod); this one only waits for it, so it imports XGBoost meanwhile,
    # which model_evaluation loads the new version with next: about a second, spent while the training
    # process starts up on one core. Joined before this step goes on, so no other import races it.
    warm_up = threading.Thread(target=importlib.import_module, args=("xgboost",), name="import-xgboost", daemon=True)
    warm_up.start()
    result = training_compute.train(context, job)
    warm_up.join()
    metadata = dict(result.metadata or {})
    run_id = metadata.get("mlflow_run_id")
    run_url = None
    if run_id is not None:
        run_url = mlflow.run_url(str(getattr(run_id, "value", run_id)))
        if run_url is not None:
            metadata["mlflow_run"] = dg.MetadataValue.url(run_url)
    version = metadata.get("model_version")
    if version is not None:
        number = int(getattr(version, "value", version))
        # The registered version, not the logged model's id (models:/m-...) the training job reports.
        logged = metadata.pop("model_uri", None)
        if logged is not None:
            metadata["logged_model_uri"] = logged
        metadata["model_uri"] = f"models:/{mlflow.model_name}/{number}"
        lineage = version_lineage(
            mlflow.registry(), number, training_sets_dir=state.training_sets_dir(), mlflow_ui=mlflow.ui
        )
        metadata.update(lineage_metadata(lineage, run_url))
    return dg.MaterializeResult(metadata=metadata)


def _code_version() -> str:
    """This process's code version for the training job, which records it when it cannot tell its own."""
    try:
        return current_code_version() or ""
    except ValueError as error:
        raise dg.Failure(f"trained_model: {error}") from error

"""One training job: read the training set, fit, log and register. The same code runs in a local
subprocess or a GPU pod; :mod:`ml_platform.training.pipes_entrypoint` is its Dagster Pipes wrapper."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ml_platform.data.schema import LABEL_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.lineage import TrainingLineage, current_code_version, daily_row_counts, partitions_summary
from ml_platform.registry import (
    CHALLENGER,
    CODE_VERSION_TAG,
    DAGSTER_RUN_ID_TAG,
    DEVICE_TAG,
    LINEAGE_ARTIFACT,
    PARTITION_COUNT_TAG,
    PARTITIONS_FIRST_DAY_TAG,
    PARTITIONS_LAST_DAY_TAG,
    TRAINING_DATA_END_TAG,
    TRAINING_SET_DIGEST_TAG,
    Registry,
)
from ml_platform.training.dataset import SPLIT_COLUMN, split_xy
from ml_platform.training.datasets import mlflow_training_dataset, newest_transaction_time, verified_digest
from ml_platform.training.train import TrainingParams, fit, model_signature, params_dict


@dataclass(frozen=True)
class TrainingJob:
    """What to train and where to register it. ``training_set_path`` is a stored (content-addressed)
    training set; ``training_set_digest``, when given, is the sha256 it was stored as, and the job refuses
    a file whose bytes no longer hash to it. ``dagster_run_id`` is the orchestrator's run that launched the
    job, and ``code_version`` the launcher's code version: recorded when the training process cannot tell
    its own (an image that declares none; see :func:`ml_platform.lineage.current_code_version`)."""

    training_set_path: str
    tracking_uri: str
    model_name: str
    experiment_name: str
    artifact_root: str
    run_key: str  # one registered version per key: the orchestrator's (root) run id
    params: dict[str, object] = field(default_factory=dict)
    run_tags: dict[str, str] = field(default_factory=dict)
    training_set_digest: str = ""
    dagster_run_id: str = ""
    code_version: str = ""


def run_training_job(job: TrainingJob, log=print) -> dict[str, object]:
    """Train and register unless this run already registered a version; returns what happened.

    The version records what it was trained on: the training set's sha256 and the time of its newest
    transaction as version tags, and the training set as the MLflow run's dataset input. It also records
    where it came from (:mod:`ml_platform.lineage`): the code version, the Dagster run and the raw daily
    partitions of the training set (first, last, how many) as version and run tags, and the rows of every
    day as the run's ``lineage.json``.
    """
    params = TrainingParams(**job.params)
    registry = Registry(job.tracking_uri, job.model_name, job.experiment_name, job.artifact_root)
    existing = registry.version_for_run_key(job.run_key)
    if existing is not None:  # a retry of a run that already registered its model
        registry.set_alias(CHALLENGER, int(existing.version))
        log(f"run {job.run_key} already registered {job.model_name} v{existing.version}; reusing it")
        return {
            "model_name": job.model_name,
            "model_version": int(existing.version),
            "mlflow_run_id": existing.run_id,
            "reused_existing_version": True,
            "device": existing.tags.get(DEVICE_TAG, "unknown"),
            "training_set_digest": existing.tags.get(TRAINING_SET_DIGEST_TAG),
            "training_data_end": existing.tags.get(TRAINING_DATA_END_TAG),
            "code_version": existing.tags.get(CODE_VERSION_TAG),
            "dagster_run_id": existing.tags.get(DAGSTER_RUN_ID_TAG),
            "partitions_first_day": existing.tags.get(PARTITIONS_FIRST_DAY_TAG),
            "partitions_last_day": existing.tags.get(PARTITIONS_LAST_DAY_TAG),
            "partition_count": int(count) if (count := existing.tags.get(PARTITION_COUNT_TAG, "")).isdigit() else None,
        }

    path = Path(job.training_set_path)
    if not path.exists():
        raise FileNotFoundError(f"training set {path} does not exist; materialize training_set first")
    digest = verified_digest(path, job.training_set_digest or None)
    # Only what training reads, and the event times (for the newest one): ids (strings, the slow part of
    # the file) stay on disk. These rows are also the MLflow dataset; the file is read once.
    training_set = pd.read_parquet(path, columns=[*MODEL_FEATURES, LABEL_COLUMN, SPLIT_COLUMN, TIMESTAMP_COLUMN])
    data_end = newest_transaction_time(training_set)
    # Every validated transaction is a row of the training set: its rows per UTC day are the row counts of
    # the raw daily partitions it was built from.
    lineage = TrainingLineage(
        rows_by_day=daily_row_counts(training_set),
        code_version=current_code_version() or job.code_version or None,
        dagster_run_id=job.dagster_run_id or None,
    )
    x_train, y_train = split_xy(training_set, "train")
    x_valid, y_valid = split_xy(training_set, "validation")
    log(f"training on {len(x_train):,} rows, early stopping on {len(x_valid):,}; device {params.device}")
    trained = fit(x_train, y_train, x_valid, y_valid, params)
    log(f"trained on {trained.device} in {trained.train_seconds:.2f}s, best iteration {trained.best_iteration}")

    from ml_platform.evaluation import plots  # matplotlib: only where figures are drawn

    metrics = trained.validation_metrics
    figures = {
        "feature_importance.png": plots.feature_importance_figure(trained.feature_importance),
        "confusion_matrix_validation.png": plots.confusion_matrix_figure(
            metrics["true_negatives"],
            metrics["false_positives"],
            metrics["false_negatives"],
            metrics["true_positives"],
            title=f"Validation, threshold {trained.threshold:.3f}",
        ),
    }
    example = x_valid.head(5)
    try:
        registered = registry.log_and_register(
            trained,
            params=params_dict(params),
            run_key=job.run_key,
            signature=model_signature(trained.booster, example),
            example=example,
            run_tags={**job.run_tags, **lineage.tags()},
            figures=figures,
            version_tags={
                TRAINING_SET_DIGEST_TAG: digest,
                **({TRAINING_DATA_END_TAG: data_end} if data_end is not None else {}),
                **lineage.tags(),
            },
            training_data=mlflow_training_dataset(training_set, path, digest),
            documents={LINEAGE_ARTIFACT: lineage.document(training_set_digest=digest, training_set_file=str(path))},
        )
    finally:
        for figure in figures.values():
            plots.close(figure)
    log(f"registered {job.model_name} v{registered.version} as challenger")
    summary = partitions_summary(lineage.rows_by_day)
    return {
        "model_name": job.model_name,
        "model_version": registered.version,
        "mlflow_run_id": registered.run_id,
        "model_uri": registered.model_uri,
        "reused_existing_version": False,
        "device": trained.device,
        "requested_device": params.device,
        "best_iteration": trained.best_iteration,
        "threshold": trained.threshold,
        "train_seconds": trained.train_seconds,
        "train_rows": len(x_train),
        "validation_rows": len(x_valid),
        "training_set_digest": digest,
        "training_data_end": data_end,
        "code_version": lineage.code_version,
        "dagster_run_id": lineage.dagster_run_id,
        "partitions_first_day": summary["first_day"],
        "partitions_last_day": summary["last_day"],
        "partition_count": summary["count"],
        **{f"validation_{k}": metrics[k] for k in ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")},
        "feature_importance": trained.feature_importance,
    }

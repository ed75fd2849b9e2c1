"""Group monitoring: prediction drift, the champion's served scores against its scores on its own test split.

The score distribution is the first signal that something moved while labels are still weeks away
(``ml_platform.monitoring.prediction_drift``). Its own asset rather than a second check of
``drift_report``: it needs the version's booster and its own reference (the test split scored by the
model), not the feature frame, and a failing score distribution should be readable on its own.
"""

import dagster as dg

from assets.monitoring import WindowConfig, prediction_log, reference_metadata
from ml_platform.monitoring.drift import DriftConfig
from ml_platform.monitoring.health import training_reference
from ml_platform.monitoring.performance import CHAMPION_VARIANT
from ml_platform.monitoring.prediction_drift import SCORE_COLUMN, prediction_drift, reference_scores
from ml_platform.monitoring.window import Window, read_predictions
from ml_platform.registry import CHAMPION
from resources.mlflow import MLflowResource
from resources.monitoring import MonitoringResource
from resources.storage import StateStorage

PREDICTION_DRIFT_CHECK = "prediction_drift"


@dg.asset(
    name="prediction_drift",
    group_name="monitoring",
    deps=[prediction_log, "champion_model"],
    kinds={"scipy", "xgboost"},
    check_specs=[
        dg.AssetCheckSpec(
            PREDICTION_DRIFT_CHECK,
            asset="prediction_drift",
            description="the champion's served scores drifted from its scores on its own test split (WARN)",
        )
    ],
    description="The distribution of the champion's served scores in the window against the scores the same "
    "version gives the test split of its own training set (the stored file its digest tag names; the current "
    "training set for a version without one), by the drift method (Wasserstein normed, or KS p-value).",
)
def prediction_drift_asset(
    config: WindowConfig, monitoring: MonitoringResource, mlflow: MLflowResource, state: StateStorage
):
    try:
        window = Window.parse(config.window)
    except ValueError as error:
        raise dg.Failure(str(error)) from error
    try:
        drift_config = DriftConfig(
            method=monitoring.drift_method, feature_threshold=monitoring.prediction_drift_threshold
        )
    except ValueError as error:  # the message names the method or the threshold
        raise dg.Failure(f"monitoring resource: prediction drift {error}") from error
    method = drift_config.method
    threshold = drift_config.threshold
    registry = mlflow.registry()
    champion = registry.version_for_alias(CHAMPION)
    served = read_predictions(monitoring.paths().log_dir, window)
    if champion is not None:
        served = served.loc[(served["variant"] == CHAMPION_VARIANT) & (served["model_version"] == champion)]
    note = None
    if champion is None:
        note = f"{registry.model_name} has no champion yet"
    elif served.empty:
        note = f"no scores of v{champion} served over {window.label}"
    judged = champion if champion is not None else "none"
    if note is not None:
        yield dg.MaterializeResult(
            metadata={"rows": 0, "window": window.label, "method": method, "model_version": judged, "note": note}
        )
        yield dg.AssetCheckResult(
            check_name=PREDICTION_DRIFT_CHECK,
            passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"nothing to judge: {note}",
            metadata={"value": None, "threshold": threshold, "method": method, "window": window.label},
        )
        return
    try:
        source = training_reference(registry, champion, state.table_path("training_set"), state.training_sets_dir())
        reference = reference_scores(registry.load_booster(champion), source.path)
        drift = prediction_drift(reference, served[SCORE_COLUMN].to_numpy(dtype="float64"), drift_config)
    except (FileNotFoundError, ValueError) as error:  # no training set, no finite score on a side
        raise dg.Failure(f"prediction_drift: {error}") from error
    metadata: dict[str, object] = {
        "score": drift.score,
        "method": drift.method_title,
        "threshold": drift.threshold,
        "drifted": drift.drifted,
        "rows": drift.rows,
        "reference_rows": drift.reference_rows,
        **{f"served_{name}": value for name, value in drift.quantiles.items()},
        **{f"reference_{name}": value for name, value in drift.reference_quantiles.items()},
        "model_version": champion,
        "window": window.label,
        **reference_metadata(source),
    }
    yield dg.MaterializeResult(metadata=metadata)
    yield dg.AssetCheckResult(
        check_name=PREDICTION_DRIFT_CHECK,
        passed=not drift.drifted,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{drift.describe()} over {window.label}",
        metadata={
            "value": drift.score,
            "threshold": drift.threshold,
            "method": drift.method_title,
            "rows": drift.rows,
            "reference_rows": drift.reference_rows,
            "model_version": champion,
            "window": window.label,
            **{f"served_{name}": value for name, value in drift.quantiles.items()},
            **{f"reference_{name}": value for name, value in drift.reference_quantiles.items()},
        },
    )

"""Software-defined assets of the platform, one module per stage."""

from assets.data import raw_transactions, validated_transactions
from assets.deployment import batch_predictions, model_deployment
from assets.evaluation import champion_model, model_evaluation
from assets.features import customer_stats, feature_store, online_features
from assets.labels import labels
from assets.monitoring import MONITORING_ASSETS
from assets.prediction_drift import prediction_drift_asset
from assets.skew import feature_skew
from assets.training import trained_model, training_set

ALL_ASSETS = [
    raw_transactions,
    validated_transactions,
    customer_stats,
    feature_store,
    online_features,
    training_set,
    trained_model,
    model_evaluation,
    champion_model,
    model_deployment,
    batch_predictions,
    *MONITORING_ASSETS,
    labels,
    prediction_drift_asset,
    feature_skew,
]

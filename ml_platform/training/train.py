"""XGBoost training with early stopping, on the GPU when one is visible."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # imported where used: the code location loads this module in every step process
    import xgboost as xgb
    from mlflow.models import ModelSignature

from ml_platform.evaluation.metrics import best_f1_threshold, classification_metrics
from ml_platform.features.engineering import MODEL_FEATURES

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainingParams:
    """Hyperparameters. Defaults: up to 100 trees of depth 6 at learning rate 0.1, stopping after 10 rounds
    without gain on the validation split (only the trees up to the best round are kept)."""

    n_estimators: int = 100
    max_depth: int = 6
    learning_rate: float = 0.1
    early_stopping_rounds: int = 10
    min_child_weight: float = 1.0
    subsample: float = 1.0
    colsample_bytree: float = 1.0
    scale_pos_weight: float = 1.0
    device: str = "auto"
    n_jobs: int = 0  # 0: every core
    seed: int = 42

    def __post_init__(self) -> None:
        problems = []
        if self.n_estimators < 1:
            problems.append(f"n_estimators must be >= 1, got {self.n_estimators}")
        if self.max_depth < 1:
            problems.append(f"max_depth must be >= 1, got {self.max_depth}")
        if not 0 < self.learning_rate <= 1:
            problems.append(f"learning_rate must be in (0, 1], got {self.learning_rate}")
        if self.early_stopping_rounds < 0:
            problems.append(f"early_stopping_rounds must be >= 0, got {self.early_stopping_rounds}")
        if not 0 < self.subsample <= 1 or not 0 < self.colsample_bytree <= 1:
            problems.append("subsample and colsample_bytree must be in (0, 1]")
        if self.device not in DEVICES:
            problems.append(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if problems:
            raise ValueError("invalid training params: " + "; ".join(problems))


@dataclass
class TrainedModel:
    booster: xgb.Booster
    device: str  # the device XGBoost actually used (it falls back to CPU silently)
    requested_device: str
    threshold: float
    best_iteration: int
    train_seconds: float
    validation_metrics: dict[str, float]
    feature_importance: dict[str, float]


def gpu_visible() -> bool:
    """Whether XGBoost can train on a GPU here: a CUDA build and a device it can see."""
    import xgboost as xgb

    if not xgb.build_info().get("USE_CUDA", False):
        return False
    probe = xgb.DMatrix(np.array([[0.0], [1.0]]), label=np.array([0.0, 1.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        booster = xgb.train({"device": "cuda", "tree_method": "hist", "verbosity": 0}, probe, num_boost_round=1)
    return booster_device(booster) == "cuda"


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if gpu_visible() else "cpu"
    return requested


def booster_device(booster: xgb.Booster) -> str:
    """The device recorded in the booster's config: what training really ran on."""
    device = json.loads(booster.save_config())["learner"]["generic_param"]["device"]
    return "cuda" if device.startswith("cuda") or device == "gpu" else "cpu"


def fit(
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_valid: pd.DataFrame,
    y_valid: np.ndarray,
    params: TrainingParams = TrainingParams(),
) -> TrainedModel:
    import xgboost as xgb

    if list(x_train.columns) != list(MODEL_FEATURES):
        raise ValueError(f"training columns {list(x_train.columns)} differ from the model's {list(MODEL_FEATURES)}")
    if len(np.unique(y_train)) < 2:
        raise ValueError("the training split holds a single class; a classifier needs both fraud and legit rows")
    device = resolve_device(params.device)
    classifier = xgb.XGBClassifier(
        n_estimators=params.n_estimators,
        max_depth=params.max_depth,
        learning_rate=params.learning_rate,
        min_child_weight=params.min_child_weight,
        subsample=params.subsample,
        colsample_bytree=params.colsample_bytree,
        scale_pos_weight=params.scale_pos_weight,
        tree_method="hist",
        device=device,
        n_jobs=params.n_jobs or None,
        random_state=params.seed,
        eval_metric="aucpr",
        early_stopping_rounds=params.early_stopping_rounds or None,
    )
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classifier.fit(x_train, y_train, eval_set=[(x_valid, y_valid)], verbose=False)
    train_seconds = time.perf_counter() - started
    booster = classifier.get_booster()
    used = booster_device(booster)
    if device == "cuda" and used != "cuda":
        messages = "; ".join(str(w.message) for w in caught) or "no warning given"
        raise RuntimeError(f"device cuda was asked for but XGBoost trained on {used}: {messages}")
    best_iteration = int(getattr(classifier, "best_iteration", params.n_estimators - 1))
    booster = booster[: best_iteration + 1]  # keep the trees up to the best validation round
    booster.set_param({"device": "cpu"})  # a saved model predicts anywhere; serving runs on CPU
    probability = predict_probability(booster, x_valid)
    threshold = best_f1_threshold(y_valid, probability)
    gain = booster.get_score(importance_type="total_gain")
    total = sum(gain.values()) or 1.0
    return TrainedModel(
        booster=booster,
        device=used,
        requested_device=params.device,
        threshold=threshold,
        best_iteration=best_iteration,
        train_seconds=train_seconds,
        validation_metrics=classification_metrics(y_valid, probability, threshold),
        feature_importance={name: gain.get(name, 0.0) / total for name in MODEL_FEATURES},
    )


def predict_probability(booster: xgb.Booster, features: pd.DataFrame | np.ndarray) -> np.ndarray:
    """P(fraud) for rows of model features (columns in :data:`MODEL_FEATURES` order).

    Numpy through ``inplace_predict`` is the fastest path (no DMatrix, no name checks), so a frame's
    columns are checked here once and then passed as a plain array.
    """
    if isinstance(features, pd.DataFrame):
        if list(features.columns) != list(MODEL_FEATURES):
            raise ValueError(f"feature columns {list(features.columns)} differ from {list(MODEL_FEATURES)}")
        features = features.to_numpy(dtype="float64")
    return np.asarray(booster.inplace_predict(features), dtype="float64")


def model_signature(booster: xgb.Booster, example: pd.DataFrame) -> ModelSignature:
    """MLflow's signature of the model, logged with it: the model features as double columns in, P(fraud) out.

    Inferred from float64 rows: a signature inferred from float32 columns would make MLflow refuse float64
    input, and the model server loads only a version whose inputs are exactly these double columns.
    """
    from mlflow.models import infer_signature

    example = example.astype("float64")
    return infer_signature(example, predict_probability(booster, example))


def params_dict(params: TrainingParams) -> dict[str, object]:
    return asdict(params)

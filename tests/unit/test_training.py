"""The time split, the training set, its stored (content-addressed) copy, and XGBoost training on CPU."""

import os

import numpy as np
import pandas as pd
import pytest

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.training.dataset import (
    SPLIT_COLUMN,
    SPLITS,
    SplitFractions,
    split_summary,
    split_xy,
    time_split,
)
from ml_platform.training.datasets import (
    MLFLOW_DIGEST_CHARS,
    mlflow_training_dataset,
    store_training_set,
    store_training_set_file,
    stored_training_set_path,
    training_sets_dir,
    verified_digest,
)
from ml_platform.training.train import TrainingParams, booster_device, fit, predict_probability


def minutes(values):
    return pd.Series(pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(values, unit="min"))


def test_time_split_orders_the_splits_in_time():
    rng = np.random.default_rng(0)
    stamps = minutes(rng.permutation(1_000))  # distinct, shuffled
    labels = time_split(stamps)
    by_split = {name: stamps[labels == name] for name in SPLITS}
    assert by_split["train"].max() < by_split["validation"].min()
    assert by_split["validation"].max() < by_split["test"].min()
    assert [len(by_split[name]) for name in SPLITS] == [700, 150, 150]


def test_time_split_keeps_rows_sharing_a_timestamp_together():
    rng = np.random.default_rng(1)
    stamps = minutes(rng.integers(0, 40, size=500))  # heavy ties
    labels = time_split(stamps)
    per_timestamp = pd.DataFrame({"t": stamps, "split": labels}).groupby("t")["split"].nunique()
    assert (per_timestamp == 1).all()
    assert set(labels) == set(SPLITS)
    frame = pd.DataFrame({"t": stamps, "split": labels})
    assert frame[frame.split == "train"].t.max() < frame[frame.split == "validation"].t.min()
    assert frame[frame.split == "validation"].t.max() < frame[frame.split == "test"].t.min()
    # ties move the boundaries, but not far from 70/15/15
    shares = frame["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.70) < 0.06 and abs(shares["test"] - 0.15) < 0.06


def test_time_split_with_custom_fractions():
    labels = time_split(minutes(range(100)), SplitFractions(0.5, 0.3, 0.2))
    assert list(labels) == ["train"] * 50 + ["validation"] * 30 + ["test"] * 20


@pytest.mark.parametrize("n", [0, 1, 2])
def test_time_split_needs_three_rows(n):
    with pytest.raises(ValueError, match="at least 3 rows"):
        time_split(minutes(range(n)))


def test_time_split_with_too_few_distinct_timestamps_raises():
    with pytest.raises(ValueError, match="empty"):
        time_split(minutes([0, 0, 0, 0, 1]))


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.5), (0.8, 0.2, 0.0), (1.2, -0.1, -0.1)])
def test_split_fractions_must_be_positive_and_sum_to_one(fractions):
    with pytest.raises(ValueError, match="sum to 1"):
        SplitFractions(*fractions)


def test_training_set_keeps_every_transaction(training_set, generated_transactions):
    assert len(training_set) == len(generated_transactions)
    assert list(training_set["transaction_id"]) == list(generated_transactions["transaction_id"])
    assert list(training_set.columns) == [
        "transaction_id",
        "customer_id",
        "event_timestamp",
        *MODEL_FEATURES,
        "is_fraud",
        SPLIT_COLUMN,
    ]
    # a customer's first transaction has no history: 0 purchases, unknown average
    first = ~generated_transactions.duplicated("customer_id")
    assert (training_set.loc[first.to_numpy(), "total_purchases"] == 0).all()
    assert training_set.loc[first.to_numpy(), "avg_order_value"].isna().all()
    summary = split_summary(training_set)
    assert list(summary.index) == list(SPLITS)
    assert summary["rows"].sum() == len(training_set)
    x_valid, y_valid = split_xy(training_set, "validation")
    assert (
        list(x_valid.columns) == list(MODEL_FEATURES)
        and len(x_valid) == len(y_valid) == summary.loc["validation", "rows"]
    )


def test_fit_learns_the_fraud_signal(trained_model):
    assert trained_model.device == "cpu"
    assert trained_model.requested_device == "cpu"
    assert trained_model.validation_metrics["pr_auc"] > 0.5
    assert trained_model.validation_metrics["roc_auc"] > 0.9
    assert 0.0 < trained_model.threshold < 1.0
    assert set(trained_model.feature_importance) == set(MODEL_FEATURES)
    assert list(trained_model.feature_importance) == list(MODEL_FEATURES)
    assert sum(trained_model.feature_importance.values()) == pytest.approx(1.0)
    assert all(value >= 0 for value in trained_model.feature_importance.values())
    # the saved booster holds exactly the trees up to the best validation round
    assert trained_model.booster.num_boosted_rounds() == trained_model.best_iteration + 1
    assert booster_device(trained_model.booster) == "cpu"


def test_fit_with_auto_device_falls_back_to_cpu_without_a_gpu(training_set):
    gpu_present = os.path.exists("/dev/nvidiactl")
    x_train, y_train = split_xy(training_set, "train")
    x_valid, y_valid = split_xy(training_set, "validation")
    trained = fit(x_train, y_train, x_valid, y_valid, TrainingParams(n_estimators=5, max_depth=3))
    assert trained.requested_device == "auto"
    assert trained.device == ("cuda" if gpu_present else "cpu")


def test_predictions_match_the_validation_metrics(trained_model, training_set):
    x_valid, y_valid = split_xy(training_set, "validation")
    probability = predict_probability(trained_model.booster, x_valid)
    assert probability.shape == (len(x_valid),) and probability.dtype == np.float64
    assert ((probability >= 0) & (probability <= 1)).all()
    predicted = probability >= trained_model.threshold
    assert int((predicted & (y_valid == 1)).sum()) == trained_model.validation_metrics["true_positives"]
    assert int((predicted & (y_valid == 0)).sum()) == trained_model.validation_metrics["false_positives"]
    # numpy input skips the name check and gives the same numbers
    np.testing.assert_array_equal(predict_probability(trained_model.booster, x_valid.to_numpy()), probability)


def test_predict_probability_rejects_reordered_columns(trained_model, training_set):
    x_valid, _ = split_xy(training_set, "validation")
    reordered = x_valid[list(reversed(MODEL_FEATURES))]
    with pytest.raises(ValueError, match="differ"):
        predict_probability(trained_model.booster, reordered)


def test_fit_rejects_wrong_columns_and_a_single_class(training_set):
    x_train, y_train = split_xy(training_set, "train")
    x_valid, y_valid = split_xy(training_set, "validation")
    with pytest.raises(ValueError, match="training columns"):
        fit(x_train.drop(columns=["amount"]), y_train, x_valid, y_valid)
    with pytest.raises(ValueError, match="single class"):
        fit(x_train, np.zeros_like(y_train), x_valid, y_valid)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"device": "tpu"}, "device"),
        ({"n_estimators": 0}, "n_estimators"),
        ({"max_depth": 0}, "max_depth"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"subsample": 1.5}, "subsample"),
    ],
)
def test_training_params_validate_their_fields(overrides, field):
    with pytest.raises(ValueError, match=field):
        TrainingParams(**overrides)


# ---- the stored training set ---------------------------------------------------------------------------
def test_a_training_set_is_kept_once_with_its_newest_transaction_time(training_set, generated_transactions, tmp_path):
    directory = training_sets_dir(tmp_path)
    assert directory == tmp_path / "training_sets"
    stored = store_training_set(training_set, directory)
    newest = generated_transactions["event_timestamp"].max()
    assert stored.data_end == newest.isoformat() and stored.data_end.endswith("+00:00")
    assert (stored.rows, stored.created) == (len(training_set), True)
    assert stored_training_set_path(directory, stored.digest) == stored.path
    pd.testing.assert_frame_equal(pd.read_parquet(stored.path), training_set)

    again = store_training_set(training_set.copy(), directory)
    assert (again.digest, again.created) == (stored.digest, False)
    shorter = store_training_set(training_set.iloc[:-1], directory)
    assert shorter.digest != stored.digest and shorter.data_end <= stored.data_end
    assert len(list(directory.iterdir())) == 2

    # a file written elsewhere with the same content is the same training set
    elsewhere = tmp_path / "training_set.parquet"
    training_set.to_parquet(elsewhere, index=False)
    adopted = store_training_set_file(elsewhere, directory)
    assert (adopted.digest, adopted.rows, adopted.data_end, adopted.created) == (
        stored.digest,
        len(training_set),
        stored.data_end,
        False,
    )


def test_a_stored_training_set_is_found_by_digest_and_refused_when_changed(training_set, tmp_path):
    directory = training_sets_dir(tmp_path)
    stored = store_training_set(training_set.head(50), directory)
    assert verified_digest(stored.path, stored.digest) == stored.digest
    missing = "ab" * 32
    with pytest.raises(FileNotFoundError, match=f"training set {missing} is not stored under"):
        stored_training_set_path(directory, missing)
    with pytest.raises(ValueError, match="is not a sha256 digest"):
        stored_training_set_path(directory, "../training_set")

    changed = tmp_path / "changed.parquet"
    training_set.head(49).to_parquet(changed, index=False)
    with pytest.raises(ValueError, match=f"not the {stored.digest} it was stored as; refusing to use it"):
        verified_digest(changed, stored.digest)


def test_the_mlflow_dataset_names_the_stored_file_and_its_digest(training_set, tmp_path):
    stored = store_training_set(training_set, training_sets_dir(tmp_path))
    dataset = mlflow_training_dataset(training_set, stored.path, stored.digest)
    assert dataset.digest == stored.digest[:MLFLOW_DIGEST_CHARS] and len(dataset.digest) == 32
    assert dataset.name == "training_set"
    assert dataset.source.uri == str(stored.path)
    assert dataset.profile["num_rows"] == len(training_set)
    assert dataset.targets == "is_fraud"

"""Shared, session-scoped data for the unit tests: one seeded batch of generated transactions, a
labelled training set built from it, and one model trained on that set.

The training set's stats come from ``stats_before`` (each transaction joined in memory to its customer's
stats through the end of the day before its own, the daily snapshot the online store serves), not from
Feast, so the training and registry tests do not pay for Feast; test_point_in_time.py checks the real
Feast join against a brute-force reference.
"""

from datetime import date

import pytest

from ml_platform.data.synthetic import SyntheticConfig, generate_transactions
from ml_platform.features.engineering import stats_before
from ml_platform.training.dataset import assemble_training_set, split_xy
from ml_platform.training.train import TrainingParams, fit

# ~3k rows over 3 days; few customers so most of them have history; a higher fraud rate so the
# validation split holds enough fraud for a stable PR AUC.
GENERATED_CONFIG = SyntheticConfig(seed=11, n_customers=200, transactions_per_day=1_000, fraud_rate=0.04)
GENERATED_START, GENERATED_END = date(2024, 3, 1), date(2024, 3, 4)

# Small, fast trees: the point is the plumbing, not the model.
SMALL_PARAMS = TrainingParams(n_estimators=40, max_depth=4, early_stopping_rounds=10, device="cpu", n_jobs=2)


@pytest.fixture(scope="session")
def generated_transactions():
    return generate_transactions(GENERATED_CONFIG, GENERATED_START, GENERATED_END)


@pytest.fixture(scope="session")
def training_set(generated_transactions):
    return assemble_training_set(generated_transactions, stats_before(generated_transactions))


@pytest.fixture(scope="session")
def trained_model(training_set):
    x_train, y_train = split_xy(training_set, "train")
    x_valid, y_valid = split_xy(training_set, "validation")
    return fit(x_train, y_train, x_valid, y_valid, SMALL_PARAMS)

"""A small serving world, built in seconds in a state directory of its own: what a model server needs.

Four days of seeded synthetic transactions; each customer's stats computed from them (the offline
feature table); a small XGBoost model trained on them and registered by the training job itself
(:func:`ml_platform.training.job.run_training_job`: a native model file, its MLmodel and the threshold
tag) and promoted to champion as the pipeline promotes; and a Feast repo holding the stats, applied and
loaded into its SQLite online store.

Everything lives under the directory given to :func:`build_serving_world`, under a model name of its
own, so nothing another test does to its registry, feature store or model server reaches this world,
and this world writes nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd

from ml_platform.data.schema import ENTITY_COLUMN, TIMESTAMP_COLUMN
from ml_platform.data.synthetic import SyntheticConfig, generate_transactions
from ml_platform.features.engineering import compute_customer_stats, stats_before
from ml_platform.features.store import FeatureRepo
from ml_platform.registry import Registry
from ml_platform.settings import Settings
from ml_platform.storage import write_table
from ml_platform.training.dataset import assemble_training_set
from ml_platform.training.job import TrainingJob, run_training_job
from ml_platform.training.train import TrainingParams
from tests.support.feature_loads import load_stats

MODEL_NAME = "serving_world_fraud_detector"
# ~4k transactions of 300 customers over the UTC days 2026-03-11 .. 2026-03-14 (the end is excluded); a
# fraud rate high enough that the validation split holds fraud to pick a threshold on.
DATA = SyntheticConfig(seed=7, n_customers=300, transactions_per_day=1_000, fraud_rate=0.04)
FIRST_DAY, END_DAY = date(2026, 3, 11), date(2026, 3, 15)
# A customer the world never generated (its customers are 0 .. n_customers - 1): no stats anywhere.
UNKNOWN_CUSTOMER = 987_654_321
# Small, fast trees, every one kept (no early stopping): the model reaches many leaves, so different rows
# get different probabilities and the tests that compare answers row by row compare something.
PARAMS = TrainingParams(n_estimators=40, max_depth=4, early_stopping_rounds=0, device="cpu", n_jobs=2)


@dataclass(frozen=True)
class ServingWorld:
    settings: Settings
    registry: Registry
    champion_version: int
    feature_repo: FeatureRepo

    def latest_stats(self) -> pd.DataFrame:
        """Each customer's latest row of the offline feature table (what the online store holds), by id."""
        stats = pd.read_parquet(self.feature_repo.offline_table_path)
        latest = stats.sort_values(TIMESTAMP_COLUMN).groupby(ENTITY_COLUMN).tail(1)
        return latest.set_index(ENTITY_COLUMN).sort_index()


def build_serving_world(directory: Path) -> ServingWorld:
    """Generate, compute, train, register, promote and load the feature store, all under ``directory``."""
    settings = Settings(home=Path(directory).resolve(), model_name=MODEL_NAME, experiment_name=MODEL_NAME)
    settings.prepare()
    transactions = generate_transactions(DATA, FIRST_DAY, END_DAY)

    # The training set as the unit tests build it: each transaction's stats from strictly earlier history.
    training_set_path = settings.data_dir / "training_set.parquet"
    write_table(assemble_training_set(transactions, stats_before(transactions)), training_set_path)
    trained = run_training_job(
        TrainingJob(
            training_set_path=str(training_set_path),
            tracking_uri=settings.tracking_uri,
            model_name=settings.model_name,
            experiment_name=settings.experiment_name,
            artifact_root=settings.mlflow_artifact_root,
            run_key="serving-world",
            params=asdict(PARAMS),
        ),
        log=lambda message: None,
    )
    registry = Registry.from_settings(settings)
    version = int(trained["model_version"])
    registry.promote(version, promoted_at=datetime.now(UTC).isoformat())

    feature_repo = FeatureRepo.from_settings(settings)
    load_stats(feature_repo, compute_customer_stats(transactions))
    return ServingWorld(settings, registry, version, feature_repo)

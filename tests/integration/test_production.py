"""The production profile on real services: Dagster on PostgreSQL, MLflow on PostgreSQL, Feast on Redis.

The whole graph is materialized by ``ml-platform run`` in a process with ``ML_PLATFORM_PROFILE=production``
(training and deployment kept local: there is no cluster here), then every store is read back directly:
the runs and events in PostgreSQL, the model version and aliases in MLflow's PostgreSQL database, the
online features in Redis, and a prediction served for a customer id whose features came from Redis.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pandas as pd
import pytest

from ml_platform.data.schema import ENTITY_COLUMN, TIMESTAMP_COLUMN
from ml_platform.features.engineering import MODEL_FEATURES, STORED_FEATURES, model_features
from ml_platform.features.store import FEATURE_SERVICE, FeatureRepo, open_store
from ml_platform.predictions import read_prediction_log
from ml_platform.registry import CHAMPION, Registry
from ml_platform.settings import Settings
from tests.support.homes import DAGSTER_DB, MLFLOW_DB, PG_PORT, REPO, Production, pg_query
from tests.support.runs import FIRST_DAY, LAST_DAY

# This module and test_dagster_instance.py recreate databases on the one PostgreSQL server (127.0.0.1:5432):
# under pytest-xdist they run on one worker (--dist loadgroup), never at the same time.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("postgres")]


def production_settings(production: Production) -> Settings:
    return Settings.from_env(production.env)


def latest_stats(settings: Settings) -> pd.DataFrame:
    """Each customer's last row of the offline feature table (what the online store must hold)."""
    table = pd.read_parquet(FeatureRepo.from_settings(settings).offline_table_path)
    return table.sort_values(TIMESTAMP_COLUMN).groupby(ENTITY_COLUMN).tail(1).set_index(ENTITY_COLUMN).sort_index()


def registry_of(production: Production) -> Registry:
    return Registry.from_settings(production_settings(production))


# ---- the graph on PostgreSQL, MLflow on PostgreSQL, Feast on Redis --------------------------------


def test_the_production_profile_installs_the_postgres_instance(production, bootstrapped):
    installed = (production.home / "dagster" / "dagster.yaml").read_text()
    assert "for the production profile" in installed
    assert "scheme: postgresql+psycopg2" in installed
    assert "pipeline all: succeeded" in bootstrapped.stdout


def test_runs_and_events_are_stored_in_postgresql(production, bootstrapped, stored_by_bootstrap):
    runs = stored_by_bootstrap["runs"]
    # the whole graph is two runs of job bootstrap: the days over the range, then training to promotion
    assert [(name, status) for _, name, status in runs] == [("bootstrap", "SUCCESS")] * 2
    run_ids = [run_id for run_id, _, _ in runs]
    assert all(run_id in bootstrapped.stdout for run_id in run_ids), bootstrapped.stdout
    counts = dict(
        pg_query(
            PG_PORT,
            DAGSTER_DB,
            "SELECT dagster_event_type, count(*) FROM event_logs WHERE run_id = ANY(%s) GROUP BY dagster_event_type",
            (run_ids,),
        )
    )
    assert counts["PIPELINE_SUCCESS"] == 2  # RUN_SUCCESS, under its stored name
    assert counts["STEP_SUCCESS"] == 9  # one per asset of the graph (checks run in their assets' steps)
    days = (LAST_DAY - FIRST_DAY).days + 1
    assert counts["ASSET_CHECK_EVALUATION"] == 5 * days + 2  # the batch verdict and 4 data checks a day, 2 gates
    # no day "Skipped" under the gates; only the bootstrap's runs (a training run that another test makes
    # fail on purpose rightly leaves its unreached checks planned)
    left_planned = "SELECT count(*) FROM asset_check_executions WHERE execution_status = 'PLANNED' AND run_id = ANY(%s)"
    assert pg_query(PG_PORT, DAGSTER_DB, left_planned, (run_ids,)) == [(0,)]
    materialized = {
        key
        for (key,) in pg_query(
            PG_PORT,
            DAGSTER_DB,
            "SELECT DISTINCT asset_key FROM event_logs"
            " WHERE run_id = ANY(%s) AND dagster_event_type = 'ASSET_MATERIALIZATION'",
            (run_ids,),
        )
    }
    assert {'["trained_model"]', '["champion_model"]', '["online_features"]'} <= materialized


def test_model_version_and_aliases_are_in_the_mlflow_postgresql_database(production, stored_by_bootstrap):
    assert stored_by_bootstrap["versions"] == [("fraud_detector", 1, "READY")]
    assert stored_by_bootstrap["aliases"] == {"champion": 1, "challenger": 1}
    assert registry_of(production).aliases() == aliases_in_database(production)  # the registry reads that database
    # the model's files went to the configured artifact root, not under the state directory's mlflow/
    assert len(stored_by_bootstrap["model_files"]) == 1


def test_online_features_are_in_redis_and_equal_the_offline_table(production, bootstrapped):
    settings = production_settings(production)
    expected = latest_stats(settings)
    # one Redis hash per customer (Feast's entity key), nothing else
    assert production.redis.client().dbsize() == len(expected)
    store = open_store(FeatureRepo.from_settings(settings))
    assert type(store.config.online_store).__name__ == "RedisOnlineStoreConfig"
    sample = expected.sample(50, random_state=1)
    online = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE),
        entity_rows=[{ENTITY_COLUMN: int(c)} for c in sample.index],
    ).to_dict()
    assert online[ENTITY_COLUMN] == [int(c) for c in sample.index]
    for name in STORED_FEATURES:
        np.testing.assert_allclose(np.asarray(online[name], dtype="float64"), sample[name].to_numpy("float64"))


def test_the_feast_cli_config_in_deploy_reads_the_same_online_store(production, bootstrapped, monkeypatch):
    """deploy/feast/feature_store.yaml, as the feast CLI loads it (variables substituted by Feast)."""
    from feast import FeatureStore

    settings = production_settings(production)
    monkeypatch.setenv("ML_PLATFORM_HOME", str(settings.home))
    monkeypatch.setenv("ML_PLATFORM_REDIS_URL", f"127.0.0.1:{production.redis.port},db=0")
    monkeypatch.setenv("ML_PLATFORM_REDIS_PASSWORD", "")
    store = FeatureStore(
        repo_path=str(REPO / "deploy" / "feast"), fs_yaml_file=REPO / "deploy/feast/feature_store.yaml"
    )
    assert [view.name for view in store.list_feature_views()] == ["customer_stats"]
    expected = latest_stats(settings).head(20)
    online = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE),
        entity_rows=[{ENTITY_COLUMN: int(c)} for c in expected.index],
    ).to_dict()
    np.testing.assert_allclose(np.asarray(online["lifetime_value"], "float64"), expected["lifetime_value"].to_numpy())


# ---- serving: features read from Redis -------------------------------------------------------------


def transaction_requests(settings: Settings, prefix: str, n: int = 4) -> tuple[list[dict], pd.DataFrame]:
    """Requests for ``n`` known customers (an hour after their last order) and the features an offline
    computation gives for them from the offline table. Their request ids start with ``prefix``: each test
    finds its own answers in the server's log, whichever ran first."""
    latest = latest_stats(settings).sample(n, random_state=5)
    rows = []
    for (customer, row), amount, category, channel in zip(
        latest.iterrows(),
        [25.0, 1450.0, 60.5, 330.0],
        ["grocery", "electronics", "fuel", "travel"],
        ["in_store", "online", "in_store", "online"],
        strict=True,
    ):
        when = row[TIMESTAMP_COLUMN] + pd.Timedelta(hours=1)
        rows.append(
            {
                "customer_id": int(customer),
                "amount": amount,
                "category": category,
                "channel": channel,
                "event_timestamp": when.isoformat(),
                "request_id": f"{prefix}-{customer}",
            }
        )
    frame = pd.DataFrame(rows)
    frame[TIMESTAMP_COLUMN] = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True)
    stats = latest.loc[frame[ENTITY_COLUMN], list(STORED_FEATURES)].reset_index(drop=True)
    return rows, model_features(frame, stats)


def test_an_entity_request_is_served_with_features_from_redis(production, deployed):
    settings = production_settings(production)
    rows, features = transaction_requests(settings, "entity")
    registry = registry_of(production)
    champion = registry.version_for_alias(CHAMPION)
    expected = registry.load_booster(champion).inplace_predict(features[list(MODEL_FEATURES)].to_numpy("float64"))
    with httpx.Client(base_url=deployed, timeout=30) as client:
        answers = [client.post("/predict", json=row) for row in rows]
    for answer, probability in zip(answers, expected, strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == champion
        assert answer.json()["probability"] == pytest.approx(float(probability), abs=1e-6)
    # the server's own log: the features it used are the offline computation's, row for row
    logged = wait_for_log_rows(settings, {row["request_id"] for row in rows})
    logged = logged.set_index("request_id").loc[[row["request_id"] for row in rows]]
    np.testing.assert_allclose(logged[list(MODEL_FEATURES)].to_numpy(), features[list(MODEL_FEATURES)].to_numpy())


def wait_for_log_rows(settings: Settings, request_ids: set[str], timeout: float = 20.0) -> pd.DataFrame:
    deadline = time.monotonic() + timeout
    while True:
        log = read_prediction_log(settings.logs_dir / "predictions")
        found = log[log["request_id"].isin(request_ids)]
        if set(found["request_id"]) == request_ids:
            return found
        assert time.monotonic() < deadline, f"the prediction log never showed {sorted(request_ids)}"
        time.sleep(0.1)


# ---- faults with real services -----------------------------------------------------------------------

# Training long enough (a few seconds) that the database can be stopped while it runs: between the
# entrypoint's first registry query and its registration of the model.
SLOW_TRAINING = {"trained_model": {"n_estimators": 150, "early_stopping_rounds": 150, "learning_rate": 0.05}}
OTHER_TREES = {"trained_model": {"max_depth": 4}, "model_evaluation": {"min_improvement": -1.0}}


def wait_for_event(production: Production, after_id: int, text: str, process, timeout: float = 120.0) -> None:
    """Until Dagster's event log (PostgreSQL) holds a record newer than ``after_id`` containing ``text``."""
    deadline = time.monotonic() + timeout
    while not pg_query(
        PG_PORT, DAGSTER_DB, "SELECT 1 FROM event_logs WHERE id > %s AND event LIKE %s", (after_id, f"%{text}%")
    ):
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the run ended before {text!r} was logged:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"{text!r} never appeared in the event log"
        time.sleep(0.05)


def aliases_in_database(production: Production) -> dict[str, int]:
    return dict(pg_query(production.mlflow_pg.port, MLFLOW_DB, "SELECT alias, version FROM registered_model_aliases"))


def test_outages_fail_clearly_and_everything_resumes_without_repair(production, deployed):
    import yaml

    settings = production_settings(production)
    rows, features = transaction_requests(settings, "outage")
    entity_request = rows[0]
    features_request = {"features": features.loc[0, list(MODEL_FEATURES)].tolist()}
    registry = registry_of(production)
    champion = registry.version_for_alias(CHAMPION)
    booster = registry.load_booster(champion)
    expected = float(booster.inplace_predict(features[list(MODEL_FEATURES)].iloc[:1].to_numpy("float64"))[0])
    aliases_before = aliases_in_database(production)
    versions_before = pg_query(production.mlflow_pg.port, MLFLOW_DB, "SELECT count(*) FROM model_versions")
    slow = production.home / "slow.yaml"
    slow.write_text(yaml.safe_dump(SLOW_TRAINING))
    client = httpx.Client(base_url=deployed, timeout=30)
    try:
        # (1) Redis down: entity requests get a clear 503 at once; requests with features are still served.
        production.redis.stop()
        started = time.monotonic()
        answer = client.post("/predict", json=entity_request)
        assert answer.status_code == 503, answer.text
        assert time.monotonic() - started < 2.0  # no redis-py retry back-off on the request path
        message = answer.json()["error"]
        assert message.startswith("feature store lookup failed: FeatureStoreUnavailable: "), message
        assert f"Redis online store at 127.0.0.1:{production.redis.port} (db 0) is unreachable" in message
        assert "Connection refused" in message and "requests that carry their 9 features are still served" in message
        answer = client.post("/predict", json=features_request)
        assert answer.status_code == 200, answer.text
        assert answer.json()["probability"] == pytest.approx(expected, abs=1e-6)

        # (2) MLflow's PostgreSQL stopped in the middle of a training run: the run fails, saying why, and
        # no alias moves.
        (last_id,) = pg_query(PG_PORT, DAGSTER_DB, "SELECT coalesce(max(id), 0) FROM event_logs")[0]
        run = production.cli_background("run", "--pipeline", "training", "--params", str(slow))
        wait_for_event(production, last_id, "training on", run)
        production.mlflow_pg.stop()
        out, err = run.communicate(timeout=240)
        assert run.returncode == 1, out + err
        assert "pipeline training: FAILED" in err
        failure = next(line for line in err.splitlines() if line.startswith("step trained_model failed"))
        assert "training failed in the training subprocess" in failure
        assert (
            f'connection to server at "127.0.0.1", port {production.mlflow_pg.port} failed: Connection refused'
            in failure
        )
        failed = pg_query(
            PG_PORT, DAGSTER_DB, "SELECT status FROM runs WHERE pipeline_name = 'retrain' ORDER BY create_timestamp"
        )
        assert failed == [("FAILURE",)]
        # while both are down the server still answers requests that carry their features
        assert client.post("/predict", json=features_request).status_code == 200
        assert client.post("/predict", json=entity_request).status_code == 503

        # (3) Both back: nothing repaired by hand, the server not restarted.
        production.mlflow_pg.start()
        production.redis.start()
        assert aliases_in_database(production) == aliases_before
        assert pg_query(production.mlflow_pg.port, MLFLOW_DB, "SELECT count(*) FROM model_versions") == versions_before
        answer = client.post("/predict", json=entity_request)  # the first request after the restart
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == champion
        # A retrain of other trees (the same data with the same trees makes the same model, which the gate
        # rightly keeps out), past the comparison with the champion: its subject is the recovery.
        other = production.home / "other.yaml"
        other.write_text(yaml.safe_dump(OTHER_TREES))
        recovered = production.cli("run", "--pipeline", "training", "--params", str(other))
        assert recovered.returncode == 0, recovered.stdout + recovered.stderr
        after = aliases_in_database(production)
        assert after["challenger"] == after["champion"] == max(aliases_before.values()) + 1
        assert after["previous"] == champion
        # the running server follows the registry again: it swaps to the new champion by itself
        deadline = time.monotonic() + 30
        while client.get("/health").json().get("model_version") != after["champion"]:
            assert time.monotonic() < deadline, f"the server still serves {client.get('/health').json()}"
            time.sleep(0.2)
        answer = client.post("/predict", json=entity_request)
        assert answer.status_code == 200 and answer.json()["model_version"] == after["champion"]
    finally:
        client.close()
        if not production.mlflow_pg.running():
            production.mlflow_pg.start()
        if not production.redis.running():
            production.redis.start()

"""The profile switch in the Dagster layer: one settings object picks every resource and the executor,
and a secret reaches a resource as the name of its variable, never as a value shown in the UI."""

import dagster as dg
import pytest

# Imported here, under the session's local profile: the module builds its `defs` on first import.
from definitions import build_definitions
from ml_platform.features.store import FAIL_FAST_REDIS_OPTIONS, FeatureRepo
from ml_platform.settings import Settings
from resources import build_executor, build_resources
from resources.deployment import DeploymentEnvironments, KubernetesDeployment, LocalDeployment
from resources.feast import FeastResource
from resources.mlflow import MLflowResource
from resources.training import KubernetesTrainingCompute, LocalTrainingCompute

PASSWORD = "hunter2-secret"
PRODUCTION_ENV = {
    "ML_PLATFORM_PROFILE": "production",
    "ML_PLATFORM_MLFLOW_URI": f"postgresql://mlflow:{PASSWORD}@db.internal:5432/mlflow",
    "ML_PLATFORM_REDIS_URL": "redis://redis.internal:6380/2",
    "ML_PLATFORM_REDIS_PASSWORD": PASSWORD,
    "ML_PLATFORM_TRAINING_IMAGE": "ml-platform/user-code:3",
    "ML_PLATFORM_TRAINING_GPUS": "2",
    "ML_PLATFORM_K8S_NAMESPACE": "ml",
    "ML_PLATFORM_K8S_OVERLAY": "staging",
    "ML_PLATFORM_SERVING_TOKEN_ENV": "FRAUD_TOKEN",
}


@pytest.fixture
def production_env(tmp_path, monkeypatch) -> Settings:
    """The production variables in this process's environment (restored afterwards)."""
    monkeypatch.setenv("ML_PLATFORM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    monkeypatch.setenv("DAGSTER_PG_PORT", "5432")
    for name, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


def test_the_local_profile_keeps_everything_on_this_machine(tmp_path):
    settings = Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path)})
    resources = build_resources(settings)
    assert isinstance(resources["training_compute"], LocalTrainingCompute)
    deployment = resources["deployment"]
    assert isinstance(deployment, DeploymentEnvironments)
    assert (deployment.environment(), deployment.monitored()) == ("local", "local")
    assert isinstance(deployment.for_environment(), LocalDeployment) and deployment.pins() is False
    assert {env: type(deployment.for_environment(env)).__name__ for env in ("local", "staging", "prod")} == {
        "local": "LocalDeployment",
        "staging": "KubernetesDeployment",
        "prod": "KubernetesDeployment",
    }
    assert resources["feast"].repo().online_store_kind == "sqlite"
    assert resources["mlflow"].tracking_uri.startswith("sqlite:///")
    assert build_executor(settings) is None


def test_the_production_profile_picks_kubernetes_redis_and_postgresql(production_env):
    resources = build_resources(production_env)
    training = resources["training_compute"]
    assert isinstance(training, KubernetesTrainingCompute)
    assert (training.namespace, training.image, training.gpus) == ("ml", "ml-platform/user-code:3", 2)
    assert training.state_mount_path == str(production_env.home)
    deployment = resources["deployment"]
    assert (deployment.environment(), deployment.monitored()) == ("staging", "staging")  # the overlay's
    staging, prod = deployment.for_environment(), deployment.for_environment("prod")
    assert isinstance(staging, KubernetesDeployment) and staging.pins() is True
    assert (staging.overlay, staging.token_env_var) == ("staging", "FRAUD_TOKEN")
    assert staging.overlay_dir().name == "staging"
    assert staging.endpoint() == "http://fraud-detector.ml-platform-staging.svc.cluster.local"
    assert prod.endpoint() == "http://fraud-detector.ml-platform-prod.svc.cluster.local"
    assert build_executor(production_env).name == "k8s_job_executor"


def test_secrets_reach_resources_as_variable_names(production_env):
    resources = build_resources(production_env)
    mlflow, feast = resources["mlflow"], resources["feast"]
    assert type(mlflow.tracking_uri) is dg.EnvVar and mlflow.tracking_uri.env_var_name == "ML_PLATFORM_MLFLOW_URI"
    assert type(feast.redis_password) is dg.EnvVar and feast.redis_password.env_var_name == "ML_PLATFORM_REDIS_PASSWORD"
    assert feast.redis_url == "redis://redis.internal:6380/2"  # no secret in it: a plain value

    @dg.asset
    def resolved(mlflow: MLflowResource, feast: FeastResource) -> dict:
        repo = feast.repo()
        return {
            "store_uri": mlflow.store_uri,
            "public_uri": mlflow.public_uri,
            "redis": repo.redis_connection,
            "repo": repr(repo),
            "where": repo.describe_online_store(),
        }

    result = dg.materialize([resolved], resources={"mlflow": mlflow, "feast": feast})
    value = result.output_for_node("resolved")
    # resolved when the run starts, normalized to the driver we ship
    assert value["store_uri"] == f"postgresql+psycopg2://mlflow:{PASSWORD}@db.internal:5432/mlflow"
    assert value["public_uri"] == "postgresql+psycopg2://mlflow:***@db.internal:5432/mlflow"
    assert value["redis"] == f"redis.internal:6380,db=2,password={PASSWORD}"
    assert PASSWORD not in value["repo"] and PASSWORD not in value["where"]
    assert value["where"] == "Redis online store at redis.internal:6380 (db 2)"


def test_the_code_location_loads_in_production(production_env):
    defs = build_definitions(production_env)
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("retrain").executor_def.name == "k8s_job_executor"
    installed = (production_env.dagster_home / "dagster.yaml").read_text()
    assert "for the production profile" in installed and PASSWORD not in installed


def test_the_feast_repo_yaml_never_holds_the_redis_password(tmp_path):
    repo = FeatureRepo(tmp_path, tmp_path / "offline", "p", f"cache:6379,db=1,password={PASSWORD}")
    text = repo.config_yaml()
    assert PASSWORD not in text
    assert 'connection_string: "cache:6379,db=1,password=${ML_PLATFORM_REDIS_PASSWORD}"' in text
    assert PASSWORD not in repr(repo)
    assert repo.online_store_config() == {"type": "redis", "connection_string": repo.redis_connection}
    fast = repo.online_store_config(fail_fast=True)["connection_string"]
    assert fast.startswith(repo.redis_connection + ",")
    assert all(f"{key}={value}" in fast for key, value in FAIL_FAST_REDIS_OPTIONS.items())
    sqlite = FeatureRepo(tmp_path, tmp_path / "offline", "p")
    assert sqlite.online_store_config(fail_fast=True) == {"type": "sqlite", "path": str(tmp_path / "online_store.db")}
    assert "type: sqlite" in sqlite.config_yaml()


def test_a_failed_training_process_fails_the_step_with_its_cause(tmp_path):
    """Pipes alone says "External execution process failed with code 1"; the step says why."""
    from ml_platform.training.job import TrainingJob

    job = TrainingJob(
        training_set_path=str(tmp_path / "missing.parquet"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        model_name="m",
        experiment_name="e",
        artifact_root=(tmp_path / "artifacts").as_uri(),
        run_key="k",
    )

    @dg.asset
    def trained(context: dg.AssetExecutionContext, training_compute: LocalTrainingCompute) -> dg.MaterializeResult:
        return training_compute.train(context, job)

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [trained], resources={"training_compute": LocalTrainingCompute()}, instance=instance, raise_on_error=False
        )
    (failure,) = result.get_step_failure_events()
    message = failure.event_specific_data.error.message
    assert "training failed in the training subprocess: FileNotFoundError: training set" in message
    assert "missing.parquet does not exist; materialize training_set first" in message

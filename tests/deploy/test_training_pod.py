"""What the production profile submits to Kubernetes, checked without a cluster.

- The training pod ``PipesK8sClient`` would start (``KubernetesTrainingCompute.pod_body``, built by
  dagster-k8s' own ``build_pod_body``): the GPU limit, image, command, env and secrets, placement, volume.
- The step Job ``k8s_job_executor`` would create for ``trained_model`` and for another asset, built by
  dagster-k8s' own ``construct_dagster_k8s_job`` from our executor config and op tags.

Both are validated against the Kubernetes OpenAPI schemas shipped by kubernetes-validate (strict).
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from ml_platform.settings import Settings
from ml_platform.training.job import TrainingJob
from resources import build_executor, k8s_executor_config
from resources.training import (
    GPU_RESOURCE,
    K8S_CONFIG_TAG,
    TRAINING_SECRET_ENV,
    KubernetesTrainingCompute,
    training_step_tags,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA_VERSIONS = ("1.30.0", "1.32.0")
IMAGE = "registry.example.com/ml-platform/user-code:0.1.0"
DB_PASSWORD = "s3cret-Pa55"


def production_settings(tmp_path, **env: str) -> Settings:
    return Settings.from_env(
        {
            "ML_PLATFORM_HOME": str(tmp_path / "state"),
            "ML_PLATFORM_PROFILE": "production",
            "ML_PLATFORM_MLFLOW_URI": f"postgresql://mlflow:{DB_PASSWORD}@postgres.db.svc:5432/mlflow",
            "ML_PLATFORM_REDIS_URL": "redis://redis.db.svc:6379/0",
            "ML_PLATFORM_TRAINING_IMAGE": IMAGE,
            "ML_PLATFORM_K8S_NAMESPACE": "ml-platform",
            **env,
        }
    )


def a_job(settings: Settings) -> TrainingJob:
    return TrainingJob(
        training_set_path=str(settings.data_dir / "training_set.parquet"),
        tracking_uri=settings.tracking_uri,
        model_name=settings.model_name,
        experiment_name=settings.experiment_name,
        artifact_root="s3://models/mlflow",
        run_key="0f1e2d3c",
        params={"n_estimators": 200, "device": "cuda"},
        run_tags={"dagster_run_id": "0f1e2d3c"},
    )


def validate(obj: dict) -> None:
    import kubernetes_validate  # pinned in requirements.lock: a missing install fails, never skips

    for version in SCHEMA_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} invalid for Kubernetes {version}: {exc}")


# ---- the training pod ---------------------------------------------------------------------------------


@pytest.fixture
def gpu_settings(tmp_path) -> Settings:
    return production_settings(
        tmp_path,
        ML_PLATFORM_TRAINING_GPUS="2",
        ML_PLATFORM_TRAINING_NODE_SELECTOR='{"cloud.google.com/gke-accelerator": "nvidia-l4"}',
        ML_PLATFORM_TRAINING_TOLERATIONS='[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
    )


def test_the_training_pod_asks_for_the_gpus_on_the_right_nodes(gpu_settings):
    pod = KubernetesTrainingCompute.from_settings(gpu_settings).pod_body(a_job(gpu_settings))
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["image"] == IMAGE
    assert container["command"] == ["python", "-m", "ml_platform.training.pipes_entrypoint"]
    assert container["resources"]["limits"][GPU_RESOURCE] == "2"
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "training"
    # the state volume (training set, Feast repo, local artifacts) where the code expects it
    assert container["volumeMounts"] == [{"name": "ml-platform-state", "mountPath": str(gpu_settings.home)}]
    assert spec["volumes"] == [
        {"name": "ml-platform-state", "persistentVolumeClaim": {"claimName": "ml-platform-state"}}
    ]
    validate(pod)


def test_the_training_pod_carries_no_secret_and_reads_them_from_the_secret(gpu_settings):
    from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, decode_env_var

    pod = KubernetesTrainingCompute.from_settings(gpu_settings).pod_body(a_job(gpu_settings))
    assert DB_PASSWORD not in json.dumps(pod)
    env = {entry["name"]: entry for entry in pod["spec"]["containers"][0]["env"]}
    assert env["ML_PLATFORM_HOME"] == {"name": "ML_PLATFORM_HOME", "value": str(gpu_settings.home)}
    for name in TRAINING_SECRET_ENV:
        reference = env[name]["valueFrom"]["secretKeyRef"]
        assert reference == {"name": "ml-platform-secrets", "key": name, "optional": True}
    # The job travels in the Pipes context: same job, the URI without its password (libpq reads PGPASSWORD).
    context = decode_env_var(env[DAGSTER_PIPES_CONTEXT_ENV_VAR]["value"])
    job = context["extras"]["job"]
    assert job["tracking_uri"] == "postgresql+psycopg2://mlflow@postgres.db.svc:5432/mlflow"
    assert job["params"] == {"n_estimators": 200, "device": "cuda"}
    assert job["training_set_path"] == str(gpu_settings.data_dir / "training_set.parquet")


def test_a_cpu_training_pod_asks_for_no_gpu(tmp_path):
    settings = production_settings(tmp_path, ML_PLATFORM_TRAINING_GPUS="0", ML_PLATFORM_K8S_STATE_CLAIM="")
    pod = KubernetesTrainingCompute.from_settings(settings).pod_body(a_job(settings))
    container = pod["spec"]["containers"][0]
    assert GPU_RESOURCE not in container["resources"]["limits"]
    assert "volumes" not in pod["spec"] and "volumeMounts" not in container
    validate(pod)


# ---- the step Jobs of k8s_job_executor ----------------------------------------------------------------


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: none, user: {token: unused}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


def run_launcher(tmp_path, monkeypatch):
    """deploy/dagster/dagster-k8s.yaml's K8sRunLauncher, through the instance config system (schema,
    defaults, ``{env: ...}``), pointed at a kubeconfig file instead of in-cluster credentials: constructing
    it loads them, nothing is contacted."""
    import yaml
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher

    monkeypatch.setenv("DAGSTER_K8S_SERVICE_ACCOUNT", "dagster-run")
    monkeypatch.setenv("DAGSTER_K8S_INSTANCE_CONFIG_MAP", "dagster-instance")
    monkeypatch.setenv("ML_PLATFORM_K8S_NAMESPACE", "ml-platform")
    for name, value in {"HOST": "postgres.db.svc", "PORT": "5432", "USERNAME": "dagster", "DB": "dagster"}.items():
        monkeypatch.setenv(f"DAGSTER_PG_{name}", value)  # passed on to run pods by name (env_vars)
    template = yaml.safe_load((REPO / "deploy" / "dagster" / "dagster-k8s.yaml").read_text())
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    config = {**template["run_launcher"]["config"], "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    processed = process_config(K8sRunLauncher.config_type(), config)
    assert processed.success, processed.errors
    return K8sRunLauncher.from_config_value(None, processed.value)


def step_job(settings: Settings, op_tags: dict, launcher) -> dict:
    """The Job ``k8s_job_executor`` creates for a step with ``op_tags``, composed as its step handler does:
    the run launcher's container context, then the executor's config, then the step's op tags."""
    import kubernetes
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config

    @dg.asset(op_tags=op_tags)
    def some_asset() -> None: ...

    config = k8s_executor_config(settings)
    launcher_context = K8sContainerContext(
        namespace=launcher.job_namespace,
        env_secrets=launcher.env_secrets,
        env_vars=launcher.env_vars,
        labels=launcher.labels,
        service_account_name=launcher.service_account_name,
    )
    executor_context = K8sContainerContext(
        namespace=config["job_namespace"],
        env_secrets=config["env_secrets"],
        env_vars=config["env_vars"],
        volumes=config.get("volumes"),
        volume_mounts=config.get("volume_mounts"),
        labels=config["labels"],
    )
    step_config = K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(some_asset.op.tags))
    context = launcher_context.merge(executor_context).merge(step_config)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(IMAGE, launcher),
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-0123456789abcdef",
        pod_name="dagster-step-0123456789abcdef",
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/op": "some_asset"},
        env_vars=[],
    )
    body = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    return {"apiVersion": "batch/v1", "kind": "Job", **body}


def test_the_executor_config_fits_k8s_job_executor(tmp_path):
    from dagster._config import process_config
    from dagster_k8s import k8s_job_executor

    settings = production_settings(tmp_path, ML_PLATFORM_K8S_IMAGE=IMAGE)
    processed = process_config(k8s_job_executor.config_schema.config_type, k8s_executor_config(settings))
    assert processed.success, processed.errors
    assert processed.value["job_namespace"] == "ml-platform"
    assert processed.value["job_image"] == IMAGE
    assert processed.value["env_secrets"] == ["ml-platform-secrets"]
    assert "ML_PLATFORM_PROFILE=production" in processed.value["env_vars"]
    assert not any("MLFLOW_URI" in item or DB_PASSWORD in item for item in processed.value["env_vars"])
    assert build_executor(settings).name == "k8s_job_executor"
    assert build_executor(production_settings(tmp_path, ML_PLATFORM_EXECUTOR="local")) is None


def test_trained_model_step_asks_for_the_gpu_when_it_trains_itself(tmp_path, monkeypatch):
    settings = production_settings(
        tmp_path,
        ML_PLATFORM_TRAINING_BACKEND="local",
        ML_PLATFORM_TRAINING_NODE_SELECTOR="{pool: gpu}",
    )
    tags = training_step_tags(settings)
    assert set(tags) == {K8S_CONFIG_TAG}
    job = step_job(settings, tags, run_launcher(tmp_path, monkeypatch))
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {GPU_RESOURCE: "1"}
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert {"secretRef": {"name": "ml-platform-secrets"}} in container["envFrom"]
    assert pod["serviceAccountName"] == "dagster-run"
    assert {"name": "ML_PLATFORM_PROFILE", "value": "production"} in container["env"]
    assert {"name": "DAGSTER_PG_HOST", "value": "postgres.db.svc"} in container["env"]
    assert container["volumeMounts"] == [{"name": "ml-platform-state", "mountPath": str(settings.home)}]
    validate(job)


def test_other_steps_and_a_step_waiting_for_a_training_pod_ask_for_no_gpu(tmp_path, monkeypatch):
    settings = production_settings(tmp_path)  # training in its own pod (the production default)
    assert training_step_tags(settings) == {}
    job = step_job(settings, {}, run_launcher(tmp_path, monkeypatch))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert GPU_RESOURCE not in json.dumps(container.get("resources") or {})
    assert "nodeSelector" not in job["spec"]["template"]["spec"]
    validate(job)
    local = Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path / "local")})
    assert training_step_tags(local) == {}  # the local profile: no Kubernetes at all

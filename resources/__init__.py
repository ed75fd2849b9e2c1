"""Resources, chosen per profile in one place."""

import os

import dagster as dg

from ml_platform.monitoring.health import MonitoringPaths
from ml_platform.settings import ENVIRONMENT_VARIABLES, REDIS_PASSWORD_ENV, Settings, normalize_tracking_uri, redact
from resources.alerts import AlertResource
from resources.deployment import (
    DeploymentEnvironments,
    DeploymentTarget,
    KubernetesDeployment,
    LocalDeployment,
    ReplicaSetDeployment,
)
from resources.feast import FeastResource
from resources.mlflow import MLflowResource
from resources.monitoring import MonitoringResource
from resources.storage import StateIOManager, StateStorage
from resources.training import STATE_VOLUME, KubernetesTrainingCompute, LocalTrainingCompute, TrainingCompute

__all__ = [
    "AlertResource",
    "DeploymentEnvironments",
    "DeploymentTarget",
    "FeastResource",
    "KubernetesDeployment",
    "KubernetesTrainingCompute",
    "LocalDeployment",
    "ReplicaSetDeployment",
    "LocalTrainingCompute",
    "MLflowResource",
    "MonitoringResource",
    "StateIOManager",
    "StateStorage",
    "TrainingCompute",
    "build_deployment",
    "build_executor",
    "build_resources",
    "k8s_executor_config",
]


def build_resources(settings: Settings) -> dict[str, object]:
    """Every resource the asset graph needs, configured for ``settings.profile``."""
    return {
        "io_manager": StateIOManager(base_dir=str(settings.data_dir)),
        "state": StateStorage(base_dir=str(settings.data_dir)),
        "mlflow": MLflowResource(
            tracking_uri=_secret_aware(settings.tracking_uri, ENVIRONMENT_VARIABLES["mlflow_tracking_uri"]),
            artifact_root=settings.mlflow_artifact_root,
            model_name=settings.model_name,
            experiment_name=settings.experiment_name,
            ui_url=settings.mlflow_ui or "",
        ),
        "feast": FeastResource(
            repo_dir=str(settings.feast_dir),
            offline_dir=str(settings.offline_features_dir),
            project=settings.feast_project,
            redis_url=_secret_aware(settings.redis_url, ENVIRONMENT_VARIABLES["redis_url"]),
            redis_password=_secret_aware(settings.redis_password, REDIS_PASSWORD_ENV, always_secret=True),
        ),
        "training_compute": (
            KubernetesTrainingCompute.from_settings(settings)
            if settings.training_backend == "kubernetes"
            else LocalTrainingCompute()
        ),
        "deployment": build_deployment(settings),
        **_monitoring_resources(settings),
    }


def build_deployment(settings: Settings) -> DeploymentEnvironments:
    """The target of every deployment environment: ``local`` the server process on this machine (it follows
    the registry alias), or with ``deployment_target`` ``replicas`` a set of pinned replicas behind haproxy
    on this machine, ``staging`` and ``prod`` their Kubernetes overlays (every deploy pinned, a rollout);
    the default environment is the profile's (``settings.deployment_environment``), and the settings'
    ``serving_url`` is the Service URL of that overlay. Another kind of target goes in an environment's slot
    here."""
    tokens = {
        "token_env_var": settings.serving_token_env,
        "admin_token_env_var": settings.serving_admin_token_env,
    }
    kubernetes = {
        env: KubernetesDeployment(
            overlay=env,
            **tokens,
            **({"service_url": settings.serving_url} if settings.serving_url and env == settings.k8s_overlay else {}),
        )
        for env in ("staging", "prod")
    }
    return DeploymentEnvironments(
        default_environment=settings.deployment_environment,
        monitored_environment=settings.watched_environment,
        local=(
            ReplicaSetDeployment(
                state_dir=str(settings.home / "serving-replicas"),
                replicas=settings.serving_replicas,
                port=settings.serving_port,
                replica_ports=list(settings.serving_replica_ports),
                **tokens,
            )
            if settings.deployment_target == "replicas"
            else LocalDeployment(state_dir=str(settings.home / "serving"), port=settings.serving_port, **tokens)
        ),
        **kubernetes,
    )


def _monitoring_resources(settings: Settings) -> dict[str, object]:
    """Monitoring's paths (the server's prediction log, ``<home>/monitoring``) and the alert sink: the
    JSON-lines history there, plus the webhook named by ML_PLATFORM_ALERT_WEBHOOK_URL when it is set."""
    paths = MonitoringPaths.from_settings(settings)
    return {
        "monitoring": MonitoringResource(
            log_dir=str(paths.log_dir),
            monitoring_dir=str(paths.root),
            prometheus_url=settings.prometheus_url,
            pushgateway_url=settings.pushgateway_url,
            labels_uri=str(paths.labels_dir),
        ),
        "alerts": AlertResource(jsonl_path=str(paths.alerts_path)),
    }


def build_executor(settings: Settings):
    """The Definitions' executor: ``None`` (Dagster's default) unless ``settings.executor`` is
    ``kubernetes``, then dagster-k8s' ``k8s_job_executor``: one Kubernetes Job per step, in the settings'
    namespace, with the platform's settings as environment, its secrets from the Secret (``envFrom``) and
    the state volume mounted where the code expects it. Per-step resources come from op tags
    (``trained_model``'s GPU, see resources.training.training_step_tags)."""
    if settings.executor != "kubernetes":
        return None
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(k8s_executor_config(settings), name="k8s_job_executor")


def k8s_executor_config(settings: Settings) -> dict[str, object]:
    """The ``k8s_job_executor`` config :func:`build_executor` uses (no secret values: ``envFrom`` the Secret)."""
    config: dict[str, object] = {
        "job_namespace": settings.k8s_namespace,
        "env_secrets": [settings.k8s_secret],
        "env_vars": [f"{name}={value}" for name, value in settings.environment_for_pods().items()],
        "labels": {"app.kubernetes.io/part-of": "ml-platform"},
    }
    if settings.k8s_image:
        config["job_image"] = settings.k8s_image  # else: the image that loaded the code location
    if settings.k8s_state_claim:
        config["volumes"] = [
            {"name": STATE_VOLUME, "persistent_volume_claim": {"claim_name": settings.k8s_state_claim}}
        ]
        config["volume_mounts"] = [{"name": STATE_VOLUME, "mount_path": str(settings.home)}]
    return config


def _secret_aware(value: str, env_name: str, *, always_secret: bool = False):
    """``value``, or ``dg.EnvVar(env_name)`` when it holds a secret read from that variable: Dagster then
    resolves it when a run starts and shows only the variable's name in the UI and run records."""
    if not value or (not always_secret and redact(value) == value):
        return value
    raw = os.environ.get(env_name)
    if raw is not None and value in (raw, normalize_tracking_uri(raw)):
        return dg.EnvVar(env_name)
    return value

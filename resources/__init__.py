"""Resources, chosen per profile in one place."""

from ml_platform.settings import Settings
from resources.deployment import DeploymentTarget, KubernetesDeployment, LocalDeployment
from resources.feast import FeastResource
from resources.mlflow import MLflowResource
from resources.storage import StateIOManager, StateStorage
from resources.training import LocalTrainingCompute, TrainingCompute

__all__ = [
    "DeploymentTarget",
    "FeastResource",
    "KubernetesDeployment",
    "LocalDeployment",
    "MLflowResource",
    "StateIOManager",
    "StateStorage",
    "TrainingCompute",
    "build_resources",
]


def build_resources(settings: Settings) -> dict[str, object]:
    """Every resource the asset graph needs, configured for ``settings.profile``."""
    return {
        "io_manager": StateIOManager(base_dir=str(settings.data_dir)),
        "state": StateStorage(base_dir=str(settings.data_dir)),
        "mlflow": MLflowResource(
            tracking_uri=settings.tracking_uri,
            artifact_root=settings.mlflow_artifact_root,
            model_name=settings.model_name,
            experiment_name=settings.experiment_name,
        ),
        "feast": FeastResource(
            repo_dir=str(settings.feast_dir),
            offline_dir=str(settings.offline_features_dir),
            project=settings.feast_project,
        ),
        "training_compute": LocalTrainingCompute(),
        "deployment": LocalDeployment(state_dir=str(settings.home / "serving"), port=settings.serving_port),
    }

"""MLflow tracking and registry, as a resource that hands out the core's Registry."""

import dagster as dg

from ml_platform.registry import Registry


class MLflowResource(dg.ConfigurableResource):
    """Connection settings for MLflow; no business logic (that lives in ml_platform.registry)."""

    tracking_uri: str
    artifact_root: str
    model_name: str
    experiment_name: str

    def registry(self) -> Registry:
        return Registry(self.tracking_uri, self.model_name, self.experiment_name, self.artifact_root)

    def run_url(self, run_id: str) -> str:
        """Where to see the run: the MLflow UI path (``make mlflow-ui`` serves this store)."""
        registry = self.registry()
        experiment_id = registry.ensure_experiment()
        return f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"

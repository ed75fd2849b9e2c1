"""MLflow tracking and registry, as a resource that hands out the core's Registry."""

import dagster as dg

from ml_platform.registry import Registry
from ml_platform.settings import normalize_tracking_uri, redact


class MLflowResource(dg.ConfigurableResource):
    """Connection settings for MLflow; no business logic (that lives in ml_platform.registry).

    ``tracking_uri`` is a ``dg.EnvVar`` when it carries a password (production), so the UI shows the
    variable's name, never the password; :attr:`store_uri` is what is connected to.
    """

    tracking_uri: str
    artifact_root: str
    model_name: str
    experiment_name: str

    @property
    def store_uri(self) -> str:
        """The tracking URI with a driver-less ``postgresql://`` pinned to psycopg2 (the driver we ship)."""
        return normalize_tracking_uri(self.tracking_uri)

    @property
    def public_uri(self) -> str:
        """The tracking URI for messages and metadata: the password, if any, shown as ``***``."""
        return redact(self.store_uri)

    def registry(self) -> Registry:
        return Registry(self.store_uri, self.model_name, self.experiment_name, self.artifact_root)

    def run_url(self, run_id: str) -> str:
        """Where to see the run: the MLflow UI path (``make mlflow-ui`` serves this store)."""
        registry = self.registry()
        experiment_id = registry.ensure_experiment()
        return f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"

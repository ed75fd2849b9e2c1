"""Where the model is served: a local background process here, Kubernetes in production.

Both take a model name and version and return once that version is serving; the assets and jobs do
not change when the target does.
"""

from abc import ABC, abstractmethod
from pathlib import Path

import dagster as dg

from ml_platform.deploy.local import DeploymentReport, LocalProcessTarget


class DeploymentTarget(dg.ConfigurableResource, ABC):
    @abstractmethod
    def deploy(self, model_name: str, version: int) -> DeploymentReport:
        """Serve ``version`` of ``model_name``; return once it answers."""

    @abstractmethod
    def endpoint(self) -> str:
        """Base URL where the served model answers (for smoke checks)."""

    def token(self) -> str | None:
        """Bearer token the smoke check sends, when the server requires one."""
        return None


class LocalDeployment(DeploymentTarget):
    """The model server as a managed process on this machine (pid and log under the state directory)."""

    state_dir: str
    host: str = "127.0.0.1"
    port: int = 8080
    startup_timeout_s: float = 120.0

    def target(self) -> LocalProcessTarget:
        return LocalProcessTarget(Path(self.state_dir), host=self.host, port=self.port)

    def deploy(self, model_name: str, version: int) -> DeploymentReport:
        return self.target().deploy(model_name, version, timeout_s=self.startup_timeout_s)

    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

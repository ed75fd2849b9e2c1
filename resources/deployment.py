"""Where the model is served: a local background process here, Kubernetes in production.

Both take a model name and version and return once that version is serving; the assets and jobs do
not change when the target does.
"""

import os
import time
from abc import ABC, abstractmethod
from pathlib import Path

import dagster as dg

from ml_platform.deploy.kubernetes import KubernetesTarget, overlay_dir
from ml_platform.deploy.local import DeploymentReport, LocalProcessTarget


class DeploymentTarget(dg.ConfigurableResource, ABC):
    @abstractmethod
    def deploy(self, model_name: str, version: int) -> DeploymentReport:
        """Serve ``version`` of ``model_name``; return once it answers."""

    @abstractmethod
    def endpoint(self) -> str:
        """Base URL where the served model answers (for smoke checks)."""

    def token(self) -> str | None:
        """The scoring token: the bearer token the smoke check and the CLI send, when the server requires one."""
        return None

    def admin_token(self) -> str | None:
        """The admin token, the only one that opens the server's ``/admin/*``; None when it has none."""
        return None


class LocalDeployment(DeploymentTarget):
    """The model server as a managed process on this machine (pid and log under the state directory).

    Its tokens are read from the variables named here when the server starts (the config holds names,
    never values, so the UI never shows a token) and handed to the server process; without them set the
    server runs without auth and with its /admin writes switched off.
    """

    state_dir: str
    host: str = "127.0.0.1"
    port: int = 8080
    startup_timeout_s: float = 120.0
    token_env_var: str = "ML_PLATFORM_SERVING_TOKEN"
    admin_token_env_var: str = "ML_PLATFORM_SERVING_ADMIN_TOKEN"

    def target(self) -> LocalProcessTarget:
        return LocalProcessTarget(
            Path(self.state_dir),
            host=self.host,
            port=self.port,
            token=self.token(),
            admin_token=self.admin_token(),
        )

    def deploy(self, model_name: str, version: int) -> DeploymentReport:
        return self.target().deploy(model_name, version, timeout_s=self.startup_timeout_s)

    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def token(self) -> str | None:
        # An empty value is passed on as it is: the server refuses it at start, naming the variable.
        return os.environ.get(self.token_env_var)

    def admin_token(self) -> str | None:
        return os.environ.get(self.admin_token_env_var)


class KubernetesDeployment(DeploymentTarget):
    """The kustomize overlay ``deploy/k8s/overlays/<overlay>`` applied with the version pinned (server-side
    apply through the official client), waiting for the rollout. Credentials: ``kubeconfig``/``context``,
    or in-cluster when Dagster itself runs in the cluster."""

    overlay: str = "prod"
    kubeconfig: str | None = None
    context: str | None = None
    rollout_timeout_s: float = 600.0
    service_url: str = "http://fraud-detector.ml-platform-prod.svc.cluster.local"
    token_env_var: str = "ML_PLATFORM_SERVING_TOKEN"
    admin_token_env_var: str = "ML_PLATFORM_SERVING_ADMIN_TOKEN"

    def overlay_dir(self) -> Path:
        return overlay_dir(self.overlay)

    def deploy(self, model_name: str, version: int) -> DeploymentReport:
        started = time.perf_counter()
        target = KubernetesTarget(kubeconfig=self.kubeconfig, context=self.context)
        statuses = target.deploy(self.overlay_dir(), version, timeout_s=self.rollout_timeout_s)
        return DeploymentReport(
            target=f"kubernetes/{self.overlay}",
            url=self.service_url,
            model_name=model_name,
            model_version=version,
            started_server=False,
            seconds=time.perf_counter() - started,
            detail="; ".join(f"{s.namespace}/{s.name}: {s.message}" for s in statuses),
        )

    def endpoint(self) -> str:
        return self.service_url

    def token(self) -> str | None:
        return os.environ.get(self.token_env_var) or None

    def admin_token(self) -> str | None:
        return os.environ.get(self.admin_token_env_var) or None

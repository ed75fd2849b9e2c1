"""Where the model is served: a local background process here, Kubernetes in production.

Every target takes a model name and version and returns once that version is serving; the assets and
jobs do not change when the target does. The ``deployment`` resource is :class:`DeploymentEnvironments`:
one target per environment (``local``, ``staging``, ``prod``) and which one a deploy goes to by default.
A new kind of target (a set of local replicas behind a load balancer, say) is a :class:`DeploymentTarget`
subclass put in an environment's slot by ``resources.build_resources``; nothing that deploys changes.
"""

import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import dagster as dg

from ml_platform.deploy.kubernetes import KubernetesTarget, overlay_dir
from ml_platform.deploy.local import DeploymentReport, LocalProcessTarget
from ml_platform.deploy.replicas import ReplicaSetTarget
from ml_platform.settings import DEPLOYMENT_ENVIRONMENTS


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

    def pins(self) -> bool:
        """True when the servers this target starts serve exactly the version deployed (pinned, so
        a promotion reaches them only through a deploy); False when they follow the registry alias."""
        return False

    def stop(self) -> bool:
        """Stop the servers this target manages on this machine (they drain and flush their prediction
        logs); True when some ran. A target whose servers run elsewhere (a cluster) stops nothing."""
        return False


class _OnThisMachine(DeploymentTarget):
    """Servers this target starts and stops on this machine, answering at ``host:port``. Their tokens are
    read from the variables named here when a server starts (the config holds names, never values, so the
    UI never shows a token) and handed to the server processes; without them set the servers run without
    auth and with their /admin writes switched off. An empty value is passed on as it is: the server
    refuses it at start, naming the variable."""

    state_dir: str
    host: str = "127.0.0.1"
    port: int = 8080
    startup_timeout_s: float = 120.0
    token_env_var: str = "ML_PLATFORM_SERVING_TOKEN"
    admin_token_env_var: str = "ML_PLATFORM_SERVING_ADMIN_TOKEN"

    @abstractmethod
    def target(self) -> LocalProcessTarget | ReplicaSetTarget:
        """The core target that starts, rolls and stops the servers."""

    def deploy(self, model_name: str, version: int) -> DeploymentReport:
        return self.target().deploy(model_name, version, timeout_s=self.startup_timeout_s)

    def stop(self) -> bool:
        return self.target().stop()

    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def token(self) -> str | None:
        return os.environ.get(self.token_env_var)

    def admin_token(self) -> str | None:
        return os.environ.get(self.admin_token_env_var)


class LocalDeployment(_OnThisMachine):
    """The model server as a managed process on this machine (pid and log under the state directory),
    following the registry's champion alias."""

    def target(self) -> LocalProcessTarget:
        return LocalProcessTarget(
            Path(self.state_dir),
            host=self.host,
            port=self.port,
            token=self.token(),
            admin_token=self.admin_token(),
        )


class ReplicaSetDeployment(_OnThisMachine):
    """``replicas`` model-server processes on this machine behind one haproxy listening on ``port``
    (state, pids, logs and each replica's journal under ``state_dir``). Every deploy pins the version:
    the first starts the set, a later one rolls the replicas one at a time (drained in haproxy first),
    so a promotion or a rollback reaches every replica without a failed request. The replicas' own
    ports are ``replica_ports`` (empty: free ports chosen at the first start and kept until the set is
    stopped); haproxy's runtime API (``haproxy.sock`` in ``state_dir``) says which replica is in rotation."""

    replicas: int = 3
    replica_ports: list[int] = []
    haproxy: str = "haproxy"

    def target(self) -> ReplicaSetTarget:
        return ReplicaSetTarget(
            Path(self.state_dir),
            replicas=self.replicas,
            host=self.host,
            ports=list(self.replica_ports) or None,
            balancer_port=self.port,
            token=self.token(),
            admin_token=self.admin_token(),
            haproxy=self.haproxy,
            timeout_s=self.startup_timeout_s,
        )

    def pins(self) -> bool:
        return True


class KubernetesDeployment(DeploymentTarget):
    """The kustomize overlay ``deploy/k8s/overlays/<overlay>`` applied with the version pinned (server-side
    apply through the official client), waiting for the rollout. Credentials: ``kubeconfig``/``context``,
    or in-cluster when Dagster itself runs in the cluster.

    Every deploy is a rollout of the version given (``ML_PLATFORM_SERVING_MODEL_VERSION`` in the pod
    template): a rollback's redeploy of the restored version rolls the pods back to it.
    ``service_url`` empty: the overlay's in-cluster Service (``fraud-detector`` in ``ml-platform-<overlay>``).
    """

    overlay: str = "prod"
    kubeconfig: str | None = None
    context: str | None = None
    rollout_timeout_s: float = 600.0
    service_url: str = ""
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
        return self.service_url or f"http://fraud-detector.ml-platform-{self.overlay}.svc.cluster.local"

    def token(self) -> str | None:
        return os.environ.get(self.token_env_var) or None

    def admin_token(self) -> str | None:
        return os.environ.get(self.admin_token_env_var) or None

    def pins(self) -> bool:
        return True


class UnknownEnvironment(ValueError):
    """A deployment environment that is not one of the known ones, or has no target here."""


class DeploymentEnvironments(DeploymentTarget):
    """The deployment target of each environment, and the default one.

    - ``default_environment``: where a deploy goes when none is named (a promotion's deploy, the deploy job
      without config): ``local`` in the local profile, the Kubernetes overlay in production;
    - ``monitored_environment``: the environment whose traffic monitoring judges (empty: the default);
    - ``local``, ``staging``, ``prod``: each environment's target, or None where it has none.

    Used as a plain :class:`DeploymentTarget` (monitoring scraping ``/metrics``, ``ml-platform status``),
    it is the monitored environment's target.
    """

    default_environment: str = "local"
    monitored_environment: str = ""
    local: DeploymentTarget | None = None
    staging: DeploymentTarget | None = None
    prod: DeploymentTarget | None = None

    def environment(self, name: str = "") -> str:
        """``name``, or the default environment when empty; raises :class:`UnknownEnvironment` for one that
        is not known or has no target."""
        resolved = name or self.default_environment
        if resolved not in DEPLOYMENT_ENVIRONMENTS:
            raise UnknownEnvironment(
                f"unknown deployment environment {resolved!r}; expected one of {', '.join(DEPLOYMENT_ENVIRONMENTS)}"
            )
        if getattr(self, resolved) is None:
            configured = [env for env in DEPLOYMENT_ENVIRONMENTS if getattr(self, env) is not None]
            raise UnknownEnvironment(
                f"no deployment target is configured for environment {resolved!r}; configured: "
                f"{', '.join(configured) or 'none'}"
            )
        return resolved

    def for_environment(self, name: str = "") -> DeploymentTarget:
        """The target of environment ``name`` (empty: the default environment)."""
        return getattr(self, self.environment(name))

    def monitored(self) -> str:
        """The environment monitoring judges (and whose failed monitoring checks roll it back)."""
        return self.environment(self.monitored_environment)

    def describe(self) -> dict[str, Any]:
        """Each environment's target kind and endpoint, for metadata and logs."""
        return {
            env: {"target": type(target).__name__, "endpoint": target.endpoint(), "pins": target.pins()}
            for env in DEPLOYMENT_ENVIRONMENTS
            if (target := getattr(self, env)) is not None
        }

    # ---- as a DeploymentTarget: the monitored environment's ------------------------------------------
    def deploy(self, model_name: str, version: int) -> DeploymentReport:
        return self.for_environment(self.monitored()).deploy(model_name, version)

    def endpoint(self) -> str:
        return self.for_environment(self.monitored()).endpoint()

    def token(self) -> str | None:
        return self.for_environment(self.monitored()).token()

    def admin_token(self) -> str | None:
        return self.for_environment(self.monitored()).admin_token()

    def pins(self) -> bool:
        return self.for_environment(self.monitored()).pins()

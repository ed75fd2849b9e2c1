"""Kubernetes deployment target: render the kustomize overlays, pin a model version, apply, wait.

The manifests live in ``deploy/k8s`` (a base and one overlay per environment). A deployment is:

1. :meth:`KubernetesTarget.render` an overlay with ``kubectl kustomize`` into plain dicts;
2. :meth:`KubernetesTarget.set_model_version` pins the registry version an alias serves: the pod
   template annotation ``ml-platform/model-version`` (a new version changes the template, so the
   Deployment rolls), the ``ML_PLATFORM_SERVING_MODEL_VERSION`` env of the serving container, and a
   record in the ConfigMap the Deployment reads;
3. :meth:`KubernetesTarget.apply` server-side applies every object with field manager ``ml-platform``;
4. :meth:`KubernetesTarget.wait_for_rollout` polls the Deployment with the rules of
   ``kubectl rollout status`` until every replica runs the new template, or raises :class:`RolloutError`.

:meth:`KubernetesTarget.deploy` does all four. The official ``kubernetes`` client is imported only
when a target connects to a cluster, so rendering and pinning work without it. This module is plain
Python: no Dagster (the resource in ``resources/`` wraps it).
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ml_platform.deploy.local import DeploymentError

FIELD_MANAGER = "ml-platform"
VERSION_ANNOTATION = "ml-platform/model-version"
ALIAS_ANNOTATION = "ml-platform/model-alias"
ALIAS_ENV = "ML_PLATFORM_SERVING_ALIAS"
VERSION_ENV = "ML_PLATFORM_SERVING_MODEL_VERSION"
DEFAULT_ALIAS = "champion"  # what the server serves when ML_PLATFORM_SERVING_ALIAS is unset

K8S_DIR = Path(__file__).resolve().parents[2] / "deploy" / "k8s"  # the project's manifests

_ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# Apply order for kinds other objects depend on; everything else keeps its rendered order after these.
_APPLY_ORDER = ("Namespace", "ServiceAccount", "Secret", "ConfigMap", "Service", "Deployment")


class DeployError(DeploymentError):
    """A Kubernetes deployment step failed; the message says which object and why.

    A :class:`~ml_platform.deploy.local.DeploymentError`, so callers handle both targets' failures alike.
    """


class KubernetesUnavailable(DeployError):
    """No cluster to talk to: no usable kubeconfig or in-cluster config, or the API cannot be reached."""


class RenderError(DeployError):
    """An overlay could not be rendered (kubectl missing, the overlay invalid, the output not YAML)."""


class ApplyError(DeployError):
    """The API server refused an object."""


@dataclass(frozen=True)
class RolloutStatus:
    """Where a Deployment's rollout stands, counted like ``kubectl rollout status``."""

    ready: bool
    replicas: int  # desired (spec.replicas)
    updated: int  # pods on the current template
    available: int  # pods available (ready for minReadySeconds)
    message: str
    seconds: float = 0.0  # time spent waiting
    unavailable: int = 0
    name: str = ""
    namespace: str = ""


class RolloutError(DeployError):
    """A rollout did not complete (timeout, progress deadline exceeded); ``status`` is the last one seen."""

    def __init__(self, message: str, status: RolloutStatus | None = None):
        super().__init__(message)
        self.status = status


# ---- pure helpers (no cluster) -----------------------------------------------------------------------


def overlay_dir(env: str) -> Path:
    """The kustomize overlay of environment ``env`` (staging, prod): ``deploy/k8s/overlays/<env>``."""
    return K8S_DIR / "overlays" / env


def render_overlay(overlay_dir: str | Path, kubectl: str = "kubectl", timeout_s: float = 60.0) -> list[dict]:
    """``kubectl kustomize overlay_dir`` parsed into a list of objects (empty documents dropped)."""
    overlay = Path(overlay_dir)
    if not overlay.is_dir():
        raise RenderError(f"overlay directory {overlay} does not exist")
    if not any((overlay / name).is_file() for name in ("kustomization.yaml", "kustomization.yml", "Kustomization")):
        raise RenderError(f"{overlay} has no kustomization.yaml; expected a kustomize base or overlay directory")
    executable = shutil.which(kubectl)
    if executable is None:
        raise RenderError(
            f"{kubectl!r} not found on PATH; rendering needs kubectl 1.14+ (built-in kustomize): "
            "install kubectl or pass kubectl='/path/to/kubectl'"
        )
    try:
        completed = subprocess.run(
            [executable, "kustomize", str(overlay)], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RenderError(f"kubectl kustomize {overlay} did not finish in {timeout_s:.0f} s") from exc
    if completed.returncode != 0:
        raise RenderError(
            f"kubectl kustomize {overlay} failed (exit {completed.returncode}): {completed.stderr.strip()}"
        )
    try:
        documents = list(yaml.safe_load_all(completed.stdout))
    except yaml.YAMLError as exc:
        raise RenderError(f"kubectl kustomize {overlay} printed invalid YAML: {exc}") from exc
    objects = [doc for doc in documents if doc is not None]
    for doc in objects:
        if not isinstance(doc, dict) or not doc.get("kind") or not doc.get("apiVersion"):
            raise RenderError(
                f"kubectl kustomize {overlay} printed a document that is not a Kubernetes object: {doc!r}"
            )
    return objects


def served_alias(deployment: Mapping[str, Any]) -> str:
    """The registry alias a Deployment's server loads: its ``ML_PLATFORM_SERVING_ALIAS`` env, else champion."""
    for container in _containers(deployment):
        for entry in container.get("env") or []:
            if entry.get("name") == ALIAS_ENV and "value" in entry:
                return str(entry["value"])
    return DEFAULT_ALIAS


def pin_model_version(objects: Iterable[Mapping[str, Any]], version: str | int, alias: str) -> list[dict]:
    """Copies of ``objects`` with ``version`` pinned on every Deployment serving ``alias``.

    On each such Deployment: pod template annotations ``ml-platform/model-version`` and
    ``ml-platform/model-alias`` (a changed template rolls the pods) and env
    ``ML_PLATFORM_SERVING_MODEL_VERSION`` on every container; in each ConfigMap those Deployments read
    through ``envFrom``: ``ML_PLATFORM_SERVING_<ALIAS>_VERSION`` (what each alias serves, at a glance).
    The input is not modified.
    """
    version_text = _check_version(version)
    if not isinstance(alias, str) or not _ALIAS_PATTERN.match(alias):
        raise ValueError(f"alias must be a registry alias such as 'champion' or 'challenger', got {alias!r}")
    pinned = [copy.deepcopy(dict(obj)) for obj in objects]
    deployments = [obj for obj in pinned if obj.get("kind") == "Deployment"]
    targets = [obj for obj in deployments if served_alias(obj) == alias]
    if not targets:
        served = sorted({served_alias(obj) for obj in deployments})
        raise ValueError(
            f"no Deployment serves alias {alias!r}; the Deployments here serve: {', '.join(served) or 'none'}"
        )
    config_maps: set[str] = set()
    for deployment in targets:
        template = deployment.setdefault("spec", {}).setdefault("template", {})
        annotations = template.setdefault("metadata", {}).setdefault("annotations", {})
        annotations[VERSION_ANNOTATION] = version_text
        annotations[ALIAS_ANNOTATION] = alias
        for container in _containers(deployment):
            env = container.setdefault("env", [])
            env[:] = [entry for entry in env if entry.get("name") != VERSION_ENV]
            env.append({"name": VERSION_ENV, "value": version_text})
            for source in container.get("envFrom") or []:
                ref = source.get("configMapRef") or {}
                if ref.get("name"):
                    config_maps.add(ref["name"])
    key = f"ML_PLATFORM_SERVING_{alias.upper().replace('-', '_')}_VERSION"
    for obj in pinned:
        if obj.get("kind") == "ConfigMap" and obj.get("metadata", {}).get("name") in config_maps:
            data = obj.get("data") or {}
            data[key] = version_text
            obj["data"] = data
    return pinned


def rollout_status(deployment: Mapping[str, Any], name: str = "", namespace: str = "") -> RolloutStatus:
    """Evaluate a Deployment the way ``kubectl rollout status`` does (one look, no waiting).

    Ready when the controller has observed the latest spec (observedGeneration >= generation), every
    desired replica runs the current template (updated >= desired, no old replicas left), every
    updated replica is available and none is unavailable.
    """
    metadata = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    name = name or metadata.get("name", "")
    namespace = namespace or metadata.get("namespace", "")
    desired = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    generation = int(metadata.get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    total = int(status.get("replicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    unavailable = int(status.get("unavailableReplicas") or 0)

    def result(ready: bool, message: str) -> RolloutStatus:
        return RolloutStatus(
            ready=ready,
            replicas=desired,
            updated=updated,
            available=available,
            message=message,
            unavailable=unavailable,
            name=name,
            namespace=namespace,
        )

    if observed < generation:
        return result(
            False,
            f"spec update not yet observed by the controller (observedGeneration {observed} < generation {generation})",
        )
    missing = []
    if updated < desired:
        missing.append(f"{updated} of {desired} replicas updated")
    if total > updated:
        missing.append(f"{total - updated} old replicas pending termination")
    if available < max(updated, desired):
        missing.append(f"{available} of {max(updated, desired)} updated replicas available")
    if unavailable > 0:
        missing.append(f"{unavailable} unavailable")
    if missing:
        return result(False, "; ".join(missing))
    return result(True, f"successfully rolled out ({updated}/{desired} updated, {available} available)")


def _progress_deadline_exceeded(deployment: Mapping[str, Any]) -> str | None:
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return condition.get("message") or "progress deadline exceeded"
    return None


# ---- the target --------------------------------------------------------------------------------------


class KubernetesTarget:
    """Deploys the model server to one cluster.

    Connection, in order: ``client`` (a ``kubernetes.dynamic.DynamicClient`` or anything with the same
    ``resources.get(api_version=, kind=)`` surface, used as is); ``in_cluster=True`` (the pod's service
    account); else the kubeconfig ``kubeconfig`` (default ``$KUBECONFIG`` or ``~/.kube/config``) with
    ``context`` (default: its current context). With ``in_cluster=None`` and neither ``kubeconfig`` nor
    ``context`` given, a process inside a pod (``KUBERNETES_SERVICE_HOST`` set) uses the in-cluster config.
    A missing or unusable configuration raises :class:`KubernetesUnavailable` here, naming the reason;
    the API itself is first contacted by the first call that needs it.
    """

    def __init__(
        self,
        *,
        kubeconfig: str | Path | None = None,
        context: str | None = None,
        in_cluster: bool | None = None,
        client: Any = None,
        field_manager: str = FIELD_MANAGER,
        poll_interval_s: float = 2.0,
        discovery_cache_dir: str | Path | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.field_manager = field_manager
        self.poll_interval_s = poll_interval_s
        self._sleep = sleep
        self._clock = clock
        self._discovery_cache_dir = Path(discovery_cache_dir) if discovery_cache_dir else None
        self._dynamic = client
        self._api_client = None
        self.source = "injected client"
        if client is None:
            self._api_client, self.source = _load_api_client(kubeconfig, context, in_cluster)

    def __repr__(self) -> str:
        return f"KubernetesTarget(source={self.source!r}, field_manager={self.field_manager!r})"

    # ---- rendering and pinning (no cluster needed; also usable on the class) ------------------------
    @staticmethod
    def render(overlay_dir: str | Path, kubectl: str = "kubectl") -> list[dict]:
        """The overlay's objects, rendered with ``kubectl kustomize``. Raises :class:`RenderError`."""
        return render_overlay(overlay_dir, kubectl=kubectl)

    @staticmethod
    def set_model_version(objects: Iterable[Mapping[str, Any]], version: str | int, alias: str) -> list[dict]:
        """Copies of ``objects`` with ``version`` pinned for ``alias`` (see :func:`pin_model_version`)."""
        return pin_model_version(objects, version, alias)

    # ---- cluster operations ---------------------------------------------------------------------------
    @property
    def dynamic(self) -> Any:
        """The dynamic client (API discovery happens on first use)."""
        if self._dynamic is None:
            from kubernetes.dynamic import DynamicClient

            host = self._api_client.configuration.host
            cache_dir = self._discovery_cache_dir or _default_cache_dir()
            cache_dir.mkdir(parents=True, exist_ok=True)
            cache_file = cache_dir / f"discovery-{hashlib.sha256(host.encode()).hexdigest()[:16]}.json"
            try:
                self._dynamic = DynamicClient(self._api_client, cache_file=str(cache_file))
            except Exception as exc:  # urllib3 / ApiException / SSL: all mean "no API to talk to"
                raise KubernetesUnavailable(
                    f"cannot reach the Kubernetes API at {host} ({self.source}): {type(exc).__name__}: {exc}"
                ) from exc
        return self._dynamic

    def apply(self, objects: Iterable[Mapping[str, Any]], namespace: str | None = None) -> list[dict]:
        """Server-side apply every object (field manager ``ml-platform``, conflicts forced); returns the results.

        ``namespace`` places namespaced objects; an object already rendered for another namespace is
        refused rather than moved. A Deployment scaled by an HPA in the same batch keeps its live replica
        count, so a deploy never undoes the autoscaler (the manifest's count applies on creation only).
        """
        bodies = [copy.deepcopy(dict(obj)) for obj in objects]
        for body in bodies:
            if not body.get("apiVersion") or not body.get("kind") or not (body.get("metadata") or {}).get("name"):
                raise ValueError(f"not a Kubernetes object (apiVersion, kind and metadata.name needed): {body!r}")
        bodies.sort(
            key=lambda body: _APPLY_ORDER.index(body["kind"]) if body["kind"] in _APPLY_ORDER else len(_APPLY_ORDER)
        )
        autoscaled = {
            body["spec"]["scaleTargetRef"]["name"]
            for body in bodies
            if body["kind"] == "HorizontalPodAutoscaler"
            and (body.get("spec") or {}).get("scaleTargetRef", {}).get("kind") == "Deployment"
        }
        applied = []
        for body in bodies:
            kind, name = body["kind"], body["metadata"]["name"]
            resource = self._resource(body["apiVersion"], kind)
            target_namespace = None
            if getattr(resource, "namespaced", True):
                rendered = body["metadata"].get("namespace")
                if namespace and rendered and rendered != namespace:
                    raise ValueError(
                        f"{kind}/{name} was rendered for namespace {rendered!r}, not {namespace!r}: "
                        "render the overlay for that namespace instead"
                    )
                target_namespace = namespace or rendered
                if not target_namespace:
                    raise ValueError(
                        f"{kind}/{name} has no namespace: pass namespace= or render an overlay that sets one"
                    )
                body["metadata"]["namespace"] = target_namespace
            if kind == "Deployment" and name in autoscaled:
                live = self._get(resource, name, target_namespace)
                live_replicas = ((live or {}).get("spec") or {}).get("replicas")
                if live_replicas is not None:
                    body.setdefault("spec", {})["replicas"] = live_replicas
            try:
                result = resource.server_side_apply(
                    body=body,
                    name=name,
                    namespace=target_namespace,
                    field_manager=self.field_manager,
                    force_conflicts=True,
                )
            except Exception as exc:
                raise ApplyError(
                    f"applying {kind}/{name} in {target_namespace or 'the cluster'} failed: {_api_error(exc)}"
                ) from exc
            applied.append(_as_dict(result) if result is not None else body)
        return applied

    def wait_for_rollout(self, name: str, namespace: str, timeout_s: float = 600.0) -> RolloutStatus:
        """Poll Deployment ``namespace/name`` until it is rolled out (see :func:`rollout_status`).

        Returns the final :class:`RolloutStatus`; raises :class:`RolloutError` on timeout (naming what
        is still missing) or as soon as the Deployment reports ProgressDeadlineExceeded.
        """
        resource = self._resource("apps/v1", "Deployment")
        start = self._clock()
        while True:
            live = self._get(resource, name, namespace)
            elapsed = self._clock() - start
            if live is None:
                status = RolloutStatus(
                    False, 0, 0, 0, f"Deployment {namespace}/{name} not found", elapsed, name=name, namespace=namespace
                )
            else:
                status = rollout_status(live, name=name, namespace=namespace)
                status = _with_seconds(status, elapsed)
                if status.ready:
                    return status
                deadline = _progress_deadline_exceeded(live)
                if deadline and int((live.get("status") or {}).get("observedGeneration") or 0) >= int(
                    (live.get("metadata") or {}).get("generation") or 0
                ):
                    raise RolloutError(
                        f"Deployment {namespace}/{name} exceeded its progress deadline: {deadline} ({status.message})",
                        status,
                    )
            if elapsed >= timeout_s:
                raise RolloutError(
                    f"Deployment {namespace}/{name} not rolled out after {timeout_s:g} s: {status.message}", status
                )
            self._sleep(max(0.0, min(self.poll_interval_s, timeout_s - elapsed)))

    def current_version(self, name: str, namespace: str) -> str | None:
        """The model version pinned on Deployment ``namespace/name`` (its pod template annotation), or None."""
        live = self._get(self._resource("apps/v1", "Deployment"), name, namespace)
        if live is None:
            return None
        annotations = ((live.get("spec") or {}).get("template") or {}).get("metadata", {}).get("annotations") or {}
        return annotations.get(VERSION_ANNOTATION)

    def deploy(
        self,
        overlay_dir: str | Path,
        version: str | int,
        alias: str = DEFAULT_ALIAS,
        namespace: str | None = None,
        timeout_s: float = 600.0,
    ) -> list[RolloutStatus]:
        """Render, pin ``version`` for ``alias``, apply, and wait for the Deployments serving that alias.

        Deployments serving other aliases keep the version they run now (re-pinned from the cluster),
        so promoting the champion does not roll the canary.
        """
        objects = self.render(overlay_dir)
        deployments = [obj for obj in objects if obj.get("kind") == "Deployment"]
        for deployment in deployments:
            other = served_alias(deployment)
            if other == alias:
                continue
            live_namespace = namespace or deployment["metadata"].get("namespace")
            running = self.current_version(deployment["metadata"]["name"], live_namespace) if live_namespace else None
            if running:
                objects = pin_model_version(objects, running, other)
        objects = pin_model_version(objects, version, alias)
        self.apply(objects, namespace)
        statuses = []
        for deployment in deployments:
            if served_alias(deployment) == alias:
                name = deployment["metadata"]["name"]
                statuses.append(
                    self.wait_for_rollout(name, namespace or deployment["metadata"]["namespace"], timeout_s)
                )
        return statuses

    # ---- internals ------------------------------------------------------------------------------------
    def _resource(self, api_version: str, kind: str) -> Any:
        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except KubernetesUnavailable:
            raise
        except Exception as exc:
            raise ApplyError(f"the cluster does not serve {kind} ({api_version}): {_api_error(exc)}") from exc

    def _get(self, resource: Any, name: str, namespace: str | None) -> dict | None:
        try:
            return _as_dict(resource.get(name=name, namespace=namespace))
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return None
            raise DeployError(
                f"reading {getattr(resource, 'kind', 'object')}/{name} failed: {_api_error(exc)}"
            ) from exc


def _load_api_client(kubeconfig: str | Path | None, context: str | None, in_cluster: bool | None) -> tuple[Any, str]:
    try:
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config
        from kubernetes.config.config_exception import ConfigException
    except ImportError as exc:  # pragma: no cover - the package is a dependency of dagster-k8s
        raise KubernetesUnavailable(
            "the `kubernetes` Python package is not installed (pip install kubernetes)"
        ) from exc

    if in_cluster is None:
        in_cluster = kubeconfig is None and context is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if in_cluster:
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            raise KubernetesUnavailable(
                f"in-cluster Kubernetes configuration failed: {exc} (is this process running in a pod with a "
                "service account token mounted?)"
            ) from exc
        return k8s_client.ApiClient(configuration), "in-cluster service account"

    # The kubernetes package reads $KUBECONFIG once, when it is first imported; the variable's value now is
    # passed on explicitly so that one set later is honoured (a list of files, ':'-separated, merges as kubectl's).
    config_file = str(kubeconfig) if kubeconfig is not None else os.environ.get("KUBECONFIG") or None
    if kubeconfig is not None:
        where = f"kubeconfig {kubeconfig}"
    elif config_file:
        where = f"kubeconfig from KUBECONFIG={config_file}"
    else:
        where, config_file = "kubeconfig ~/.kube/config", "~/.kube/config"
    if context:
        where += f", context {context!r}"
    try:
        api_client = k8s_config.new_client_from_config(config_file=config_file, context=context, persist_config=False)
    except (ConfigException, OSError, yaml.YAMLError, TypeError, ValueError) as exc:
        raise KubernetesUnavailable(
            f"no usable Kubernetes configuration: {where}: {exc}; and not in-cluster "
            f"(KUBERNETES_SERVICE_HOST {'set' if os.environ.get('KUBERNETES_SERVICE_HOST') else 'unset'}). "
            "Pass kubeconfig= (and context=), set KUBECONFIG, or use in_cluster=True inside a pod."
        ) from exc
    return api_client, where


def _default_cache_dir() -> Path:
    from ml_platform.settings import Settings

    return Settings.from_env().cache_dir / "kubernetes"


def _containers(deployment: Mapping[str, Any]) -> list[dict]:
    return ((deployment.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []


def _check_version(version: str | int) -> str:
    text = str(version).strip()
    if isinstance(version, bool) or not text.isdigit() or int(text) < 1:
        raise ValueError(f"version must be a registry model version (a positive integer), got {version!r}")
    return str(int(text))


def _with_seconds(status: RolloutStatus, seconds: float) -> RolloutStatus:
    return replace(status, seconds=round(seconds, 3))


def _as_dict(obj: Any) -> dict:
    if isinstance(obj, dict):
        return obj
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"expected a Kubernetes object, got {type(obj).__name__}")


def _api_error(exc: BaseException) -> str:
    """A one-line description of a client error: HTTP status, reason and the server's message."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    body = getattr(exc, "body", None)
    message = None
    if body:
        try:
            message = yaml.safe_load(body).get("message") if isinstance(body, str | bytes) else None
        except (yaml.YAMLError, AttributeError):
            message = None
    parts = [str(part) for part in (status, reason) if part]
    text = " ".join(parts)
    detail = message or str(exc)
    return f"{text}: {detail}" if text else f"{type(exc).__name__}: {detail}"

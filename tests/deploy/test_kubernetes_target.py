"""KubernetesTarget's logic, against a small fake of the dynamic client (there is no cluster here).

The fake records every server-side apply and answers Deployment reads from a scripted sequence of
statuses; a fake clock makes the rollout waits instant.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ml_platform.deploy.kubernetes import (
    FIELD_MANAGER,
    VERSION_ANNOTATION,
    VERSION_ENV,
    ApplyError,
    KubernetesTarget,
    KubernetesUnavailable,
    RenderError,
    RolloutError,
    rollout_status,
)

K8S_DIR = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")


# ---- the fake ----------------------------------------------------------------------------------------


class FakeApiError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"({status}) {reason}")
        self.status = status
        self.reason = reason
        self.body = f'{{"kind": "Status", "message": "{message}"}}'


class FakeResource:
    def __init__(self, api: FakeCluster, api_version: str, kind: str):
        self.api, self.api_version, self.kind = api, api_version, kind
        self.namespaced = kind != "Namespace"

    def server_side_apply(self, body, name, namespace, field_manager=None, force_conflicts=None):
        if self.api.refuse.get(self.kind):
            raise self.api.refuse[self.kind]
        self.api.applied.append(
            {
                "kind": self.kind,
                "name": name,
                "namespace": namespace,
                "field_manager": field_manager,
                "force_conflicts": force_conflicts,
                "body": copy.deepcopy(body),
            }
        )
        key = (self.kind, namespace, name)
        live = copy.deepcopy(body)
        generation = self.api.live.get(key, {}).get("metadata", {}).get("generation", 0) + 1
        live["metadata"]["generation"] = generation
        if self.kind == "Deployment":
            desired = live["spec"].get("replicas", 1)
            live["status"] = converged(desired, generation)
        self.api.live[key] = live
        return copy.deepcopy(live)

    def get(self, name, namespace=None):
        key = (self.kind, namespace, name)
        self.api.reads.append(key)
        script = self.api.scripts.get((namespace, name))
        if self.kind == "Deployment" and script:
            state = script.pop(0) if len(script) > 1 else script[0]
            return copy.deepcopy(state)
        if key not in self.api.live:
            raise FakeApiError(404, "Not Found", f'{self.kind.lower()}s "{name}" not found')
        return copy.deepcopy(self.api.live[key])


class FakeCluster:
    """Stands in for ``kubernetes.dynamic.DynamicClient``: ``client.resources.get(api_version=, kind=)``."""

    def __init__(self):
        self.applied: list[dict] = []
        self.reads: list[tuple] = []
        self.live: dict[tuple, dict] = {}
        self.scripts: dict[tuple[str, str], list[dict]] = {}
        self.refuse: dict[str, Exception] = {}

    @property
    def resources(self):
        return self

    def get(self, api_version, kind):
        return FakeResource(self, api_version, kind)


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def converged(replicas: int, generation: int) -> dict:
    return {
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
    }


def deployment_state(
    *,
    replicas=3,
    generation=2,
    observed=2,
    total=None,
    updated=3,
    available=3,
    unavailable=0,
    conditions=None,
    annotations=None,
):
    status = {
        "observedGeneration": observed,
        "replicas": updated if total is None else total,
        "updatedReplicas": updated,
        "availableReplicas": available,
    }
    if unavailable:
        status["unavailableReplicas"] = unavailable
    if conditions:
        status["conditions"] = conditions
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "fraud-detector", "namespace": "ml", "generation": generation},
        "spec": {"replicas": replicas, "template": {"metadata": {"annotations": annotations or {}}}},
        "status": status,
    }


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def target(cluster, clock) -> KubernetesTarget:
    return KubernetesTarget(client=cluster, poll_interval_s=2.0, sleep=clock.sleep, clock=clock)


@pytest.fixture(scope="module")
def base_objects() -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not on PATH")
    return KubernetesTarget.render(K8S_DIR / "base")


def by_name(objects, kind, name):
    return next(obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name)


def template_annotations(deployment):
    return deployment["spec"]["template"]["metadata"].get("annotations", {})


def container_env(deployment):
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


# ---- render ------------------------------------------------------------------------------------------


@needs_kubectl
def test_render_parses_every_document(base_objects):
    assert len(base_objects) == 6
    assert {obj["kind"] for obj in base_objects} == {
        "ConfigMap",
        "Service",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }


def test_render_names_a_missing_directory(tmp_path):
    with pytest.raises(RenderError, match="does not exist"):
        KubernetesTarget.render(tmp_path / "nope")
    with pytest.raises(RenderError, match="no kustomization.yaml"):
        KubernetesTarget.render(tmp_path)


def test_render_says_when_kubectl_is_missing(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\n")
    with pytest.raises(RenderError, match="'no-such-kubectl' not found on PATH"):
        KubernetesTarget.render(tmp_path, kubectl="no-such-kubectl")


@needs_kubectl
def test_render_reports_kustomize_errors(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(RenderError, match=r"kubectl kustomize .* failed \(exit 1\):.*missing.yaml"):
        KubernetesTarget.render(tmp_path)


# ---- set_model_version -------------------------------------------------------------------------------


@needs_kubectl
def test_set_model_version_pins_the_champion_and_leaves_the_input_alone(base_objects):
    original = copy.deepcopy(base_objects)
    pinned = KubernetesTarget.set_model_version(base_objects, 7, "champion")
    assert base_objects == original

    champion = by_name(pinned, "Deployment", "fraud-detector")
    assert template_annotations(champion)[VERSION_ANNOTATION] == "7"
    assert template_annotations(champion)["ml-platform/model-alias"] == "champion"
    assert template_annotations(champion)["prometheus.io/scrape"] == "true"  # kept
    assert container_env(champion)[VERSION_ENV] == "7"
    config = by_name(pinned, "ConfigMap", "fraud-detector-config")
    assert config["data"]["ML_PLATFORM_SERVING_CHAMPION_VERSION"] == "7"
    assert config["data"]["ML_PLATFORM_MODEL_NAME"] == "fraud_detector"

    canary = by_name(pinned, "Deployment", "fraud-detector-canary")
    assert canary == by_name(original, "Deployment", "fraud-detector-canary")


@needs_kubectl
def test_a_new_version_changes_the_pod_template_so_the_deployment_rolls(base_objects):
    v7 = by_name(KubernetesTarget.set_model_version(base_objects, "7", "champion"), "Deployment", "fraud-detector")
    v8 = KubernetesTarget.set_model_version(
        KubernetesTarget.set_model_version(base_objects, "7", "champion"), "8", "champion"
    )
    champion_v8 = by_name(v8, "Deployment", "fraud-detector")
    assert v7["spec"]["template"] != champion_v8["spec"]["template"]
    assert template_annotations(champion_v8)[VERSION_ANNOTATION] == "8"
    env = champion_v8["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == VERSION_ENV] == ["8"]  # replaced, not appended twice


@needs_kubectl
def test_set_model_version_for_the_challenger_pins_the_canary(base_objects):
    pinned = KubernetesTarget.set_model_version(base_objects, 12, "challenger")
    canary = by_name(pinned, "Deployment", "fraud-detector-canary")
    assert template_annotations(canary)[VERSION_ANNOTATION] == "12"
    assert container_env(canary)[VERSION_ENV] == "12"
    assert VERSION_ANNOTATION not in template_annotations(by_name(pinned, "Deployment", "fraud-detector"))
    assert (
        by_name(pinned, "ConfigMap", "fraud-detector-config")["data"]["ML_PLATFORM_SERVING_CHALLENGER_VERSION"] == "12"
    )


@needs_kubectl
def test_set_model_version_rejects_bad_input(base_objects):
    with pytest.raises(ValueError, match="no Deployment serves alias 'previous'.*serve: challenger, champion"):
        KubernetesTarget.set_model_version(base_objects, 3, "previous")
    with pytest.raises(ValueError, match="positive integer.*'latest'"):
        KubernetesTarget.set_model_version(base_objects, "latest", "champion")
    with pytest.raises(ValueError, match="alias must be"):
        KubernetesTarget.set_model_version(base_objects, 3, "champion model")


# ---- apply -------------------------------------------------------------------------------------------


@needs_kubectl
def test_apply_sends_server_side_apply_with_the_field_manager(target, cluster, base_objects):
    results = target.apply(base_objects, namespace="ml")
    assert len(results) == len(cluster.applied) == 6
    assert {call["field_manager"] for call in cluster.applied} == {FIELD_MANAGER} == {"ml-platform"}
    assert all(call["force_conflicts"] is True for call in cluster.applied)
    assert {call["namespace"] for call in cluster.applied} == {"ml"}
    assert all(call["body"]["metadata"]["namespace"] == "ml" for call in cluster.applied)
    order = [call["kind"] for call in cluster.applied]
    assert order.index("ConfigMap") < order.index("Deployment")
    assert order.index("Service") < order.index("Deployment")
    # first install: the manifest's replica counts
    replicas = {c["name"]: c["body"]["spec"]["replicas"] for c in cluster.applied if c["kind"] == "Deployment"}
    assert replicas == {"fraud-detector": 3, "fraud-detector-canary": 1}


@needs_kubectl
def test_apply_keeps_the_replica_count_the_hpa_chose(target, cluster, base_objects):
    target.apply(base_objects, namespace="ml")
    cluster.live[("Deployment", "ml", "fraud-detector")]["spec"]["replicas"] = 7  # the HPA scaled up
    cluster.live[("Deployment", "ml", "fraud-detector-canary")]["spec"]["replicas"] = 0  # someone paused the canary
    cluster.applied.clear()
    target.apply(base_objects, namespace="ml")
    replicas = {c["name"]: c["body"]["spec"]["replicas"] for c in cluster.applied if c["kind"] == "Deployment"}
    assert replicas == {"fraud-detector": 7, "fraud-detector-canary": 1}  # not autoscaled: the manifest rules


@needs_kubectl
def test_apply_refuses_objects_rendered_for_another_namespace(target, cluster):
    prod = KubernetesTarget.render(K8S_DIR / "overlays" / "prod")
    with pytest.raises(ValueError, match="rendered for namespace 'ml-platform-prod', not 'ml-platform-staging'"):
        target.apply(prod, namespace="ml-platform-staging")
    assert cluster.applied == []
    target.apply(prod)  # the rendered namespace is used when none is given
    assert {call["namespace"] for call in cluster.applied} == {"ml-platform-prod"}


def test_apply_needs_a_namespace_for_namespaced_objects(target):
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}}
    with pytest.raises(ValueError, match="ConfigMap/c has no namespace"):
        target.apply([config])


def test_apply_wraps_a_refusal_with_the_object_and_the_server_message(target, cluster):
    cluster.refuse["ConfigMap"] = FakeApiError(422, "Unprocessable Entity", "data.x: Invalid value")
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1"}}
    with pytest.raises(ApplyError, match=r"applying ConfigMap/c in ml failed: 422 Unprocessable Entity: data.x"):
        target.apply([config], namespace="ml")


# ---- wait_for_rollout --------------------------------------------------------------------------------


def test_wait_for_rollout_returns_when_the_status_converges(target, cluster, clock):
    cluster.scripts[("ml", "fraud-detector")] = [
        deployment_state(generation=3, observed=2),  # the controller has not seen the new spec yet
        deployment_state(generation=3, observed=3, total=4, updated=1, available=3, unavailable=1),
        deployment_state(generation=3, observed=3, total=4, updated=3, available=3),  # one old pod terminating
        deployment_state(generation=3, observed=3, updated=3, available=2, unavailable=1),
        deployment_state(generation=3, observed=3, updated=3, available=3),
    ]
    status = target.wait_for_rollout("fraud-detector", "ml", timeout_s=60)
    assert status.ready is True
    assert (status.replicas, status.updated, status.available, status.unavailable) == (3, 3, 3, 0)
    assert status.seconds == 8.0  # four polls 2 s apart on the fake clock
    assert clock.sleeps == [2.0, 2.0, 2.0, 2.0]
    assert "successfully rolled out" in status.message
    assert (status.name, status.namespace) == ("fraud-detector", "ml")


def test_unobserved_generation_is_not_ready_even_when_the_counts_look_done(target, cluster, clock):
    stale = deployment_state(generation=5, observed=4, updated=3, available=3)
    assert rollout_status(stale).ready is False
    cluster.scripts[("ml", "fraud-detector")] = [stale]
    with pytest.raises(RolloutError, match=r"observedGeneration 4 < generation 5") as caught:
        target.wait_for_rollout("fraud-detector", "ml", timeout_s=5)
    assert caught.value.status.ready is False
    assert clock.now - 1000.0 == pytest.approx(5.0)  # waited the whole timeout, no more


def test_timeout_names_the_lagging_counts(cluster):
    """A real (tiny) timeout: the error says which replicas are missing."""
    cluster.scripts[("ml", "fraud-detector")] = [
        deployment_state(generation=2, observed=2, total=4, updated=2, available=3, unavailable=1)
    ]
    target = KubernetesTarget(client=cluster, poll_interval_s=0.005)
    started = time.monotonic()
    with pytest.raises(RolloutError) as caught:
        target.wait_for_rollout("fraud-detector", "ml", timeout_s=0.05)
    assert time.monotonic() - started < 1.0
    message = str(caught.value)
    assert message.startswith("Deployment ml/fraud-detector not rolled out after 0.05 s: ")
    assert "2 of 3 replicas updated" in message
    assert "2 old replicas pending termination" in message
    assert "1 unavailable" in message
    status = caught.value.status
    assert (status.replicas, status.updated, status.available, status.unavailable) == (3, 2, 3, 1)
    assert len(cluster.reads) >= 2  # it polled more than once


def test_progress_deadline_exceeded_fails_at_once(target, cluster, clock):
    failed = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "RS too slow"}
    cluster.scripts[("ml", "fraud-detector")] = [
        deployment_state(updated=1, available=2, unavailable=1, total=3, conditions=[failed])
    ]
    with pytest.raises(RolloutError, match="exceeded its progress deadline: RS too slow"):
        target.wait_for_rollout("fraud-detector", "ml", timeout_s=600)
    assert clock.sleeps == []


def test_a_missing_deployment_times_out_saying_so(target, clock):
    with pytest.raises(RolloutError, match="Deployment ml/fraud-detector not found"):
        target.wait_for_rollout("fraud-detector", "ml", timeout_s=3)
    assert sum(clock.sleeps) == pytest.approx(3.0)


def test_rollout_status_defaults_and_zero_replicas():
    scaled_to_zero = deployment_state(replicas=0, updated=0, available=0)
    assert rollout_status(scaled_to_zero).ready is True
    no_status = {"metadata": {"name": "x", "generation": 1}, "spec": {}}
    status = rollout_status(no_status)
    assert (status.ready, status.replicas) == (False, 1)  # spec.replicas defaults to 1


# ---- current_version and deploy ----------------------------------------------------------------------


def test_current_version_reads_the_pod_template_annotation(target, cluster):
    cluster.scripts[("ml", "fraud-detector")] = [deployment_state(annotations={VERSION_ANNOTATION: "4"})]
    assert target.current_version("fraud-detector", "ml") == "4"
    cluster.scripts[("ml", "fraud-detector")] = [deployment_state()]
    assert target.current_version("fraud-detector", "ml") is None
    assert target.current_version("absent", "ml") is None


@needs_kubectl
def test_deploy_pins_applies_waits_and_keeps_the_canary_on_its_version(target, cluster):
    staging = K8S_DIR / "overlays" / "staging"
    target.deploy(staging, version=4, alias="challenger")
    statuses = target.deploy(staging, version=9, alias="champion")
    assert [(s.name, s.ready, s.replicas) for s in statuses] == [("fraud-detector", True, 2)]
    assert target.current_version("fraud-detector", "ml-platform-staging") == "9"
    assert target.current_version("fraud-detector-canary", "ml-platform-staging") == "4"
    config = cluster.live[("ConfigMap", "ml-platform-staging", "fraud-detector-config")]["data"]
    assert config["ML_PLATFORM_SERVING_CHAMPION_VERSION"] == "9"
    assert config["ML_PLATFORM_SERVING_CHALLENGER_VERSION"] == "4"
    assert config["ML_PLATFORM_SERVING_CHALLENGER_WEIGHT"] == "0.0"


# ---- construction without a cluster ------------------------------------------------------------------


def test_no_kubeconfig_raises_kubernetes_unavailable(tmp_path, monkeypatch):
    empty = tmp_path / "kubeconfig"
    empty.write_text("")
    monkeypatch.setenv("KUBECONFIG", str(empty))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubernetesUnavailable) as caught:
        KubernetesTarget()
    message = str(caught.value)
    assert message.startswith(f"no usable Kubernetes configuration: kubeconfig from KUBECONFIG={empty}: ")
    assert "is empty" in message
    assert "KUBERNETES_SERVICE_HOST unset" in message
    assert "Pass kubeconfig=" in message


def test_kubeconfig_set_after_the_kubernetes_package_was_imported_is_the_one_read(tmp_path):
    """The kubernetes package reads $KUBECONFIG once, at import: a value set later (another test, a
    command that sets it after start-up) must still be the file read. A fresh process makes the order sure."""
    empty = tmp_path / "kubeconfig"
    empty.write_text("")
    script = (
        "import os, kubernetes.config\n"  # imported while KUBECONFIG is unset
        f"os.environ['KUBECONFIG'] = {str(empty)!r}\n"
        "from ml_platform.deploy.kubernetes import KubernetesTarget, KubernetesUnavailable\n"
        "try:\n    KubernetesTarget()\nexcept KubernetesUnavailable as error:\n    print(error)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"no usable Kubernetes configuration: kubeconfig from KUBECONFIG={empty}: ")
    assert "is empty" in done.stdout


def test_explicit_missing_kubeconfig_and_context_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubernetesUnavailable, match=r"kubeconfig .*nowhere, context 'prod'"):
        KubernetesTarget(kubeconfig=tmp_path / "nowhere", context="prod")


def test_in_cluster_outside_a_pod_raises_kubernetes_unavailable(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubernetesUnavailable, match="in-cluster Kubernetes configuration failed: Service host/port"):
        KubernetesTarget(in_cluster=True)


def test_a_valid_kubeconfig_connects_lazily_and_an_unreachable_api_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        "clusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:1\n"
        "contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n"
        "users:\n- name: test\n  user:\n    token: not-a-real-token\n"
    )
    target = KubernetesTarget(kubeconfig=kubeconfig, discovery_cache_dir=tmp_path / "cache")  # no network yet
    assert target.source == f"kubeconfig {kubeconfig}"
    with pytest.raises(KubernetesUnavailable, match=r"cannot reach the Kubernetes API at http://127.0.0.1:1"):
        target.current_version("fraud-detector", "ml")

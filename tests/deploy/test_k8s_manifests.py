"""The kustomize manifests in deploy/k8s: they render, they are valid Kubernetes objects, and they say what we mean.

Rendered with the real ``kubectl kustomize``; validated against the Kubernetes OpenAPI schemas shipped by
kubernetes-validate (strict: an unknown or misspelt field fails), offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

K8S_DIR = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
TREES = {"base": K8S_DIR / "base", "staging": K8S_DIR / "overlays" / "staging", "prod": K8S_DIR / "overlays" / "prod"}
SCHEMA_VERSIONS = ("1.30.0", "1.32.0")

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with built-in kustomize) not on PATH")


def kustomize(directory: Path) -> list[dict]:
    completed = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    return [doc for doc in yaml.safe_load_all(completed.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: kustomize(directory) for name, directory in TREES.items()}


def one(objects: list[dict], kind: str, name: str) -> dict:
    found = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(deployment: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container(deployment).get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# ---- every tree renders and validates ----------------------------------------------------------------


@pytest.mark.parametrize("tree", sorted(TREES))
def test_renders_the_expected_objects(rendered, tree):
    kinds = sorted((obj["kind"], obj["metadata"]["name"]) for obj in rendered[tree])
    assert kinds == [
        ("ConfigMap", "fraud-detector-config"),
        ("Deployment", "fraud-detector"),
        ("Deployment", "fraud-detector-canary"),
        ("HorizontalPodAutoscaler", "fraud-detector"),
        ("PodDisruptionBudget", "fraud-detector"),
        ("Service", "fraud-detector"),
    ]


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("tree", sorted(TREES))
def test_every_object_is_valid_against_the_kubernetes_schema(rendered, tree, version):
    import kubernetes_validate  # pinned in requirements.lock: a missing install fails, never skips

    for obj in rendered[tree]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{tree}: {obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: {exc}")


def test_strict_validation_rejects_an_unknown_field(rendered):
    """The validation above would catch a misspelt field (it is not a vacuous pass)."""
    import kubernetes_validate  # pinned in requirements.lock: a missing install fails, never skips

    deployment = one(rendered["base"], "Deployment", "fraud-detector")
    container(deployment)["readinesProbe"] = container(deployment)["readinessProbe"]
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, SCHEMA_VERSIONS[0], strict=True)


@pytest.mark.parametrize("tree", sorted(TREES))
def test_selectors_match_their_own_pod_templates_and_the_hpa_targets_the_champion(rendered, tree):
    objects = rendered[tree]
    champion = one(objects, "Deployment", "fraud-detector")
    canary = one(objects, "Deployment", "fraud-detector-canary")
    for deployment in (champion, canary):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    # the two Deployments must not select each other's pods
    assert not selects(champion["spec"]["selector"]["matchLabels"], canary["spec"]["template"]["metadata"]["labels"])
    assert not selects(canary["spec"]["selector"]["matchLabels"], champion["spec"]["template"]["metadata"]["labels"])
    hpa = one(objects, "HorizontalPodAutoscaler", "fraud-detector")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fraud-detector"}


# ---- the base ----------------------------------------------------------------------------------------


def test_base_champion_deployment(rendered):
    deployment = one(rendered["base"], "Deployment", "fraud-detector")
    assert "namespace" not in deployment["metadata"]
    assert deployment["spec"]["replicas"] == 3
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "fraud-detector"
    assert labels["app.kubernetes.io/component"] == "model-server"
    assert labels["ml-platform/variant"] == "champion"
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}

    server = container(deployment)
    assert server["image"] == "ml-platform/model-server:latest"
    assert server["command"] == [
        "python", "-m", "ml_platform.serving", "--host", "0.0.0.0", "--port", "8080", "--graceful-timeout", "20"
    ]  # fmt: skip
    # the server's drain limit plus the preStop pause fit in the grace period, so the log is flushed
    pre_stop = server["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop == ["python", "-c", "import time; time.sleep(5)"]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 5 + 20
    assert server["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert server["resources"] == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }

    assert server["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert server["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # room to load a model
    assert server["readinessProbe"]["periodSeconds"] <= 10
    assert server["livenessProbe"]["failureThreshold"] >= 3

    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }
    assert template["spec"]["terminationGracePeriodSeconds"] == 30
    spread = template["spec"]["topologySpreadConstraints"]
    assert spread[0]["topologyKey"] == "kubernetes.io/hostname"
    assert spread[0]["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread[0]["labelSelector"]["matchLabels"]["ml-platform/variant"] == "champion"


def test_configuration_comes_from_the_configmap_and_an_optional_secret(rendered):
    objects = rendered["base"]
    config = one(objects, "ConfigMap", "fraud-detector-config")
    assert config["data"] == {
        "ML_PLATFORM_MODEL_NAME": "fraud_detector",
        "ML_PLATFORM_MLFLOW_URI": "http://mlflow:5000",
        "ML_PLATFORM_SERVING_CHALLENGER_WEIGHT": "0.0",
        "ML_PLATFORM_SERVING_FEAST": "off",
    }
    for name in ("fraud-detector", "fraud-detector-canary"):
        deployment = one(objects, "Deployment", name)
        assert container(deployment)["envFrom"] == [{"configMapRef": {"name": "fraud-detector-config"}}]
        token = env_of(deployment)["ML_PLATFORM_SERVING_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert token == {"name": "fraud-detector-secrets", "key": "serving-token", "optional": True}
        assert env_of(deployment)["ML_PLATFORM_HOME"]["value"] == "/var/lib/ml_platform"


@pytest.mark.parametrize("name", ["fraud-detector", "fraud-detector-canary"])
def test_pods_run_non_root_on_a_read_only_root_filesystem(rendered, name):
    deployment = one(rendered["base"], "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    server = container(deployment)
    assert server["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {mount["mountPath"]: mount["name"] for mount in server["volumeMounts"]}
    assert set(mounts) == {"/tmp", "/var/lib/ml_platform"}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert all("emptyDir" in volumes[mounts[path]] for path in mounts)
    # the state directory the server writes to is one of the writable mounts
    assert env_of(deployment)["ML_PLATFORM_HOME"]["value"] in mounts


def test_service_fronts_both_variants_on_port_80_to_http(rendered):
    objects = rendered["base"]
    service = one(objects, "Service", "fraud-detector")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    selector = service["spec"]["selector"]
    assert "ml-platform/variant" not in selector
    for name in ("fraud-detector", "fraud-detector-canary"):
        deployment = one(objects, "Deployment", name)
        assert selects(selector, deployment["spec"]["template"]["metadata"]["labels"]), name
        assert [port["name"] for port in container(deployment)["ports"]] == ["http"]


def test_hpa_scales_the_champion_2_to_10_at_70_percent_cpu(rendered):
    hpa = one(rendered["base"], "HorizontalPodAutoscaler", "fraud-detector")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert hpa["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    ]


def test_pdb_covers_the_champion_pods_only(rendered):
    objects = rendered["base"]
    pdb = one(objects, "PodDisruptionBudget", "fraud-detector")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selects(selector, one(objects, "Deployment", "fraud-detector")["spec"]["template"]["metadata"]["labels"])
    canary_labels = one(objects, "Deployment", "fraud-detector-canary")["spec"]["template"]["metadata"]["labels"]
    assert not selects(selector, canary_labels)


def test_canary_serves_the_challenger_alias_with_one_replica(rendered):
    canary = one(rendered["base"], "Deployment", "fraud-detector-canary")
    assert canary["spec"]["replicas"] == 1
    assert canary["metadata"]["labels"]["ml-platform/variant"] == "challenger"
    assert canary["spec"]["template"]["metadata"]["labels"]["ml-platform/variant"] == "challenger"
    env = env_of(canary)
    assert env["ML_PLATFORM_SERVING_ALIAS"]["value"] == "challenger"
    # the server of the challenger alias loads only that version: no in-pod weight needed
    assert "ML_PLATFORM_SERVING_CHALLENGER_WEIGHT" not in env
    assert env_of(one(rendered["base"], "Deployment", "fraud-detector"))["ML_PLATFORM_SERVING_ALIAS"]["value"] == (
        "champion"
    )
    # same server, same probes as the champion
    champion = one(rendered["base"], "Deployment", "fraud-detector")
    for key in ("image", "command", "ports", "readinessProbe", "livenessProbe", "resources"):
        assert container(canary)[key] == container(champion)[key], key


def test_image_is_overridable_with_kustomize_images(tmp_path):
    overlay = tmp_path / "custom"
    overlay.mkdir()
    base = os.path.relpath(TREES["base"], overlay)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {base}\n"
        "images:\n  - name: ml-platform/model-server\n    newName: registry.example.com/fraud/model-server\n"
        "    newTag: 1.2.3\n"
    )
    objects = kustomize(overlay)
    images = {obj["metadata"]["name"]: container(obj)["image"] for obj in objects if obj["kind"] == "Deployment"}
    assert images == {
        "fraud-detector": "registry.example.com/fraud/model-server:1.2.3",
        "fraud-detector-canary": "registry.example.com/fraud/model-server:1.2.3",
    }


# ---- the overlays ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tree", "namespace"), [("staging", "ml-platform-staging"), ("prod", "ml-platform-prod")])
def test_overlay_puts_everything_in_its_namespace(rendered, tree, namespace):
    assert {obj["metadata"].get("namespace") for obj in rendered[tree]} == {namespace}
    for obj in rendered[tree]:
        assert obj["metadata"]["labels"]["ml-platform/environment"] == tree


def test_staging_overlay(rendered):
    objects = rendered["staging"]
    champion = one(objects, "Deployment", "fraud-detector")
    assert champion["spec"]["replicas"] == 2
    assert one(objects, "Deployment", "fraud-detector-canary")["spec"]["replicas"] == 1
    hpa = one(objects, "HorizontalPodAutoscaler", "fraud-detector")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    assert one(objects, "ConfigMap", "fraud-detector-config")["data"]["ML_PLATFORM_SERVING_CHALLENGER_WEIGHT"] == "0.1"
    assert container(champion)["image"] == "ml-platform/model-server:staging"
    token = env_of(champion)["ML_PLATFORM_SERVING_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["optional"] is True


def test_prod_overlay_requires_the_token_and_gives_more_memory(rendered):
    objects = rendered["prod"]
    for name in ("fraud-detector", "fraud-detector-canary"):
        deployment = one(objects, "Deployment", name)
        token = env_of(deployment)["ML_PLATFORM_SERVING_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert token == {"name": "fraud-detector-secrets", "key": "serving-token", "optional": False}
        assert container(deployment)["resources"] == {
            "requests": {"cpu": "250m", "memory": "1Gi"},
            "limits": {"cpu": "1", "memory": "2Gi"},
        }
        assert container(deployment)["image"] == "ml-platform/model-server:0.1.0"
        # the patch merged into the env list: nothing lost, nothing doubled
        names = [entry["name"] for entry in container(deployment)["env"]]
        assert len(names) == len(set(names))
        assert set(names) == set(env_of(one(rendered["base"], "Deployment", name)))
    assert one(objects, "Deployment", "fraud-detector")["spec"]["replicas"] == 3
    hpa = one(objects, "HorizontalPodAutoscaler", "fraud-detector")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert one(objects, "ConfigMap", "fraud-detector-config")["data"]["ML_PLATFORM_SERVING_CHALLENGER_WEIGHT"] == "0.0"

"""The kustomize manifests in deploy/k8s: they render, they are valid Kubernetes objects, and they say what we mean.

Rendered with the real ``kubectl kustomize``; validated against the Kubernetes OpenAPI schemas shipped by
kubernetes-validate (strict: an unknown or misspelt field fails), offline.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
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

    deployment = copy.deepcopy(one(rendered["base"], "Deployment", "fraud-detector"))  # the render is shared
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
        "ML_PLATFORM_PREDICTION_LOG_URI": "s3://ml-platform-prediction-log/fraud-detector",
        "ML_PLATFORM_LABELS_URI": "s3://ml-platform-prediction-log/fraud-detector-labels",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name in ("fraud-detector", "fraud-detector-canary"):
        deployment = one(objects, "Deployment", name)
        assert container(deployment)["envFrom"] == [{"configMapRef": {"name": "fraud-detector-config"}}]
        token = env_of(deployment)["ML_PLATFORM_SERVING_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert token == {"name": "fraud-detector-secrets", "key": "serving-token", "optional": True}
        admin = env_of(deployment)["ML_PLATFORM_SERVING_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert admin == {"name": "fraud-detector-secrets", "key": "admin-token", "optional": True}
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
    # pinned champion pods load no challenger: the split is the canary's share of pods only
    assert one(objects, "ConfigMap", "fraud-detector-config")["data"]["ML_PLATFORM_SERVING_CHALLENGER_WEIGHT"] == "0.0"
    assert container(champion)["image"] == "ml-platform/model-server:staging"
    for variable in ("ML_PLATFORM_SERVING_TOKEN", "ML_PLATFORM_SERVING_ADMIN_TOKEN"):
        assert env_of(champion)[variable]["valueFrom"]["secretKeyRef"]["optional"] is True, variable


def test_prod_overlay_requires_both_tokens_and_gives_more_memory(rendered):
    objects = rendered["prod"]
    for name in ("fraud-detector", "fraud-detector-canary"):
        deployment = one(objects, "Deployment", name)
        token = env_of(deployment)["ML_PLATFORM_SERVING_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert token == {"name": "fraud-detector-secrets", "key": "serving-token", "optional": False}
        admin = env_of(deployment)["ML_PLATFORM_SERVING_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert admin == {"name": "fraud-detector-secrets", "key": "admin-token", "optional": False}
        assert container(deployment)["resources"] == {
            "requests": {"cpu": "250m", "memory": "1Gi"},
            "limits": {"cpu": "1", "memory": "2Gi"},
        }
        assert container(deployment)["image"] == "ml-platform/model-server:0.1.0"
        # the patch merged into the env list: nothing lost, nothing doubled, only the Redis URL added
        names = [entry["name"] for entry in container(deployment)["env"]]
        assert len(names) == len(set(names))
        redis = {"ML_PLATFORM_REDIS_URL", "ML_PLATFORM_REDIS_PASSWORD"}
        assert set(names) == set(env_of(one(rendered["base"], "Deployment", name))) | redis
    assert one(objects, "Deployment", "fraud-detector")["spec"]["replicas"] == 3
    hpa = one(objects, "HorizontalPodAutoscaler", "fraud-detector")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert one(objects, "ConfigMap", "fraud-detector-config")["data"]["ML_PLATFORM_SERVING_CHALLENGER_WEIGHT"] == "0.0"


def test_prod_overlay_runs_the_production_profile_with_redis_from_the_secret(rendered):
    objects = rendered["prod"]
    config = one(objects, "ConfigMap", "fraud-detector-config")["data"]
    assert config["ML_PLATFORM_PROFILE"] == "production"
    assert config["ML_PLATFORM_SERVING_FEAST"] == "on"  # customer stats from the Redis online store
    assert config["ML_PLATFORM_TRAINING_BACKEND"] == "local"  # the server never trains
    for name in ("fraud-detector", "fraud-detector-canary"):
        deployment = one(objects, "Deployment", name)
        env = env_of(deployment)
        assert "value" not in env["ML_PLATFORM_REDIS_URL"]
        assert env["ML_PLATFORM_REDIS_URL"]["valueFrom"] == {
            "secretKeyRef": {"name": "fraud-detector-secrets", "key": "redis-url", "optional": False}
        }
        assert env["ML_PLATFORM_REDIS_PASSWORD"]["valueFrom"] == {
            "secretKeyRef": {"name": "fraud-detector-secrets", "key": "redis-password", "optional": True}
        }
        server = container(deployment)
        # a Redis outage must not make the kubelet restart every pod: liveness asks only for the process
        assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
        assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        assert server["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}


def test_prod_pods_apply_the_feast_definitions_to_their_own_registry_first(rendered):
    objects = rendered["prod"]
    for name in ("fraud-detector", "fraud-detector-canary"):
        deployment = one(objects, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        server = container(deployment)
        assert init["name"] == "feast-registry"
        assert init["image"] == server["image"]  # the images transformer reaches init containers too
        assert init["command"][:2] == ["python", "-c"]
        code = init["command"][2]
        compile(code, "<feast-registry>", "exec")
        assert "feature_definitions(repo)" in code and ".apply(" in code
        # the same settings as the server: the ConfigMap, the state directory, Redis from the Secret
        assert init["envFrom"] == server["envFrom"]
        init_env = {entry["name"]: entry for entry in init["env"]}
        for key in ("ML_PLATFORM_HOME", "ML_PLATFORM_REDIS_URL", "ML_PLATFORM_REDIS_PASSWORD"):
            assert init_env[key] == env_of(deployment)[key], key
        # it writes the registry into the state directory the server reads, on the server's volume
        mounts = {mount["mountPath"]: mount["name"] for mount in init["volumeMounts"]}
        assert mounts[init_env["ML_PLATFORM_HOME"]["value"]] == "state"
        assert init["securityContext"] == server["securityContext"]


def deployment_environment(objects: list[dict], deployment: dict, entries: list[dict], secrets: dict[str, str]):
    """The environment a container of ``deployment`` gets: its ConfigMap, literal values, the Secret's keys."""
    env = dict(one(objects, "ConfigMap", "fraud-detector-config")["data"])
    for entry in entries:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            if ref["key"] in secrets:
                env[entry["name"]] = secrets[ref["key"]]
            else:
                assert ref.get("optional") is True, f"{entry['name']}: the Secret has no {ref['key']}"
    return env


def test_prod_server_settings_load_with_the_rendered_environment(rendered, tmp_path):
    """The production profile accepts exactly what the prod pods get (a missing setting would crash them)."""
    from ml_platform.serving import ServerConfig
    from ml_platform.settings import Settings

    objects = rendered["prod"]
    secrets = {"serving-token": "t0ken", "admin-token": "adm1n", "redis-url": "redis://redis.example:6379/0"}
    for name in ("fraud-detector", "fraud-detector-canary"):
        deployment = one(objects, "Deployment", name)
        env = deployment_environment(objects, deployment, container(deployment)["env"], secrets)
        env["ML_PLATFORM_HOME"] = str(tmp_path)
        settings = Settings.from_env(env)
        assert settings.profile == "production"
        config = ServerConfig.from_settings(settings, environ=env)
        assert config.feast is not None and config.feast.online_store_kind == "redis"
        assert (config.auth_token, config.admin_token) == ("t0ken", "adm1n")
        assert config.serve_alias == env["ML_PLATFORM_SERVING_ALIAS"]


@pytest.mark.parametrize("missing", ["serving-token", "admin-token"])
def test_prod_pods_cannot_start_without_either_token(rendered, missing):
    """A Secret without one of the tokens leaves the prod pods unstartable (the kubelet refuses a required
    secretKeyRef whose key is absent), where staging starts without it."""
    secrets = {"serving-token": "t0ken", "admin-token": "adm1n", "redis-url": "redis://redis.example:6379/0"}
    del secrets[missing]
    for name in ("fraud-detector", "fraud-detector-canary"):
        prod = one(rendered["prod"], "Deployment", name)
        with pytest.raises(AssertionError, match=f"the Secret has no {missing}"):
            deployment_environment(rendered["prod"], prod, container(prod)["env"], secrets)
        staging = one(rendered["staging"], "Deployment", name)
        env = deployment_environment(rendered["staging"], staging, container(staging)["env"], secrets)
        variable = {"serving-token": "ML_PLATFORM_SERVING_TOKEN", "admin-token": "ML_PLATFORM_SERVING_ADMIN_TOKEN"}
        assert variable[missing] not in env


@pytest.fixture
def redis_port(tmp_path) -> Iterator[int]:
    """A redis-server of this test's own on a free loopback port."""
    import socket
    import time

    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(10)


@pytest.mark.integration
def test_prod_init_container_makes_the_pipelines_redis_features_readable(rendered, tmp_path, redis_port):
    """Run the rendered init container's command, then read, through the server's feature store, the
    features another registry (the pipeline's) wrote to the same Redis: the wiring works end to end."""
    import sys
    from datetime import UTC, datetime

    import pandas as pd

    from ml_platform.data.schema import ENTITY_COLUMN
    from ml_platform.features.store import FEATURE_VIEW, FeatureRepo, feature_definitions, open_store
    from ml_platform.serving.online import OnlineFeatures
    from ml_platform.settings import Settings

    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    # the pipeline's side: its own registry (on its state volume), features loaded into Redis
    pipeline_repo = FeatureRepo.from_settings(
        Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path / "pipeline"), "ML_PLATFORM_REDIS_URL": redis_url})
    )
    pipeline_store = open_store(pipeline_repo)
    pipeline_store.apply(feature_definitions(pipeline_repo))
    timestamp_field = pipeline_store.get_feature_view(FEATURE_VIEW).batch_source.timestamp_field
    rows = pd.DataFrame(
        {
            ENTITY_COLUMN: [7, 8],
            "total_purchases": [3, 5],
            "avg_order_value": [10.5, 20.0],
            "lifetime_value": [31.5, 100.0],
            "last_order_ts": [1.7e9, 1.71e9],
            timestamp_field: [datetime.now(UTC)] * 2,
        }
    )
    pipeline_store.write_to_online_store(FEATURE_VIEW, rows)

    # the pod's side: the init container, as rendered, in a state directory of its own
    objects = rendered["prod"]
    deployment = one(objects, "Deployment", "fraud-detector")
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    env = deployment_environment(objects, deployment, init["env"], {"redis-url": redis_url})
    env.update(ML_PLATFORM_HOME=str(tmp_path / "pod"), HOME=str(tmp_path), PATH=os.environ["PATH"])
    command = [sys.executable, *init["command"][1:]]
    completed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "pod" / "feast" / "registry.db").is_file()

    online = OnlineFeatures(FeatureRepo.from_settings(Settings.from_env(env)))
    online.open()
    stats = online.stats([7, 8, 9])
    assert stats["total_purchases"].tolist()[:2] == [3.0, 5.0]
    assert stats["avg_order_value"].tolist()[:2] == [10.5, 20.0]
    assert stats["lifetime_value"].tolist()[:2] == [31.5, 100.0]
    assert stats.iloc[2].isna().all()  # an unknown customer has no stats


def test_staging_keeps_the_local_profile_and_serves_without_the_feature_store(rendered):
    config = one(rendered["staging"], "ConfigMap", "fraud-detector-config")["data"]
    assert "ML_PLATFORM_PROFILE" not in config
    assert config["ML_PLATFORM_SERVING_FEAST"] == "off"
    for name in ("fraud-detector", "fraud-detector-canary"):
        deployment = one(rendered["staging"], "Deployment", name)
        assert "ML_PLATFORM_REDIS_URL" not in env_of(deployment)
        assert container(deployment)["livenessProbe"]["httpGet"]["path"] == "/health"


def test_prod_runs_the_model_server_image_of_this_release(rendered):
    version = re.search(r'^version = "([^"]+)"', (K8S_DIR.parents[1] / "pyproject.toml").read_text(), re.MULTILINE)
    assert version
    for name in ("fraud-detector", "fraud-detector-canary"):
        # the image `make images` builds from deploy/docker/Dockerfile.model-server, tagged with the version
        assert container(one(rendered["prod"], "Deployment", name))["image"] == (
            f"ml-platform/model-server:{version.group(1)}"
        )


SECRET_SETTING = re.compile(r"TOKEN|PASSWORD|SECRET|_KEY$|REDIS_URL|WEBHOOK", re.IGNORECASE)
CREDENTIALS_IN_URL = re.compile(r"://[^\s/:@]*:[^\s/@]+@")


def secret_leaks(objects: list[dict]) -> list[str]:
    """Secret settings written as literal values anywhere in the rendered objects."""
    leaks = []
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "ConfigMap":
            for key, value in obj.get("data", {}).items():
                if SECRET_SETTING.search(key) or CREDENTIALS_IN_URL.search(str(value)):
                    leaks.append(f"{where}: {key}")
        if obj["kind"] == "Deployment":
            for entry in container(obj).get("env", []):
                if SECRET_SETTING.search(entry["name"]) and "secretKeyRef" not in entry.get("valueFrom", {}):
                    leaks.append(f"{where}: {entry['name']}")
                if CREDENTIALS_IN_URL.search(str(entry.get("value", ""))):
                    leaks.append(f"{where}: {entry['name']}")
    return leaks


@pytest.mark.parametrize("tree", sorted(TREES))
def test_secrets_come_only_from_the_secret(rendered, tree):
    assert secret_leaks(rendered[tree]) == []
    kinds = {obj["kind"] for obj in rendered[tree]}
    assert "Secret" not in kinds  # created out of band (README), never rendered from the repository


def test_secret_scan_is_not_vacuous(rendered):
    objects = copy.deepcopy(rendered["prod"])
    deployment = one(objects, "Deployment", "fraud-detector")
    container(deployment)["env"].append({"name": "ML_PLATFORM_REDIS_URL", "value": "redis://:hunter2@redis:6379"})
    one(objects, "ConfigMap", "fraud-detector-config")["data"]["ML_PLATFORM_SERVING_TOKEN"] = "hunter2"
    assert secret_leaks(objects) == [
        "ConfigMap/fraud-detector-config: ML_PLATFORM_SERVING_TOKEN",
        "Deployment/fraud-detector: ML_PLATFORM_REDIS_URL",
        "Deployment/fraud-detector: ML_PLATFORM_REDIS_URL",
    ]

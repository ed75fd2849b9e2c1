"""deploy/helm/values.yaml: values for the official Dagster chart of the locked dagster version.

There is no Helm and no chart here (CI's `make validate-helm` renders the real chart). What is checked
offline: every key path the values set is one the chart defines, with the chart's type, against the
list in data/dagster_chart_keys.yaml (taken from the chart's schema models, source noted there); the
Kubernetes-typed fields (env, resources, security contexts, Secret references) validate against the
Kubernetes schemas; the values say what the deployment needs (our image and gRPC command, the
production profile, K8sRunLauncher, an external PostgreSQL whose password comes from a Secret, the
daemon with the queued run coordinator); and no secret value is written in them.
"""

from __future__ import annotations

import copy
import re
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VALUES_FILE = REPO / "deploy" / "helm" / "values.yaml"
README = REPO / "deploy" / "helm" / "README.md"
PREREQUISITES = REPO / "deploy" / "helm" / "cluster-prerequisites.yaml"
NAMESPACE = "ml-platform"
CHART_KEYS = yaml.safe_load((Path(__file__).parent / "data" / "dagster_chart_keys.yaml").read_text())
SCHEMA_VERSIONS = ("1.30.0", "1.32.0")
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$|REDIS_URL|MLFLOW_URI|WEBHOOK", re.IGNORECASE)
CREDENTIALS_IN_URL = re.compile(r"://[^\s/:@]*:[^\s/@]+@")


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    loaded = yaml.safe_load(VALUES_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


# ---- checking values against the chart's key paths ---------------------------------------------------


def check_against_chart(values: dict[str, Any], paths: dict[str, str]) -> tuple[list[str], dict[str, list[Any]]]:
    """Problems with ``values`` (unknown keys, wrong types) and the Kubernetes-typed values by type.

    ``paths`` maps a key path (``a.b[].c``) to its type: str, int, bool, map, list:str,
    ``enum:[A, B]`` or ``k8s:<Definition>`` (``[]`` suffix: a list of them).
    """
    problems: list[str] = []
    kubernetes_values: dict[str, list[Any]] = {}
    prefixes = {path[: match.start()] for path in paths for match in re.finditer(r"\.|\[\]", path)}

    def check_leaf(path: str, value: Any, kind: str) -> None:
        if kind.startswith("k8s:"):
            kubernetes_values.setdefault(kind.removeprefix("k8s:"), []).append(value)
            ok = isinstance(value, list) if kind.endswith("[]") else isinstance(value, dict)
        elif kind.startswith("enum:"):
            choices = [choice.strip() for choice in kind.removeprefix("enum:").strip("[]").split(",")]
            ok = value in choices
        else:
            ok = {
                "str": lambda v: isinstance(v, str),
                "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
                "bool": lambda v: isinstance(v, bool),
                "map": lambda v: isinstance(v, dict) and all(isinstance(x, str | int | bool) for x in v.values()),
                "list:str": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
            }[kind](value)
        if not ok:
            problems.append(f"{path}: expected {kind}, got {value!r}")

    def walk(node: Any, path: str) -> None:
        if path in paths:
            check_leaf(path, node, paths[path])
        elif isinstance(node, dict) and (path in prefixes or not path):
            for key, child in node.items():
                walk(child, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list) and f"{path}" in prefixes:
            for item in node:
                walk(item, f"{path}[]")
        else:
            problems.append(f"{path}: not a key of the chart's values (or not one checked for this version)")

    walk(values, "")
    return problems, kubernetes_values


def validate_kubernetes_fields(kubernetes_values: dict[str, list[Any]], schema_version: str) -> None:
    """Validate every Kubernetes-typed value by placing it where it belongs in a Pod."""
    import kubernetes_validate  # pinned in requirements.lock: a missing install fails, never skips

    container: dict[str, Any] = {"name": "probe", "image": "ml-platform/user-code:0", "env": [], "envFrom": []}
    pod_spec: dict[str, Any] = {"containers": [container]}
    pods = []
    for kind, found in kubernetes_values.items():
        for value in found:
            if kind == "EnvVar[]":
                container["env"].extend(value)
            elif kind == "SecretEnvSource[]":
                container["envFrom"].extend({"secretRef": ref} for ref in value)
            elif kind == "VolumeMount[]":
                container.setdefault("volumeMounts", []).extend(value)
            elif kind == "Volume[]":
                pod_spec.setdefault("volumes", []).extend(value)
            elif kind == "ResourceRequirements":
                pods.append({"containers": [{"name": "probe", "image": "x", "resources": value}]})
            elif kind == "SecurityContext":
                pods.append({"containers": [{"name": "probe", "image": "x", "securityContext": value}]})
            elif kind == "PodSecurityContext":
                pods.append({"securityContext": value, "containers": [{"name": "probe", "image": "x"}]})
            else:
                raise AssertionError(f"no validation wired for Kubernetes type {kind}")
    for spec in [pod_spec, *pods]:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "values-check"}, "spec": spec}
        kubernetes_validate.validate(pod, schema_version, strict=True)


# ---- the values file --------------------------------------------------------------------------------


def test_every_key_path_exists_in_the_chart_with_its_type(values):
    problems, kubernetes_values = check_against_chart(values, CHART_KEYS["paths"])
    assert problems == []
    assert set(kubernetes_values) == {
        "EnvVar[]",
        "SecretEnvSource[]",
        "Volume[]",
        "VolumeMount[]",
        "PodSecurityContext",
        "SecurityContext",
        "ResourceRequirements",
    }


def test_the_key_check_rejects_a_misspelt_key_a_wrong_type_and_an_unknown_enum(values):
    """The check above would catch mistakes (it is not a vacuous pass)."""
    broken = copy.deepcopy(values)
    launcher = broken["runLauncher"]["config"]["k8sRunLauncher"]
    launcher["jobNamespce"] = launcher.pop("jobNamespace")
    broken["postgresql"]["service"]["port"] = "5432"
    broken["dagsterDaemon"]["runCoordinator"]["type"] = "QueueRunCoordinator"
    broken["dagster-user-deployments"]["deployments"][0]["dagsterApiGrpcArg"] = ["-m", "definitions"]
    problems, _ = check_against_chart(broken, CHART_KEYS["paths"])
    assert sorted(p.split(":")[0] for p in problems) == [
        "dagster-user-deployments.deployments[].dagsterApiGrpcArg",
        "dagsterDaemon.runCoordinator.type",
        "postgresql.service.port",
        "runLauncher.config.k8sRunLauncher.jobNamespce",
    ]


@pytest.mark.parametrize("schema_version", SCHEMA_VERSIONS)
def test_kubernetes_typed_fields_are_valid_kubernetes(values, schema_version):
    _, kubernetes_values = check_against_chart(values, CHART_KEYS["paths"])
    validate_kubernetes_fields(kubernetes_values, schema_version)


def test_kubernetes_field_validation_rejects_a_misspelt_field(values):
    import kubernetes_validate

    broken = copy.deepcopy(values)
    broken["dagster-user-deployments"]["deployments"][0]["securityContext"]["allowPrivilegeEscalaton"] = False
    _, kubernetes_values = check_against_chart(broken, CHART_KEYS["paths"])
    with pytest.raises(kubernetes_validate.ValidationError, match="allowPrivilegeEscalaton"):
        validate_kubernetes_fields(kubernetes_values, SCHEMA_VERSIONS[-1])


def test_chart_version_is_the_locked_dagster_version():
    dagster_version = installed_version("dagster")
    assert CHART_KEYS["chart_version"] == dagster_version
    lock = (REPO / "requirements.lock").read_text()
    assert f"\ndagster=={dagster_version}\n" in lock
    assert f"dagster/dagster version {dagster_version}" in VALUES_FILE.read_text()
    readme = README.read_text()
    assert f"helm upgrade --install dagster dagster/dagster --version {dagster_version}" in readme
    assert "-f deploy/helm/values.yaml" in readme
    # every version the README names is that one
    assert set(re.findall(r"--version (\S+)", readme)) == {dagster_version}


# ---- what the values say ------------------------------------------------------------------------------


def test_code_location_runs_our_image_with_the_production_profile(values):
    user_deployments = values["dagster-user-deployments"]
    assert user_deployments["enabled"] is True and user_deployments["enableSubchart"] is True
    (deployment,) = user_deployments["deployments"]
    assert deployment["image"]["repository"] == "ml-platform/user-code"
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "definitions", "-d", "/app"]
    assert (REPO / "definitions.py").is_file()
    env = {entry["name"]: entry["value"] for entry in deployment["env"]}
    assert env["ML_PLATFORM_PROFILE"] == "production"
    assert deployment["envSecrets"] == [{"name": "ml-platform-secrets"}]
    # run, step and training pods get the same configuration
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert deployment["securityContext"]["allowPrivilegeEscalation"] is False
    assert deployment["podSecurityContext"]["runAsNonRoot"] is True


def test_runs_launch_as_kubernetes_jobs_with_the_secrets(values):
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    config = launcher["config"]["k8sRunLauncher"]
    assert config["jobNamespace"] == NAMESPACE
    assert config["loadInclusterConfig"] is True
    assert config["envSecrets"] == [{"name": "ml-platform-secrets"}]


def test_instance_storage_is_an_external_postgresql_with_the_password_in_a_secret(values):
    postgresql = values["postgresql"]
    assert postgresql["enabled"] is False
    assert postgresql["postgresqlHost"] and postgresql["postgresqlUsername"] and postgresql["postgresqlDatabase"]
    assert postgresql["service"]["port"] == 5432
    assert "postgresqlPassword" not in postgresql
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"] == "dagster-postgresql-secret"


def test_daemon_runs_schedules_sensors_and_the_queued_run_coordinator(values):
    daemon = values["dagsterDaemon"]
    assert daemon["enabled"] is True
    coordinator = daemon["runCoordinator"]
    assert (coordinator["enabled"], coordinator["type"]) == (True, "QueuedRunCoordinator")
    assert coordinator["config"]["queuedRunCoordinator"]["maxConcurrentRuns"] >= 1
    # a failed gate is not retried into another challenger; infrastructure losses are
    assert daemon["runRetries"] == {"enabled": True, "maxRetries": 1, "retryOnAssetOrOpFailure": False}
    assert values["scheduler"]["type"] == "DagsterDaemonScheduler"
    assert values["telemetry"]["enabled"] is False


def test_code_location_settings_match_the_production_profile(values):
    """The names the values use are the ones the production profile looks for (its defaults)."""
    from ml_platform.settings import Settings

    defaults = {item.name: item.default for item in Settings.__dataclass_fields__.values()}
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    env = {entry["name"]: entry["value"] for entry in deployment["env"]}
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    # run and step pods have no DAGSTER_CURRENT_IMAGE: the training pod's image is spelt out, the same
    assert env["ML_PLATFORM_TRAINING_IMAGE"] == image
    assert (
        env["ML_PLATFORM_K8S_NAMESPACE"]
        == NAMESPACE
        == values["runLauncher"]["config"]["k8sRunLauncher"]["jobNamespace"]
    )
    assert [ref["name"] for ref in deployment["envSecrets"]] == [defaults["k8s_secret"]]
    # the state volume at the state directory, as the step and training pods mount it
    (volume,) = deployment["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == defaults["k8s_state_claim"]
    (mount,) = deployment["volumeMounts"]
    assert (mount["name"], mount["mountPath"]) == (volume["name"], env["ML_PLATFORM_HOME"])
    # the settings load from exactly this environment plus the Secret's keys
    secret_env = {"ML_PLATFORM_MLFLOW_URI": "http://mlflow:5000", "ML_PLATFORM_REDIS_URL": "redis://redis:6379/0"}
    settings = Settings.from_env({**env, **secret_env})
    assert (settings.profile, settings.training_image, settings.k8s_namespace) == ("production", image, NAMESPACE)
    assert settings.executor == "kubernetes" and settings.training_backend == "kubernetes"


def test_readme_overrides_point_at_the_keys_they_mean(values):
    readme = README.read_text()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    for index in re.findall(r"deployments\[0\]\.env\[(\d+)\]\.value=", readme):
        assert deployment["env"][int(index)]["name"] == "ML_PLATFORM_TRAINING_IMAGE"
    assert "deployments[0].image.repository=" in readme


def test_cluster_prerequisites_are_valid_and_cover_what_the_deploys_apply(values):
    import subprocess

    import kubernetes_validate

    objects = [doc for doc in yaml.safe_load_all(PREREQUISITES.read_text()) if doc]
    for obj in objects:
        for schema_version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(obj, schema_version, strict=True)
    by_kind = {obj["kind"]: obj for obj in objects}
    claim = by_kind["PersistentVolumeClaim"]
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert claim["metadata"]["name"] == deployment["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim["metadata"]["namespace"] == NAMESPACE
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on several nodes write it
    # the Role lets the code location apply every kind the prod overlay renders, in its namespace
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "deploy" / "k8s" / "overlays" / "prod")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    applied = [doc for doc in yaml.safe_load_all(rendered) if doc]
    role, binding = by_kind["Role"], by_kind["RoleBinding"]
    assert {obj["metadata"]["namespace"] for obj in applied} == {role["metadata"]["namespace"]}
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    plural = {
        "ConfigMap": "configmaps",
        "Service": "services",
        "Deployment": "deployments",
        "HorizontalPodAutoscaler": "horizontalpodautoscalers",
        "PodDisruptionBudget": "poddisruptionbudgets",
    }
    for obj in applied:
        group = obj["apiVersion"].rpartition("/")[0]
        rules = [r for r in role["rules"] if group in r["apiGroups"] and plural[obj["kind"]] in r["resources"]]
        assert rules, f"no rule for {obj['kind']}"
        assert {"get", "create", "patch"} <= set(rules[0]["verbs"]), obj["kind"]
    deployment_rule = next(r for r in role["rules"] if "deployments" in r["resources"])
    assert "watch" in deployment_rule["verbs"]  # the rollout wait
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": f"system:serviceaccounts:{NAMESPACE}"}
    ]


def test_readme_creates_the_secrets_the_values_refer_to(values):
    readme = README.read_text()
    secret_name = values["global"]["postgresqlSecretName"]
    assert f"create secret generic {secret_name}" in readme
    assert "--from-literal=postgresql-password=" in readme  # the key the chart reads
    for ref in values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]:
        assert f"create secret generic {ref['name']}" in readme
    namespace = values["runLauncher"]["config"]["k8sRunLauncher"]["jobNamespace"]
    assert f"--namespace {namespace}" in readme and f"kubectl create namespace {namespace}" in readme
    assert f"kubectl -n {namespace} create secret generic" in readme
    assert "kubectl apply -f deploy/helm/cluster-prerequisites.yaml" in readme


# ---- no secrets ---------------------------------------------------------------------------------------


def leaves(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [leaf for key, child in node.items() for leaf in leaves(child, f"{path}.{key}" if path else key)]
    if isinstance(node, list):
        return [leaf for item in node for leaf in leaves(item, f"{path}[]")]
    return [(path, node)]


def test_no_secret_value_is_written_in_the_values(values):
    paths = {path for path, _ in leaves(values)}
    for secret_path in CHART_KEYS["secret_paths"]:
        assert secret_path not in paths, f"{secret_path} must come from a Secret, not the values"
    for path, value in leaves(values):
        if isinstance(value, str):
            assert not CREDENTIALS_IN_URL.search(value), f"{path} carries credentials"
    for deployment in values["dagster-user-deployments"]["deployments"]:
        for entry in deployment["env"]:
            # a secret setting comes from envSecrets (or valueFrom), never as a literal value
            assert not (SECRET_NAME.search(entry["name"]) and "value" in entry), entry["name"]


def test_secret_scan_is_not_vacuous(values):
    leaked = copy.deepcopy(values)
    leaked["dagster-user-deployments"]["deployments"][0]["env"].append(
        {"name": "ML_PLATFORM_REDIS_URL", "value": "redis://:hunter2@redis:6379/0"}
    )
    with pytest.raises(AssertionError):
        test_no_secret_value_is_written_in_the_values(leaked)
    leaked = copy.deepcopy(values)
    leaked["postgresql"]["postgresqlPassword"] = "hunter2"
    with pytest.raises(AssertionError):
        test_no_secret_value_is_written_in_the_values(leaked)
    leaked = copy.deepcopy(values)
    leaked["dagster-user-deployments"]["deployments"][0]["env"][0]["value"] = "redis://:hunter2@redis:6379/0"
    with pytest.raises(AssertionError, match="carries credentials"):
        test_no_secret_value_is_written_in_the_values(leaked)

"""One place knows each deployment environment's target: local follows the alias, staging and prod pin.

Rendering and pinning are pure (``kubectl kustomize`` and dict copies, no cluster): the version a staging or
prod deploy pins into the champion's pod template is the one the model server in that pod reads as its pin,
and the canary's pods keep theirs.
"""

from __future__ import annotations

import shutil

import pytest

from ml_platform.deploy.kubernetes import VERSION_ENV, KubernetesTarget, pin_model_version, served_alias
from ml_platform.serving import ServerConfig
from ml_platform.settings import Settings, SettingsError
from resources import build_deployment
from resources.deployment import DeploymentEnvironments, LocalDeployment, UnknownEnvironment

PRODUCTION = {"ML_PLATFORM_DEPLOYMENT_TARGET": "kubernetes", "ML_PLATFORM_K8S_OVERLAY": "staging"}


def settings_with(tmp_path, **environ: str) -> Settings:
    return Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path), **environ})


def pod_environment(deployment: dict) -> dict[str, str]:
    """The literal env of a Deployment's first container (what the server process sees, envFrom aside)."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {entry["name"]: entry["value"] for entry in container.get("env") or [] if "value" in entry}


def test_the_default_and_monitored_environments_come_from_the_settings(tmp_path):
    local = build_deployment(settings_with(tmp_path))
    assert (local.environment(), local.monitored(), local.endpoint()) == ("local", "local", "http://127.0.0.1:8080")
    staging = build_deployment(settings_with(tmp_path, **PRODUCTION))
    assert (staging.environment(), staging.monitored()) == ("staging", "staging")
    watched = build_deployment(settings_with(tmp_path, **PRODUCTION, ML_PLATFORM_MONITORED_ENVIRONMENT="prod"))
    assert (watched.environment(), watched.monitored()) == ("staging", "prod")
    assert watched.endpoint() == "http://fraud-detector.ml-platform-prod.svc.cluster.local"
    assert watched.describe()["local"] == {
        "target": "LocalDeployment",
        "endpoint": "http://127.0.0.1:8080",
        "pins": False,
    }
    assert {env: d["pins"] for env, d in watched.describe().items()} == {"local": False, "staging": True, "prod": True}


def test_the_serving_url_setting_is_the_default_overlays_service(tmp_path):
    deployment = build_deployment(
        settings_with(tmp_path, **PRODUCTION, ML_PLATFORM_SERVING_URL="https://fraud.example")
    )
    assert deployment.for_environment("staging").endpoint() == "https://fraud.example"
    assert deployment.for_environment("prod").endpoint() == "http://fraud-detector.ml-platform-prod.svc.cluster.local"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("ML_PLATFORM_MONITORED_ENVIRONMENT", "qa"), ("ML_PLATFORM_K8S_OVERLAY", "local")],
)
def test_an_unknown_environment_setting_is_refused_naming_the_variable(tmp_path, variable, value):
    with pytest.raises(SettingsError, match=f"{variable}='{value}': expected one of"):
        settings_with(tmp_path, **{variable: value})


def test_an_unknown_or_unconfigured_environment_is_named(tmp_path):
    only_local = DeploymentEnvironments(local=LocalDeployment(state_dir=str(tmp_path)))
    with pytest.raises(UnknownEnvironment, match="unknown deployment environment 'qa'; expected one of local, staging"):
        only_local.for_environment("qa")
    with pytest.raises(
        UnknownEnvironment, match="no deployment target is configured for environment 'prod'; configured: local"
    ):
        only_local.for_environment("prod")
    assert only_local.for_environment("") is only_local.local


@pytest.mark.parametrize("environment", ["staging", "prod"])
def test_a_kubernetes_deploy_pins_what_the_server_reads_as_its_pin(tmp_path, environment):
    assert shutil.which("kubectl"), "kubectl is needed to render the overlays (kubectl kustomize): install kubectl"
    target = build_deployment(settings_with(tmp_path, **PRODUCTION)).for_environment(environment)
    assert target.pins() is True
    objects = KubernetesTarget.render(target.overlay_dir())
    pinned = pin_model_version(objects, 7, "champion")
    deployments = {obj["metadata"]["name"]: obj for obj in pinned if obj["kind"] == "Deployment"}
    assert {name: served_alias(d) for name, d in deployments.items()} == {
        "fraud-detector": "champion",
        "fraud-detector-canary": "challenger",
    }
    champion_env = pod_environment(deployments["fraud-detector"])
    assert champion_env[VERSION_ENV] == "7"
    config = ServerConfig.from_settings(settings_with(tmp_path), environ=champion_env)
    assert (config.model_version, config.serve_alias) == (7, "champion")
    # the canary keeps what it runs: a champion deploy leaves its pods unpinned by this deploy
    canary_env = pod_environment(deployments["fraud-detector-canary"])
    assert VERSION_ENV not in canary_env
    canary = ServerConfig.from_settings(settings_with(tmp_path), environ=canary_env)
    assert (canary.model_version, canary.serve_alias) == (None, "challenger")

    # a rollback is a rollout of the previous version: the same pin, another value, a changed pod template
    rolled_back = pin_model_version(objects, 6, "champion")
    champion_after = next(
        o for o in rolled_back if o["kind"] == "Deployment" and o["metadata"]["name"] == "fraud-detector"
    )
    assert pod_environment(champion_after)[VERSION_ENV] == "6"
    assert champion_after["spec"]["template"] != deployments["fraud-detector"]["spec"]["template"]

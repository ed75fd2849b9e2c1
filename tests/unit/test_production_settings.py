"""The production profile's settings: one switch, clear errors naming the variable, secrets never shown."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from ml_platform.settings import (
    DAGSTER_TEMPLATE,
    Settings,
    SettingsError,
    feast_redis_connection,
    normalize_tracking_uri,
    redact,
    without_password,
)

PASSWORD = "pa55-w0rd"


def production(tmp_path, **env: str) -> Settings:
    return Settings.from_env(
        {
            "ML_PLATFORM_HOME": str(tmp_path / "home"),
            "ML_PLATFORM_PROFILE": "production",
            "ML_PLATFORM_MLFLOW_URI": f"postgresql://mlflow:{PASSWORD}@db.internal:5432/mlflow",
            "ML_PLATFORM_REDIS_URL": "redis://redis.internal:6379/0",
            "ML_PLATFORM_TRAINING_IMAGE": "ml-platform/user-code:1",
            **env,
        }
    )


# ---- the switch and its defaults ----------------------------------------------------------------------


def test_production_defaults_to_kubernetes_and_allows_local(tmp_path):
    settings = production(tmp_path)
    assert (settings.training_backend, settings.deployment_target, settings.executor) == ("kubernetes",) * 3
    local = production(
        tmp_path,
        ML_PLATFORM_TRAINING_BACKEND="local",
        ML_PLATFORM_DEPLOYMENT_TARGET="local",
        ML_PLATFORM_EXECUTOR="local",
    )
    assert (local.training_backend, local.deployment_target, local.executor) == ("local",) * 3
    plain = Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path)})
    assert (plain.profile, plain.training_backend, plain.executor, plain.redis_url) == ("local", "local", "local", "")


def test_production_names_every_missing_variable(tmp_path):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path), "ML_PLATFORM_PROFILE": "production"})
    message = str(raised.value)
    for variable in ("ML_PLATFORM_MLFLOW_URI", "ML_PLATFORM_REDIS_URL", "ML_PLATFORM_TRAINING_IMAGE"):
        assert variable in message
    # training kept local: no image needed
    Settings.from_env(
        {
            "ML_PLATFORM_HOME": str(tmp_path),
            "ML_PLATFORM_PROFILE": "production",
            "ML_PLATFORM_MLFLOW_URI": "postgresql://mlflow@db/mlflow",
            "ML_PLATFORM_REDIS_URL": "redis:6379,db=1",
            "ML_PLATFORM_TRAINING_BACKEND": "local",
        }
    )


def test_the_training_image_defaults_to_the_code_locations(tmp_path):
    env = {"ML_PLATFORM_HOME": str(tmp_path), "ML_PLATFORM_PROFILE": "production"}
    env |= {"ML_PLATFORM_MLFLOW_URI": "https://mlflow.example.com", "ML_PLATFORM_REDIS_URL": "redis:6379"}
    assert Settings.from_env({**env, "DAGSTER_CURRENT_IMAGE": "repo/user-code:7"}).training_image == "repo/user-code:7"
    assert Settings.from_env({**env, "ML_PLATFORM_K8S_IMAGE": "repo/steps:2"}).training_image == "repo/steps:2"


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("sqlite:////var/mlflow.db", "not on one machine's disk"),
        ("file:///var/mlruns", "not on one machine's disk"),
    ],
)
def test_production_refuses_a_single_machine_mlflow_store(tmp_path, uri, problem):
    with pytest.raises(SettingsError, match=problem):
        production(tmp_path, ML_PLATFORM_MLFLOW_URI=uri)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("ML_PLATFORM_TRAINING_BACKEND", "slurm", "ML_PLATFORM_TRAINING_BACKEND='slurm': expected one of local"),
        ("ML_PLATFORM_EXECUTOR", "celery", "ML_PLATFORM_EXECUTOR='celery'"),
        ("ML_PLATFORM_TRAINING_GPUS", "two", "ML_PLATFORM_TRAINING_GPUS='two' is not valid: expected a whole number"),
        ("ML_PLATFORM_TRAINING_NODE_SELECTOR", "[a, b]", "ML_PLATFORM_TRAINING_NODE_SELECTOR='[a, b]' is not valid"),
        ("ML_PLATFORM_TRAINING_TOLERATIONS", '[{"keys": "x"}]', "unknown toleration field(s) keys"),
        ("ML_PLATFORM_REDIS_URL", "redis://cache:6379/zero", "the database after the port must be a number"),
        ("ML_PLATFORM_REDIS_URL", "cache", "expected host:port first"),
        ("ML_PLATFORM_SERVING_PORT", "70000", "ML_PLATFORM_SERVING_PORT='70000' is not valid"),
    ],
)
def test_bad_values_are_named(tmp_path, variable, value, expected):
    with pytest.raises(SettingsError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        production(tmp_path, **{variable: value})


def test_placement_is_read_as_json_or_yaml(tmp_path):
    toleration = {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    settings = production(
        tmp_path,
        ML_PLATFORM_TRAINING_GPUS="4",
        ML_PLATFORM_TRAINING_NODE_SELECTOR="pool: gpu\naccelerator: a100",
        ML_PLATFORM_TRAINING_TOLERATIONS=json.dumps([toleration]),
    )
    assert settings.training_gpus == 4
    assert settings.training_node_selector == {"pool": "gpu", "accelerator": "a100"}
    assert settings.training_tolerations == (toleration,)
    assert production(tmp_path).training_tolerations == (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )


# ---- URIs ---------------------------------------------------------------------------------------------


def test_a_bare_postgresql_uri_is_pinned_to_the_driver_we_ship(tmp_path):
    assert production(tmp_path).tracking_uri == f"postgresql+psycopg2://mlflow:{PASSWORD}@db.internal:5432/mlflow"
    assert normalize_tracking_uri("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalize_tracking_uri("postgresql+pg8000://u@h/db") == "postgresql+pg8000://u@h/db"
    assert normalize_tracking_uri("https://mlflow.example.com") == "https://mlflow.example.com"


@pytest.mark.parametrize(
    ("url", "password", "expected"),
    [
        ("redis://cache:6380/2", "", "cache:6380,db=2"),
        ("redis://cache", "", "cache:6379,db=0"),
        (f"redis://:{PASSWORD}@cache:6379/1", "", f"cache:6379,db=1,password={PASSWORD}"),
        ("redis://app:x@cache:6379/0", PASSWORD, f"cache:6379,db=0,username=app,password={PASSWORD}"),
        ("rediss://cache:6380/0", "", "cache:6380,db=0,ssl=true"),
        ("cache:6379,db=3,ssl=true", "", "cache:6379,db=3,ssl=true"),
        ("cache:6379,db=3,password=old", PASSWORD, f"cache:6379,db=3,password={PASSWORD}"),
    ],
)
def test_redis_urls_become_feasts_connection_string(url, password, expected):
    assert feast_redis_connection(url, password) == expected


def test_the_redis_password_may_come_from_its_own_variable(tmp_path):
    settings = production(tmp_path, ML_PLATFORM_REDIS_PASSWORD=PASSWORD)
    assert settings.redis_connection_string == f"redis.internal:6379,db=0,password={PASSWORD}"


# ---- secrets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"postgresql://mlflow:{PASSWORD}@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        (f"redis://:{PASSWORD}@cache:6379/0", "redis://:***@cache:6379/0"),
        (f"cache:6379,db=0,password={PASSWORD},ssl=true", "cache:6379,db=0,password=***,ssl=true"),
        ("postgresql://mlflow@db:5432/mlflow", "postgresql://mlflow@db:5432/mlflow"),
        (f"https://user:{PASSWORD}@[::1]:5000/", "https://user:***@[::1]:5000/"),
        ("", ""),
    ],
)
def test_redact_hides_passwords_and_nothing_else(text, expected):
    assert redact(text) == expected


def test_without_password_keeps_the_user():
    assert (
        without_password(f"postgresql+psycopg2://mlflow:{PASSWORD}@db:5432/m")
        == "postgresql+psycopg2://mlflow@db:5432/m"
    )
    assert without_password("postgresql://mlflow@db/m") == "postgresql://mlflow@db/m"


def test_settings_never_show_a_secret(tmp_path):
    settings = production(tmp_path, ML_PLATFORM_REDIS_PASSWORD="redis-" + PASSWORD)
    for text in (repr(settings), str(settings), settings.public_tracking_uri):
        assert PASSWORD not in text
    assert "mlflow:***@db.internal" in repr(settings)
    assert "redis_password='***'" in repr(settings)
    assert not any(PASSWORD in value for value in settings.environment_for_pods().values())


def test_pods_get_every_non_secret_setting_but_no_uri(tmp_path):
    settings = production(tmp_path, ML_PLATFORM_TRAINING_GPUS="2", ML_PLATFORM_K8S_NAMESPACE="ml")
    env = settings.environment_for_pods()
    assert env["ML_PLATFORM_PROFILE"] == "production"
    assert env["ML_PLATFORM_HOME"] == str(settings.home)
    assert env["ML_PLATFORM_TRAINING_GPUS"] == "2" and env["ML_PLATFORM_K8S_NAMESPACE"] == "ml"
    # the URIs (which may carry passwords) reach pods from the Secret, never as literal values
    assert "ML_PLATFORM_MLFLOW_URI" not in env and "ML_PLATFORM_REDIS_URL" not in env


# ---- the settings file ----------------------------------------------------------------------------------


def test_a_settings_file_mirrors_the_fields_and_the_environment_wins(tmp_path):
    file = tmp_path / "settings.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "profile": "production",
                "home": str(tmp_path / "from-file"),
                "mlflow_tracking_uri": "postgresql://mlflow@db.internal/mlflow",
                "redis_url": "redis://redis.internal:6379/3",
                "training_backend": "local",
                "training_gpus": 2,
                "training_node_selector": {"pool": "gpu"},
                "k8s_namespace": "from-file",
            }
        )
    )
    settings = Settings.from_env({"ML_PLATFORM_SETTINGS": str(file), "ML_PLATFORM_K8S_NAMESPACE": "from-env"})
    assert settings.profile == "production"
    assert settings.home == (tmp_path / "from-file").resolve()
    assert settings.tracking_uri == "postgresql+psycopg2://mlflow@db.internal/mlflow"
    assert settings.redis_connection_string == "redis.internal:6379,db=3"
    assert (settings.training_backend, settings.training_gpus) == ("local", 2)
    assert settings.training_node_selector == {"pool": "gpu"}
    assert settings.k8s_namespace == "from-env"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"redis_password": "x"}, "redis_password is a secret; set ML_PLATFORM_REDIS_PASSWORD in the environment"),
        ({"mlflow_tracking_uri": f"postgresql://m:{PASSWORD}@db/m"}, "mlflow_tracking_uri carries a password"),
        ({"redis_url": f"redis://:{PASSWORD}@cache:6379/0"}, "redis_url carries a password"),
        ({"trainng_backend": "local"}, "unknown setting"),
    ],
)
def test_a_settings_file_is_refused_secrets_and_unknown_keys(tmp_path, content, expected):
    file = tmp_path / "settings.yaml"
    file.write_text(yaml.safe_dump(content))
    with pytest.raises(SettingsError, match=expected.replace("(", r"\(")) as raised:
        Settings.from_env({"ML_PLATFORM_SETTINGS": str(file), "ML_PLATFORM_HOME": str(tmp_path)})
    assert PASSWORD not in str(raised.value)


def test_a_missing_settings_file_is_named(tmp_path):
    with pytest.raises(SettingsError, match="ML_PLATFORM_SETTINGS=.*no such file"):
        Settings.from_env({"ML_PLATFORM_SETTINGS": str(tmp_path / "nope.yaml")})


# ---- the Dagster instance ---------------------------------------------------------------------------------


def test_the_instance_template_holds_no_value_only_variables():
    instance = yaml.safe_load(DAGSTER_TEMPLATE.read_text())
    connection = instance["storage"]["postgres"]["postgres_db"]
    assert connection.pop("scheme") == "postgresql+psycopg2"
    assert connection == {
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USERNAME"},
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"},
    }
    assert instance["telemetry"] == {"enabled": False}
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_prepare_installs_the_profiles_instance_and_switches_back(tmp_path):
    local = Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path / "home")})
    prod = production(tmp_path)
    dagster_yaml = local.dagster_home / "dagster.yaml"
    local.prepare()
    assert "storage" not in yaml.safe_load(dagster_yaml.read_text())  # SQLite under DAGSTER_HOME
    prod.prepare()
    installed = dagster_yaml.read_text()
    assert installed.endswith(DAGSTER_TEMPLATE.read_text())
    assert yaml.safe_load(installed)["storage"]["postgres"]["postgres_db"]["db_name"] == {"env": "DAGSTER_PG_DB"}
    prod.prepare()
    assert dagster_yaml.read_text() == installed  # idempotent
    local.prepare()
    assert "storage" not in yaml.safe_load(dagster_yaml.read_text())
    dagster_yaml.write_text("telemetry:\n  enabled: false\n# mine\n")  # written by hand: left alone
    prod.prepare()
    assert dagster_yaml.read_text().endswith("# mine\n")
    assert prod.process_environment()["DAGSTER_PG_PORT"] == "5432"
    assert "DAGSTER_PG_PORT" not in local.process_environment()


def test_on_the_cluster_the_charts_dagster_home_stays_in_force(tmp_path, monkeypatch):
    """Helm pods mount the chart's instance at DAGSTER_HOME; production must not point it elsewhere."""
    chart_home = str(tmp_path / "chart_home")
    monkeypatch.setenv("DAGSTER_HOME", chart_home)
    monkeypatch.setenv("ML_PLATFORM_HOME", str(tmp_path / "before"))
    production(tmp_path).apply_environment()
    assert os.environ["DAGSTER_HOME"] == chart_home
    local = Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path / "local")})
    local.apply_environment()  # the local profile keeps every piece of state under its home
    assert os.environ["DAGSTER_HOME"] == str(local.dagster_home)

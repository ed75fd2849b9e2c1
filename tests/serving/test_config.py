"""ServerConfig: settings, then ML_PLATFORM_SERVING_* variables, then explicit overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ml_platform.features.store import FeatureRepo
from ml_platform.serving import ServerConfig
from ml_platform.settings import Settings, SettingsError


def test_defaults_come_from_settings(tmp_path):
    settings = Settings(home=tmp_path)
    config = ServerConfig.from_settings(settings, environ={})
    assert config.model_name == settings.model_name
    assert config.tracking_uri == settings.tracking_uri
    assert config.artifact_root == settings.mlflow_artifact_root
    assert config.feast == FeatureRepo.from_settings(settings)
    assert config.log_dir == settings.logs_dir / "predictions"
    assert (config.challenger_weight, config.mode, config.sticky, config.poll_seconds) == (0.0, "split", True, 5.0)
    assert (config.auth_token, config.admin_token) == (None, None)
    assert (config.max_body_bytes, config.max_batch_rows) == (1_000_000, 10_000)
    assert (config.fast_path, config.opentelemetry) == (True, False)


def test_environment_then_overrides(tmp_path):
    environ = {
        "ML_PLATFORM_SERVING_TOKEN": "abc",
        "ML_PLATFORM_SERVING_ADMIN_TOKEN": "xyz",
        "ML_PLATFORM_SERVING_CHALLENGER_WEIGHT": "0.25",
        "ML_PLATFORM_SERVING_MODE": "shadow",
        "ML_PLATFORM_SERVING_STICKY": "false",
        "ML_PLATFORM_SERVING_FEAST": "off",
        "ML_PLATFORM_SERVING_LOG_DIR": str(tmp_path / "logs"),
        "ML_PLATFORM_SERVING_MAX_BATCH_ROWS": "50",
        "ML_PLATFORM_SERVING_FAST_PATH": "off",
        "ML_PLATFORM_SERVING_OPENTELEMETRY": "on",
    }
    config = ServerConfig.from_settings(Settings(home=tmp_path), environ=environ, max_batch_rows=7)
    assert config.auth_token == "abc" and config.admin_token == "xyz"
    assert config.challenger_weight == 0.25 and config.mode == "shadow"
    assert config.sticky is False and config.feast is None
    assert config.log_dir == Path(tmp_path / "logs")
    assert config.max_batch_rows == 7  # an explicit override beats the environment
    assert config.fast_path is False and config.opentelemetry is True


@pytest.mark.parametrize(
    ("environ", "overrides", "words"),
    [
        ({"ML_PLATFORM_SERVING_CHALLENGER_WEIGHT": "lots"}, {}, "CHALLENGER_WEIGHT"),
        ({}, {"challenger_weight": 1.5}, "challenger_weight"),
        ({}, {"mode": "canary"}, "mode"),
        ({"ML_PLATFORM_SERVING_STICKY": "perhaps"}, {}, "STICKY"),
    ],
)
def test_bad_values_are_refused(tmp_path, environ, overrides, words):
    with pytest.raises(SettingsError, match=words):
        ServerConfig.from_settings(Settings(home=tmp_path), environ=environ, **overrides)
    with pytest.raises(TypeError, match="nonsense"):
        ServerConfig.from_settings(Settings(home=tmp_path), environ={}, nonsense=1)


@pytest.mark.parametrize(
    ("environ", "overrides", "words"),
    [
        # an empty variable used to mean "no auth"; now it stops the server naming the variable
        ({"ML_PLATFORM_SERVING_TOKEN": ""}, {}, "ML_PLATFORM_SERVING_TOKEN (auth_token) is set but empty"),
        ({"ML_PLATFORM_SERVING_ADMIN_TOKEN": ""}, {}, "ML_PLATFORM_SERVING_ADMIN_TOKEN (admin_token) is set but empty"),
        ({}, {"auth_token": ""}, "ML_PLATFORM_SERVING_TOKEN (auth_token) is set but empty"),
        # what a client could not send back as a bearer token: a newline from a file, a space, a quote
        ({"ML_PLATFORM_SERVING_TOKEN": "abc\n"}, {}, "ML_PLATFORM_SERVING_TOKEN (auth_token) holds characters"),
        ({"ML_PLATFORM_SERVING_ADMIN_TOKEN": "a b"}, {}, "ML_PLATFORM_SERVING_ADMIN_TOKEN (admin_token) holds"),
        ({"ML_PLATFORM_SERVING_TOKEN": 'a"b'}, {}, "ML_PLATFORM_SERVING_TOKEN (auth_token) holds characters"),
        ({"ML_PLATFORM_SERVING_TOKEN": "=abc"}, {}, "ML_PLATFORM_SERVING_TOKEN (auth_token) holds characters"),
        # one token for both would let every scoring client change the routing
        (
            {"ML_PLATFORM_SERVING_TOKEN": "same", "ML_PLATFORM_SERVING_ADMIN_TOKEN": "same"},
            {},
            "ML_PLATFORM_SERVING_ADMIN_TOKEN must differ from ML_PLATFORM_SERVING_TOKEN",
        ),
    ],
)
def test_bad_tokens_are_refused_naming_the_variable(tmp_path, environ, overrides, words):
    with pytest.raises(SettingsError, match=re.escape(words)):
        ServerConfig.from_settings(Settings(home=tmp_path), environ=environ, **overrides)


def test_tokens_may_use_every_bearer_token_character(tmp_path):
    environ = {"ML_PLATFORM_SERVING_TOKEN": "Az09-._~+/==", "ML_PLATFORM_SERVING_ADMIN_TOKEN": "YWRtaW4="}
    config = ServerConfig.from_settings(Settings(home=tmp_path), environ=environ)
    assert (config.auth_token, config.admin_token) == ("Az09-._~+/==", "YWRtaW4=")
    unset = ServerConfig.from_settings(Settings(home=tmp_path), environ={}, auth_token=None)
    assert (unset.auth_token, unset.admin_token) == (None, None)

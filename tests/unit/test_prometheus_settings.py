"""The Prometheus and Pushgateway settings, and what the rules generator refuses."""

import pytest

from ml_platform.monitoring.alerts import AlertRule
from ml_platform.monitoring.prometheus import prometheus_rule_groups
from ml_platform.settings import Settings, SettingsError


def test_the_urls_come_from_the_environment_and_reach_the_pods(tmp_path):
    settings = Settings.from_env(
        {
            "ML_PLATFORM_HOME": str(tmp_path),
            "ML_PLATFORM_PROMETHEUS_URL": "http://prometheus.monitoring:9090",
            "ML_PLATFORM_PUSHGATEWAY_URL": "https://pushgateway.example.com",
        }
    )
    assert (settings.prometheus_url, settings.pushgateway_url) == (
        "http://prometheus.monitoring:9090",
        "https://pushgateway.example.com",
    )
    pods = settings.environment_for_pods()
    assert pods["ML_PLATFORM_PROMETHEUS_URL"] == "http://prometheus.monitoring:9090"
    assert pods["ML_PLATFORM_PUSHGATEWAY_URL"] == "https://pushgateway.example.com"
    assert Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path)}).prometheus_url == ""


@pytest.mark.parametrize("value", ["prometheus:9090", "ftp://prometheus", "http://"])
def test_a_url_without_scheme_or_host_is_refused_by_name(tmp_path, value):
    with pytest.raises(SettingsError, match=rf"ML_PLATFORM_PROMETHEUS_URL='{value}' is not valid: expected an http"):
        Settings.from_env({"ML_PLATFORM_HOME": str(tmp_path), "ML_PLATFORM_PROMETHEUS_URL": value})


def test_a_rule_on_a_metric_prometheus_does_not_have_is_refused():
    with pytest.raises(ValueError, match="alert rule metric 'mismatched_share' has no Prometheus expression"):
        prometheus_rule_groups({"skew": AlertRule("feature_skew", "mismatched_share", 0.01, "WARN")})

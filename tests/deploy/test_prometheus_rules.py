"""The Prometheus alert rules: generated from the code's rules, committed as generated, accepted by the real
promtool, and shipped to Operator clusters by the optional kustomize component (real ``kubectl kustomize``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ml_platform.monitoring.alerts import DEFAULT_RULES, AlertRule
from ml_platform.monitoring.prometheus import (
    alert_name,
    prometheus_rule_groups,
    prometheus_rule_text,
    rules_file_text,
)

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "deploy" / "prometheus" / "rules.yml"
COMPONENT = ROOT / "deploy" / "k8s" / "components" / "prometheus"
PROMETHEUS_RULE = COMPONENT / "prometheusrule.yaml"


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed; install it: apt-get install -y --no-install-recommends {package}")
    return path


def test_the_committed_files_are_the_generated_ones():
    """`make prometheus-rules` writes them; a rule changed in the code without it fails here."""
    assert RULES_FILE.read_text() == rules_file_text(), "deploy/prometheus/rules.yml is stale: make prometheus-rules"
    assert PROMETHEUS_RULE.read_text() == prometheus_rule_text(), f"{PROMETHEUS_RULE} is stale: make prometheus-rules"


def test_promtool_accepts_the_rules_file():
    completed = subprocess.run(
        [tool("promtool", "prometheus"), "check", "rules", str(RULES_FILE)], capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "SUCCESS: 4 rules found" in completed.stdout


def test_the_rules_carry_the_codes_thresholds_and_severities():
    (group,) = yaml.safe_load(RULES_FILE.read_text())["groups"]
    alerts = {alert["labels"]["check"]: alert for alert in group["rules"]}
    assert set(alerts) == {"latency_p99", "error_rate", "accuracy_drop", "drift_score"}
    expected = {
        "latency_p99": ("> 200", "warning", "5m"),
        "error_rate": ("> 0.01", "critical", "5m"),
        "accuracy_drop": ("> 0.05", "critical", None),
        "drift_score": ("> 0.15", "warning", None),
    }
    for name, (comparison, severity, hold) in expected.items():
        alert = alerts[name]
        assert alert["alert"] == alert_name(DEFAULT_RULES[name])
        assert alert["expr"].endswith(f" {comparison}"), alert["expr"]
        assert alert["labels"]["severity"] == severity
        assert alert.get("for") == hold
    assert alerts["latency_p99"]["expr"].startswith("histogram_quantile(0.99, ")
    assert alerts["latency_p99"]["expr"].endswith(") * 1000 > 200")  # seconds in Prometheus, ms in the rule
    assert alerts["drift_score"]["expr"] == "ml_platform_monitoring_drift_score > 0.15"
    assert alerts["accuracy_drop"]["expr"] == "ml_platform_monitoring_accuracy_drop > 0.05"


def test_a_threshold_changed_in_the_code_changes_the_rule():
    rules = {
        **DEFAULT_RULES,
        "drift_score": AlertRule("drift_score", "drift_score", 0.3, "ERROR"),
    }
    (group,) = prometheus_rule_groups(rules)
    drift = next(alert for alert in group["rules"] if alert["labels"]["check"] == "drift_score")
    assert drift["expr"] == "ml_platform_monitoring_drift_score > 0.3"
    assert drift["labels"]["severity"] == "critical"


def kustomize(directory: Path) -> list[dict]:
    completed = subprocess.run(
        [tool("kubectl", "kubectl"), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr
    return [doc for doc in yaml.safe_load_all(completed.stdout) if doc]


def test_the_overlays_apply_without_the_operator_and_the_component_adds_its_objects(tmp_path):
    """Without the component no object needs the Operator's CRDs; an overlay that lists the component (as
    deploy/k8s/README.md shows) gets the ServiceMonitor and the PrometheusRule in its namespace."""
    for overlay in ("staging", "prod"):
        kinds = {obj["kind"] for obj in kustomize(ROOT / "deploy" / "k8s" / "overlays" / overlay)}
        assert not kinds & {"ServiceMonitor", "PrometheusRule"}, kinds

    tree = tmp_path / "k8s"
    shutil.copytree(ROOT / "deploy" / "k8s", tree)
    overlay = tree / "overlays" / "prod" / "kustomization.yaml"
    overlay.write_text(overlay.read_text() + "\ncomponents:\n  - ../../components/prometheus\n")
    objects = kustomize(overlay.parent)
    by_kind = {obj["kind"]: obj for obj in objects}
    monitor, rule, service = by_kind["ServiceMonitor"], by_kind["PrometheusRule"], by_kind["Service"]
    assert monitor["metadata"]["namespace"] == rule["metadata"]["namespace"] == "ml-platform-prod"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(key) == value for key, value in selector.items())
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == [
        port["name"] for port in service["spec"]["ports"]
    ]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert rule["spec"]["groups"] == prometheus_rule_groups()

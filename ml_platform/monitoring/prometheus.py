"""The alert rules for a Prometheus that watches the platform, and the monitoring values pushed to it.

Two of the four rules judge what the model servers export (``latency_p99``, ``error_rate``): Prometheus
evaluates them on the servers' own metrics. The other two (``drift_score``, ``accuracy_drop``) are computed
by the monitoring assets, not the servers: with a Pushgateway the assets push them as gauges
(:func:`push_monitoring_values`) and Prometheus alerts on those. :func:`prometheus_rule_groups` turns
:data:`~ml_platform.monitoring.alerts.DEFAULT_RULES` into Prometheus rules with the same thresholds and
severities; :func:`rules_file_text` and :func:`prometheus_rule_text` write them for a plain Prometheus
(``rule_files``) and for the Prometheus Operator (a PrometheusRule). Run this module to write both::

    python -m ml_platform.monitoring.prometheus --rules-file FILE --prometheus-rule FILE
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path

import yaml

from ml_platform.monitoring.alerts import DEFAULT_RULES, AlertRule
from ml_platform.monitoring.serving_metrics import (
    ANSWERED,
    LATENCY_HISTOGRAM,
    REQUESTS_COUNTER,
    SERVER_ERRORS,
    scoring_selector,
)
from ml_platform.storage import write_text_atomic

# The gauges the monitoring assets push, one per value, labelled with the model's name.
DRIFT_SCORE_GAUGE = "ml_platform_monitoring_drift_score"
ACCURACY_DROP_GAUGE = "ml_platform_monitoring_accuracy_drop"
PUSHED_GAUGES: dict[str, tuple[str, str]] = {
    "drift_score": (
        DRIFT_SCORE_GAUGE,
        "Share of the model's features whose served distribution drifted from its training data, over the "
        "monitoring window (NaN: nothing served in the window).",
    ),
    "accuracy_drop": (
        ACCURACY_DROP_GAUGE,
        "The largest drop of recall, precision or PR AUC on labelled traffic below the model's test metrics "
        "that the window shows with confidence (baseline lower bound - live upper bound); the accuracy_drop "
        "check fails when it is above its threshold (NaN: not enough labels to judge).",
    ),
}
PUSH_JOB = "ml_platform_monitoring"
MODEL_LABEL = "model"

# Prometheus' severity label for Dagster's check severities.
SEVERITY_LABELS = {"WARN": "warning", "ERROR": "critical"}
RATE_WINDOW = "5m"  # the servers' rules look at the last 5 minutes of traffic ...
SERVING_FOR = "5m"  # ... and fire when that stays broken for 5 minutes
GROUP_NAME = "ml-platform"
PROMETHEUS_RULE_NAME = "ml-platform-alerts"
GENERATED_HEADER = (
    "# Generated from ml_platform.monitoring.alerts.DEFAULT_RULES by `make prometheus-rules`; do not edit.\n"
)


class PushError(RuntimeError):
    """The Pushgateway did not take the monitoring values; the message names it and the reason."""


def _serving_expressions() -> dict[str, str]:
    """PromQL of each rule metric the servers export, per namespace (staging and prod apart)."""
    requests = f"sum by (namespace) (rate({scoring_selector(REQUESTS_COUNTER)}[{RATE_WINDOW}]))"
    errors = f"sum by (namespace) (rate({scoring_selector(REQUESTS_COUNTER, status=SERVER_ERRORS)}[{RATE_WINDOW}]))"
    buckets = scoring_selector(f"{LATENCY_HISTOGRAM}_bucket", status=ANSWERED)
    return {
        "latency_p99_ms": f"histogram_quantile(0.99, sum by (namespace, le) (rate({buckets}[{RATE_WINDOW}]))) * 1000",
        "error_rate": f"{errors} / {requests}",
    }


def metric_expression(metric: str) -> tuple[str, str | None]:
    """(PromQL of a rule's metric, how long it must stay broken before firing or None)."""
    serving = _serving_expressions()
    if metric in serving:
        return serving[metric], SERVING_FOR
    if metric in PUSHED_GAUGES:
        # A pushed value already judges a whole window: it fires at once.
        return PUSHED_GAUGES[metric][0], None
    raise ValueError(
        f"alert rule metric {metric!r} has no Prometheus expression; known: {', '.join([*serving, *PUSHED_GAUGES])}"
    )


def alert_name(rule: AlertRule) -> str:
    """``MlPlatformLatencyP99`` for the rule ``latency_p99``."""
    return "MlPlatform" + "".join(part.capitalize() for part in rule.name.split("_"))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def prometheus_rule_groups(rules: Mapping[str, AlertRule] = DEFAULT_RULES) -> list[dict]:
    """The alert rules as Prometheus rule groups (the ``groups`` of a rules file or a PrometheusRule)."""
    alerts = []
    for rule in rules.values():
        expression, hold = metric_expression(rule.metric)
        alert: dict = {
            "alert": alert_name(rule),
            "expr": f"{expression} {rule.comparison} {_number(rule.threshold)}",
        }
        if hold:
            alert["for"] = hold
        alert["labels"] = {"severity": SEVERITY_LABELS[rule.severity], "check": rule.name}
        where = "{{ $labels.model }}" if rule.metric in PUSHED_GAUGES else "{{ $labels.namespace }}"
        alert["annotations"] = {
            "summary": f"{rule.name} of {where}: {rule.describe()}",
            "description": f"{rule.metric} is {{{{ $value | humanize }}}} ({rule.describe()}); the Dagster check "
            f"{rule.name} judges the same rule over its monitoring window.",
        }
        alerts.append(alert)
    return [{"name": GROUP_NAME, "rules": alerts}]


def _yaml(document: object) -> str:
    return yaml.safe_dump(document, sort_keys=False, width=1000, default_flow_style=False)


def rules_file_text(rules: Mapping[str, AlertRule] = DEFAULT_RULES) -> str:
    """A rules file for a Prometheus without the Operator (its ``rule_files``)."""
    return GENERATED_HEADER + _yaml({"groups": prometheus_rule_groups(rules)})


def prometheus_rule_text(rules: Mapping[str, AlertRule] = DEFAULT_RULES) -> str:
    """The same rules as a Prometheus Operator ``PrometheusRule`` (namespace set by the kustomize overlay)."""
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": PROMETHEUS_RULE_NAME, "labels": {"app.kubernetes.io/component": "monitoring"}},
        "spec": {"groups": prometheus_rule_groups(rules)},
    }
    return GENERATED_HEADER + _yaml(manifest)


def push_monitoring_values(
    gateway_url: str, model: str, values: Mapping[str, float | None], *, timeout: float = 10.0
) -> list[str]:
    """Push ``values`` (keys of :data:`PUSHED_GAUGES`: ``drift_score``, ``accuracy_drop``) as gauges
    labelled ``model`` to the Pushgateway at ``gateway_url``, in the group (job
    ``ml_platform_monitoring``, model). Only these gauges are replaced in the group, so each monitoring
    asset pushes its own value without erasing the other's. An unknown value (None, NaN) is pushed as
    NaN, which no ``>`` rule fires on: an alert resolves when there is nothing to judge rather than
    keep the last value. Returns the gauges' names; raises :class:`PushError`, ValueError for an
    unknown key."""
    from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

    unknown = sorted(set(values) - set(PUSHED_GAUGES))
    if unknown:
        raise ValueError(f"cannot push {', '.join(unknown)}: known values are {', '.join(PUSHED_GAUGES)}")
    if not gateway_url.startswith(("http://", "https://")):
        raise PushError(f"Pushgateway URL {gateway_url!r}: expected an http(s) URL such as http://pushgateway:9091")
    registry = CollectorRegistry()
    names = []
    for key, value in values.items():
        name, description = PUSHED_GAUGES[key]
        number = float("nan") if value is None or not math.isfinite(float(value)) else float(value)
        Gauge(name, description, registry=registry).set(number)
        names.append(name)
    try:
        pushadd_to_gateway(
            gateway_url.rstrip("/"), job=PUSH_JOB, grouping_key={MODEL_LABEL: model}, registry=registry, timeout=timeout
        )
    except (OSError, ValueError) as error:  # urllib's URLError/HTTPError, socket errors, a malformed URL
        raise PushError(f"Pushgateway at {gateway_url} did not take {', '.join(names)}: {error}") from error
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the alert rules for Prometheus.")
    parser.add_argument("--rules-file", type=Path, required=True, help="a plain Prometheus rules file")
    parser.add_argument("--prometheus-rule", type=Path, required=True, help="a Prometheus Operator PrometheusRule")
    args = parser.parse_args(argv)
    for path, text in ((args.rules_file, rules_file_text()), (args.prometheus_rule, prometheus_rule_text())):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

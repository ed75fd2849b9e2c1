"""Alert rules at their thresholds, the JSONL sink, and the webhook sink against a real HTTP server on
127.0.0.1 (delivered, retried then recorded as failed, never raising)."""

import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ml_platform.monitoring.alerts import (
    DEFAULT_RULES,
    Alert,
    AlertRule,
    Delivery,
    JsonlAlertSink,
    WebhookAlertSink,
    evaluate_rules,
    send_all,
)


def test_default_rules_are_the_original_designs():
    table = {name: (r.metric, r.threshold, r.severity, r.comparison) for name, r in DEFAULT_RULES.items()}
    assert table == {
        "latency_p99": ("latency_p99_ms", 200.0, "WARN", ">"),
        "error_rate": ("error_rate", 0.01, "ERROR", ">"),
        "accuracy_drop": ("accuracy_drop", 0.05, "ERROR", ">"),
        "drift_score": ("drift_score", 0.15, "WARN", ">"),
    }


@pytest.mark.parametrize("name", sorted(DEFAULT_RULES))
def test_rules_fire_exactly_above_the_threshold(name):
    rule = DEFAULT_RULES[name]
    assert not rule.fires(rule.threshold)
    assert rule.fires(math.nextafter(rule.threshold, math.inf))
    assert not rule.fires(math.nextafter(rule.threshold, -math.inf))
    assert not rule.fires(math.nan)
    assert not rule.fires(None)
    assert rule.fires(math.inf)


def test_other_comparisons_and_validation():
    at_least = AlertRule("coverage", "label_coverage", 0.5, "WARN", comparison="<")
    assert at_least.fires(0.49) and not at_least.fires(0.5) and not at_least.fires(math.nan)
    assert AlertRule("x", "x", 1, "ERROR", ">=").fires(1) and AlertRule("x", "x", 1, "ERROR", "<=").fires(1)
    with pytest.raises(ValueError, match="severity: expected one of WARN, ERROR, got 'critical'"):
        AlertRule("x", "x", 1.0, "critical")
    with pytest.raises(ValueError, match="comparison: expected one of >, >=, <, <=, got '=='"):
        AlertRule("x", "x", 1.0, "WARN", "==")
    with pytest.raises(ValueError, match="threshold: expected a finite number, got nan"):
        AlertRule("x", "x", math.nan, "WARN")


def test_evaluate_rules_returns_only_the_broken_ones():
    alerts = evaluate_rules(
        {"latency_p99_ms": 250.0, "error_rate": 0.01, "accuracy_drop": math.nan, "drift_score": 0.4},
        model="fraud_detector v3",
        window="24h",
        run_id="run-1",
    )
    assert [(a.name, a.severity, a.value, a.threshold) for a in alerts] == [
        ("latency_p99", "WARN", 250.0, 200.0),
        ("drift_score", "WARN", 0.4, 0.15),
    ]
    first = alerts[0]
    assert first.check == "latency_p99" and first.run_id == "run-1" and first.window == "24h"
    assert first.message == "latency_p99_ms is 250 (breaks latency_p99_ms > 200) over 24h"
    assert evaluate_rules({}, model="m") == []


def make_alert(name: str = "error_rate", value: float = 0.2) -> Alert:
    return DEFAULT_RULES[name].alert(value, model="fraud_detector v3", window="1h", run_id="r-9")


def test_alert_dict_and_slack_payload():
    alert = make_alert()
    record = alert.to_dict()
    assert record["name"] == "error_rate" and record["severity"] == "ERROR" and record["value"] == 0.2
    assert record["time"].endswith("+00:00")
    payload = alert.slack_payload()
    assert set(payload) == {"text", "blocks"}
    assert "[ERROR] fraud_detector v3: error_rate" in payload["text"]
    assert [block["type"] for block in payload["blocks"]] == ["header", "section", "context"]
    fields = [f["text"] for f in payload["blocks"][1]["fields"]]
    assert "*Value*\n0.2" in fields and "*Threshold*\n0.01" in fields
    json.dumps(payload)


def test_jsonl_sink_writes_one_parseable_line_per_alert(tmp_path):
    sink = JsonlAlertSink(tmp_path / "alerts" / "alerts.jsonl")
    alerts = [make_alert("error_rate", 0.05), make_alert("latency_p99", 321.0), make_alert("drift_score", 0.5)]
    deliveries = [sink.send(alert) for alert in alerts]
    assert all(d.delivered and d.attempts == 1 for d in deliveries)
    lines = (tmp_path / "alerts" / "alerts.jsonl").read_text().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["name"] for r in records] == ["error_rate", "latency_p99", "drift_score"]
    assert [r["value"] for r in records] == [0.05, 321.0, 0.5]
    assert {r["delivery"] for r in records} == {"recorded"}
    assert sink.read() == records


def test_jsonl_sink_reports_an_unwritable_path_instead_of_raising(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    delivery = JsonlAlertSink(blocker / "alerts.jsonl").send(make_alert())
    assert not delivery.delivered and "Error" in delivery.error


class _Webhook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    statuses: list = []  # status per request; the last repeats
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.headers.get("Content-Type"), json.loads(body)))
        status = self.statuses[min(len(self.received), len(self.statuses)) - 1]
        answer = b"ok" if status == 200 else b"boom"
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    """Start a webhook on a free port answering ``statuses`` in turn; yields (url, handler class)."""
    servers = []

    def start(*statuses: int):
        handler = type("Handler", (_Webhook,), {"statuses": list(statuses), "received": []})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/hooks/abc", handler

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_webhook_delivers_a_slack_body_and_records_it(tmp_path, webhook):
    url, handler = webhook(200)
    fallback = JsonlAlertSink(tmp_path / "alerts.jsonl")
    alert = make_alert()
    delivery = WebhookAlertSink(url, fallback=fallback, backoff_seconds=0.01).send(alert)
    assert delivery == Delivery(True, f"webhook:{url}", 1, None)
    assert len(handler.received) == 1
    content_type, body = handler.received[0]
    assert content_type.startswith("application/json")
    assert body == alert.slack_payload()
    (record,) = fallback.read()
    assert record["delivery"] == "delivered" and record["attempts"] == 1 and record["name"] == "error_rate"


def test_webhook_retries_a_5xx_then_succeeds(tmp_path, webhook):
    url, handler = webhook(503, 429, 200)
    fallback = JsonlAlertSink(tmp_path / "alerts.jsonl")
    delivery = WebhookAlertSink(url, fallback=fallback, retries=3, backoff_seconds=0.01).send(make_alert())
    assert delivery.delivered and delivery.attempts == 3
    assert len(handler.received) == 3
    assert [r["delivery"] for r in fallback.read()] == ["delivered"]


def test_webhook_failing_every_time_is_recorded_as_failed_and_never_raises(tmp_path, webhook):
    url, handler = webhook(500)
    fallback = JsonlAlertSink(tmp_path / "alerts.jsonl")
    alert = make_alert("latency_p99", 999.0)
    delivery = WebhookAlertSink(url, fallback=fallback, retries=2, backoff_seconds=0.01).send(alert)
    assert not delivery.delivered
    assert delivery.attempts == 3 and len(handler.received) == 3
    assert delivery.error == "HTTP 500 from the webhook: boom"
    (record,) = fallback.read()
    assert record["delivery"] == "failed" and record["error"] == delivery.error and record["attempts"] == 3
    assert record["name"] == "latency_p99" and record["value"] == 999.0


def test_webhook_client_error_is_not_retried(tmp_path, webhook):
    url, handler = webhook(400)
    fallback = JsonlAlertSink(tmp_path / "alerts.jsonl")
    delivery = WebhookAlertSink(url, fallback=fallback, retries=3, backoff_seconds=0.01).send(make_alert())
    assert not delivery.delivered and delivery.attempts == 1 and len(handler.received) == 1
    assert fallback.read()[0]["delivery"] == "failed"


def test_webhook_closed_port_is_retried_then_recorded(tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fallback = JsonlAlertSink(tmp_path / "alerts.jsonl")
    sink = WebhookAlertSink(f"http://127.0.0.1:{port}/x", fallback=fallback, retries=2, backoff_seconds=0.01)
    delivery = sink.send(make_alert())
    assert not delivery.delivered and delivery.attempts == 3
    assert delivery.error.startswith("cannot reach the webhook: ConnectionRefusedError")
    (record,) = fallback.read()
    assert record["delivery"] == "failed" and record["error"] == delivery.error


def test_webhook_url_is_validated(tmp_path):
    with pytest.raises(ValueError, match="url: expected an http"):
        WebhookAlertSink("hooks.slack.com/x", fallback=JsonlAlertSink(tmp_path / "a.jsonl"))


def test_send_all_reports_a_raising_sink():
    class Broken:
        name = "broken"

        def send(self, alert):
            raise RuntimeError("disk on fire")

    deliveries = send_all([make_alert()], [Broken()])
    assert deliveries == [Delivery(False, "broken", 1, "RuntimeError: disk on fire")]

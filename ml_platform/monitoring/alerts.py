"""Alert rules and where alerts go.

The rules (:data:`DEFAULT_RULES`) cover the four ways a served model goes wrong: slow (latency p99),
failing (error rate), worse than when it was judged (accuracy drop) and fed other data than it was
trained on (drift score). Each compares a metric with a threshold at a severity named as Dagster's
check severities: WARN for slow or drifting (look soon), ERROR for failing or less accurate (act now).

Sinks: :class:`JsonlAlertSink` appends one JSON line per alert to a file (fsynced: the alert history
survives a crash), and :class:`WebhookAlertSink` posts a Slack-compatible message to a webhook
(Slack, Mattermost, Rocket.Chat and most chat tools accept ``{"text": ..., "blocks": [...]}``),
retrying transient failures with backoff. A webhook that stays down never loses an alert and never
raises: the alert is recorded in the JSONL file with ``delivery: failed`` and the error. Delivered
alerts are recorded there too, so the file is the full history.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

_log = logging.getLogger(__name__)

SEVERITIES: tuple[str, ...] = ("WARN", "ERROR")
COMPARISONS: tuple[str, ...] = (">", ">=", "<", "<=")
_SEVERITY_EMOJI = {"WARN": ":warning:", "ERROR": ":rotating_light:"}


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class AlertRule:
    """``metric <comparison> threshold`` fires an alert of ``severity``."""

    name: str
    metric: str
    threshold: float
    severity: str
    comparison: str = ">"

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity: expected one of {', '.join(SEVERITIES)}, got {self.severity!r}")
        if self.comparison not in COMPARISONS:
            raise ValueError(f"comparison: expected one of {', '.join(COMPARISONS)}, got {self.comparison!r}")
        if not isinstance(self.threshold, int | float) or not math.isfinite(self.threshold):
            raise ValueError(f"threshold: expected a finite number, got {self.threshold!r}")

    def fires(self, value: float | None) -> bool:
        """True when ``value`` breaks the rule; an unknown value (None, NaN) never fires."""
        if value is None:
            return False
        value = float(value)
        if math.isnan(value):
            return False
        if self.comparison == ">":
            return value > self.threshold
        if self.comparison == ">=":
            return value >= self.threshold
        if self.comparison == "<":
            return value < self.threshold
        return value <= self.threshold

    def describe(self) -> str:
        return f"{self.metric} {self.comparison} {_number(self.threshold)}"

    def alert(self, value: float, *, model: str, window: str = "", run_id: str = "", detail: str = "") -> Alert:
        """The alert this rule raises for ``value`` (whether or not it fires: the caller decides)."""
        message = f"{self.metric} is {_number(value)} ({'breaks' if self.fires(value) else 'within'} {self.describe()})"
        if window:
            message += f" over {window}"
        if detail:
            message += f"; {detail}"
        return Alert(
            name=self.name,
            severity=self.severity,
            message=message,
            model=model,
            value=float(value),
            threshold=float(self.threshold),
            window=window,
            check=self.name,
            run_id=run_id,
        )


DEFAULT_RULES: dict[str, AlertRule] = {
    "latency_p99": AlertRule("latency_p99", "latency_p99_ms", 200.0, "WARN"),
    "error_rate": AlertRule("error_rate", "error_rate", 0.01, "ERROR"),
    "accuracy_drop": AlertRule("accuracy_drop", "accuracy_drop", 0.05, "ERROR"),
    "drift_score": AlertRule("drift_score", "drift_score", 0.15, "WARN"),
}


def _number(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "unknown"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


@dataclass(frozen=True)
class Alert:
    name: str
    severity: str
    message: str
    model: str
    value: float
    threshold: float
    window: str = ""
    check: str = ""
    run_id: str = ""
    time: str = field(default_factory=utc_now_iso)
    evaluation_id: int | None = None  # the check evaluation it reports: one alert per evaluation, ever

    def to_dict(self) -> dict:
        record = asdict(self)
        for key in ("value", "threshold"):
            record[key] = None if math.isnan(record[key]) else record[key]
        return record

    def slack_payload(self) -> dict:
        """A Slack incoming-webhook message: ``text`` (notifications, fallbacks) plus ``blocks``."""
        emoji = _SEVERITY_EMOJI.get(self.severity, ":bell:")
        title = f"{emoji} [{self.severity}] {self.model}: {self.name}"
        fields = [
            {"type": "mrkdwn", "text": f"*Value*\n{_number(self.value)}"},
            {"type": "mrkdwn", "text": f"*Threshold*\n{_number(self.threshold)}"},
        ]
        if self.window:
            fields.append({"type": "mrkdwn", "text": f"*Window*\n{self.window}"})
        if self.check:
            fields.append({"type": "mrkdwn", "text": f"*Check*\n{self.check}"})
        context = [f"time {self.time}"] + ([f"run {self.run_id}"] if self.run_id else [])
        return {
            "text": f"{title} — {self.message}",
            "blocks": [
                {
                    "type": "header",
                    "text": {"type": "plain_text", "text": f"[{self.severity}] {self.model}: {self.name}"},
                },
                {"type": "section", "text": {"type": "mrkdwn", "text": self.message}, "fields": fields},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]},
            ],
        }


def evaluate_rules(
    values: Mapping[str, float | None],
    *,
    model: str,
    window: str = "",
    run_id: str = "",
    rules: Mapping[str, AlertRule] = DEFAULT_RULES,
) -> list[Alert]:
    """The alerts of every rule whose metric is in ``values`` and fires (unknown values never fire)."""
    return [
        rule.alert(float(values[rule.metric]), model=model, window=window, run_id=run_id)
        for rule in rules.values()
        if rule.metric in values and rule.fires(values[rule.metric])
    ]


@dataclass(frozen=True)
class Delivery:
    delivered: bool
    sink: str
    attempts: int
    error: str | None = None


class AlertSink(Protocol):
    def send(self, alert: Alert) -> Delivery: ...


class JsonlAlertSink:
    """Appends one JSON line per alert to ``path`` (flushed and fsynced)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"jsonl:{self.path}"

    def record(
        self, alert: Alert, *, delivery: str, sink: str | None = None, attempts: int = 1, error: str | None = None
    ) -> Delivery:
        """Append ``alert`` with how it was delivered; a Delivery with the error if the file cannot be written."""
        line = {**alert.to_dict(), "delivery": delivery, "sink": sink or self.name, "attempts": attempts}
        if error is not None:
            line["error"] = error
        text = json.dumps(line, sort_keys=True, default=str) + "\n"
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
        except OSError as failure:
            _log.error("could not record alert %s in %s: %s", alert.name, self.path, failure)
            return Delivery(False, self.name, 1, f"{type(failure).__name__}: {failure}")
        return Delivery(True, self.name, 1)

    def send(self, alert: Alert) -> Delivery:
        return self.record(alert, delivery="recorded")

    def read(self) -> list[dict]:
        """Every recorded line (the alert history), oldest first."""
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def evaluations(self) -> set[tuple[str, int]]:
        """(check, evaluation id) of every alert recorded, delivered or not: the evaluations already alerted."""
        return {
            (str(line.get("check", "")), int(line["evaluation_id"]))
            for line in self.read()
            if isinstance(line.get("evaluation_id"), int)
        }


class WebhookAlertSink:
    """POSTs :meth:`Alert.slack_payload` to ``url``; retries connection errors, 5xx and 429 with backoff.

    ``retries`` is the number of tries after the first (so ``retries=3`` is up to 4 attempts), waiting
    ``backoff_seconds * 2**n`` between them (or the server's ``Retry-After`` on 429, capped at 30 s).
    Another 4xx is not retried (the payload or URL is wrong; trying again cannot help). Every alert is
    recorded in ``fallback`` with ``delivery`` "delivered" or "failed" (and the error).
    """

    def __init__(
        self,
        url: str,
        *,
        fallback: JsonlAlertSink,
        retries: int = 3,
        backoff_seconds: float = 0.5,
        timeout: float = 5.0,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected an http(s) URL for the alert webhook, got {url!r}")
        if retries < 0:
            raise ValueError(f"retries: expected 0 or more, got {retries}")
        if backoff_seconds < 0:
            raise ValueError(f"backoff_seconds: expected 0 or more, got {backoff_seconds}")
        self.url = url
        self.fallback = fallback
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.timeout = timeout

    @property
    def name(self) -> str:
        return f"webhook:{self.url}"

    def _post(self, body: bytes) -> tuple[bool, bool, str | None, float | None]:
        """One attempt: (delivered, worth retrying, error, server's Retry-After seconds)."""
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json; charset=utf-8"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
                return True, False, None, None
        except urllib.error.HTTPError as error:
            detail = error.read()[:200].decode("utf-8", "replace").strip()
            message = f"HTTP {error.code} from the webhook" + (f": {detail}" if detail else "")
            retry_after = None
            if error.code == 429:
                try:
                    retry_after = float(error.headers.get("Retry-After", ""))
                except ValueError:
                    retry_after = None
            return False, error.code == 429 or error.code >= 500, message, retry_after
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            return False, True, f"cannot reach the webhook: {type(reason).__name__}: {reason}", None
        except Exception as error:  # a malformed answer or URL: reported, never raised
            return False, False, f"{type(error).__name__}: {error}", None

    def send(self, alert: Alert) -> Delivery:
        body = json.dumps(alert.slack_payload()).encode("utf-8")
        attempts = 0
        error: str | None = None
        while True:
            attempts += 1
            delivered, retry, error, retry_after = self._post(body)
            if delivered:
                self.fallback.record(alert, delivery="delivered", sink=self.name, attempts=attempts)
                return Delivery(True, self.name, attempts)
            if not retry or attempts > self.retries:
                break
            wait = self.backoff_seconds * 2 ** (attempts - 1)
            if retry_after is not None:
                wait = min(max(wait, retry_after), 30.0)
            time.sleep(wait)
        _log.warning("alert %s not delivered to %s after %d attempt(s): %s", alert.name, self.url, attempts, error)
        self.fallback.record(alert, delivery="failed", sink=self.name, attempts=attempts, error=error)
        return Delivery(False, self.name, attempts, error)


def send_all(alerts: Iterable[Alert], sinks: Iterable[AlertSink]) -> list[Delivery]:
    """Every alert to every sink; a sink that raises is reported as a failed delivery, not propagated."""
    sinks = list(sinks)
    deliveries = []
    for alert in alerts:
        for sink in sinks:
            try:
                deliveries.append(sink.send(alert))
            except Exception as error:
                deliveries.append(
                    Delivery(False, getattr(sink, "name", type(sink).__name__), 1, f"{type(error).__name__}: {error}")
                )
    return deliveries

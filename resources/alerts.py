"""Where alerts go: a JSON-lines file under the state directory, and a Slack-compatible webhook when one
is configured (the file then records each delivery too, so it stays the full history)."""

import os

import dagster as dg

from ml_platform.monitoring.alerts import Alert, AlertSink, Delivery, JsonlAlertSink, WebhookAlertSink

WEBHOOK_ENV_VAR = "ML_PLATFORM_ALERT_WEBHOOK_URL"


class AlertResource(dg.ConfigurableResource):
    """The alert sink's settings; sending never raises (an unreachable webhook is retried, then recorded).

    The webhook URL is ``webhook_url`` when set, else the environment variable named by
    ``webhook_url_env`` (read when alerts are sent, not at load time: a missing variable means the file
    alone, never a failed launch).
    """

    jsonl_path: str
    webhook_url: str = ""
    webhook_url_env: str = WEBHOOK_ENV_VAR
    retries: int = 3
    backoff_seconds: float = 0.5
    timeout_seconds: float = 5.0

    def url(self) -> str | None:
        return self.webhook_url or os.environ.get(self.webhook_url_env) or None

    def sink(self) -> AlertSink:
        history = JsonlAlertSink(self.jsonl_path)
        url = self.url()
        if url is None:
            return history
        try:
            return WebhookAlertSink(
                url,
                fallback=history,
                retries=self.retries,
                backoff_seconds=self.backoff_seconds,
                timeout=self.timeout_seconds,
            )
        except ValueError as error:  # a malformed URL: the alert still reaches the file, with why
            return _MisconfiguredWebhook(history, str(error))

    def alerted(self) -> set[tuple[str, int]]:
        """(check, evaluation id) of every alert in the history file: an evaluation is alerted once, whoever
        (the daemon, the demo's loop, a second process) evaluates the sensor."""
        return JsonlAlertSink(self.jsonl_path).evaluations()

    def send(self, alert: Alert) -> Delivery:
        """Deliver ``alert``; a Delivery saying what happened, whatever happened."""
        sink = self.sink()
        try:
            return sink.send(alert)
        except Exception as error:  # the sinks do not raise; if one ever does, the sensor must go on
            return Delivery(False, getattr(sink, "name", type(sink).__name__), 1, f"{type(error).__name__}: {error}")


class _MisconfiguredWebhook:
    """A webhook URL that cannot be used: every alert goes to the file, marked failed with the reason."""

    def __init__(self, history: JsonlAlertSink, error: str) -> None:
        self.history = history
        self.error = error
        self.name = "webhook:invalid"

    def send(self, alert: Alert) -> Delivery:
        self.history.record(alert, delivery="failed", sink=self.name, attempts=0, error=self.error)
        return Delivery(False, self.name, 0, self.error)

"""The synthetic source replayed as live traffic against the model server.

Each transaction becomes an entity request to ``POST /predict`` (customer id, amount, category,
channel, event time; the server reads the customer's stats from the online feature store), sent in
the batch form ``{"instances": [...]}`` by one :class:`~ml_platform.serving.client.ModelServerClient`,
one batch after another over its kept-alive connection (no connection set-up per request). The
transaction id is the request id, so the prediction log rows can be joined with the labels that arrive
later (:func:`~ml_platform.monitoring.labels.delayed_labels`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from ml_platform.data.schema import ENTITY_COLUMN, ID_COLUMN, TIMESTAMP_COLUMN
from ml_platform.serving.client import BadAnswer, ModelServerClient, ModelServerError, StatusError

_log = logging.getLogger(__name__)

REQUEST_COLUMNS: tuple[str, ...] = (ENTITY_COLUMN, "amount", "category", "channel", TIMESTAMP_COLUMN, ID_COLUMN)


@dataclass(frozen=True)
class TrafficResult:
    requests: int  # HTTP requests sent (one per batch)
    rows: int  # transactions sent
    failed: int  # transactions that got no prediction (their batch failed)
    seconds: float
    model_versions: dict[int, int] = field(default_factory=dict)  # predictions answered per model version
    errors: tuple[str, ...] = ()  # the first few failure messages

    @property
    def answered(self) -> int:
        return self.rows - self.failed

    def to_dict(self) -> dict:
        return {
            "requests": self.requests,
            "rows": self.rows,
            "failed": self.failed,
            "answered": self.answered,
            "seconds": self.seconds,
            "model_versions": {str(version): count for version, count in self.model_versions.items()},
            "errors": list(self.errors),
        }


def entity_instances(transactions: pd.DataFrame) -> list[dict]:
    """The ``/predict`` instances for ``transactions`` (one entity request each)."""
    missing = [name for name in REQUEST_COLUMNS if name not in transactions.columns]
    if missing:
        raise ValueError(f"transactions: missing column(s) {', '.join(missing)}")
    times = pd.to_datetime(transactions[TIMESTAMP_COLUMN], utc=True)
    return [
        {
            "customer_id": int(customer),
            "amount": float(amount),
            "category": str(category),
            "channel": str(channel),
            "event_timestamp": moment.isoformat(),
            "request_id": str(request_id),
        }
        for customer, amount, category, channel, moment, request_id in zip(
            transactions[ENTITY_COLUMN].to_numpy(),
            transactions["amount"].to_numpy(dtype="float64"),
            transactions["category"].to_numpy(),
            transactions["channel"].to_numpy(),
            times,
            transactions[ID_COLUMN].to_numpy(),
            strict=True,
        )
    ]


def send_traffic(
    url: str,
    transactions: pd.DataFrame,
    *,
    batch_size: int = 200,
    token: str | None = None,
    timeout: float = 30.0,
) -> TrafficResult:
    """POST ``transactions`` to ``{url}/predict`` as entity requests in batches of ``batch_size``.

    Never raises for a server that fails or is down: a batch that gets no 200 answer counts its rows
    as ``failed`` (with the reason in ``errors``). ``model_versions`` counts the answered predictions
    per model version (champion and challenger under a split).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected a whole number of at least 1, got {batch_size!r}")
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    instances = entity_instances(transactions)
    client = ModelServerClient(url, token=token, timeout=timeout)
    versions: Counter[int] = Counter()
    errors: list[str] = []
    failed = requests = 0
    started = time.perf_counter()
    with client:
        for offset in range(0, len(instances), batch_size):
            batch = instances[offset : offset + batch_size]
            rows = f"rows {offset}-{offset + len(batch) - 1}"
            requests += 1
            try:
                predictions = client.predict_batch(batch)
                versions.update(int(prediction["model_version"]) for prediction in predictions)
                failed += len(batch) - len(predictions)
            except StatusError as error:
                failed += len(batch)
                _note(errors, f"{rows}: HTTP {error.status_code}: {error.body[:300]}")
            except (BadAnswer, ValueError, KeyError, TypeError) as error:  # no readable model_version per row
                failed += len(batch)
                _note(errors, f"{rows}: unreadable answer: {error}")
            except ModelServerError as error:  # nothing answered: refused, timed out, dropped
                failed += len(batch)
                _note(errors, f"{rows}: {error}")
    return TrafficResult(
        requests=requests,
        rows=len(instances),
        failed=failed,
        seconds=time.perf_counter() - started,
        model_versions=dict(sorted(versions.items())),
        errors=tuple(errors),
    )


def _note(errors: list[str], message: str, keep: int = 5) -> None:
    _log.warning("traffic: %s", message)
    if len(errors) < keep:
        errors.append(message)

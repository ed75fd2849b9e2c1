"""Late ground truth: labels that arrive after the predictions they judge.

Fraud is known days after the transaction (a chargeback, an analyst's review), so live accuracy is
measured on the predictions whose label has arrived by now. The store keeps every label it is given,
one parquet file per write and UTC day of ``labeled_at``; reading it "as of" a time gives what was
known then, and when a request was labelled twice (a review overturned), the latest label wins.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from ml_platform.data.schema import ID_COLUMN, LABEL_COLUMN
from ml_platform.monitoring.window import as_utc

LABEL_COLUMNS: tuple[str, ...] = ("request_id", "label", "labeled_at")
DAY_PREFIX = "date="


def _empty_labels() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": pd.Series(dtype="object"),
            "label": pd.Series(dtype="bool"),
            "labeled_at": pd.Series(dtype="datetime64[ns, UTC]"),
        }
    )


def _normalized(labels: pd.DataFrame) -> pd.DataFrame:
    """``labels`` checked and typed (request_id str, label bool, labeled_at UTC); ValueError naming the fault."""
    if not isinstance(labels, pd.DataFrame):
        raise ValueError(f"labels: expected a pandas DataFrame, got {type(labels).__name__}")
    missing = [name for name in LABEL_COLUMNS if name not in labels.columns]
    if missing:
        raise ValueError(f"labels: missing column(s) {', '.join(missing)}; expected columns {', '.join(LABEL_COLUMNS)}")
    ids = labels["request_id"]
    if ids.isna().any():
        raise ValueError(f"labels.request_id: {int(ids.isna().sum())} row(s) have no request id")
    label = labels["label"]
    if label.isna().any():
        raise ValueError(f"labels.label: {int(label.isna().sum())} row(s) have no label")
    if pd.api.types.is_bool_dtype(label):
        label_values = label.to_numpy(dtype=bool)
    else:
        try:
            numeric = pd.to_numeric(label)
        except (TypeError, ValueError):
            raise ValueError(f"labels.label: expected true/false or 0/1, got dtype {label.dtype}") from None
        bad = ~numeric.isin([0, 1])
        if bad.any():
            example = label[bad].iloc[0]
            example = example.item() if isinstance(example, np.generic) else example
            raise ValueError(f"labels.label: expected true/false or 0/1, got {example!r} ({int(bad.sum())} row(s))")
        label_values = numeric.to_numpy() == 1
    try:
        labeled_at = pd.to_datetime(labels["labeled_at"], utc=True)
    except (TypeError, ValueError) as error:
        raise ValueError(f"labels.labeled_at: expected timestamps, {error}") from None
    if labeled_at.isna().any():
        raise ValueError(f"labels.labeled_at: {int(labeled_at.isna().sum())} row(s) have no time")
    return pd.DataFrame(
        {
            "request_id": ids.astype(str).to_numpy(dtype=object),
            "label": label_values,
            "labeled_at": labeled_at.dt.as_unit("ns").reset_index(drop=True),
        }
    )


class LabelStore:
    """Labels under ``root/date=YYYY-MM-DD/part-*.parquet`` (by UTC day of ``labeled_at``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def write(self, labels: pd.DataFrame) -> int:
        """Store ``labels`` (request_id, label, labeled_at); returns the rows written.

        Each day's file is written under a temporary name and renamed, so a reader sees all of it or
        none of it.
        """
        frame = _normalized(labels)
        if frame.empty:
            return 0
        days = frame["labeled_at"].dt.strftime("%Y-%m-%d")
        for day, part in frame.groupby(days, sort=True):
            folder = self.root / f"{DAY_PREFIX}{day}"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
            temporary = folder / f".{name}.tmp-{os.getpid()}"
            try:
                part.reset_index(drop=True).to_parquet(temporary, index=False)
                os.replace(temporary, folder / name)
            finally:
                temporary.unlink(missing_ok=True)
        return len(frame)

    def files(self, *, until: datetime | None = None) -> list[Path]:
        """Label files in write order within each day, days in order (up to the day of ``until``)."""
        last_day = as_utc(until).strftime("%Y-%m-%d") if until is not None else None
        files = []
        for folder in sorted(self.root.glob(f"{DAY_PREFIX}*")):
            if not folder.is_dir():
                continue
            if last_day is not None and folder.name.removeprefix(DAY_PREFIX) > last_day:
                continue
            files.extend(sorted(folder.glob("part-*.parquet")))
        return files

    def read(self, *, as_of: datetime | None = None) -> pd.DataFrame:
        """The labels known at ``as_of`` (default now): ``labeled_at <= as_of``, latest label per request wins.

        Ties on ``labeled_at`` go to the label written last. One row per request_id, ordered by
        ``labeled_at``.
        """
        cutoff = pd.Timestamp(as_utc(as_of) if as_of is not None else datetime.now(UTC))
        files = self.files(until=cutoff.to_pydatetime())
        if not files:
            return _empty_labels()
        frame = pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)
        frame["labeled_at"] = pd.to_datetime(frame["labeled_at"], utc=True)
        frame = frame.loc[frame["labeled_at"] <= cutoff]
        frame = frame.sort_values("labeled_at", kind="stable").drop_duplicates("request_id", keep="last")
        return frame[list(LABEL_COLUMNS)].reset_index(drop=True)


def delayed_labels(
    transactions: pd.DataFrame,
    *,
    sent_at: datetime,
    delay: timedelta,
    flip_fraction: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """The synthetic source's ground truth for traffic it sent, arriving ``delay`` after ``sent_at``.

    ``request_id`` is the transaction id (what :func:`~ml_platform.monitoring.traffic.send_traffic`
    sends), ``label`` is ``is_fraud``. ``flip_fraction`` inverts exactly ``round(flip_fraction * rows)``
    labels chosen with ``seed``: the "labels turn bad" knob that makes live accuracy drop on purpose.
    """
    missing = [name for name in (ID_COLUMN, LABEL_COLUMN) if name not in transactions.columns]
    if missing:
        raise ValueError(f"transactions: missing column(s) {', '.join(missing)}")
    if isinstance(flip_fraction, bool) or not (
        isinstance(flip_fraction, int | float) and math.isfinite(flip_fraction) and 0.0 <= flip_fraction <= 1.0
    ):
        raise ValueError(f"flip_fraction: expected a number in [0, 1], got {flip_fraction!r}")
    if not isinstance(delay, timedelta) or delay < timedelta(0):
        raise ValueError(f"delay: expected a non-negative timedelta, got {delay!r}")
    n = len(transactions)
    label = transactions[LABEL_COLUMN].to_numpy().astype(bool)
    flips = int(round(flip_fraction * n))
    if flips:
        chosen = np.random.default_rng(seed).choice(n, size=flips, replace=False)
        label[chosen] = ~label[chosen]
    labeled_at = pd.Timestamp(as_utc(sent_at) + delay)
    return pd.DataFrame(
        {
            "request_id": transactions[ID_COLUMN].astype(str).to_numpy(dtype=object),
            "label": label,
            "labeled_at": pd.Series([labeled_at] * n, dtype="datetime64[ns, UTC]"),
        }
    )

"""Time windows over the prediction log, and reading the log rows that fall in one.

A monitoring question is always "over the last N hours/days": :class:`Window` is that half-open
interval ``[start, end)`` in UTC, so consecutive windows never count a prediction twice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd

from ml_platform.predictions import read_prediction_log

ANSWERED_VARIANTS: tuple[str, ...] = ("champion", "challenger")

_UNITS = {"w": timedelta(weeks=1), "d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}
_WINDOW_TEXT = re.compile(r"^\s*(\d+)\s*([wdhm])\s*$", re.IGNORECASE)


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is taken to be UTC already (the log's clock)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_duration(duration: timedelta) -> str:
    """``7d``, ``24h``-style text for a duration: the largest unit that divides it evenly."""
    seconds = int(duration.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Window:
    """A half-open time window ``[start, end)`` in UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", as_utc(self.start))
        object.__setattr__(self, "end", as_utc(self.end))
        if self.end <= self.start:
            raise ValueError(f"window: end ({self.end.isoformat()}) must be after start ({self.start.isoformat()})")

    @classmethod
    def parse(cls, text: str, *, end: datetime | None = None) -> Window:
        """The window of length ``text`` (``"7d"``, ``"24h"``, ``"90m"``, ``"2w"``) ending at ``end`` (default now)."""
        match = _WINDOW_TEXT.match(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(
                f"window: {text!r} is not a window length; expected a positive whole number and a unit,"
                " like '7d' (days), '24h' (hours), '90m' (minutes) or '2w' (weeks)"
            )
        amount = int(match.group(1))
        if amount <= 0:
            raise ValueError(f"window: {text!r} is empty; the length must be positive, like '7d'")
        end_utc = as_utc(end) if end is not None else datetime.now(UTC)
        return cls(start=end_utc - amount * _UNITS[match.group(2).lower()], end=end_utc)

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    @property
    def seconds(self) -> float:
        return self.duration.total_seconds()

    @property
    def label(self) -> str:
        """Human text, e.g. ``2026-11-17T10:00Z .. 2026-11-24T10:00Z (7d)``."""
        return f"{_minute(self.start)} .. {_minute(self.end)} ({format_duration(self.duration)})"

    def days(self) -> list[date]:
        """The UTC days the window touches (the log's day folders to read)."""
        last = (self.end - timedelta(microseconds=1)).date()
        first = self.start.date()
        return [first + timedelta(days=offset) for offset in range((last - first).days + 1)]

    def contains(self, times: pd.Series) -> pd.Series:
        """Boolean mask of ``times`` (UTC timestamps) inside the window."""
        start, end = pd.Timestamp(self.start), pd.Timestamp(self.end)
        return (times >= start) & (times < end)

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "label": self.label}


def _minute(moment: datetime) -> str:
    text = moment.strftime("%Y-%m-%dT%H:%M")
    if moment.second or moment.microsecond:
        text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return text + "Z"


def read_predictions(
    log_dir: str | Path,
    window: Window,
    *,
    variants: Sequence[str] | None = ANSWERED_VARIANTS,
) -> pd.DataFrame:
    """The prediction log rows with ``window.start <= time < window.end``, oldest first.

    Reads only the day folders the window touches. ``variants`` keeps the rows of those variants
    (default: the answers, champion and challenger; shadow scores were never returned to a caller);
    ``None`` keeps every variant. An empty result still has the log's columns.
    """
    frames = [read_prediction_log(log_dir, day) for day in window.days()]
    frames = [frame for frame in frames if len(frame)]
    frame = pd.concat(frames, ignore_index=True) if frames else read_prediction_log(log_dir, window.days()[0])
    keep = window.contains(frame["time"])
    if variants is not None:
        keep &= frame["variant"].isin(list(variants))
    return frame.loc[keep].sort_values("time", kind="stable").reset_index(drop=True)

"""Late ground truth: labels that arrive after the predictions they judge.

Fraud is known days after the transaction (a chargeback, an analyst's review), so live accuracy is
measured on the predictions whose label has arrived by now. The store (a local folder or an object
store, so that every replica of the model server writes where monitoring reads) keeps every label it is
given, one parquet file per write and UTC day of ``labeled_at``; reading it "as of" a time gives what was
known then, and when a request was labelled twice (a review overturned), the latest label wins (by
``labeled_at``, then by arrival), so a request is never counted twice.

Labels from outside (label files, ``ml-platform labels import``, the server's ``POST /feedback``) go
through :func:`validate_labels` and :meth:`LabelStore.import_labels`. A label row is:

- ``request_id`` or ``transaction_id``: the request the label judges. They name the same thing (the
  server logs a transaction's id as the request id when the request carries it); give either, or both
  when equal. Text of 1 to 200 printable characters, or an integer (read as its decimal text).
- ``label``: fraud or not: ``1``/``0``, ``true``/``false`` or ``fraud``/``legit`` (text in any case,
  surrounding spaces ignored).
- ``labelled_at`` (``labeled_at`` also read): when the label was given, ISO 8601 (UTC when no offset is
  given); absent or empty: now. Never before 1970, never later than now plus :data:`FUTURE_TOLERANCE`.

A batch with any bad row is refused whole (nothing written), in one :class:`LabelValidationError` that
names every bad row (up to :data:`MAX_NAMED_PROBLEMS`) with its number (1: the first label row, the
one after a CSV file's header) and the reason.
"""

from __future__ import annotations

import math
import numbers
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from ml_platform.data.schema import ID_COLUMN, LABEL_COLUMN
from ml_platform.monitoring.window import as_utc
from ml_platform.predictions.store import LogStore

LABEL_COLUMNS: tuple[str, ...] = ("request_id", "label", "labeled_at")
DAY_PREFIX = "date="
# The columns a label row may name its request by, and the spellings of its time.
ID_COLUMNS: tuple[str, ...] = ("request_id", ID_COLUMN)
TIME_COLUMNS: tuple[str, ...] = ("labelled_at", "labeled_at")
# How far past "now" a labelled_at may lie (clocks of the sending systems differ a little).
FUTURE_TOLERANCE = timedelta(minutes=5)
# Bad rows named in one refusal (the rest are counted).
MAX_NAMED_PROBLEMS = 20
ID_MAX_CHARS = 200
EARLIEST_LABEL_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LABEL_WORDS: dict[str, bool] = {"1": True, "true": True, "fraud": True, "0": False, "false": False, "legit": False}
LABEL_VALUES_TEXT = "1/0, true/false or fraud/legit"
LABEL_FILE_SUFFIXES: tuple[str, ...] = (".csv", ".parquet")
# Where label files wait to be imported, under the monitoring directory, unless configured elsewhere.
LABELS_INBOX = "labels_inbox"
# How the label store's location is named in errors, and how many of its files an object store serves at once.
LOCATION_NAME = "label store location"
READ_THREADS = 16
_BATCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,99}")
_BATCH_MARK = "--"


@dataclass(frozen=True)
class LabelProblem:
    """One bad label row: its 0-based ``index`` in the batch (None: the batch as a whole), the column at
    fault (None: the row as a whole) and what was wrong."""

    index: int | None
    column: str | None
    reason: str

    def describe(self) -> str:
        if self.index is None:
            return f"{self.column}: {self.reason}" if self.column else self.reason
        where = f"row {self.index + 1}"
        return f"{where}: {self.column}: {self.reason}" if self.column else f"{where}: {self.reason}"


class LabelValidationError(ValueError):
    """A batch of label rows refused whole: every bad row (up to :data:`MAX_NAMED_PROBLEMS`) named."""

    def __init__(self, problems: Sequence[LabelProblem], rows: int, *, source: str | None = None) -> None:
        self.problems = tuple(problems[:MAX_NAMED_PROBLEMS])
        self.refused = len(problems)
        self.rows = rows
        self.source = source
        named = "; ".join(problem.describe() for problem in self.problems)
        more = f"; and {self.refused - len(self.problems)} more" if self.refused > len(self.problems) else ""
        self.bad_rows = bad_rows = len({p.index for p in problems if p.index is not None})
        head = f"{source}: " if source else ""
        if bad_rows:
            head += f"{bad_rows} of {rows} label row(s) refused, none written: "
        else:
            head += "label rows refused, none written: "
        super().__init__(head + named + more)


def _empty_labels() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": pd.Series(dtype="object"),
            "label": pd.Series(dtype="bool"),
            "labeled_at": pd.Series(dtype="datetime64[ns, UTC]"),
        }
    )


def _missing(value: object) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _request_id(value: object) -> tuple[str | None, str | None]:
    """(the id as text, None) or (None, what is wrong); (None, None) when absent."""
    if _missing(value):
        return None, None
    if isinstance(value, bool | np.bool_):
        return None, f"expected text or an integer, got {value!r}"
    # an integer column (with gaps: floats) holds ids as numbers
    integral = isinstance(value, float | np.floating) and float(value).is_integer()
    if isinstance(value, numbers.Integral) or integral:
        value = str(int(value))
    elif not isinstance(value, str):
        return None, f"expected text or an integer, got {_shown(value)}"
    if len(value) > ID_MAX_CHARS:
        return None, f"expected at most {ID_MAX_CHARS} characters, got {len(value)}"
    if not value.isprintable():
        return None, "expected printable characters only"
    return value, None


def _label(value: object) -> tuple[bool | None, str | None]:
    if isinstance(value, bool | np.bool_):
        return bool(value), None
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and value in (0, 1):
        return value == 1, None
    if isinstance(value, str) and value.strip().lower() in LABEL_WORDS:
        return LABEL_WORDS[value.strip().lower()], None
    if _missing(value):
        return None, f"missing; expected {LABEL_VALUES_TEXT}"
    return None, f"expected {LABEL_VALUES_TEXT}, got {_shown(value)}"


def _time(value: object, now: datetime, tolerance: timedelta) -> tuple[pd.Timestamp | None, str | None]:
    if _missing(value):
        return pd.Timestamp(now), None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            return None, f"expected an ISO 8601 time (e.g. 2026-05-10T14:00:00Z), got {_shown(value)}"
    elif isinstance(value, datetime):
        moment = value
    elif isinstance(value, np.datetime64):
        moment = pd.Timestamp(value).to_pydatetime()
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        return None, f"expected an ISO 8601 time, got {_shown(value)}"
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    if moment < EARLIEST_LABEL_TIME:
        return None, f"{moment.isoformat()} is before 1970"
    if moment > now + tolerance:
        return None, (
            f"{moment.isoformat()} is in the future (now {now.isoformat(timespec='seconds')}; "
            f"{tolerance.total_seconds():g} s of clock difference allowed)"
        )
    return pd.Timestamp(moment), None


def _shown(value: object) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_labels(
    rows: pd.DataFrame | Sequence[Mapping[str, object]],
    *,
    now: datetime | None = None,
    tolerance: timedelta = FUTURE_TOLERANCE,
    source: str | None = None,
) -> pd.DataFrame:
    """Label rows from outside (a frame, or a sequence of mappings) checked and typed for the store.

    Returns one row per given row, in order: ``request_id`` (text), ``label`` (bool), ``labeled_at``
    (UTC; now when not given). Raises :class:`LabelValidationError` naming every bad row (``source``,
    a file name say, prefixes the message). Columns other than the label row's are ignored.
    """
    now = as_utc(now) if now is not None else datetime.now(UTC)
    if isinstance(rows, pd.DataFrame):
        columns = [str(name) for name in rows.columns]
        records: Sequence[Mapping[str, object]] = rows.to_dict("records")
    else:
        if isinstance(rows, str | bytes | Mapping) or not isinstance(rows, Sequence):
            raise LabelValidationError(
                [LabelProblem(None, None, f"expected a list of label rows, got {type(rows).__name__}")],
                0,
                source=source,
            )
        records = rows
        columns = sorted({str(key) for row in records if isinstance(row, Mapping) for key in row})
    problems: list[LabelProblem] = []
    if isinstance(rows, pd.DataFrame):
        if not any(name in columns for name in ID_COLUMNS):
            problems.append(LabelProblem(None, None, f"no request_id or {ID_COLUMN} column; got {columns}"))
        if "label" not in columns:
            problems.append(LabelProblem(None, None, f"no label column; got {columns}"))
    if all(name in columns for name in TIME_COLUMNS) and isinstance(rows, pd.DataFrame):
        problems.append(LabelProblem(None, None, "both labelled_at and labeled_at columns: give one"))
    if problems:
        raise LabelValidationError(problems, len(records), source=source)
    ids: list[str] = []
    values: list[bool] = []
    times: list[pd.Timestamp] = []
    for index, row in enumerate(records):
        if not isinstance(row, Mapping):
            problems.append(LabelProblem(index, None, f"expected an object of named values, got {_shown(row)}"))
            continue
        found: dict[str, str] = {}
        for name in ID_COLUMNS:
            text, problem = _request_id(row.get(name))
            if problem is not None:
                problems.append(LabelProblem(index, name, problem))
            elif text is not None:
                found[name] = text
        if len(set(found.values())) > 1:
            problems.append(
                LabelProblem(
                    index,
                    None,
                    f"request_id {found['request_id']!r} and {ID_COLUMN} {found[ID_COLUMN]!r} differ "
                    "(they name the same request: give one)",
                )
            )
        elif not found and not any(p.index == index for p in problems):
            problems.append(LabelProblem(index, None, f"no request_id or {ID_COLUMN}"))
        label, problem = _label(row.get("label"))
        if problem is not None:
            problems.append(LabelProblem(index, "label", problem))
        time_column = next((name for name in TIME_COLUMNS if name in row), TIME_COLUMNS[0])
        if all(name in row for name in TIME_COLUMNS):
            moment, problem = None, "both labelled_at and labeled_at given: give one"
        else:
            moment, problem = _time(row.get(time_column), now, tolerance)
        if problem is not None:
            problems.append(LabelProblem(index, time_column, problem))
        if problems and problems[-1].index == index:
            continue
        ids.append(next(iter(found.values())))
        values.append(bool(label))
        times.append(moment)
    if problems:
        raise LabelValidationError(problems, len(records), source=source)
    if not records:
        return _empty_labels()
    return pd.DataFrame(
        {
            "request_id": pd.Series(ids, dtype="object"),
            "label": np.asarray(values, dtype=bool),
            "labeled_at": pd.Series(pd.DatetimeIndex(times).as_unit("ns"), dtype="datetime64[ns, UTC]"),
        }
    )


def read_label_file(path: str | Path) -> pd.DataFrame:
    """A label file's rows as they are (validate them with :func:`validate_labels`): ``.csv`` (a header
    row, every value read as text) or ``.parquet``. ValueError naming the file when it cannot be read."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LABEL_FILE_SUFFIXES:
        raise ValueError(f"{path}: expected a .csv or .parquet label file")
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file (expected a header row naming the columns)") from None
    except Exception as error:  # a parser's or pyarrow's error: the file is not what its name says
        raise ValueError(f"{path}: not a readable {suffix[1:]} file ({type(error).__name__}: {error})") from None


def inbox_files(inbox: str | Path, day: str | date) -> list[Path]:
    """The label files of one ``day`` (``YYYY-MM-DD``) in ``inbox``: ``*.csv`` and ``*.parquet`` files
    whose name holds the day (``chargebacks-2026-05-10.csv``) and those in a folder named after it
    (``2026-05-10/reviews.parquet``), in name order (the order their labels arrived in)."""
    day_text = day.isoformat() if isinstance(day, date) else str(day)
    date.fromisoformat(day_text)  # ValueError naming the text when it is not a day
    inbox = Path(inbox)
    candidates = [p for p in inbox.glob(f"*{day_text}*") if p.is_file()]
    if (inbox / day_text).is_dir():
        candidates += [p for p in (inbox / day_text).iterdir() if p.is_file()]
    found = {p for p in candidates if p.suffix.lower() in LABEL_FILE_SUFFIXES and not p.name.startswith(".")}
    return sorted(found, key=lambda p: (p.name, str(p)))


@dataclass(frozen=True)
class LabelImport:
    """What one import did: ``rows`` written; of the requests they label, ``new`` (no label known before),
    ``changed`` (their known label is now the other one) and ``positives`` (labelled fraud by this
    import); ``replaced_files``: files of an earlier import of the same batch removed."""

    rows: int
    requests: int
    new: int
    changed: int
    positives: int
    replaced_files: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


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
    """Labels under ``root/date=YYYY-MM-DD/part-*.parquet`` (by UTC day of ``labeled_at``).

    ``root`` is a local folder or an object-store URI (``s3://bucket/prefix``, ``gs://``, ``abfs://``;
    credentials and endpoint as for the prediction log, see :mod:`ml_platform.predictions.store`), so
    every replica of the model server can append to the one store monitoring reads. ``self.root`` is
    the location as callers keep it: a :class:`Path` for a local folder, the URI text otherwise.

    A file is ``part-<ns>-<random>.parquet``: its time of writing orders the files of a day (the later
    label of a tie wins) and its random part keeps two writers of the same nanosecond (two replicas)
    apart, so no file is ever overwritten. A file of a named batch (an import that may be run again,
    one day's label files) is ``part-<ns>-<random>--<batch>.parquet``: writing the batch again
    replaces its files.
    """

    def __init__(self, root: str | Path) -> None:
        self.store = LogStore(root, what=LOCATION_NAME)
        self.root: Path | str = self.store.location

    def __repr__(self) -> str:
        return f"LabelStore({str(self.root)!r})"

    def write(self, labels: pd.DataFrame, *, batch: str | None = None) -> int:
        """Store ``labels`` (request_id, label, labeled_at); returns the rows written.

        Every day's file is published whole or not at all (local: a temporary name, then a rename;
        object store: one upload). All days' files are encoded before the first is published, and
        should publishing one fail, those already published are removed again. With ``batch``, the
        files an earlier write of the same batch left are removed once the new ones are in place, so
        writing a batch twice never counts its labels twice.
        """
        frame = _normalized(labels)
        suffix = ""
        if batch is not None:
            if not _BATCH_NAME.fullmatch(batch) or _BATCH_MARK in batch:
                raise ValueError(f"batch: expected letters, digits and ._=- (no '--'), got {batch!r}")
            suffix = f"{_BATCH_MARK}{batch}"
        earlier = self._batch_parts(batch) if batch is not None else []
        encoded: list[tuple[str, bytes]] = []
        if not frame.empty:
            days = frame["labeled_at"].dt.strftime("%Y-%m-%d")
            for day, part in frame.groupby(days, sort=True):
                name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:16]}{suffix}.parquet"
                encoded.append((f"{DAY_PREFIX}{day}/{name}", part.reset_index(drop=True).to_parquet(index=False)))
        published: list[str] = []
        try:
            for relative, data in encoded:
                self.store.write_bytes(relative, data)
                published.append(relative)
        except BaseException:
            for relative in published:
                with suppress(OSError):
                    self.store.delete(relative)
            raise
        for relative in earlier:
            self.store.delete(relative)
        return len(frame)

    def batch_files(self, batch: str) -> list[Path | str]:
        """The files written for ``batch`` (see :meth:`write`)."""
        return [self.store.display(relative) for relative in self._batch_parts(batch)]

    def files(self, *, until: datetime | None = None) -> list[Path | str]:
        """Label files in write order within each day, days in order (up to the day of ``until``): local
        paths, or URIs in an object store."""
        return [self.store.display(relative) for relative in self._parts(until=until)]

    def _batch_parts(self, batch: str) -> list[str]:
        return [relative for relative in self._parts() if _batch_of(relative) == batch]

    def _parts(self, *, until: datetime | None = None) -> list[str]:
        """The label files' paths relative to the root (``date=.../part-....parquet``), as :meth:`files`."""
        last_day = as_utc(until).strftime("%Y-%m-%d") if until is not None else None
        parts = []
        for folder in self.store.list_folders():
            if not folder.startswith(DAY_PREFIX):
                continue
            if last_day is not None and folder.removeprefix(DAY_PREFIX) > last_day:
                continue
            names = [entry.name for entry in self.store.list_files(folder)]
            parts.extend(f"{folder}/{name}" for name in names if name.startswith("part-") and name.endswith(".parquet"))
        return parts

    def read(self, *, as_of: datetime | None = None, request_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The labels known at ``as_of`` (default now): ``labeled_at <= as_of``, latest label per request wins.

        Ties on ``labeled_at`` go to the label written last. One row per request_id, ordered by
        ``labeled_at``. ``request_ids``: only the labels of these requests.
        """
        cutoff = pd.Timestamp(as_utc(as_of) if as_of is not None else datetime.now(UTC))
        parts = self._parts(until=cutoff.to_pydatetime())
        wanted = None if request_ids is None else {str(value) for value in request_ids}
        if not parts or wanted == set():
            return _empty_labels()
        frames = [frame for frame in self._read_parts(parts, wanted) if frame is not None]
        if not frames:
            return _empty_labels()
        frame = pd.concat(frames, ignore_index=True)
        if frame.empty:
            return _empty_labels()
        frame["labeled_at"] = pd.to_datetime(frame["labeled_at"], utc=True)
        frame = frame.loc[frame["labeled_at"] <= cutoff]
        frame = frame.sort_values("labeled_at", kind="stable").drop_duplicates("request_id", keep="last")
        return frame[list(LABEL_COLUMNS)].reset_index(drop=True)

    def _read_parts(self, parts: Sequence[str], wanted: set[str] | None) -> list[pd.DataFrame | None]:
        """Each file's rows (of the ``wanted`` requests), in the order of ``parts``; None for a file
        removed since it was listed (a batch written again replaced it). An object store's files are
        fetched :data:`READ_THREADS` at a time, one GET each."""

        def rows(relative: str) -> pd.DataFrame | None:
            try:
                frame = self.store.read_table(relative).to_pandas()
            except FileNotFoundError:
                return None
            if wanted is not None:
                frame = frame.loc[frame["request_id"].astype(str).isin(wanted)]
            return frame

        if not self.store.object_store or len(parts) == 1:
            return [rows(relative) for relative in parts]
        with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(parts))) as pool:
            return list(pool.map(rows, parts))

    def import_labels(
        self,
        rows: pd.DataFrame | Sequence[Mapping[str, object]],
        *,
        batch: str | None = None,
        now: datetime | None = None,
        tolerance: timedelta = FUTURE_TOLERANCE,
        source: str | None = None,
    ) -> LabelImport:
        """Label rows from outside validated (:func:`validate_labels`; a bad batch raises
        :class:`LabelValidationError` and writes nothing), written (as ``batch`` when given: see
        :meth:`write`), and what they changed counted against the labels known before."""
        now = as_utc(now) if now is not None else datetime.now(UTC)
        frame = validate_labels(rows, now=now, tolerance=tolerance, source=source)
        return self._import(frame, batch=batch, now=now)

    def import_files(
        self,
        paths: Sequence[str | Path],
        *,
        batch: str | None = None,
        now: datetime | None = None,
        tolerance: timedelta = FUTURE_TOLERANCE,
    ) -> LabelImport:
        """Label files (:func:`read_label_file`) imported as one batch: all of them or, when any file is
        unreadable or holds a bad row, none (one :class:`LabelValidationError` or ValueError naming
        each bad file, its rows and the reasons)."""
        now = as_utc(now) if now is not None else datetime.now(UTC)
        frames: list[pd.DataFrame] = []
        failures: list[ValueError] = []
        for path in paths:
            try:
                frames.append(validate_labels(read_label_file(path), now=now, tolerance=tolerance, source=str(path)))
            except ValueError as error:
                failures.append(error)
        if len(failures) == 1:
            raise failures[0]
        if failures:
            problems = [LabelProblem(None, None, str(failure)) for failure in failures]
            raise LabelValidationError(problems, sum(len(frame) for frame in frames))
        frame = pd.concat(frames, ignore_index=True) if frames else _empty_labels()
        return self._import(frame, batch=batch, now=now)

    def _import(self, frame: pd.DataFrame, *, batch: str | None, now: datetime) -> LabelImport:
        horizon = max(pd.Timestamp(now), frame["labeled_at"].max()) if len(frame) else pd.Timestamp(now)
        ids = frame["request_id"].unique().tolist()
        before = self.read(as_of=horizon, request_ids=ids)
        replaced = len(self.batch_files(batch)) if batch is not None else 0
        written = self.write(frame, batch=batch)
        after = self.read(as_of=horizon, request_ids=ids)
        known = dict(zip(before["request_id"], before["label"], strict=True))
        now_known = dict(zip(after["request_id"], after["label"], strict=True))
        latest = frame.sort_values("labeled_at", kind="stable").drop_duplicates("request_id", keep="last")
        return LabelImport(
            rows=written,
            requests=len(ids),
            new=sum(1 for request in ids if request not in known and request in now_known),
            changed=sum(1 for request in ids if request in known and now_known.get(request) != known[request]),
            positives=int(latest["label"].sum()),
            replaced_files=replaced,
        )


def _batch_of(relative: str) -> str | None:
    stem = relative.rsplit("/", 1)[-1].removesuffix(".parquet")
    return stem.split(_BATCH_MARK, 1)[1] if _BATCH_MARK in stem else None


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

"""Checks a batch of transactions against the schema.

Each check says exactly what is wrong: which columns, how many rows, and the first offending
transaction ids, so a bad batch can be found and fixed without opening files. Every column of the
schema is required: a null anywhere, the timestamp included, fails ``no_nulls``; a timestamp that is
not a time fails ``schema``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from ml_platform.data.schema import ID_COLUMN, TRANSACTION_SCHEMA, Column
from ml_platform.data.sources import parse_timestamps

MAX_EXAMPLES = 5


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    failing_rows: int = 0
    columns: tuple[str, ...] = ()
    examples: dict[str, list[str]] = field(default_factory=dict)  # column -> a few offending row ids


_KIND_TEST = {
    "string": lambda s: ptypes.is_string_dtype(s) or ptypes.is_object_dtype(s),
    "integer": ptypes.is_integer_dtype,
    "float": lambda s: ptypes.is_float_dtype(s) or ptypes.is_integer_dtype(s),
    "timestamp": lambda s: isinstance(s.dtype, pd.DatetimeTZDtype),
}


def _row_ids(frame: pd.DataFrame, mask: pd.Series) -> list[str]:
    """The first offending rows by transaction id (by row number where the id itself is missing)."""
    rows = frame.loc[mask]
    if ID_COLUMN in frame.columns:
        return [str(v) if pd.notna(v) else f"row {i}" for i, v in rows[ID_COLUMN].head(MAX_EXAMPLES).items()]
    return [f"row {i}" for i in rows.index[:MAX_EXAMPLES]]


def _unreadable(values: pd.Series, kind: str) -> pd.Series | None:
    """For a column of the wrong type: the rows holding a value that is not a ``kind`` at all (a time
    that does not parse, a number that is text), or None when the kind has no such test."""
    if kind == "timestamp":
        converted = parse_timestamps(values)[0]
    elif kind in ("integer", "float"):
        converted = pd.to_numeric(values, errors="coerce")
    else:
        return None
    return values.notna() & converted.isna()


def check_schema(frame: pd.DataFrame, schema: tuple[Column, ...] = TRANSACTION_SCHEMA) -> CheckOutcome:
    missing = [c.name for c in schema if c.name not in frame.columns]
    wrong: list[str] = []
    examples: dict[str, list[str]] = {}
    failing = pd.Series(False, index=frame.index)
    for column in schema:
        if column.name not in frame.columns or _KIND_TEST[column.kind](frame[column.name]):
            continue
        problem = f"{column.name} (expected {column.kind}, got {frame[column.name].dtype}"
        unreadable = _unreadable(frame[column.name], column.kind)
        if unreadable is not None and unreadable.any():
            problem += f"; {int(unreadable.sum())} values are not {column.kind}s"
            examples[column.name] = _row_ids(frame, unreadable)
            failing |= unreadable
        wrong.append(problem + ")")
    unexpected = sorted(set(frame.columns) - {c.name for c in schema})
    problems = []
    if missing:
        problems.append(f"missing columns: {', '.join(missing)}")
    if wrong:
        problems.append(f"wrong types: {', '.join(wrong)}")
    if unexpected:
        problems.append(f"unexpected columns: {', '.join(unexpected)}")
    bad_columns = tuple(missing + [w.split(" ")[0] for w in wrong] + unexpected)
    return CheckOutcome(
        name="schema",
        passed=not problems,
        description="; ".join(problems) if problems else f"all {len(schema)} columns present with their types",
        failing_rows=int(failing.sum()),
        columns=bad_columns,
        examples=examples,
    )


def check_nulls(frame: pd.DataFrame, schema: tuple[Column, ...] = TRANSACTION_SCHEMA) -> CheckOutcome:
    present = [c.name for c in schema if c.name in frame.columns]
    nulls = frame[present].isna()
    per_column = nulls.sum()
    bad = [name for name in present if per_column[name] > 0]
    any_null = nulls.any(axis=1)
    return CheckOutcome(
        name="no_nulls",
        passed=not bad,
        description=(
            "; ".join(f"{name}: {int(per_column[name])} null" for name in bad)
            if bad
            else f"no nulls in {len(present)} columns"
        ),
        failing_rows=int(any_null.sum()),
        columns=tuple(bad),
        examples={name: _row_ids(frame, nulls[name]) for name in bad},
    )


def check_ranges(frame: pd.DataFrame, schema: tuple[Column, ...] = TRANSACTION_SCHEMA) -> CheckOutcome:
    problems: list[str] = []
    examples: dict[str, list[str]] = {}
    failing = pd.Series(False, index=frame.index)
    for column in schema:
        if column.name not in frame.columns or not _KIND_TEST[column.kind](frame[column.name]):
            continue  # the schema check reports it
        values = frame[column.name]
        bad = pd.Series(False, index=frame.index)
        expected = []
        if column.minimum is not None:
            bad |= values < column.minimum
            expected.append(f">= {column.minimum:g}")
        if column.maximum is not None:
            bad |= values > column.maximum
            expected.append(f"<= {column.maximum:g}")
        if column.allowed is not None:
            bad |= ~values.isin(column.allowed) & values.notna()
            expected.append(f"one of {list(column.allowed)}")
        if column.kind == "float":
            bad |= values.isin([np.inf, -np.inf])
        count = int(bad.sum())
        if count:
            problems.append(f"{column.name}: {count} rows outside {' and '.join(expected) or 'finite values'}")
            examples[column.name] = _row_ids(frame, bad)
            failing |= bad
    return CheckOutcome(
        name="value_ranges",
        passed=not problems,
        description="; ".join(problems) if problems else "every value inside its declared range",
        failing_rows=int(failing.sum()),
        columns=tuple(examples),
        examples=examples,
    )


def check_duplicates(frame: pd.DataFrame, id_column: str = ID_COLUMN) -> CheckOutcome:
    if id_column not in frame.columns:
        return CheckOutcome("unique_ids", False, f"column {id_column} is missing", columns=(id_column,))
    duplicated = frame[id_column].duplicated(keep=False)
    count = int(duplicated.sum())
    distinct = frame.loc[duplicated, id_column].nunique()
    return CheckOutcome(
        name="unique_ids",
        passed=count == 0,
        description=(
            f"{id_column}: {distinct} ids appear more than once ({count} rows)"
            if count
            else f"all {len(frame)} {id_column} values are unique"
        ),
        failing_rows=count,
        columns=(id_column,) if count else (),
        examples={id_column: _row_ids(frame, duplicated)} if count else {},
    )


def validate_transactions(frame: pd.DataFrame) -> list[CheckOutcome]:
    """Every check, in order; a batch is usable only when all of them pass."""
    return [check_schema(frame), check_nulls(frame), check_ranges(frame), check_duplicates(frame)]


def failure_message(outcomes: list[CheckOutcome]) -> str:
    failed = [o for o in outcomes if not o.passed]
    lines = [f"{len(failed)} of {len(outcomes)} data checks failed:"]
    for outcome in failed:
        line = f"- {outcome.name}: {outcome.description}"
        if outcome.examples:
            shown = "; ".join(f"{col} e.g. {', '.join(ids)}" for col, ids in outcome.examples.items())
            line += f" (rows: {shown})"
        lines.append(line)
    return "\n".join(lines)

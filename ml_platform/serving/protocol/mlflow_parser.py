"""MLflow's scoring protocol (the body of ``POST /invocations``) read into the model's input matrix.

:func:`parse_invocation` takes the request's bytes and Content-Type and returns a float64 matrix
``(n, 9)`` in :data:`MODEL_FEATURES` order (NaN: a missing value), or raises :class:`ScoringError` (an
:class:`ApiError`) with the status and ``error_code`` ``mlflow models serve`` answers for the same body
and a message naming the field and what was wrong. It reads the forms ``mlflow models serve`` reads
for a model whose signature is the 9 features as double columns, the way its parser
(``mlflow.pyfunc.scoring_server``) and schema enforcement (``mlflow.models.utils._enforce_schema``,
then XGBoost's ``DMatrix``) treat them:

- ``application/json`` (charset utf-8 only): an object with exactly one of

  - ``dataframe_split``: ``{"columns": [...], "data": [[...], ...], "index": [...]}`` (index ignored);
  - ``dataframe_records``: ``[{column: value, ...}, ...]``; a column absent from a record is missing there;
  - ``instances``: records as above, each with the same columns, or columns as below;
  - ``inputs``: columns ``{column: [values] or value}`` (a single value is repeated over the rows),
    or records as in ``dataframe_records``;

  and an optional ``params``, which a model without a params schema ignores, as MLflow does.
- ``text/csv``: a header row naming the columns, read by ``pandas.read_csv`` exactly as MLflow reads it.

Every feature must be present as a column; other columns are ignored. A value may be a number,
true/false (1/0), null (missing), or a string that Python's ``float`` reads ("2.5", "nan"), as MLflow
converts them. A value outside float32's range (XGBoost's own type), an infinity included, is
refused as XGBoost refuses it. Where MLflow would answer 500 (a column name that is an object, say)
or answer nonsense (an index longer than the data repeats its one row), this parser refuses with 400.
"""

from __future__ import annotations

import io
import itertools
import json
import math
from typing import Any

import numpy as np

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.serving.schemas import ApiError

JSON = "application/json"
CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"
CONTENT_TYPES = (CSV, JSON, PARQUET)
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
# Keys of MLflow's unified LLM request format (chat, completions, embeddings): not this model's input.
LLM_KEYS = ("messages", "prompt", "input")

N_FEATURES = len(MODEL_FEATURES)
_FEATURE_INDEX = {name: index for index, name in enumerate(MODEL_FEATURES)}
_FEATURE_LIST = ", ".join(MODEL_FEATURES)
BAD_REQUEST = "BAD_REQUEST"  # MLflow's code where its parser refuses a body
INVALID_PARAMETER_VALUE = "INVALID_PARAMETER_VALUE"  # and where its schema enforcement does
PROTOCOL_NOTE = (
    "The MLflow scoring protocol has changed in MLflow 2.0: send one of"
    f" {', '.join(FORMATS)} (see https://mlflow.org/docs/latest/models.html#deploy-mlflow-models)"
)


class ScoringError(ApiError):
    """A refused ``/invocations`` body: status, message (naming the field) and MLflow's ``error_code``."""

    def __init__(self, message: str, field: str, *, error_code: str = BAD_REQUEST, status_code: int = 400) -> None:
        super().__init__(status_code, message, field)
        self.error_code = error_code


def _bad(field: str, problem: str) -> ScoringError:
    return ScoringError(f"{field}: {problem}", field)


def _invalid(field: str, problem: str) -> ScoringError:
    return ScoringError(f"{field}: {problem}", field, error_code=INVALID_PARAMETER_VALUE)


def parse_invocation(body: bytes, content_type: str | None) -> np.ndarray:
    """The rows of an ``/invocations`` request as a float64 matrix (n, 9), or a :class:`ScoringError`."""
    mime_type = media_type(content_type)
    if mime_type == JSON:
        return parse_json(body)
    if mime_type == CSV:
        return parse_csv(body)
    raise _unsupported(
        f"this server reads {JSON} and {CSV} only (MLflow's parquet is not read here); got {content_type!r}"
    )


def _unsupported(problem: str) -> ScoringError:
    return ScoringError(f"content-type: {problem}", "content-type", status_code=415)


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, once its parameters pass MLflow's rules (415 otherwise)."""
    if not content_type:
        raise _unsupported(f"missing; this server reads {JSON} and {CSV} (send a Content-Type header)")
    parts = [part.strip() for part in content_type.split(";")]
    parameters = {key: value for key, _, value in (part.partition("=") for part in parts[1:])}
    if parameters.get("charset", "utf-8").lower() != "utf-8":
        raise _unsupported(f"only the utf-8 charset is read; got {parameters['charset']!r}")
    unknown = sorted(set(parameters) - {"charset"})
    if unknown:
        names = _listed(unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise _unsupported(f"unknown parameter{plural} {names}; only charset is read. {PROTOCOL_NOTE}")
    return parts[0]


# ---- JSON ----------------------------------------------------------------------------------------
def parse_json(body: bytes) -> np.ndarray:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as error:  # not JSON, not UTF-8, too deep, an integer too long
        raise _bad("body", f"not valid JSON: {type(error).__name__}: {error}") from None
    if not isinstance(payload, dict):
        raise _bad("body", f"expected a JSON object with exactly one of {', '.join(FORMATS)}; got {_kind(payload)}")
    llm = [key for key in LLM_KEYS if key in payload]
    if llm:
        raise _invalid(
            llm[0],
            f"MLflow's unified LLM format ({', '.join(LLM_KEYS)}) is not this model's input; send one of"
            f" {', '.join(FORMATS)}",
        )
    present = [key for key in FORMATS if key in payload]
    if len(present) != 1:
        found = _listed(list(payload)) or "none"
        raise _bad("body", f"expected exactly one of {', '.join(FORMATS)}; got keys {found}. {PROTOCOL_NOTE}")
    form = present[0]
    value = payload[form]
    if form == "dataframe_split":
        matrix = _split(value)
    elif form == "dataframe_records":
        matrix = _records(value, form)
    elif isinstance(value, dict):
        matrix = _columns(value, form)
    elif form == "instances" and isinstance(value, list) and value and isinstance(value[0], dict):
        matrix = _records(value, form, same_keys=True)
    elif form == "inputs" and isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        matrix = _records(value, form)
    else:
        # MLflow converts what is there to doubles first (a failure is its parser's), then finds no columns
        refuse = _bad if _has_unreadable_value(value) else _invalid
        raise refuse(form, f"expected a list of objects (rows) or an object of columns; got {_kind(value)}")
    check_range(matrix, form)
    return matrix


def _split(value: Any) -> np.ndarray:
    form = "dataframe_split"
    if not isinstance(value, dict):
        raise _bad(form, f"expected an object with 'columns' and 'data'; got {_kind(value)}")
    unknown = [key for key in value if key not in ("columns", "data", "index")]
    if "data" not in value or unknown:
        problem = f"unknown key {unknown[0]!r}" if unknown else "'data' is missing"
        raise _bad(form, f"{problem}; expected 'columns', 'data' and optionally 'index'")
    columns = value.get("columns")
    if columns is not None and not isinstance(columns, list):
        raise _bad(f"{form}.columns", f"expected a list of column names; got {_kind(columns)}")
    positions: dict[str, int] = {}
    twice = None
    for index, name in enumerate(columns or ()):
        if isinstance(name, (list, dict)):
            raise _bad(f"{form}.columns[{index}]", f"expected a column name; got {_kind(name)}")
        if name in _FEATURE_INDEX:
            if name in positions:
                twice = twice or _invalid(
                    f"{form}.columns[{index}]", f"column {name!r} appears twice (first at {positions[name]})"
                )
            else:
                positions[name] = index
    rows = value["data"]
    if not isinstance(rows, list):
        raise _bad(f"{form}.data", f"expected a list of rows (lists); got {_kind(rows)}")
    for row_index, row in enumerate(rows):
        if type(row) is not list or (columns is not None and len(row) != len(columns)):
            expected = f"{len(columns)} values (one per column)" if columns is not None else "values"
            got = f"{len(row)} values" if isinstance(row, list) else _kind(row)
            raise _bad(f"{form}.data[{row_index}]", f"expected a list of {expected}; got {got}")
    index = value.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(rows)):
        got = f"{len(index)} labels" if isinstance(index, list) else _kind(index)
        raise _bad(f"{form}.index", f"expected a list of {len(rows)} labels (one per row); got {got}")
    if columns is None:
        raise _invalid(f"{form}.columns", f"missing; name the columns (the model's are {_FEATURE_LIST})")
    features = [[row[positions[name]] for row in rows] if name in positions else None for name in MODEL_FEATURES]
    return _matrix(features, f"{form}.columns", f"{form}.data[{{row}}][{{column}}] ({{name}})", positions, twice)


def _records(records: Any, form: str, *, same_keys: bool = False) -> np.ndarray:
    """Rows given as objects, a feature absent from one of them missing there; with ``same_keys`` (MLflow's
    ``instances`` stacks each column on its own, so they must line up) every record has the same columns."""
    if not isinstance(records, list):
        raise _bad(form, f"expected a list of objects (one per row); got {_kind(records)}")
    if not records:
        raise _invalid(form, "expected at least one row; got an empty list")
    dicts = [type(record) is dict for record in records]
    if not all(dicts):
        row = dicts.index(False)
        refuse = _bad if any(dicts) else _invalid  # no object at all: MLflow finds no columns
        raise refuse(f"{form}[{row}]", f"expected an object (column: value); got {_kind(records[row])}")
    later = None
    if same_keys:
        first = records[0].keys()
        for row, record in enumerate(records):
            if record.keys() != first:
                difference = sorted(set(first) ^ set(record))
                refuse = _bad if any(name in _FEATURE_INDEX for name in difference) else _invalid
                error = refuse(
                    f"{form}[{row}]",
                    f"has other columns than {form}[0] ({_listed(difference)});"
                    f" every row of {form} must have the same columns",
                )
                if refuse is _bad:
                    raise error
                later = error
                break
    # absent and null alike are missing values
    features = [
        [record.get(name) for record in records] if any(name in record for record in records) else None
        for name in MODEL_FEATURES
    ]
    arrays = None if form == "dataframe_records" else "column" if form == "instances" else "value"
    return _matrix(features, form, f"{form}[{{row}}].{{name}}", later=later, arrays=arrays)


def _columns(columns: dict[str, Any], form: str) -> np.ndarray:
    """Rows given as columns: each a list of values, or one value repeated over every row."""
    lengths = {name: len(value) for name, value in columns.items() if isinstance(value, list)}
    n = next(iter(lengths.values()), 1)
    later = None
    unequal = [name for name, length in lengths.items() if length != n]
    if unequal:
        first = next(iter(lengths))
        error = _invalid(
            f"{form}.{unequal[0]}",
            f"{lengths[unequal[0]]} value(s), but {form}.{first} has {n}; every column needs one per row",
        )
        # MLflow's instances parser compares the features' lengths itself; its schema enforcement finds the rest
        if form == "instances" and len({lengths[name] for name in lengths if name in _FEATURE_INDEX}) > 1:
            raise _bad(error.field, error.message.removeprefix(f"{error.field}: "))
        later = error
    features = [
        None
        if name not in columns
        else columns[name]
        if isinstance(columns[name], list)
        else [_number(columns[name], f"{form}.{name}")] * n
        for name in MODEL_FEATURES
    ]
    return _matrix(features, form, f"{form}.{{name}}[{{row}}]", later=later, arrays="column")


_PLAIN = frozenset({float, int, bool, type(None)})


def _matrix(
    features: list[list[Any] | None],
    form: str,
    where: str,
    positions: dict[str, int] | None = None,
    later: ScoringError | None = None,
    *,
    arrays: str | None = None,
) -> np.ndarray:
    """The features' values (one list per feature in :data:`MODEL_FEATURES` order, None for one that is
    absent) as an (n, 9) matrix, refused in MLflow's order: a value it cannot convert (its parser) first,
    then ``later`` (an error its schema enforcement finds), an absent feature, a list where a value
    should be.

    Numbers, booleans and nulls, the usual case, are converted by numpy at once, to the doubles
    :func:`_number` gives (an integer rounds to its nearest double in both, null is NaN, true is 1).
    Anything else is converted value by value and the first one at fault named: ``where`` formatted with
    its row, its feature's ``name`` and ``column``, the feature's position in ``positions``.

    A list where a value should be is refused by MLflow's parser in the dataframe forms (``arrays``
    None). The ``instances`` and ``inputs`` forms turn each column (``arrays="column"``) or each value
    (``"value"``) into a numpy array first: what numpy cannot turn into one (a ragged list, a string that
    is no number) is its parser's refusal, a list that it can, its schema enforcement's.
    """
    present = [values for values in features if values is not None]
    plain = _PLAIN.issuperset(map(type, itertools.chain.from_iterable(present)))
    nested = None
    if not plain or len(present) < len(features):  # something to refuse: find what MLflow refuses first
        converted = []
        for name, values in zip(MODEL_FEATURES, features, strict=True):
            column = positions.get(name) if positions is not None else None
            if values is not None and arrays == "column" and any(type(value) is list for value in values):
                nested = nested or _nested(values, f"{form}.{name}")
                converted.append([math.nan] * len(values))
                continue
            out = None if values is None else []
            for row, value in enumerate(values or ()):
                field = where.format(row=row, name=name, column=column)
                if arrays == "value" and type(value) is list:
                    nested = nested or _nested(value, field)
                    out.append(math.nan)
                else:
                    out.append(_number(value, field))
            converted.append(out)
        features = converted
    if later is not None:
        raise later
    _require_features([name for name, values in zip(MODEL_FEATURES, features, strict=True) if values is not None], form)
    if nested is not None:
        raise nested
    try:
        return np.ascontiguousarray(np.array(features, dtype="float64").T)
    except OverflowError:  # an integer beyond any double: converted one by one, it is named
        for name, values in zip(MODEL_FEATURES, features, strict=True):
            column = positions.get(name) if positions is not None else None
            for row, value in enumerate(values):
                _number(value, where.format(row=row, name=name, column=column))
        raise


def _nested(value: list[Any], field: str) -> ScoringError:
    """The error for a list holding lists where numbers should be (see :func:`_matrix`)."""
    try:
        np.array(value, dtype="float64")
    except (ValueError, TypeError, OverflowError):
        return _bad(field, "expected numbers; got lists of different shapes or values that are not numbers")
    return _invalid(field, "expected numbers; got a list (nested lists are not this model's input)")


def _require_features(present, where: str) -> None:
    missing = [name for name in MODEL_FEATURES if name not in present]
    if missing:
        names = ", ".join(map(repr, missing))
        plural = "s" if len(missing) > 1 else ""
        raise _invalid(where, f"missing column{plural} {names}; the model needs {_FEATURE_LIST}")


def _has_unreadable_value(value: Any) -> bool:
    """Whether a value, or one in a list (at any depth), is one MLflow cannot convert to a double."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(item)
            continue
        try:
            _number(item, "")
        except ScoringError:
            return True
    return False


def _number(value: Any, where: str) -> float:
    """One value as MLflow converts it to a double: numbers, booleans, null (missing), numeric strings."""
    kind = type(value)
    if kind is float:
        return value
    if kind is int or kind is bool:
        try:
            return float(value)
        except OverflowError:
            raise _bad(where, f"{_short(value)} is too large for a number") from None
    if value is None:
        return math.nan
    if kind is str:
        try:
            return float(value)
        except ValueError:
            raise _bad(where, f"expected a number; got the string {_short(value)}") from None
    raise _bad(where, f"expected a number; got {_kind(value)}")


def check_range(matrix: np.ndarray, form: str) -> None:
    """Refuse what XGBoost refuses: a value that is infinite as float32 (its own type), as an error naming it."""
    with np.errstate(over="ignore"):
        infinite = np.isinf(matrix.astype("float32"))
    if infinite.any():
        row, feature = (int(i) for i in np.argwhere(infinite)[0])
        name = MODEL_FEATURES[feature]
        raise _bad(
            form,
            f"row {row}, column {name!r}: {float(matrix[row, feature])!r} is infinite or outside the model's"
            " float32 range (about +-3.4e38)",
        )


# ---- CSV -----------------------------------------------------------------------------------------
def parse_csv(body: bytes) -> np.ndarray:
    """A CSV body read by ``pandas.read_csv`` with the features as float64, exactly as MLflow reads it."""
    import pandas as pd

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _bad("body", f"not valid UTF-8: {error}") from None
    dtypes = dict.fromkeys(MODEL_FEATURES, "float64")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=dtypes)
    except Exception as error:  # pandas says what it could not read
        raise _bad("text/csv", _csv_problem(text, error)) from None
    _require_features(set(frame.columns), "text/csv header")
    matrix = np.ascontiguousarray(frame[list(MODEL_FEATURES)].to_numpy(dtype="float64"))
    check_range(matrix, "text/csv")
    return matrix


def _csv_problem(text: str, error: Exception) -> str:
    """What pandas could not read, with the column named when one column is at fault."""
    import pandas as pd

    message = f"could not read the rows: {type(error).__name__}: {error}"
    if not isinstance(error, ValueError) or isinstance(error, pd.errors.EmptyDataError):
        return message
    for name in MODEL_FEATURES:
        try:
            pd.read_csv(io.StringIO(text), dtype={name: "float64"}, usecols=lambda column, name=name: column == name)
        except Exception as column_error:
            return f"column {name!r}: expected numbers: {column_error}"
    return message


def _listed(names: list[Any], most: int = 10) -> str:
    """Names (keys, columns) for a message: quoted, the first ``most`` of them."""
    shown = ", ".join(_short(name) for name in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return f"the number {_short(value)}"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, list):
        if not value:
            return "an empty list"
        return f"a list whose first item is {'a list' if isinstance(value[0], list) else _kind(value[0])}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

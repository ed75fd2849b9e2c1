"""Request bodies and their validation, and the compact error body every 4xx answer carries.

Every error names the field (``features``, ``instances[3].category``, ``inputs[0].shape`` ...) and
what was expected, in ``{"error": "<field>: <what was wrong>", "field": "<field>"}``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from ml_platform.data.schema import CATEGORIES, CHANNELS, TRANSACTION_SCHEMA
from ml_platform.features.engineering import MODEL_FEATURES

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# Customer ids are logged in an int64 column: a larger one would fail the whole batch of log rows.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
StrictInt = Annotated[int, Field(strict=True, ge=INT64_MIN, le=INT64_MAX)]
REQUEST_ID_MAX = 200


def request_id_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a request id (None: nothing): it must be a string of 1 to 200
    printable characters, valid UTF-8 (no lone surrogate, which JSON's ``\\ud800`` escapes can carry)."""
    if not isinstance(value, str):
        return f"expected a string, got {_short(value)}"
    if not value:
        return "expected 1 to 200 characters, got an empty string"
    if len(value) > REQUEST_ID_MAX:
        return f"expected at most {REQUEST_ID_MAX} characters, got {len(value)}"
    if value.isprintable():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        surrogate = value[error.start]
        return (
            f"expected valid UTF-8 text, got a lone surrogate {ascii(surrogate)[1:-1]} at position {error.start}"
            " (it is half of a UTF-16 pair, not a character)"
        )
    position, character = next((i, c) for i, c in enumerate(value) if not c.isprintable())
    return f"expected printable characters only, got {ascii(character)} at position {position}"


def check_request_id(value: str, field: str) -> str:
    """``value`` when it is a valid request id (see :func:`request_id_problem`), else ApiError 422 naming ``field``."""
    problem = request_id_problem(value)
    if problem is not None:
        raise ApiError(422, f"{field}: {problem}", field)
    return value


def _request_id(value: object) -> object:
    if isinstance(value, str):  # anything else gets pydantic's own "expected a string"
        problem = request_id_problem(value)
        if problem is not None:
            raise ValueError(problem)
    return value


RequestId = Annotated[str, BeforeValidator(_request_id), Field(min_length=1, max_length=REQUEST_ID_MAX)]

_AMOUNT = next(column for column in TRANSACTION_SCHEMA if column.name == "amount")
FEATURE_ORDER_TEXT = ", ".join(MODEL_FEATURES)


class ApiError(Exception):
    """A request the server will not answer: status code, message and the field at fault."""

    def __init__(self, status_code: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


class FeaturesRequest(BaseModel):
    """The model's 9 inputs given directly, in :data:`MODEL_FEATURES` order; ``null`` marks a missing value."""

    model_config = ConfigDict(extra="ignore")

    features: list[FiniteFloat | None]
    customer_id: StrictInt | None = None  # optional: used for sticky routing and logging only
    request_id: RequestId | None = None

    @field_validator("features")
    @classmethod
    def _nine(cls, value: list[float | None]) -> list[float | None]:
        if len(value) != len(MODEL_FEATURES):
            raise ValueError(
                f"expected {len(MODEL_FEATURES)} numbers in the order {FEATURE_ORDER_TEXT}, got {len(value)}"
            )
        return value


# Event times a transaction may carry: within the range every step of scoring handles (pandas'
# nanosecond timestamps end in 2262; Python's datetime ends in 9999, so converting a time near it to UTC
# can overflow) and that a card transaction can have. A time without an offset is UTC.
EARLIEST_EVENT_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_EVENT_TIME = datetime(2200, 1, 1, tzinfo=UTC)  # excluded


class TransactionRequest(BaseModel):
    """A transaction; the server reads the customer's history from the online feature store."""

    model_config = ConfigDict(extra="ignore")

    customer_id: Annotated[int, Field(strict=True, ge=0, le=INT64_MAX)]
    amount: Annotated[float, Field(strict=True, allow_inf_nan=False, ge=_AMOUNT.minimum, le=_AMOUNT.maximum)]
    category: str
    channel: str
    event_timestamp: datetime | None = None
    request_id: RequestId | None = None

    @field_validator("category")
    @classmethod
    def _category(cls, value: str) -> str:
        if value not in CATEGORIES:
            raise ValueError(f"unknown value {value!r}; expected one of {', '.join(CATEGORIES)}")
        return value

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if value not in CHANNELS:
            raise ValueError(f"unknown value {value!r}; expected one of {', '.join(CHANNELS)}")
        return value

    @field_validator("event_timestamp")
    @classmethod
    def _event_time(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return value
        try:
            moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:  # an offset that takes it past year 1 or 9999 in UTC
            moment = None
        if moment is None or not EARLIEST_EVENT_TIME <= moment < LATEST_EVENT_TIME:
            raise ValueError(
                "expected a time from 1970-01-01T00:00:00Z up to (not including) 2200-01-01T00:00:00Z"
                f" (UTC when no offset is given), got {value.isoformat()!r}"
            )
        return value


class PredictResponse(BaseModel):
    """One answered row of ``POST /predict`` (documentation of the answer; the server renders it directly)."""

    request_id: str
    probability: float = Field(description="P(fraud) from the model that answered")
    is_fraud: bool = Field(description="probability >= threshold")
    threshold: float
    model_version: int
    variant: str = Field(description="champion or challenger: the model that answered")
    latency_ms: float = Field(description="time in the server until the prediction was made")


class PredictBatchResponse(BaseModel):
    """The answer to ``{"instances": [...]}``: one prediction per instance, in order."""

    predictions: list[PredictResponse]


class RoutingUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "0.5" is no weight, 0 no flag

    challenger_weight: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    mode: Literal["split", "shadow"] | None = None
    sticky: bool | None = None


# ---- turning validation errors into one message ------------------------------------------------
_FRIENDLY = {
    "finite_number": "expected a finite number (NaN and Infinity are not accepted)",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected an object",
    "model_type": "expected an object",
    "bool_type": "expected true or false",
    "missing": "field required",
    "extra_forbidden": "unknown field",
    "datetime_type": "expected an ISO 8601 time",
    "datetime_parsing": "expected an ISO 8601 time",
    "datetime_from_date_parsing": "expected an ISO 8601 time",
}


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or "body"


def validation_error(errors: list[dict[str, Any]], prefix: tuple[Any, ...] = ()) -> ApiError:
    """The first of pydantic's errors as an :class:`ApiError` (422) naming the field."""
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    if loc and loc[0] == "body":  # FastAPI's request-body errors start with "body"
        loc = loc[1:]
    field = field_path(tuple(prefix) + loc)
    kind = first.get("type", "")
    message = str(first.get("msg", "invalid value"))
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    elif kind in _FRIENDLY:
        message = _FRIENDLY[kind]
        if kind != "missing" and "input" in first:
            message += f", got {_short(first['input'])}"
    elif kind == "literal_error":
        message = message.replace("Input should be", "expected")
        message += f", got {_short(first.get('input'))}"
    else:
        message = message[0].lower() + message[1:] if message else message
        if "input" in first and kind.startswith(("greater", "less", "too_", "string_too")):
            message += f", got {_short(first['input'])}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return ApiError(422, f"{field}: {message}", field)


def validate(model: type[BaseModel], data: Any, prefix: tuple[Any, ...] = ()) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise validation_error(error.errors(include_url=False), prefix) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

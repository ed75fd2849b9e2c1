"""The card-transaction schema every source must deliver, declared once."""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES: tuple[str, ...] = (
    "grocery",
    "restaurants",
    "fuel",
    "pharmacy",
    "clothing",
    "entertainment",
    "home",
    "online_retail",
    "electronics",
    "travel",
    "jewelry",
    "gift_cards",
)
# Categories where stolen cards are cashed out; the synthetic fraud concentrates here.
RISKY_CATEGORIES: tuple[str, ...] = ("electronics", "travel", "jewelry", "gift_cards", "online_retail")
CHANNELS: tuple[str, ...] = ("in_store", "online")

TIMESTAMP_COLUMN = "event_timestamp"
LABEL_COLUMN = "is_fraud"
ID_COLUMN = "transaction_id"
ENTITY_COLUMN = "customer_id"


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "string", "integer", "float", "timestamp"
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str | int, ...] | None = None
    description: str = ""


TRANSACTION_SCHEMA: tuple[Column, ...] = (
    Column(ID_COLUMN, "string", description="unique id of the transaction"),
    Column(ENTITY_COLUMN, "integer", minimum=0, description="the card holder"),
    Column("merchant_id", "integer", minimum=0, description="the merchant"),
    Column("category", "string", allowed=CATEGORIES, description="merchant category"),
    Column("amount", "float", minimum=0.01, maximum=100_000.0, description="amount in USD"),
    Column("channel", "string", allowed=CHANNELS, description="card present or not"),
    Column(TIMESTAMP_COLUMN, "timestamp", description="when the transaction happened (UTC)"),
    Column(LABEL_COLUMN, "integer", allowed=(0, 1), description="1 when the transaction was fraud"),
)

TRANSACTION_COLUMNS: tuple[str, ...] = tuple(column.name for column in TRANSACTION_SCHEMA)

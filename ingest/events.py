"""The event contract: every event on the wire, versioned, frozen, strict.

Each event class names its ``event_type`` and ``schema_version``; both also travel as Kafka
headers so a consumer can route and reject a record before it parses the body. The record key
is always the order id, so one order's events stay ordered on one partition.

Compatibility rule (checked by ``tests/unit/test_schema_compat.py`` against ``schemas/``):
within one ``schema_version`` a change may only add optional fields. Anything else is a new
version with its own class.

Every model here is ``extra="forbid"``: code that builds an event with a field the contract
lacks fails at once. Reading is tolerant: ``ingest.codec.decode`` validates with
``extra="ignore"``, so a record from a newer writer with added optional fields is read and the
fields this reader does not know are dropped (forward compatibility).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

Money = Annotated[Decimal, Field(max_digits=12, decimal_places=2, ge=0)]
Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")]


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a timezone")
    # Normalised to UTC so stores that drop the offset (SQLite) still order them correctly.
    return value.astimezone(UTC)


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


def new_event_id() -> str:
    return str(uuid.uuid4())


def derived_event_id(cause_event_id: str, event_type: str) -> str:
    """The id of the event ``event_type`` caused by ``cause_event_id``.

    Deterministic, so a handler that runs twice for one input (a redelivery) emits the same id
    twice, and every downstream consumer drops the copy.
    """
    return str(uuid.uuid5(uuid.UUID(cause_event_id), event_type))


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Fields every event has. Subclasses set ``event_type`` and ``schema_version``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1

    event_id: str = Field(default_factory=new_event_id, min_length=1, max_length=64)
    order_id: str = Field(min_length=1, max_length=64)
    occurred_at: AwareDatetime = Field(default_factory=utcnow)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__:
            cls.event_type = cls.__name__


class OrderItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sku: Sku
    name: str = Field(min_length=1, max_length=120)
    size: str = Field(min_length=1, max_length=8)
    quantity: int = Field(ge=1, le=50)
    unit_price: Money


class Address(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    street: str = Field(min_length=1, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postcode: str = Field(min_length=1, max_length=16)
    country: str = Field(default="US", min_length=2, max_length=2)


class PaymentMethod(BaseModel):
    """A card as the shop may keep it: a fingerprint and the last four digits, never the number."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["card", "cash", "voucher"] = "card"
    card_fingerprint: str | None = Field(default=None, min_length=8, max_length=64)
    last4: str | None = Field(default=None, pattern=r"^[0-9]{4}$")

    @model_validator(mode="after")
    def _card_needs_fingerprint(self) -> PaymentMethod:
        if self.kind == "card" and (self.card_fingerprint is None or self.last4 is None):
            raise ValueError("a card payment needs card_fingerprint and last4")
        return self


class OrderPlaced(Event):
    customer_id: str = Field(min_length=1, max_length=64)
    customer_email: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    items: tuple[OrderItem, ...] = Field(min_length=1, max_length=50)
    total: Money
    currency: str = Field(default="USD", min_length=3, max_length=3)
    placed_at: AwareDatetime
    channel: Literal["web", "app", "phone", "walk_in"] = "web"
    delivery_address: Address | None = None
    payment: PaymentMethod
    device_id: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _total_matches_items(self) -> OrderPlaced:
        expected = sum((item.unit_price * item.quantity for item in self.items), Decimal(0))
        if expected != self.total:
            raise ValueError(f"total {self.total} does not match the items' sum {expected}")
        return self


class PaymentCaptured(Event):
    amount: Money
    currency: str = Field(default="USD", min_length=3, max_length=3)
    card_fingerprint: str | None = None


class OrderAccepted(Event):
    ready_by: AwareDatetime


class OrderRejected(Event):
    reason: str = Field(min_length=1, max_length=200)


class OrderReady(Event):
    pass


class ReceiptSent(Event):
    recipient: str
    message_id: str


class RefundIssued(Event):
    amount: Money
    currency: str = Field(default="USD", min_length=3, max_length=3)
    reason: str = Field(min_length=1, max_length=200)
    customer_email: str = Field(min_length=3, max_length=254)


class RefundNoticeSent(Event):
    recipient: str
    message_id: str


class OrderFlagged(Event):
    """The fraud model scored the order past the hold threshold."""

    fraud_score: float = Field(ge=0, le=1)
    threshold: float = Field(ge=0, le=1)
    model: str = Field(description="model tag, e.g. fraud-v3")


class OrderCancelled(Event):
    """The kitchen stopped an order it had not finished (a fraud hold)."""

    reason: str = Field(min_length=1, max_length=200)


# -- enrichment -----------------------------------------------------------------------------
class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureContribution(_Part):
    name: str
    contribution: float


class ScoreLineage(_Part):
    """Where a score came from: enough to reproduce it."""

    model: str
    version: int
    feature_schema_version: int
    backend: str
    latency_ms: float = Field(ge=0)
    top_features: tuple[FeatureContribution, ...] = ()


class FraudAssessment(_Part):
    probability: float | None = Field(default=None, ge=0, le=1)
    degraded: bool = False
    reason: str | None = None
    lineage: ScoreLineage | None = None


class AnomalyAssessment(_Part):
    error: float | None = None
    percentile: float | None = Field(default=None, ge=0, le=100)
    degraded: bool = False
    reason: str | None = None
    lineage: ScoreLineage | None = None


class UpsellSuggestion(_Part):
    sku: str
    name: str
    reason: Literal["size_upgrade", "complement", "taste_match"]
    score: float


class UpsellAssessment(_Part):
    suggestions: tuple[UpsellSuggestion, ...] = ()
    degraded: bool = False
    reason: str | None = None
    lineage: ScoreLineage | None = None


class OrderEnriched(Event):
    """An ``OrderPlaced`` with the models' view of it; one per order (same id on a re-run)."""

    source_event_id: str
    customer_id: str
    fraud: FraudAssessment
    anomaly: AnomalyAssessment
    upsell: UpsellAssessment | None = None
    flagged: bool = False


class ScoreShadowed(Event):
    """A challenger model scored the same order as the champion; it changed no decision."""

    model: str
    champion_version: int
    challenger_version: int
    champion_score: float | None
    challenger_score: float | None
    difference: float | None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.event_type: cls
    for cls in (
        OrderPlaced,
        PaymentCaptured,
        OrderAccepted,
        OrderRejected,
        OrderReady,
        ReceiptSent,
        RefundIssued,
        RefundNoticeSent,
        OrderFlagged,
        OrderCancelled,
        OrderEnriched,
        ScoreShadowed,
    )
}

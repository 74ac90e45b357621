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

    event_id: str = Field(
        default_factory=new_event_id,
        min_length=1,
        max_length=64,
        description="unique id of this event; one caused by another derives it from its cause, "
        "so a redelivery repeats it",
    )
    order_id: str = Field(
        min_length=1,
        max_length=64,
        description="the order this event is about; also the record key",
    )
    occurred_at: AwareDatetime = Field(
        default_factory=utcnow, description="when it happened, in UTC (ISO 8601)"
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__:
            cls.event_type = cls.__name__


class OrderItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sku: Sku = Field(description="menu item id, e.g. hawaiian_m")
    name: str = Field(min_length=1, max_length=120, description="menu name of the pizza")
    size: str = Field(min_length=1, max_length=8, description="size code: S, M, L, XL, XXL")
    quantity: int = Field(ge=1, le=50, description="how many of this item")
    unit_price: Money = Field(description="price of one, as on the menu")


class Address(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    street: str = Field(min_length=1, max_length=200, description="street and number")
    city: str = Field(min_length=1, max_length=100, description="city")
    postcode: str = Field(min_length=1, max_length=16, description="postal code")
    country: str = Field(
        default="US", min_length=2, max_length=2, description="ISO 3166-1 alpha-2 country code"
    )


class PaymentMethod(BaseModel):
    """A card as the shop may keep it: a fingerprint and the last four digits, never the number."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["card", "cash", "voucher"] = Field(default="card", description="how it is paid")
    card_fingerprint: str | None = Field(
        default=None,
        min_length=8,
        max_length=64,
        description="stable fingerprint of the card (never the number); required for cards",
    )
    last4: str | None = Field(
        default=None,
        pattern=r"^[0-9]{4}$",
        description="last four digits of the card; required for cards",
    )

    @model_validator(mode="after")
    def _card_needs_fingerprint(self) -> PaymentMethod:
        if self.kind == "card" and (self.card_fingerprint is None or self.last4 is None):
            raise ValueError("a card payment needs card_fingerprint and last4")
        return self


class OrderPlaced(Event):
    customer_id: str = Field(min_length=1, max_length=64, description="the customer's account id")
    customer_email: str = Field(
        min_length=3,
        max_length=254,
        pattern=r"^[^@\s]+@[^@\s]+$",
        description="where the receipt and any refund notice go",
    )
    items: tuple[OrderItem, ...] = Field(
        min_length=1, max_length=50, description="what was ordered, as priced at the time"
    )
    total: Money = Field(description="sum of unit_price x quantity over the items")
    currency: str = Field(
        default="USD", min_length=3, max_length=3, description="ISO 4217 currency of all amounts"
    )
    placed_at: AwareDatetime = Field(description="when the customer placed the order (UTC)")
    channel: Literal["web", "app", "phone", "walk_in"] = Field(
        default="web", description="where the order came in"
    )
    delivery_address: Address | None = Field(
        default=None, description="where to deliver; none for pick-up"
    )
    payment: PaymentMethod = Field(description="how the customer pays")
    device_id: str | None = Field(
        default=None, max_length=64, description="the ordering device, if known (fraud features)"
    )

    @model_validator(mode="after")
    def _total_matches_items(self) -> OrderPlaced:
        expected = sum((item.unit_price * item.quantity for item in self.items), Decimal(0))
        if expected != self.total:
            raise ValueError(f"total {self.total} does not match the items' sum {expected}")
        return self


class PaymentCaptured(Event):
    """The order's amount was charged."""

    amount: Money = Field(description="amount charged")
    currency: str = Field(
        default="USD", min_length=3, max_length=3, description="ISO 4217 currency of amount"
    )
    card_fingerprint: str | None = Field(default=None, description="the card charged, if a card")


class OrderAccepted(Event):
    """The kitchen took the order and is baking it."""

    ready_by: AwareDatetime = Field(description="when the kitchen expects it out of the oven (UTC)")


class OrderRejected(Event):
    """The kitchen refused the order; the payment saga refunds it."""

    reason: str = Field(min_length=1, max_length=200, description="why, in words for the customer")


class OrderReady(Event):
    """The order is out of the oven."""


class ReceiptSent(Event):
    """The order's receipt was handed to the mail server."""

    recipient: str = Field(description="e-mail address it went to")
    message_id: str = Field(description="the e-mail's Message-ID")


class RefundIssued(Event):
    """The captured amount was paid back (rejection, fraud hold or saga deadline)."""

    amount: Money = Field(description="amount refunded")
    currency: str = Field(
        default="USD", min_length=3, max_length=3, description="ISO 4217 currency of amount"
    )
    reason: str = Field(min_length=1, max_length=200, description="why the order was refunded")
    customer_email: str = Field(
        min_length=3, max_length=254, description="where the refund notice goes"
    )


class RefundNoticeSent(Event):
    """The refund notice was handed to the mail server."""

    recipient: str = Field(description="e-mail address it went to")
    message_id: str = Field(description="the e-mail's Message-ID")


class OrderFlagged(Event):
    """The fraud model scored the order past the hold threshold."""

    fraud_score: float = Field(ge=0, le=1, description="calibrated fraud probability")
    threshold: float = Field(ge=0, le=1, description="the hold threshold it reached")
    model: str = Field(description="model tag, e.g. fraud-v3")


class OrderCancelled(Event):
    """The kitchen stopped an order it had not finished (a fraud hold)."""

    reason: str = Field(min_length=1, max_length=200, description="why it was stopped")


# -- enrichment -----------------------------------------------------------------------------
class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureContribution(_Part):
    """One feature's share in a score."""

    name: str = Field(description="feature name")
    contribution: float = Field(description="signed attribution to the score")


class ScoreLineage(_Part):
    """Where a score came from: enough to reproduce it."""

    model: str = Field(description="model name: fraud, anomaly or upsell")
    version: int = Field(description="registry version of the model")
    feature_schema_version: int = Field(description="version of the features it was fed")
    backend: str = Field(description="what ran it: onnx, torch or rules")
    latency_ms: float = Field(ge=0, description="time the model took for the batch")
    top_features: tuple[FeatureContribution, ...] = Field(
        default=(), description="largest attributions, largest first"
    )


class FraudAssessment(_Part):
    """The fraud model's view of an order."""

    probability: float | None = Field(
        default=None, ge=0, le=1, description="calibrated fraud probability; none when degraded"
    )
    degraded: bool = Field(default=False, description="the model failed or timed out")
    reason: str | None = Field(default=None, description="why it is degraded")
    lineage: ScoreLineage | None = Field(default=None, description="where the score came from")


class AnomalyAssessment(_Part):
    """The autoencoder's view of an order."""

    error: float | None = Field(default=None, description="reconstruction error")
    percentile: float | None = Field(
        default=None, ge=0, le=100, description="the error's percentile among training errors"
    )
    degraded: bool = Field(default=False, description="the model failed or timed out")
    reason: str | None = Field(default=None, description="why it is degraded")
    lineage: ScoreLineage | None = Field(default=None, description="where the score came from")


class UpsellSuggestion(_Part):
    """One item to suggest, with why."""

    sku: str = Field(description="menu item id")
    name: str = Field(description="menu name")
    reason: Literal["size_upgrade", "complement", "taste_match"] = Field(
        description="why it is suggested"
    )
    score: float = Field(description="ranker score; higher first")


class UpsellAssessment(_Part):
    """The upsell ranker's suggestions for an order."""

    suggestions: tuple[UpsellSuggestion, ...] = Field(default=(), description="best first")
    degraded: bool = Field(default=False, description="the model failed or timed out")
    reason: str | None = Field(default=None, description="why it is degraded")
    lineage: ScoreLineage | None = Field(default=None, description="where the score came from")


class ModelAssessment(_Part):
    """A plug-in model's view of an order, for models without a field of their own."""

    model: str = Field(min_length=1, max_length=64, description="the scorer's registered name")
    values: dict[str, float | int | str | bool | None] = Field(
        default_factory=dict, description="the model's outputs by name (numbers or labels)"
    )
    degraded: bool = Field(default=False, description="the model failed or timed out")
    reason: str | None = Field(default=None, description="why it is degraded")
    lineage: ScoreLineage | None = Field(default=None, description="where the score came from")


class OrderEnriched(Event):
    """An ``OrderPlaced`` with the models' view of it; one per order (same id on a re-run)."""

    source_event_id: str = Field(description="event_id of the OrderPlaced it scores")
    customer_id: str = Field(description="the customer's account id")
    fraud: FraudAssessment = Field(description="fraud score")
    anomaly: AnomalyAssessment = Field(description="anomaly score")
    upsell: UpsellAssessment | None = Field(default=None, description="upsell suggestions")
    flagged: bool = Field(default=False, description="fraud reached the hold threshold")
    others: tuple[ModelAssessment, ...] = Field(
        default=(), description="every other registered model's assessment, by model name"
    )


class ScoreShadowed(Event):
    """A challenger model scored the same order as the champion; it changed no decision."""

    model: str = Field(description="model name")
    champion_version: int = Field(description="version that decided")
    challenger_version: int = Field(description="version run in the shadow")
    champion_score: float | None = Field(description="champion's score; none when degraded")
    challenger_score: float | None = Field(description="challenger's score; none when degraded")
    difference: float | None = Field(description="challenger minus champion")


# -- labels ----------------------------------------------------------------------------------
class ChargebackReported(Event):
    """The card processor reports that the cardholder disputed the order's charge as fraud.

    It comes days or weeks after the order (the label delay) from outside the shop, on its own
    topic; it is the fraud label the models are judged by online."""

    reported_at: AwareDatetime = Field(description="when the processor reported it (UTC)")
    reason: str = Field(
        min_length=1, max_length=200, description="the dispute's reason, e.g. fraud_card_absent"
    )


#: Every fact of an order's life, from placement to its outcome (what its timeline shows).
ORDER_LIFECYCLE: tuple[type[Event], ...] = (
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
)

_ALL: tuple[type[Event], ...] = (
    *ORDER_LIFECYCLE,
    OrderEnriched,
    ScoreShadowed,
    ChargebackReported,
)
EVENT_TYPES: dict[str, type[Event]] = {cls.event_type: cls for cls in _ALL}

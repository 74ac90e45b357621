"""Order intake: validate a request against the menu, make it durable, confirm at once.

The order and its ``OrderPlaced`` event are written in ONE database transaction (the order row,
its first timeline entry, the outbox row). Only then is the order confirmed. The outbox relay
publishes to Kafka on its own schedule, so the answer never waits for the broker, let alone
the kitchen, and an outage of Kafka loses nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ingest.codec import PLAIN_JSON, Serializer
from ingest.events import Address, OrderItem, OrderPlaced, PaymentMethod, utcnow
from ingest.outbox import add_to_outbox
from pizzashop.core.database import Database
from pizzashop.core.errors import Problem, ValidationFailed
from pizzashop.core.menu import Menu
from pizzashop.core.pii import card_numbers_in, may_hold_card_number
from services.status import orders, record_placed

MAX_QUANTITY_PER_LINE = 20
MAX_ITEMS_PER_ORDER = 60
#: What a card fingerprint looks like: ``fp-`` and 8 to 61 hex digits, or 16 to 64 hex digits
#: (a truncated SHA-256, say). Anything else (a card number above all) is not a fingerprint.
FINGERPRINT_PATTERN = r"^(fp-[0-9a-fA-F]{8,61}|[0-9a-fA-F]{16,64})$"
MONEY_PATTERN = r"^[0-9]{1,10}(\.[0-9]{1,2})?$"


def _money_text(value: Any) -> Any:
    # Amounts travel as decimal strings: a JSON number is a binary float (0.1 + 0.2), and the
    # document promises a string.
    if not isinstance(value, str) or re.fullmatch(MONEY_PATTERN, value) is None:
        raise ValueError("an amount is a string of digits with at most 2 decimals, e.g. '17.95'")
    return value


#: An amount in a request: a string such as ``"17.95"``, read as an exact ``Decimal``.
Money = Annotated[
    Decimal,
    BeforeValidator(_money_text),
    WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN, "examples": ["17.95"]}),
]


class LineRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sku: str = Field(min_length=1, max_length=64)
    quantity: int
    unit_price: Money


class PaymentRequest(PaymentMethod):
    """How the client pays: a card by its fingerprint and last four digits, never its number."""

    card_fingerprint: str | None = Field(
        default=None,
        pattern=FINGERPRINT_PATTERN,
        description="the card's token from the payment provider: `fp-` and 8 to 61 hex digits, "
        "or 16 to 64 hex digits",
        examples=["fp-8f3a1c0e9b7d2a64"],
    )


class OrderRequest(BaseModel):
    """What a client sends to ``POST /orders``. Card numbers are not accepted, only a token:
    a card number (13 to 19 digits passing the Luhn check) in any field refuses the order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    order_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="client-chosen id; sending the same id twice places the order once",
    )
    customer_id: str = Field(min_length=1, max_length=64)
    customer_email: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    items: list[LineRequest] = Field(min_length=1, max_length=50)
    total: Money
    currency: str = "USD"
    channel: Literal["web", "app", "phone", "walk_in"] = "web"
    delivery_address: Address | None = None
    payment: PaymentRequest
    device_id: str | None = Field(default=None, max_length=64)

    @model_validator(mode="wrap")
    @classmethod
    def _no_card_numbers(
        cls,
        data: Any,
        handler: ModelWrapValidatorHandler[OrderRequest],
        info: ValidationInfo,
    ) -> Any:
        """A card number anywhere in the input, in a field of the contract or not, refuses the
        request before any other check, and only the fields that hold one are named: other
        checks could echo the number back (``quantity 4111... is too many``).

        ``from_document`` validates a JSON document whose bytes show it holds none without the
        walk through every field."""
        if isinstance(data, Mapping) and not (info.context or {}).get(_CARD_FREE):
            cards = [
                InitErrorDetails(
                    type=PydanticCustomError(
                        "card_number", "holds a card number; send the card's fingerprint only"
                    ),
                    loc=path,
                    input="[redacted]",
                )
                for path in card_numbers_in(data)
            ]
            if cards:
                raise ValidationError.from_exception_data(cls.__name__, cards)
        return handler(data)

    @classmethod
    def from_document(cls, document: bytes) -> OrderRequest:
        """``model_validate_json(document)``, the same answers, with the card-number walk left
        out when the bytes show there is no card number to find (``may_hold_card_number``)."""
        if may_hold_card_number(document):
            return cls.model_validate_json(document)
        return cls.model_validate_json(document, context=_NO_CARDS)


#: Validation context: the document was found free of card numbers (``from_document``).
_CARD_FREE = "pizzashop.card_free"
_NO_CARDS = {_CARD_FREE: True}


@dataclass(frozen=True, slots=True)
class Placed:
    order_id: str
    event_id: str
    duplicate: bool


def build_order(request: OrderRequest, menu: Menu, order_id: str) -> OrderPlaced:
    """The ``OrderPlaced`` a valid request becomes; ``ValidationFailed`` lists what is wrong."""
    problems: list[Problem] = []
    if request.currency != menu.currency:
        problems.append(
            Problem(
                ("currency",),
                f"currency {request.currency} is not accepted, prices are in {menu.currency}",
                "currency",
            )
        )
    items: list[OrderItem] = []
    for index, line in enumerate(request.items):
        known = menu.get(line.sku)
        if known is None:
            problems.append(
                Problem(("items", index, "sku"), f"unknown item {line.sku!r}", "unknown_item")
            )
            continue
        if line.quantity <= 0:
            problems.append(
                Problem(
                    ("items", index, "quantity"),
                    f"quantity must be at least 1, got {line.quantity}",
                    "quantity_too_small",
                )
            )
            continue
        if line.quantity > MAX_QUANTITY_PER_LINE:
            problems.append(
                Problem(
                    ("items", index, "quantity"),
                    f"quantity {line.quantity} of {line.sku} is more than the "
                    f"{MAX_QUANTITY_PER_LINE} one order may hold",
                    "quantity_too_large",
                )
            )
            continue
        if line.unit_price != known.price:
            problems.append(
                Problem(
                    ("items", index, "unit_price"),
                    f"unit_price {line.unit_price} for {line.sku} does not match the menu "
                    f"price {known.price}",
                    "price_mismatch",
                )
            )
            continue
        items.append(
            OrderItem(
                sku=known.sku,
                name=known.name,
                size=known.size,
                quantity=line.quantity,
                unit_price=known.price,
            )
        )
    count = sum(line.quantity for line in request.items if line.quantity > 0)
    if count > MAX_ITEMS_PER_ORDER:
        problems.append(
            Problem(
                ("items",),
                f"{count} items in one order is more than {MAX_ITEMS_PER_ORDER}",
                "too_many_items",
            )
        )
    if not problems:
        expected = sum((i.unit_price * i.quantity for i in items), Decimal(0))
        if expected != request.total:
            problems.append(
                Problem(
                    ("total",),
                    f"total {request.total} does not match the items' sum {expected}",
                    "total_mismatch",
                )
            )
    if problems:
        raise ValidationFailed(*problems)
    now = utcnow()
    return OrderPlaced(
        order_id=order_id,
        customer_id=request.customer_id,
        customer_email=request.customer_email,
        items=tuple(items),
        total=request.total,
        currency=request.currency,
        placed_at=now,
        occurred_at=now,
        channel=request.channel,
        delivery_address=request.delivery_address,
        payment=PaymentMethod.model_validate(request.payment.model_dump()),
        device_id=request.device_id,
    )


class OrderIntake:
    def __init__(
        self,
        db: Database,
        menu: Menu,
        orders_topic: str,
        *,
        on_committed: Callable[[], None] = lambda: None,
        serializer: Serializer = PLAIN_JSON,
    ) -> None:
        self._db = db
        self._menu = menu
        self._topic = orders_topic
        self._on_committed = on_committed
        self._serializer = serializer

    async def place(self, request: OrderRequest, traceparent: str | None = None) -> Placed:
        """Store the order and its outbox row in one transaction. ``traceparent`` names the
        span placing it (the API's request span), the parent of the order's record; unset,
        the current span is."""
        order_id = request.order_id or f"ord-{uuid.uuid4().hex[:16]}"
        event = build_order(request, self._menu, order_id)
        if request.order_id is not None:
            existing = await self._existing(order_id)
            if existing is not None:
                return existing
        try:
            async with self._db.engine.begin() as conn:
                await record_placed(conn, self._db, event)
                await add_to_outbox(
                    conn, self._topic, event, traceparent, serializer=self._serializer
                )
        except IntegrityError:
            # The same client order id raced in twice: the other request won, report it.
            existing = await self._existing(order_id)
            if existing is None:
                raise
            return existing
        self._on_committed()
        return Placed(order_id=order_id, event_id=event.event_id, duplicate=False)

    async def _existing(self, order_id: str) -> Placed | None:
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(select(orders.c.body).where(orders.c.order_id == order_id))
            ).first()
        if row is None:
            return None
        event = OrderPlaced.model_validate_json(row.body)
        return Placed(order_id=order_id, event_id=event.event_id, duplicate=True)

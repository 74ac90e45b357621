"""Orders to send: as events (``make_order``) and as API request bodies (``body``,
``order_body``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from ingest.events import Event, OrderItem, OrderPlaced, PaymentMethod, utcnow
from pizzashop.core.menu import load_menu

MENU = load_menu()


def make_order(
    *,
    skus: Sequence[tuple[str, str, int]] = (("pepperoni_m", "12.50", 1),),
    order_id: str | None = None,
) -> OrderPlaced:
    items = tuple(
        OrderItem(
            sku=sku,
            name=sku,
            size=sku.rsplit("_", 1)[-1].upper(),
            quantity=qty,
            unit_price=Decimal(price),
        )
        for sku, price, qty in skus
    )
    return OrderPlaced(
        order_id=order_id or f"o-{uuid.uuid4().hex[:8]}",
        customer_id="c-1",
        customer_email="c1@example.com",
        items=items,
        total=sum((i.unit_price * i.quantity for i in items), Decimal(0)),
        placed_at=utcnow(),
        payment=PaymentMethod(card_fingerprint="fp-12345678", last4="4242"),
    )


def body(**overrides: Any) -> dict[str, Any]:
    """A valid ``POST /orders`` body (two large four-cheese pizzas), with ``overrides``."""
    price = MENU["four_cheese_l"].price
    return {
        "customer_id": "c-9",
        "customer_email": "c9@example.com",
        "items": [{"sku": "four_cheese_l", "quantity": 2, "unit_price": str(price)}],
        "total": str(price * 2),
        "payment": {"kind": "card", "card_fingerprint": "fp-abcdef12", "last4": "1111"},
        **overrides,
    }


def order_body(*skus: str, customer: str = "c-1") -> dict[str, Any]:
    """A valid ``POST /orders`` body of one of each of ``skus`` at menu prices."""
    items = [{"sku": s, "quantity": 1, "unit_price": str(MENU[s].price)} for s in skus]
    return {
        "customer_id": customer,
        "customer_email": f"{customer}@example.com",
        "items": items,
        "total": str(sum(MENU[s].price for s in skus)),
        "payment": {"kind": "card", "card_fingerprint": "fp-11112222", "last4": "2222"},
    }


class RecordingProducer:
    """Stands in for EventProducer where a test checks what would be published."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Event]] = []

    async def publish_many(
        self, topic: str, events: Sequence[Event], *, traceparents: object = None
    ) -> None:
        self.published.extend((topic, e) for e in events)

    def of_type(self, event_type: str) -> list[Event]:
        return [e for _, e in self.published if e.event_type == event_type]

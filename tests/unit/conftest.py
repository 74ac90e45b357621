"""Unit fixtures: a real database (SQLite, and PostgreSQL when CI provides one), no broker."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path

import pytest

from ingest.events import Event, OrderItem, OrderPlaced, PaymentMethod, utcnow
from pizzashop.core.database import Database, metadata

POSTGRES_URL = os.environ.get("PIZZASHOP_TEST_POSTGRES_URL")


def _db_params() -> list[object]:
    params: list[object] = ["sqlite"]
    params.append(
        pytest.param(
            "postgres",
            marks=pytest.mark.skipif(
                POSTGRES_URL is None, reason="set PIZZASHOP_TEST_POSTGRES_URL (CI does)"
            ),
        )
    )
    return params


@pytest.fixture(params=_db_params())
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    else:
        assert POSTGRES_URL is not None
        url = POSTGRES_URL
    async with Database(url) as database:
        if request.param == "postgres":
            # One database for the whole run: start each test from empty tables.
            async with database.engine.begin() as conn:
                for table in reversed(metadata.sorted_tables):
                    await conn.execute(table.delete())
        yield database


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

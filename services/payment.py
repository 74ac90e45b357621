"""Payment and the saga that compensates it.

Payment captures every placed order (``PaymentCaptured``). When a later step fails the order
(``OrderRejected`` by the kitchen, ``OrderCancelled`` by the fraud hold), the saga compensates
with ``RefundIssued``.

The placement and the failure arrive on different topics, so either may be seen first. Each
order has one row whose flags only ever go from false to true (``captured``,
``refund_requested``), each set by an atomic conditional UPDATE. After writing its flag, a
handler reads the row and emits what the row now implies. Whichever handler writes second sees
both flags and emits the refund, so the refund is never missed; if both see them, both emit the
same derived event id and consumers keep one. Emitting from state, not from the transition, also
covers a crash between the write and the publish.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Boolean, Column, Numeric, String, Table, select, update
from sqlalchemy.engine import Row

from ingest.consumer import Delivery, Handler
from ingest.events import (
    Event,
    OrderPlaced,
    PaymentCaptured,
    RefundIssued,
    derived_event_id,
)
from ingest.producer import EventProducer
from pizzashop.database import Database, metadata

logger = logging.getLogger(__name__)

payments = Table(
    "payments",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("placed_event_id", String(64), nullable=True),
    Column("amount", Numeric(12, 2), nullable=True),
    Column("currency", String(3), nullable=True),
    Column("customer_email", String(254), nullable=True),
    Column("card_fingerprint", String(64), nullable=True),
    Column("captured", Boolean, nullable=False, default=False),
    Column("refund_requested", Boolean, nullable=False, default=False),
    Column("refund_reason", String(200), nullable=True),
    Column("failure_event_id", String(64), nullable=True),
)

#: Events that fail an order after placement and so call for a refund.
COMPENSATED = frozenset({"OrderRejected", "OrderCancelled"})


class PaymentSaga(Handler):
    event_types = frozenset({"OrderPlaced"}) | COMPENSATED

    def __init__(self, db: Database, producer: EventProducer, events_topic: str) -> None:
        self._db = db
        self._producer = producer
        self._topic = events_topic

    async def handle(self, batch: Sequence[Delivery]) -> None:
        out: list[Event] = []
        parents: list[str | None] = []
        for delivery in batch:
            event = delivery.event
            if isinstance(event, OrderPlaced):
                implied = self._implied(await self._capture(event), with_capture=True)
            elif event.event_type in COMPENSATED:
                implied = self._implied(await self._request_refund(event), with_capture=False)
            else:
                continue
            for emitted in implied:
                out.append(emitted)
                parents.append(delivery.traceparent)
        if out:
            await self._producer.publish_many(self._topic, out, traceparents=parents)

    async def _capture(self, order: OrderPlaced) -> Row[Any]:
        values = {
            "placed_event_id": order.event_id,
            "amount": order.total,
            "currency": order.currency,
            "customer_email": order.customer_email,
            "card_fingerprint": order.payment.card_fingerprint,
        }
        async with self._db.engine.begin() as conn:
            await conn.execute(
                self._db.insert_ignore(payments).values(
                    order_id=order.order_id, captured=False, refund_requested=False
                )
            )
            await conn.execute(
                update(payments)
                .where(payments.c.order_id == order.order_id, payments.c.captured.is_(False))
                .values(captured=True, **values)
            )
            return await self._row(conn, order.order_id)

    async def _request_refund(self, failure: Event) -> Row[Any]:
        reason = getattr(failure, "reason", failure.event_type)
        async with self._db.engine.begin() as conn:
            await conn.execute(
                self._db.insert_ignore(payments).values(
                    order_id=failure.order_id, captured=False, refund_requested=False
                )
            )
            await conn.execute(
                update(payments)
                .where(
                    payments.c.order_id == failure.order_id,
                    payments.c.refund_requested.is_(False),
                )
                .values(
                    refund_requested=True, refund_reason=reason, failure_event_id=failure.event_id
                )
            )
            return await self._row(conn, failure.order_id)

    @staticmethod
    async def _row(conn: Any, order_id: str) -> Row[Any]:
        row = (await conn.execute(select(payments).where(payments.c.order_id == order_id))).one()
        return row  # type: ignore[no-any-return]

    @staticmethod
    def _implied(row: Row[Any], *, with_capture: bool) -> list[Event]:
        events: list[Event] = []
        if row.captured and with_capture:
            events.append(
                PaymentCaptured(
                    event_id=derived_event_id(row.placed_event_id, "PaymentCaptured"),
                    order_id=row.order_id,
                    amount=row.amount,
                    currency=row.currency,
                    card_fingerprint=row.card_fingerprint,
                )
            )
        if row.captured and row.refund_requested:
            logger.info("saga: refunding order %s (%s)", row.order_id, row.refund_reason)
            events.append(
                RefundIssued(
                    event_id=derived_event_id(row.failure_event_id, "RefundIssued"),
                    order_id=row.order_id,
                    amount=row.amount,
                    currency=row.currency,
                    reason=row.refund_reason,
                    customer_email=row.customer_email,
                )
            )
        return events

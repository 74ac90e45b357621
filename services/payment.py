"""Payment and the saga that compensates it, which always finishes.

Payment captures every placed order (``PaymentCaptured``). When a later step fails the order
(``OrderRejected`` by the kitchen, ``OrderCancelled`` by the fraud hold), the saga compensates
with ``RefundIssued``. ``OrderReady`` fulfils the order. An order captured that has neither
outcome when the saga deadline passes (its kitchen flow down, its record dead-lettered) is
refunded all the same: the deadline is a flow of its own that consumes ``PaymentCaptured`` and
is handed each one only when it is due (``Handler.due_at``). A decision that comes after that
refund is ignored, never refunded twice.

The placement and the failure arrive on different topics, so either may be seen first. Each
order has one row whose flags only ever go from false to true (``captured``,
``refund_requested``, ``fulfilled``), each set by an atomic conditional UPDATE. Whoever makes
the row imply a refund claims it (``refund_owner``, set once, to the event being handled), and
only the owner emits it: a redelivery of the owner emits the same ``RefundIssued`` again only if
its first transaction never committed, and nobody else emits it at all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, Column, Numeric, String, Table, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ingest.consumer import Delivery, Handler, Output
from ingest.events import (
    Event,
    OrderCancelled,
    OrderPlaced,
    OrderReady,
    OrderRejected,
    PaymentCaptured,
    RefundIssued,
    derived_event_id,
)
from ingest.flows import FlowContext, flow
from ingest.topics import ORDER_EVENTS, ORDERS
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
    Column("refund_owner", String(64), nullable=True),
    Column("fulfilled", Boolean, nullable=False, default=False),
)

DEADLINE_REASON = "no outcome within the saga deadline"

#: Events that fail an order after placement and so call for a refund.
COMPENSATED: tuple[type[Event], ...] = (OrderRejected, OrderCancelled)


class PaymentSaga(Handler):
    event_types = (OrderPlaced, OrderReady, *COMPENSATED)

    def __init__(self, db: Database, events_topic: str) -> None:
        self._db = db
        self._topic = events_topic

    async def handle(self, batch: Sequence[Delivery]) -> list[Output]:
        out: list[Output] = []
        for delivery in batch:
            event = delivery.event
            if isinstance(event, OrderPlaced):
                row = await self._capture(event)
                emitted = self._implied(row, event, capture=True)
            elif isinstance(event, OrderReady):
                await self._fulfil(event)
                emitted = []
            else:
                reason = getattr(event, "reason", event.event_type)
                row = await self._request_refund(event.order_id, reason, event.event_id)
                emitted = self._implied(row, event, capture=False)
            out += [delivery.emit(self._topic, e) for e in emitted]
        return out

    async def _capture(self, order: OrderPlaced) -> Row[Any]:
        values = {
            "placed_event_id": order.event_id,
            "amount": order.total,
            "currency": order.currency,
            "customer_email": order.customer_email,
            "card_fingerprint": order.payment.card_fingerprint,
        }
        async with self._db.engine.begin() as conn:
            await self._ensure_row(conn, order.order_id)
            await conn.execute(
                update(payments)
                .where(payments.c.order_id == order.order_id, payments.c.captured.is_(False))
                .values(captured=True, **values)
            )
            return await self._claim_refund(conn, order.order_id, order.event_id)

    async def _request_refund(self, order_id: str, reason: str, cause_id: str) -> Row[Any]:
        async with self._db.engine.begin() as conn:
            await self._ensure_row(conn, order_id)
            await conn.execute(
                update(payments)
                .where(payments.c.order_id == order_id, payments.c.refund_requested.is_(False))
                .values(refund_requested=True, refund_reason=reason, failure_event_id=cause_id)
            )
            return await self._claim_refund(conn, order_id, cause_id)

    async def _fulfil(self, ready: OrderReady) -> None:
        async with self._db.engine.begin() as conn:
            await self._ensure_row(conn, ready.order_id)
            result = await conn.execute(
                update(payments)
                .where(
                    payments.c.order_id == ready.order_id, payments.c.refund_requested.is_(False)
                )
                .values(fulfilled=True)
            )
        if result.rowcount == 0:
            logger.warning("saga: order %s is ready after its refund; ignored", ready.order_id)

    async def _ensure_row(self, conn: AsyncConnection, order_id: str) -> None:
        await conn.execute(
            self._db.insert_ignore(payments).values(
                order_id=order_id, captured=False, refund_requested=False, fulfilled=False
            )
        )

    @staticmethod
    async def _claim_refund(conn: AsyncConnection, order_id: str, cause_id: str) -> Row[Any]:
        """Make ``cause_id`` the refund's owner if the row now implies one and nobody owns it."""
        await conn.execute(
            update(payments)
            .where(
                payments.c.order_id == order_id,
                payments.c.captured.is_(True),
                payments.c.refund_requested.is_(True),
                payments.c.refund_owner.is_(None),
            )
            .values(refund_owner=cause_id)
        )
        row = (await conn.execute(select(payments).where(payments.c.order_id == order_id))).one()
        return row

    @staticmethod
    def _implied(row: Row[Any], cause: Event, *, capture: bool) -> list[Event]:
        events: list[Event] = []
        if capture and row.captured and row.placed_event_id == cause.event_id:
            events.append(
                PaymentCaptured(
                    event_id=derived_event_id(row.placed_event_id, "PaymentCaptured"),
                    order_id=row.order_id,
                    amount=row.amount,
                    currency=row.currency,
                    card_fingerprint=row.card_fingerprint,
                )
            )
        if row.refund_owner == cause.event_id:
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


class SagaDeadline(PaymentSaga):
    """Refunds every captured order that has no outcome ``deadline`` after its capture."""

    event_types = (PaymentCaptured,)

    def __init__(self, db: Database, events_topic: str, deadline: timedelta) -> None:
        super().__init__(db, events_topic)
        self._deadline = deadline

    def due_at(self, event: Event) -> datetime | None:
        return event.occurred_at + self._deadline

    async def handle(self, batch: Sequence[Delivery]) -> list[Output]:
        out: list[Output] = []
        for delivery in batch:
            captured = delivery.event
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    update(payments)
                    .where(
                        payments.c.order_id == captured.order_id,
                        payments.c.captured.is_(True),
                        payments.c.fulfilled.is_(False),
                        payments.c.refund_requested.is_(False),
                    )
                    .values(
                        refund_requested=True,
                        refund_reason=DEADLINE_REASON,
                        failure_event_id=captured.event_id,
                    )
                )
                row = await self._claim_refund(conn, captured.order_id, captured.event_id)
            if row.refund_owner == captured.event_id:
                logger.warning("saga: order %s has no outcome in time; refunding", row.order_id)
            out += [
                delivery.emit(self._topic, e) for e in self._implied(row, captured, capture=False)
            ]
        return out


@flow("payment", topics=(ORDERS, ORDER_EVENTS))
def payment_flow(ctx: FlowContext) -> Handler:
    return PaymentSaga(ctx.db, ctx.topics.order_events)


@flow("saga-deadline", topics=(ORDER_EVENTS,))
def saga_deadline_flow(ctx: FlowContext) -> Handler:
    deadline = timedelta(seconds=ctx.settings.saga_deadline_s)
    return SagaDeadline(ctx.db, ctx.topics.order_events, deadline)

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

from sqlalchemy import Boolean, Column, Numeric, String, Table, bindparam, update
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
from pizzashop.core.database import Database, metadata, rows_by_key

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
        """One transaction for the whole batch: write every flag, let each event claim the
        refund it may imply (in batch order), then read back what each event decided."""
        captures, failures, fulfilled, claims = [], [], [], []
        for d in batch:
            event = d.event
            if isinstance(event, OrderPlaced):
                captures.append(_capture_params(event))
                claims.append({"oid": event.order_id, "cause": event.event_id})
            elif isinstance(event, OrderReady):
                fulfilled.append({"oid": event.order_id})
            else:
                reason = getattr(event, "reason", event.event_type)
                failures.append({"oid": event.order_id, "reason": reason, "fid": event.event_id})
                claims.append({"oid": event.order_id, "cause": event.event_id})
        async with self._db.engine.begin() as conn:
            rows = await self._apply(
                conn,
                [d.event.order_id for d in batch],
                (_CAPTURE, captures),
                (_REQUEST_REFUND, failures),
                (_FULFIL, fulfilled),
                (_CLAIM_REFUND, claims),
            )
        for ready in fulfilled:
            row = rows[ready["oid"]]
            if row.refund_requested:
                logger.warning("saga: order %s is ready after its refund; ignored", row.order_id)
        return [
            d.emit(self._topic, e)
            for d in batch
            for e in self._implied(rows[d.event.order_id], d.event, capture=True)
        ]

    async def _apply(
        self, conn: AsyncConnection, order_ids: Sequence[str], *steps: tuple[Any, list[Any]]
    ) -> dict[str, Row[Any]]:
        """Ensure a row per order, run each statement over its parameters, return the rows."""
        ids = sorted(set(order_ids))
        await conn.execute(
            self._db.insert_ignore(payments),
            [
                {"order_id": i, "captured": False, "refund_requested": False, "fulfilled": False}
                for i in ids
            ],
        )
        for statement, params in steps:
            if params:
                await conn.execute(statement, params)
        return await rows_by_key(conn, payments.c.order_id, ids)

    @staticmethod
    def _implied(row: Row[Any], cause: Event, *, capture: bool) -> list[Event]:
        events: list[Event] = []
        if capture and isinstance(cause, OrderPlaced) and row.placed_event_id == cause.event_id:
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
        params = [
            {"oid": d.event.order_id, "reason": DEADLINE_REASON, "fid": d.event.event_id}
            for d in batch
        ]
        claims = [{"oid": d.event.order_id, "cause": d.event.event_id} for d in batch]
        async with self._db.engine.begin() as conn:
            rows = await self._apply(
                conn,
                [d.event.order_id for d in batch],
                (_DEADLINE, params),
                (_CLAIM_REFUND, claims),
            )
        out = []
        for d in batch:
            row = rows[d.event.order_id]
            if row.refund_owner == d.event.event_id:
                logger.warning("saga: order %s has no outcome in time; refunding", row.order_id)
            out += [d.emit(self._topic, e) for e in self._implied(row, d.event, capture=False)]
        return out


def _capture_params(order: OrderPlaced) -> dict[str, Any]:
    return {
        "oid": order.order_id,
        "pid": order.event_id,
        "amt": order.total,
        "cur": order.currency,
        "email": order.customer_email,
        "fp": order.payment.card_fingerprint,
    }


# Flags only ever go from false to true, each by the first event that may set it; each
# statement runs over a whole batch (executemany), in batch order.
_CAPTURE = (
    update(payments)
    .where(payments.c.order_id == bindparam("oid"), payments.c.captured.is_(False))
    .values(
        captured=True,
        placed_event_id=bindparam("pid"),
        amount=bindparam("amt"),
        currency=bindparam("cur"),
        customer_email=bindparam("email"),
        card_fingerprint=bindparam("fp"),
    )
)
_REQUEST_REFUND = (
    update(payments)
    .where(payments.c.order_id == bindparam("oid"), payments.c.refund_requested.is_(False))
    .values(
        refund_requested=True, refund_reason=bindparam("reason"), failure_event_id=bindparam("fid")
    )
)
_FULFIL = (
    update(payments)
    .where(payments.c.order_id == bindparam("oid"), payments.c.refund_requested.is_(False))
    .values(fulfilled=True)
)
_DEADLINE = (
    update(payments)
    .where(
        payments.c.order_id == bindparam("oid"),
        payments.c.captured.is_(True),
        payments.c.fulfilled.is_(False),
        payments.c.refund_requested.is_(False),
    )
    .values(
        refund_requested=True, refund_reason=bindparam("reason"), failure_event_id=bindparam("fid")
    )
)
#: Whoever makes the row imply a refund first owns it; only the owner emits it.
_CLAIM_REFUND = (
    update(payments)
    .where(
        payments.c.order_id == bindparam("oid"),
        payments.c.captured.is_(True),
        payments.c.refund_requested.is_(True),
        payments.c.refund_owner.is_(None),
    )
    .values(refund_owner=bindparam("cause"))
)


@flow("payment", topics=(ORDERS, ORDER_EVENTS))
def payment_flow(ctx: FlowContext) -> Handler:
    return PaymentSaga(ctx.db, ctx.topics.order_events)


@flow("saga-deadline", topics=(ORDER_EVENTS,))
def saga_deadline_flow(ctx: FlowContext) -> Handler:
    deadline = timedelta(seconds=ctx.settings.saga_deadline_s)
    return SagaDeadline(ctx.db, ctx.topics.order_events, deadline)

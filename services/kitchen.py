"""The kitchen: accepts or refuses each order, bakes it, and stops it on a fraud hold.

On ``OrderPlaced`` it emits ``OrderAccepted`` (with the time it will be ready) or, for any pizza
with pineapple on it, ``OrderRejected`` ("we have standards"). An ``OrderFlagged`` for an order
not yet out of the oven cancels it (``OrderCancelled``); the payment saga then refunds it.

Baking never blocks the kitchen (a hold must be able to overtake a bake): the oven is a flow of
its own, in its own group, that consumes ``OrderAccepted`` and is not handed one before its
``ready_by`` (``Handler.due_at``: the runtime pauses that partition until then). Taking a
pizza out and cancelling it are conditional UPDATEs of the same ticket row, so an order ends
either ready or cancelled, never both.

Every fact is emitted by the one event that decided it (the ticket remembers which), inside
the runtime's transaction: a redelivery of that event emits it again only if its first
transaction never committed, and any other event emits nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, Column, DateTime, String, Table, select, update
from sqlalchemy.engine import Row

from ingest.consumer import Delivery, Handler, Output
from ingest.events import (
    Event,
    OrderAccepted,
    OrderCancelled,
    OrderFlagged,
    OrderPlaced,
    OrderReady,
    OrderRejected,
    derived_event_id,
    utcnow,
)
from ingest.flows import FlowContext, flow
from ingest.topics import ORDER_EVENTS, ORDERS
from pizzashop.database import Database, chunked, metadata
from services.menu import Menu, load_menu

logger = logging.getLogger(__name__)

REJECTION_REASON = "we have standards"

tickets = Table(
    "kitchen_tickets",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("placed_event_id", String(64), nullable=True),
    Column("ready_by", DateTime(timezone=True), nullable=True, index=True),
    Column("accepted", Boolean, nullable=False, default=False),
    Column("rejected", Boolean, nullable=False, default=False),
    Column("ready", Boolean, nullable=False, default=False),
    Column("cancelled", Boolean, nullable=False, default=False),
    Column("cancel_event_id", String(64), nullable=True),
    Column("cancel_reason", String(200), nullable=True),
)


def has_pineapple(order: OrderPlaced, menu: Menu) -> bool:
    for item in order.items:
        known = menu.get(item.sku)
        if known is not None and known.has_pineapple:
            return True
        if "pineapple" in item.name.lower() or "hawaiian" in item.name.lower():
            return True
    return False


class Kitchen(Handler):
    event_types = (OrderPlaced, OrderFlagged)

    def __init__(self, db: Database, events_topic: str, menu: Menu, cook_seconds: float) -> None:
        self._db = db
        self._topic = events_topic
        self._menu = menu
        self._cook = timedelta(seconds=cook_seconds)

    async def handle(self, batch: Sequence[Delivery]) -> list[Output]:
        out: list[Output] = []
        for delivery in batch:
            event = delivery.event
            if isinstance(event, OrderPlaced):
                emitted = await self._decide(event)
            elif isinstance(event, OrderFlagged):
                emitted = await self._hold(event)
            else:
                continue
            out += [delivery.emit(self._topic, e) for e in emitted]
        return out

    async def _decide(self, order: OrderPlaced) -> list[Event]:
        refuse = has_pineapple(order, self._menu)
        flag = tickets.c.rejected if refuse else tickets.c.accepted
        values: dict[str, Any] = {"placed_event_id": order.event_id}
        if not refuse:
            values["ready_by"] = utcnow() + self._cook
        row = await self._set(order.order_id, flag, tickets.c.cancelled.is_(False), **values)
        if row.cancelled or row.placed_event_id != order.event_id:
            return []  # held for fraud before the kitchen saw it, or decided by another event
        if refuse:
            logger.info("kitchen rejects order %s: pineapple", order.order_id)
            return [
                OrderRejected(
                    event_id=derived_event_id(order.event_id, "OrderRejected"),
                    order_id=order.order_id,
                    reason=REJECTION_REASON,
                )
            ]
        return [
            OrderAccepted(
                event_id=derived_event_id(order.event_id, "OrderAccepted"),
                order_id=order.order_id,
                # The first decision's time, even on a redelivery (SQLite drops the offset).
                ready_by=_utc(row.ready_by),
            )
        ]

    async def _hold(self, flagged: OrderFlagged) -> list[Event]:
        reason = f"fraud hold: score {flagged.fraud_score:.3f} >= {flagged.threshold:.3f}"
        row = await self._set(
            flagged.order_id,
            tickets.c.cancelled,
            tickets.c.ready.is_(False) & tickets.c.rejected.is_(False),
            cancel_event_id=flagged.event_id,
            cancel_reason=reason,
        )
        if not row.cancelled or row.cancel_event_id != flagged.event_id:
            return []  # already out of the oven, refused anyway, or cancelled by another flag
        logger.info("kitchen cancels order %s: %s", flagged.order_id, reason)
        return [
            OrderCancelled(
                event_id=derived_event_id(flagged.event_id, "OrderCancelled"),
                order_id=flagged.order_id,
                reason=row.cancel_reason,
            )
        ]

    async def _set(self, order_id: str, flag: Any, condition: Any, **values: Any) -> Row[Any]:
        """Set ``flag`` (and ``values``) on the order's ticket if ``condition`` holds and the flag
        is not set yet; return the ticket as it now is."""
        async with self._db.engine.begin() as conn:
            await conn.execute(self._db.insert_ignore(tickets).values(order_id=order_id))
            await conn.execute(
                update(tickets)
                .where(tickets.c.order_id == order_id, flag.is_(False), condition)
                .values({flag.name: True, **values})
            )
            row = (await conn.execute(select(tickets).where(tickets.c.order_id == order_id))).one()
            return row


class Oven(Handler):
    """Takes each accepted order out when it is due, unless a fraud hold cancelled it first."""

    event_types = (OrderAccepted,)

    def __init__(self, db: Database, events_topic: str) -> None:
        self._db = db
        self._topic = events_topic

    def due_at(self, event: Event) -> datetime | None:
        assert isinstance(event, OrderAccepted)
        return event.ready_by

    async def handle(self, batch: Sequence[Delivery]) -> list[Output]:
        ids = [d.event.order_id for d in batch]
        ready: set[str] = set()
        async with self._db.engine.begin() as conn:
            for chunk in chunked(ids):
                await conn.execute(
                    update(tickets)
                    .where(
                        tickets.c.order_id.in_(chunk),
                        tickets.c.accepted.is_(True),
                        tickets.c.ready.is_(False),
                        tickets.c.cancelled.is_(False),
                    )
                    .values(ready=True)
                )
                rows = await conn.execute(
                    select(tickets.c.order_id).where(
                        tickets.c.order_id.in_(chunk), tickets.c.ready.is_(True)
                    )
                )
                ready.update(r.order_id for r in rows)
        # Only OrderAccepted takes a ticket out, and an order is accepted once: each ready
        # ticket here was taken out by this very event.
        return [
            d.emit(
                self._topic,
                OrderReady(
                    event_id=derived_event_id(d.event.event_id, "OrderReady"),
                    order_id=d.event.order_id,
                ),
            )
            for d in batch
            if d.event.order_id in ready
        ]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=value.tzinfo or UTC)


@flow("kitchen", topics=(ORDERS, ORDER_EVENTS))
def kitchen_flow(ctx: FlowContext) -> Handler:
    return Kitchen(ctx.db, ctx.topics.order_events, load_menu(), ctx.settings.cook_seconds)


@flow("oven", topics=(ORDER_EVENTS,))
def oven_flow(ctx: FlowContext) -> Handler:
    return Oven(ctx.db, ctx.topics.order_events)

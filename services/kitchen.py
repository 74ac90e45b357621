"""The kitchen: accepts or refuses each order, bakes it, and stops it on a fraud hold.

On ``OrderPlaced`` it emits ``OrderAccepted`` (with the time it will be ready) or, for any pizza
with pineapple on it, ``OrderRejected`` ("we have standards"). Baking is not a sleep inside the
intake path: the kitchen consumes its own ``OrderAccepted`` and emits ``OrderReady`` once
``ready_by`` has passed, so an order survives a kitchen crash mid-bake (the ``OrderAccepted``
record is redelivered and the order finished then). An ``OrderFlagged`` for an order not yet
ready cancels it (``OrderCancelled``), and the payment saga refunds it.

Each order has one ticket row whose flags only go from false to true, set by conditional
UPDATEs; after writing, the kitchen emits what the row implies, under ids derived from the
cause, so redeliveries and races emit nothing new. ``OrderFlagged`` and ``OrderAccepted`` share
the order's partition of ``order-events`` and so never race each other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Boolean, Column, String, Table, select, update
from sqlalchemy.engine import Row

from ingest.consumer import Delivery, Handler
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
from ingest.producer import EventProducer
from pizzashop.database import Database, metadata
from services.menu import Menu

logger = logging.getLogger(__name__)

REJECTION_REASON = "we have standards"

tickets = Table(
    "kitchen_tickets",
    metadata,
    Column("order_id", String(64), primary_key=True),
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
    event_types = frozenset({"OrderPlaced", "OrderAccepted", "OrderFlagged"})

    def __init__(
        self,
        db: Database,
        producer: EventProducer,
        events_topic: str,
        menu: Menu,
        cook_seconds: float,
    ) -> None:
        self._db = db
        self._producer = producer
        self._topic = events_topic
        self._menu = menu
        self._cook = timedelta(seconds=cook_seconds)

    async def handle(self, batch: Sequence[Delivery]) -> None:
        out: list[tuple[Event, str | None]] = []
        baked = [d for d in batch if isinstance(d.event, OrderAccepted)]
        if baked:
            # Wait once for the whole batch: the latest ready_by in it.
            wait = max(d.event.ready_by for d in baked if isinstance(d.event, OrderAccepted))
            delay = (wait - utcnow()).total_seconds()
            if delay > 0:
                await asyncio.sleep(delay)
        for delivery in batch:
            event = delivery.event
            if isinstance(event, OrderPlaced):
                emitted = await self._decide(event)
            elif isinstance(event, OrderAccepted):
                emitted = await self._finish(event)
            elif isinstance(event, OrderFlagged):
                emitted = await self._hold(event)
            else:
                continue
            out += [(e, delivery.traceparent) for e in emitted]
        if out:
            await self._producer.publish_many(
                self._topic, [e for e, _ in out], traceparents=[t for _, t in out]
            )

    async def _decide(self, order: OrderPlaced) -> list[Event]:
        refuse = has_pineapple(order, self._menu)
        flag = tickets.c.rejected if refuse else tickets.c.accepted
        row = await self._set(order.order_id, flag, tickets.c.cancelled.is_(False))
        if row.cancelled:
            return []  # held for fraud before the kitchen even saw it
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
                ready_by=utcnow() + self._cook,
            )
        ]

    async def _finish(self, accepted: OrderAccepted) -> list[Event]:
        row = await self._set(accepted.order_id, tickets.c.ready, tickets.c.cancelled.is_(False))
        if not row.ready:
            return []  # cancelled while baking
        return [
            OrderReady(
                event_id=derived_event_id(accepted.event_id, "OrderReady"),
                order_id=accepted.order_id,
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
        if not row.cancelled:
            return []  # already out of the oven, or refused anyway
        logger.info("kitchen cancels order %s: %s", flagged.order_id, reason)
        return [
            OrderCancelled(
                event_id=derived_event_id(row.cancel_event_id, "OrderCancelled"),
                order_id=flagged.order_id,
                reason=row.cancel_reason,
            )
        ]

    async def _set(self, order_id: str, flag: Any, condition: Any, **values: Any) -> Row[Any]:
        """Set ``flag`` on the order's ticket if ``condition`` holds; return the ticket."""
        async with self._db.engine.begin() as conn:
            await conn.execute(self._db.insert_ignore(tickets).values(order_id=order_id))
            await conn.execute(
                update(tickets)
                .where(tickets.c.order_id == order_id, flag.is_(False), condition)
                .values({flag.name: True, **values})
            )
            row = (await conn.execute(select(tickets).where(tickets.c.order_id == order_id))).one()
            return row  # type: ignore[no-any-return]

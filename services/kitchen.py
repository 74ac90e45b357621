"""The kitchen: accepts or refuses each order, bakes it, and stops it on a fraud hold.

On ``OrderPlaced`` it emits ``OrderAccepted`` (with the time it will be ready) or, for any pizza
with pineapple on it, ``OrderRejected`` ("we have standards"). An ``OrderFlagged`` for an order
not yet out of the oven cancels it (``OrderCancelled``); the payment saga then refunds it.

Baking never blocks consumption (a hold must be able to overtake a bake): each accepted order is
a ticket row with its ``ready_by``, and the oven, a loop beside the consumer, takes due tickets
out. Taking out is a claim (an atomic UPDATE, only of tickets not cancelled) followed by the
publish of ``OrderReady`` and a mark; a claim whose publish was cut short by a crash is
published again by the next oven. So every order ends either ready or cancelled, never both.

Ticket flags only go from false to true, by conditional UPDATEs; the kitchen emits what the row
implies under ids derived from the cause, so redeliveries and races emit nothing new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, timedelta
from typing import Any

from sqlalchemy import Boolean, Column, DateTime, String, Table, select, update
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
    Column("placed_event_id", String(64), nullable=True),
    Column("ready_by", DateTime(timezone=True), nullable=True, index=True),
    Column("accepted", Boolean, nullable=False, default=False),
    Column("rejected", Boolean, nullable=False, default=False),
    Column("ready", Boolean, nullable=False, default=False),  # claimed by an oven
    Column("ready_published", Boolean, nullable=False, default=False),
    Column("claim", String(36), nullable=True, index=True),
    Column("claimed_at", DateTime(timezone=True), nullable=True),
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
    event_types = frozenset({"OrderPlaced", "OrderFlagged"})

    def __init__(
        self,
        db: Database,
        producer: EventProducer,
        events_topic: str,
        menu: Menu,
        cook_seconds: float,
        *,
        oven_tick_s: float = 0.1,
        stale_claim_s: float = 30.0,
    ) -> None:
        self._db = db
        self._producer = producer
        self._topic = events_topic
        self._menu = menu
        self._cook = timedelta(seconds=cook_seconds)
        self._tick = oven_tick_s
        self._stale = timedelta(seconds=stale_claim_s)
        self._oven: asyncio.Task[None] | None = None

    # -- the consumer side ----------------------------------------------------------------
    async def handle(self, batch: Sequence[Delivery]) -> None:
        out: list[tuple[Event, str | None]] = []
        for delivery in batch:
            event = delivery.event
            if isinstance(event, OrderPlaced):
                emitted = await self._decide(event)
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
        values: dict[str, Any] = {"placed_event_id": order.event_id}
        if not refuse:
            values["ready_by"] = utcnow() + self._cook
        row = await self._set(order.order_id, flag, tickets.c.cancelled.is_(False), **values)
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
                # The first decision's time, even on a redelivery (SQLite drops the offset).
                ready_by=row.ready_by.replace(tzinfo=row.ready_by.tzinfo or UTC),
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

    # -- the oven -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._oven is None:
            self._oven = asyncio.create_task(self._bake_forever(), name="kitchen-oven")

    async def stop(self) -> None:
        if self._oven is not None:
            self._oven.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._oven
            self._oven = None

    async def _bake_forever(self) -> None:
        while True:
            try:
                await self.take_out_due()
            except Exception:
                # Kafka or the database away: the tickets wait in the table; try again soon.
                logger.warning("oven: taking out due orders failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
            await asyncio.sleep(self._tick)

    async def take_out_due(self) -> int:
        """Claim due tickets, publish their ``OrderReady``, mark them; returns how many."""
        claim = str(uuid.uuid4())
        now = utcnow()
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(tickets)
                .where(
                    tickets.c.accepted.is_(True),
                    tickets.c.ready.is_(False),
                    tickets.c.cancelled.is_(False),
                    tickets.c.ready_by <= now,
                )
                .values(ready=True, claim=claim, claimed_at=now)
            )
            # Claims another oven made but never published (it crashed): take them over.
            await conn.execute(
                update(tickets)
                .where(
                    tickets.c.ready.is_(True),
                    tickets.c.ready_published.is_(False),
                    tickets.c.claimed_at < now - self._stale,
                )
                .values(claim=claim, claimed_at=now)
            )
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(tickets.c.order_id, tickets.c.placed_event_id).where(
                        tickets.c.claim == claim, tickets.c.ready_published.is_(False)
                    )
                )
            ).all()
        if not rows:
            return 0
        await self._producer.publish_many(
            self._topic,
            [
                OrderReady(
                    event_id=derived_event_id(row.placed_event_id, "OrderReady"),
                    order_id=row.order_id,
                )
                for row in rows
            ],
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(tickets).where(tickets.c.claim == claim).values(ready_published=True)
            )
        return len(rows)

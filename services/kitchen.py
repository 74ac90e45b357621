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

from sqlalchemy import Boolean, Column, DateTime, String, Table, bindparam, select, update
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
from pizzashop.core.database import Database, chunked, metadata, rows_by_key
from pizzashop.core.menu import Menu, load_menu

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
        """One transaction for the whole batch: decide, hold, then read back what each event
        decided (the ticket remembers which event set which flag)."""
        placed = [d.event for d in batch if isinstance(d.event, OrderPlaced)]
        flagged = [d.event for d in batch if isinstance(d.event, OrderFlagged)]
        ready_by = utcnow() + self._cook
        decisions = [(o, has_pineapple(o, self._menu)) for o in placed]
        async with self._db.engine.begin() as conn:
            ids = sorted({d.event.order_id for d in batch})
            await conn.execute(self._db.insert_ignore(tickets), [{"order_id": i} for i in ids])
            accept = [
                {"oid": o.order_id, "pid": o.event_id, "rby": ready_by}
                for o, refuse in decisions
                if not refuse
            ]
            reject = [{"oid": o.order_id, "pid": o.event_id} for o, refuse in decisions if refuse]
            if accept:
                await conn.execute(_DECIDE_ACCEPT, accept)
            if reject:
                await conn.execute(_DECIDE_REJECT, reject)
            if flagged:
                await conn.execute(
                    _HOLD,
                    [
                        {"oid": f.order_id, "fid": f.event_id, "reason": _hold_reason(f)}
                        for f in flagged
                    ],
                )
            rows = await rows_by_key(conn, tickets.c.order_id, ids)
        out: list[Output] = []
        for delivery in batch:
            emitted = self._implied(delivery.event, rows[delivery.event.order_id])
            if emitted is not None:
                out.append(delivery.emit(self._topic, emitted))
        return out

    @staticmethod
    def _implied(event: Event, row: Row[Any]) -> Event | None:
        """What ``event`` decided, as the ticket now says; nothing if another event decided."""
        if isinstance(event, OrderPlaced):
            if row.cancelled or row.placed_event_id != event.event_id:
                return None  # held for fraud before the kitchen saw it, or decided by another
            if row.rejected:
                logger.info("kitchen rejects order %s: pineapple", event.order_id)
                return OrderRejected(
                    event_id=derived_event_id(event.event_id, "OrderRejected"),
                    order_id=event.order_id,
                    reason=REJECTION_REASON,
                )
            return OrderAccepted(
                event_id=derived_event_id(event.event_id, "OrderAccepted"),
                order_id=event.order_id,
                # The first decision's time, even on a redelivery (SQLite drops the offset).
                ready_by=_utc(row.ready_by),
            )
        if isinstance(event, OrderFlagged):
            if not row.cancelled or row.cancel_event_id != event.event_id:
                return None  # already out of the oven, refused anyway, or cancelled by another
            logger.info("kitchen cancels order %s: %s", event.order_id, row.cancel_reason)
            return OrderCancelled(
                event_id=derived_event_id(event.event_id, "OrderCancelled"),
                order_id=event.order_id,
                reason=row.cancel_reason,
            )
        return None


def _hold_reason(flagged: OrderFlagged) -> str:
    return f"fraud hold: score {flagged.fraud_score:.3f} >= {flagged.threshold:.3f}"


# Each flag goes from false to true once, set by the first event that may set it; executed
# for a whole batch at a time (executemany).
_UNDECIDED = (
    tickets.c.order_id == bindparam("oid"),
    tickets.c.accepted.is_(False),
    tickets.c.rejected.is_(False),
    tickets.c.cancelled.is_(False),
)
_DECIDE_ACCEPT = (
    update(tickets)
    .where(*_UNDECIDED)
    .values(accepted=True, placed_event_id=bindparam("pid"), ready_by=bindparam("rby"))
)
_DECIDE_REJECT = (
    update(tickets).where(*_UNDECIDED).values(rejected=True, placed_event_id=bindparam("pid"))
)
_HOLD = (
    update(tickets)
    .where(
        tickets.c.order_id == bindparam("oid"),
        tickets.c.cancelled.is_(False),
        tickets.c.ready.is_(False),
        tickets.c.rejected.is_(False),
    )
    .values(cancelled=True, cancel_event_id=bindparam("fid"), cancel_reason=bindparam("reason"))
)


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

"""The order-status projection: every order's timeline, read by ``GET /orders/{id}``.

The intake writes an order's first row (``OrderPlaced``) in the same transaction as its outbox
entry, so a confirmed order is visible at once. ``StatusProjection`` then folds every later event
in. Rows are keyed by event id, so a redelivered event changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, DateTime, Numeric, String, Table, Text, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ingest.consumer import Delivery, Handler, Output
from ingest.events import ORDER_LIFECYCLE, Event, OrderPlaced
from ingest.flows import FlowContext, flow
from ingest.topics import ORDER_EVENTS, ORDERS
from pizzashop.core.database import Database, chunked, metadata

orders = Table(
    "orders",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False, index=True),
    Column("total", Numeric(12, 2), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("placed_at", DateTime(timezone=True), nullable=False),
    Column("body", Text, nullable=False),
)

timeline = Table(
    "order_timeline",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("order_id", String(64), nullable=False, index=True),
    Column("event_type", String(64), nullable=False, index=True),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("detail", Text, nullable=False),
)

#: Fields of each event worth showing in a timeline (the rest is in the event itself).
_DETAIL_FIELDS = ("reason", "amount", "ready_by", "recipient", "fraud_score", "threshold")

# Final states: once here an order needs nothing more from the shop.
FINAL_EVENTS = frozenset({"OrderReady", "RefundIssued"})


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    event_type: str
    event_id: str
    occurred_at: datetime
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OrderView:
    order_id: str
    status: str
    final: bool
    total: str
    currency: str
    placed_at: datetime
    timeline: tuple[TimelineEntry, ...]


def _utc(moment: datetime) -> datetime:
    # SQLite returns stored UTC datetimes without their offset; say what they are.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def derive_status(event_types: set[str]) -> str:
    """The status a person would say, from the set of events seen for an order."""
    if "OrderRejected" in event_types or "OrderCancelled" in event_types:
        return "refunded" if "RefundIssued" in event_types else "rejected"
    if "OrderReady" in event_types:
        return "ready"
    if "OrderAccepted" in event_types:
        return "baking"
    return "confirmed"


async def record_placed(conn: AsyncConnection, db: Database, event: OrderPlaced) -> None:
    """Called by the intake inside its transaction; a second order with the same id fails."""
    await conn.execute(orders.insert().values(**_order_row(event)))
    await conn.execute(db.insert_ignore(timeline).values(**_timeline_row(event)))


def _order_row(event: OrderPlaced) -> dict[str, Any]:
    return {
        "order_id": event.order_id,
        "customer_id": event.customer_id,
        "total": event.total,
        "currency": event.currency,
        "placed_at": event.placed_at,
        "body": event.model_dump_json(),
    }


def _timeline_row(event: Event) -> dict[str, Any]:
    data = event.model_dump(mode="json", include=set(_DETAIL_FIELDS))
    return {
        "event_id": event.event_id,
        "order_id": event.order_id,
        "event_type": event.event_type,
        "occurred_at": event.occurred_at,
        "detail": json.dumps(data),
    }


class StatusProjection(Handler):
    event_types = ORDER_LIFECYCLE

    def __init__(self, db: Database) -> None:
        self._db = db

    async def handle(self, batch: Sequence[Delivery]) -> list[Output]:
        placed = [d.event for d in batch if isinstance(d.event, OrderPlaced)]
        async with self._db.engine.begin() as conn:
            if placed:
                await conn.execute(self._db.insert_ignore(orders), [_order_row(e) for e in placed])
            await conn.execute(
                self._db.insert_ignore(timeline), [_timeline_row(d.event) for d in batch]
            )
        return []


class StatusQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def order(self, order_id: str) -> OrderView | None:
        async with self._db.engine.connect() as conn:
            head = (await conn.execute(select(orders).where(orders.c.order_id == order_id))).first()
            if head is None:
                return None
            rows = await conn.execute(
                select(timeline)
                .where(timeline.c.order_id == order_id)
                .order_by(timeline.c.occurred_at, timeline.c.recorded_at)
            )
            entries = tuple(
                TimelineEntry(r.event_type, r.event_id, _utc(r.occurred_at), json.loads(r.detail))
                for r in rows
            )
        types = {e.event_type for e in entries}
        return OrderView(
            order_id=order_id,
            status=derive_status(types),
            final=bool(types & FINAL_EVENTS),
            total=f"{head.total:.2f}",
            currency=head.currency,
            placed_at=_utc(head.placed_at),
            timeline=entries,
        )

    async def counts(self, order_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Orders per event type (each order counted once per type), optionally of some orders."""
        query = select(timeline.c.event_type, timeline.c.order_id).distinct()
        totals: dict[str, int] = {}
        async with self._db.engine.connect() as conn:
            chunks: list[Sequence[str] | None] = (
                [None] if order_ids is None else list(chunked(order_ids))
            )
            for chunk in chunks:
                scoped = query if chunk is None else query.where(timeline.c.order_id.in_(chunk))
                sub = scoped.subquery()
                counted = select(sub.c.event_type, func.count()).group_by(sub.c.event_type)
                for event_type, count in await conn.execute(counted):
                    totals[event_type] = totals.get(event_type, 0) + int(count)
        return totals

    async def unfinished(self, order_ids: Sequence[str]) -> set[str]:
        """Those of ``order_ids`` that have not reached a final state yet."""
        done: set[str] = set()
        async with self._db.engine.connect() as conn:
            for chunk in chunked(order_ids):
                rows = await conn.execute(
                    select(func.distinct(timeline.c.order_id)).where(
                        timeline.c.order_id.in_(chunk),
                        timeline.c.event_type.in_(FINAL_EVENTS),
                    )
                )
                done.update(r[0] for r in rows)
        return set(order_ids) - done


@flow("status", topics=(ORDERS, ORDER_EVENTS), dedupe=False)
def status_flow(ctx: FlowContext) -> Handler:
    # Inserts that ignore existing keys: a replayed event changes nothing, no dedupe needed.
    return StatusProjection(ctx.db)

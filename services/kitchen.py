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

On SQLite each batch's transaction runs whole in aiosqlite's thread, in one hand-off
(``Database.run_sqlite``, ``BEGIN IMMEDIATE``), with the same statements compiled once; through
the engine each statement, the commit and the pool's reset were a hand-off each, and batches of
other partitions queued for the one connection meanwhile. PostgreSQL runs them through the engine.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Boolean, Column, DateTime, String, Table, bindparam, select, update
from sqlalchemy.engine import Dialect, Row

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
from pizzashop.core.database import Database, Prepared, chunked, metadata, rows_by_key
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
        self._sqlite: _KitchenSql | None = None

    async def handle(self, batch: Sequence[Delivery]) -> list[Output]:
        """One transaction for the whole batch: decide, hold, then read back what each event
        decided (the ticket remembers which event set which flag)."""
        placed = [d.event for d in batch if isinstance(d.event, OrderPlaced)]
        flagged = [d.event for d in batch if isinstance(d.event, OrderFlagged)]
        ready_by = utcnow() + self._cook
        decisions = [(o, has_pineapple(o, self._menu)) for o in placed]
        ids = sorted({d.event.order_id for d in batch})
        accept = [
            {"oid": o.order_id, "pid": o.event_id, "rby": ready_by}
            for o, refuse in decisions
            if not refuse
        ]
        reject = [{"oid": o.order_id, "pid": o.event_id} for o, refuse in decisions if refuse]
        hold = [{"oid": f.order_id, "fid": f.event_id, "reason": _hold_reason(f)} for f in flagged]
        rows: Mapping[str, Row[Any] | _Ticket]
        if self._db.dialect == "sqlite":
            # Every parameter is bound here, on the loop, and every row typed here: the
            # connection's thread only runs SQLite.
            sql = self._sql()
            writes = sql.writes(ids, accept, reject, hold)
            reads = [sql.read(chunk) for chunk in chunked(ids)]
            raw = await self._db.run_sqlite(
                lambda conn: _decide_sqlite(conn, writes, reads), write=True
            )
            rows = {t.order_id: t for t in map(sql.ticket, raw)}
        else:
            async with self._db.engine.begin() as conn:
                await conn.execute(self._db.insert_ignore(tickets), [{"order_id": i} for i in ids])
                if accept:
                    await conn.execute(_DECIDE_ACCEPT, accept)
                if reject:
                    await conn.execute(_DECIDE_REJECT, reject)
                if hold:
                    await conn.execute(_HOLD, hold)
                rows = await rows_by_key(conn, tickets.c.order_id, ids)
        out: list[Output] = []
        for delivery in batch:
            emitted = self._implied(delivery.event, rows[delivery.event.order_id])
            if emitted is not None:
                out.append(delivery.emit(self._topic, emitted))
        return out

    def _sql(self) -> _KitchenSql:
        if self._sqlite is None:
            self._sqlite = _KitchenSql.compile(self._db)
        return self._sqlite

    @staticmethod
    def _implied(event: Event, row: Row[Any] | _Ticket) -> Event | None:
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
        self._sqlite: _OvenSql | None = None

    def due_at(self, event: Event) -> datetime | None:
        assert isinstance(event, OrderAccepted)
        return event.ready_by

    async def handle(self, batch: Sequence[Delivery]) -> list[Output]:
        ids = [d.event.order_id for d in batch]
        ready: set[str] = set()
        if self._db.dialect == "sqlite":
            if self._sqlite is None:
                self._sqlite = _OvenSql(
                    self._db.prepare(_TAKE_OUT.where(tickets.c.order_id == bindparam("oid"))),
                    self._db.prepare(_READY.where(tickets.c.order_id == bindparam("oid"))),
                )
            sql = self._sqlite
            once = [{"oid": i} for i in dict.fromkeys(ids)]
            take_out = [sql.take_out.params(key) for key in once]
            out = [sql.ready.params(key) for key in once]
            ready = await self._db.run_sqlite(
                lambda conn: _take_out_sqlite(conn, sql, take_out, out), write=True
            )
        else:
            async with self._db.engine.begin() as conn:
                for chunk in chunked(ids):
                    await conn.execute(_TAKE_OUT.where(tickets.c.order_id.in_(chunk)))
                    rows = await conn.execute(_READY.where(tickets.c.order_id.in_(chunk)))
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


# Taking a ticket out, and which tickets are out, for a list of order ids (an IN list through
# the engine, one id per statement on SQLite).
_TAKE_OUT = (
    update(tickets)
    .where(
        tickets.c.accepted.is_(True),
        tickets.c.ready.is_(False),
        tickets.c.cancelled.is_(False),
    )
    .values(ready=True)
)
_READY = select(tickets.c.order_id).where(tickets.c.ready.is_(True))


# -- SQLite: each batch's transaction one function in the connection's thread ------------------
#
# The same statements, compiled once (``Database.prepare``); lists go one key per statement
# (executemany, or one lookup by primary key each): a prepared statement takes no ``IN (...)``
# of any length, and a lookup by key costs SQLite microseconds.


class _Ticket(NamedTuple):
    """What ``Kitchen._implied`` reads of a ticket (on SQLite; the engine's ``Row`` elsewhere)."""

    order_id: str
    placed_event_id: str | None
    ready_by: datetime  # None on a ticket never accepted: never read there
    rejected: bool
    cancelled: bool
    cancel_event_id: str | None
    cancel_reason: str | None


_TICKET_COLUMNS = tuple(tickets.c[name] for name in _Ticket._fields)
# The columns' Python-side defaults, which the engine fills in on an INSERT and a prepared
# statement does not (all scalars: the flags start false).
_NEW_TICKET = {
    c.key: c.default.arg  # type: ignore[attr-defined]
    for c in tickets.c
    if c.default is not None and c.default.is_scalar
}


@dataclass(frozen=True, slots=True)
class _KitchenSql:
    """The kitchen's statements compiled for SQLite, and how to type a ticket read back."""

    insert: Prepared
    accept: Prepared
    reject: Prepared
    hold: Prepared
    ticket_types: tuple[Callable[[Any], Any] | None, ...]
    db: Database
    # The read of n tickets by key, ``WHERE order_id IN (?, ... n)``, by n (compiled when first
    # needed: a prepared statement takes no IN list of any length, and one lookup per key cost
    # twice as much).
    reads: dict[int, Prepared] = field(default_factory=dict)

    @classmethod
    def compile(cls, db: Database) -> _KitchenSql:
        return cls(
            insert=db.prepare(db.insert_ignore(tickets), ("order_id",)),
            accept=db.prepare(_DECIDE_ACCEPT),
            reject=db.prepare(_DECIDE_REJECT),
            hold=db.prepare(_HOLD),
            ticket_types=_result_processors(db.engine.dialect, _TICKET_COLUMNS),
            db=db,
        )

    def writes(
        self, order_ids: Sequence[str], *decisions: Sequence[dict[str, Any]]
    ) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """The insert of ``order_ids``'s tickets, then the accept, reject and hold statements
        (in that order, those with rows), each with its rows bound."""
        new = [self.insert.params({**_NEW_TICKET, "order_id": i}) for i in order_ids]
        pairs = zip((self.accept, self.reject, self.hold), decisions, strict=True)
        return [
            (self.insert.sql, new),
            *((stmt.sql, [stmt.params(row) for row in rows]) for stmt, rows in pairs if rows),
        ]

    def read(self, order_ids: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
        """The read of ``order_ids``'s tickets (at most ``chunked``'s size), bound."""
        stmt = self.reads.get(len(order_ids))
        if stmt is None:
            keys = [f"k{n}" for n in range(len(order_ids))]
            stmt = self.reads[len(order_ids)] = self.db.prepare(
                select(*_TICKET_COLUMNS).where(
                    tickets.c.order_id.in_([bindparam(key) for key in keys])
                )
            )
        return stmt.sql, stmt.params({f"k{n}": i for n, i in enumerate(order_ids)})

    def ticket(self, row: Sequence[Any]) -> _Ticket:
        """A ticket read back, typed as the engine types it."""
        return _Ticket(
            *(
                process(value) if process else value
                for process, value in zip(self.ticket_types, row, strict=True)
            )
        )


@dataclass(frozen=True, slots=True)
class _OvenSql:
    take_out: Prepared
    ready: Prepared


def _decide_sqlite(
    conn: sqlite3.Connection,
    writes: Sequence[tuple[str, Sequence[tuple[Any, ...]]]],
    reads: Sequence[tuple[str, tuple[Any, ...]]],
) -> list[Any]:
    """``Kitchen.handle``'s transaction in the SQLite connection's thread (``run_sqlite``):
    the insert and the decisions, in order, then the tickets read back (raw rows)."""
    for statement, params in writes:
        conn.executemany(statement, params)
    return [row for statement, params in reads for row in conn.execute(statement, params)]


def _take_out_sqlite(
    conn: sqlite3.Connection,
    sql: _OvenSql,
    take_out: Sequence[tuple[Any, ...]],
    out: Sequence[tuple[Any, ...]],
) -> set[str]:
    """``Oven.handle``'s transaction in the SQLite connection's thread (``run_sqlite``): each
    order id taken out, then those out read back (the parameters bound by the caller)."""
    conn.executemany(sql.take_out.sql, take_out)
    return {row[0] for params in out for row in conn.execute(sql.ready.sql, params)}


def _result_processors(
    dialect: Dialect, columns: Sequence[Column[Any]]
) -> tuple[Callable[[Any], Any] | None, ...]:
    """SQLAlchemy's result processing of each column's type on ``dialect`` (SQLite: text to
    ``datetime``, 0/1 to ``bool``), as the engine applies it to a row."""
    return tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=value.tzinfo or UTC)


@flow("kitchen", topics=(ORDERS, ORDER_EVENTS))
def kitchen_flow(ctx: FlowContext) -> Handler:
    return Kitchen(ctx.db, ctx.topics.order_events, load_menu(), ctx.settings.cook_seconds)


@flow("oven", topics=(ORDER_EVENTS,))
def oven_flow(ctx: FlowContext) -> Handler:
    return Oven(ctx.db, ctx.topics.order_events)

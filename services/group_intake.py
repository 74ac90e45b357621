"""Order intake through a group commit: concurrent orders share one transaction.

``GroupIntake`` is ``OrderIntake`` (same constructor, same ``place``, same answers) with the
write batched: each request validates its order and encodes its record on its own, then joins
the next group (``ingest.group_commit``); the group's orders, first timeline rows and outbox
rows go in with three multi-row statements and one commit. A request is confirmed only after
the transaction holding its order has committed; a group that fails fails every order in it
(none of them is stored, each request sees the error).

Idempotency keys hold as before: a client ``order_id`` already stored, or repeated within one
group, answers ``duplicate``. Groups commit one at a time, so an id committed by an earlier
group is always seen by the next one's check. Only another process can slip the same id in
between a group's check and its insert; the insert then fails on the key and the group is
retried one order per transaction, each with its own check, so each request gets its own
answer. On SQLite the check and the inserts are one ``BEGIN IMMEDIATE`` transaction run in the
connection's thread in one hand-off (``Database.run_sqlite``), so there the race cannot happen.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ingest.codec import PLAIN_JSON, Serializer
from ingest.events import OrderPlaced
from ingest.group_commit import GroupCommitter
from ingest.outbox import (
    OutboxEntry,
    add_entries_sqlite,
    add_entries_to_outbox,
    outbox_entry,
    prepare_outbox_insert,
)
from pizzashop.core.database import Database, Prepared, chunked
from pizzashop.core.menu import Menu
from services.intake import OrderRequest, Placed, build_order

# The status projection's own row builders: the intake writes the order's first rows exactly
# as ``record_placed`` does, only many per statement.
from services.status import _order_row, _timeline_row, orders, timeline


@dataclass(frozen=True, slots=True)
class _Order:
    event: OrderPlaced
    entry: OutboxEntry
    keyed: bool  # the client chose the id: check it against stored orders


@dataclass(frozen=True, slots=True)
class _Sql:
    """The intake's statements compiled for SQLite."""

    stored: Prepared
    orders: Prepared
    timeline: Prepared
    outbox: Prepared


class GroupIntake:
    """Validates, stores durably in a shared transaction, confirms. ``max_group`` caps how
    many orders one transaction holds."""

    def __init__(
        self,
        db: Database,
        menu: Menu,
        orders_topic: str,
        *,
        on_committed: Callable[[], None] = lambda: None,
        serializer: Serializer = PLAIN_JSON,
        max_group: int = 256,
    ) -> None:
        self._db = db
        self._menu = menu
        self._topic = orders_topic
        self._on_committed = on_committed
        self._serializer = serializer
        self._sqlite: _Sql | None = None
        self.committer: GroupCommitter[_Order, Placed] = GroupCommitter(
            self._commit, max_group=max_group
        )

    async def place(self, request: OrderRequest, traceparent: str | None = None) -> Placed:
        """Store the order and its outbox row in the next group's transaction; return once it
        has committed. ``traceparent`` as for ``OrderIntake.place``: the record is encoded
        here, in the request's context, so an unset one names the request's current span."""
        order_id = request.order_id or f"ord-{uuid.uuid4().hex[:16]}"
        event = build_order(request, self._menu, order_id)
        entry = outbox_entry(self._topic, event, traceparent, serializer=self._serializer)
        return await self.committer.submit(_Order(event, entry, request.order_id is not None))

    async def _commit(self, group: Sequence[_Order]) -> list[Placed | Exception]:
        try:
            answers = await self._write(group)
        except IntegrityError as exc:
            if len(group) == 1:
                return [await self._lost_race(group[0], exc)]
            # Another process stored one of these ids after the check: one at a time, so the
            # others are not failed for it.
            return [answer for order in group for answer in await self._commit([order])]
        if any(not answer.duplicate for answer in answers):
            self._on_committed()
        return list(answers)

    async def _write(self, group: Sequence[_Order]) -> list[Placed]:
        if self._db.dialect == "sqlite":
            sql = self._sql()
            return await self._db.run_sqlite(
                lambda conn: self._write_sqlite(conn, sql, group), write=True
            )
        keyed = [order.event.order_id for order in group if order.keyed]
        stored = await self._stored(keyed) if keyed else {}
        answers, fresh = _sort_out(group, stored)
        if fresh:
            async with self._db.engine.begin() as conn:
                await self._insert(conn, fresh)
        return answers

    def _write_sqlite(
        self, conn: sqlite3.Connection, sql: _Sql, group: Sequence[_Order]
    ) -> list[Placed]:
        """``_write`` in the connection's thread, inside its transaction: check, insert."""
        keyed = [order.event.order_id for order in group if order.keyed]
        stored = self._stored_sqlite(conn, sql, keyed) if keyed else {}
        answers, fresh = _sort_out(group, stored)
        if fresh:
            events = [order.event for order in fresh]
            conn.executemany(
                sql.orders.sql, [sql.orders.params(_order_row(event)) for event in events]
            )
            conn.executemany(
                sql.timeline.sql, [sql.timeline.params(_timeline_row(event)) for event in events]
            )
            add_entries_sqlite(conn, sql.outbox, [order.entry for order in fresh])
        return answers

    def _stored_sqlite(
        self, conn: sqlite3.Connection, sql: _Sql, order_ids: Sequence[str]
    ) -> dict[str, str]:
        """``_stored`` in the connection's thread: one lookup by key per id."""
        found: dict[str, str] = {}
        for order_id in dict.fromkeys(order_ids):
            row = conn.execute(sql.stored.sql, sql.stored.params({"order_id": order_id})).fetchone()
            if row is not None:
                found[order_id] = OrderPlaced.model_validate_json(row[0]).event_id
        return found

    def _sql(self) -> _Sql:
        if self._sqlite is None:
            db = self._db
            self._sqlite = _Sql(
                stored=db.prepare(
                    select(orders.c.body).where(orders.c.order_id == bindparam("order_id"))
                ),
                orders=db.prepare(orders.insert(), _ORDER_KEYS),
                timeline=db.prepare(db.insert_ignore(timeline), _TIMELINE_KEYS),
                outbox=prepare_outbox_insert(db),
            )
        return self._sqlite

    async def _insert(self, conn: AsyncConnection, fresh: Sequence[_Order]) -> None:
        events = [order.event for order in fresh]
        await conn.execute(orders.insert(), [_order_row(event) for event in events])
        await conn.execute(
            self._db.insert_ignore(timeline), [_timeline_row(event) for event in events]
        )
        await add_entries_to_outbox(conn, [order.entry for order in fresh])

    async def _lost_race(self, order: _Order, exc: IntegrityError) -> Placed | Exception:
        """One order whose insert failed on a key: a duplicate if its id is stored now, else
        the error stands (for this request alone)."""
        order_id = order.event.order_id
        stored = await self._stored([order_id])
        if order_id in stored:
            return Placed(order_id, stored[order_id], duplicate=True)
        return exc

    async def _stored(self, order_ids: Sequence[str]) -> dict[str, str]:
        """The event id of each of ``order_ids`` already stored."""
        found: dict[str, str] = {}
        async with self._db.engine.connect() as conn:
            for chunk in chunked(order_ids):
                rows = await conn.execute(
                    select(orders.c.order_id, orders.c.body).where(orders.c.order_id.in_(chunk))
                )
                for row in rows:
                    found[row.order_id] = OrderPlaced.model_validate_json(row.body).event_id
        return found


_ORDER_KEYS = ("order_id", "customer_id", "total", "currency", "placed_at", "body")
_TIMELINE_KEYS = ("event_id", "order_id", "event_type", "occurred_at", "detail")


def _sort_out(group: Sequence[_Order], stored: dict[str, str]) -> tuple[list[Placed], list[_Order]]:
    """Each order's answer, and the orders to insert: those whose id is neither ``stored``
    (id -> event id) nor earlier in the group."""
    answers: list[Placed] = []
    fresh: list[_Order] = []
    for order in group:
        order_id = order.event.order_id
        if order_id in stored:  # placed before, or earlier in this group
            answers.append(Placed(order_id, stored[order_id], duplicate=True))
            continue
        stored[order_id] = order.event.event_id
        fresh.append(order)
        answers.append(Placed(order_id, order.event.event_id, duplicate=False))
    return answers, fresh

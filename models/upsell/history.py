"""What each customer bought before: the upsell model's history, served as it was trained.

Training (``prior_histories``) gives basket ``i`` the customer's purchases strictly before it.
Serving must give the same: ``before(orders)`` returns, for each order of a batch, the SKUs of
that customer's earlier orders (stored ones and earlier ones of the same batch, ordered by
placement time), then records the batch. Records are keyed by order id, so a redelivered order
neither counts twice nor sees itself. Only the latest ``keep`` orders per customer are used.

On SQLite a batch's reads and its insert run in one transaction in aiosqlite's thread, in one
hand-off (``Database.run_sqlite``, ``BEGIN IMMEDIATE``), with the statements compiled once;
through the engine each statement, the commit and the pool's reset were a hand-off each.
PostgreSQL runs them through the engine.
"""

from __future__ import annotations

import json
import sqlite3
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
import sqlalchemy as sa

from ingest.events import OrderPlaced
from pizzashop.core.database import Database, Prepared, chunked, metadata
from pizzashop.core.lifecycle import Resource

basket_history = sa.Table(
    "upsell_baskets",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("customer_id", sa.String(64), nullable=False, index=True),
    sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("skus", sa.Text, nullable=False),
)

_Entry = tuple[datetime, str, list[str]]  # placed_at (UTC, naive), order id, skus


class BasketHistory(Protocol):
    async def before(self, orders: Sequence[OrderPlaced]) -> list[list[str]]:
        """Each order's customer's earlier SKUs; then remember these orders."""


def _entry(order: OrderPlaced) -> _Entry:
    placed = order.placed_at.astimezone(UTC).replace(tzinfo=None)
    return placed, order.order_id, [item.sku for item in order.items]


def _histories(
    orders: Sequence[OrderPlaced], known: dict[str, list[_Entry]], keep: int
) -> list[list[str]]:
    timeline: dict[str, dict[str, _Entry]] = defaultdict(dict)
    for customer, entries in known.items():
        for entry in entries:
            timeline[customer][entry[1]] = entry
    mine = [_entry(order) for order in orders]
    for order, entry in zip(orders, mine, strict=True):
        timeline[order.customer_id].setdefault(order.order_id, entry)
    # Each customer's timeline sorted once (by placed_at, then order id: no two entries share
    # both, so the SKU lists are never compared); each order takes the entries before its own.
    ordered: dict[str, list[_Entry]] = {}
    out: list[list[str]] = []
    for order, (placed, order_id, _) in zip(orders, mine, strict=True):
        line = ordered.get(order.customer_id)
        if line is None:
            line = ordered[order.customer_id] = sorted(timeline[order.customer_id].values())
        # (placed, id) sorts before the 3-tuple that starts with it: the end of the earlier ones.
        end = bisect_left(line, (placed, order_id))
        out.append([sku for _, _, skus in line[max(0, end - keep) : end] for sku in skus])
    return out


def histories_in_order(orders: Sequence[OrderPlaced], keep: int = 50) -> list[list[str]]:
    """Each order's history as serving gives it when ``orders`` (by placement time) are every
    order the shop has seen: the SKUs of its customer's latest ``keep`` earlier orders. What
    training scores the upsell drift reference with (``models.training``)."""
    return _histories(orders, {}, keep)


class InMemoryBasketHistory:
    def __init__(self, keep: int = 50) -> None:
        self._keep = keep
        self._by_customer: dict[str, list[_Entry]] = defaultdict(list)
        self._seen: set[str] = set()

    async def before(self, orders: Sequence[OrderPlaced]) -> list[list[str]]:
        result = _histories(orders, self._by_customer, self._keep)
        for order in orders:
            if order.order_id not in self._seen:
                self._seen.add(order.order_id)
                self._by_customer[order.customer_id].append(_entry(order))
        return result


class SqlBasketHistory(Resource):
    """The history in one table of the shop's database; it survives restarts and rebalances.
    It borrows the database: ``stop()`` leaves it open."""

    def __init__(self, db: Database, keep: int = 50) -> None:
        self._db = db
        self._keep = keep
        self._sqlite: _HistorySql | None = None  # the statements, compiled when on SQLite

    async def _start(self) -> None:
        async with self._db.engine.begin() as conn:
            await conn.run_sync(basket_history.create, checkfirst=True)
        if self._db.dialect == "sqlite":
            self._sqlite = _HistorySql.compile(self._db, self._keep)

    async def _stop(self) -> None:
        """Nothing to release: the history borrows the shop's database."""

    async def before(self, orders: Sequence[OrderPlaced]) -> list[list[str]]:
        if (sql := self._sqlite) is not None:
            return await self._before_sqlite(sql, orders)
        customers = sorted({o.customer_id for o in orders})
        known: dict[str, list[_Entry]] = defaultdict(list)
        async with self._db.engine.connect() as conn:
            for chunk in chunked(customers):
                # Only each customer's latest ``keep`` orders: the history stays bounded however
                # long a customer has been ordering.
                recent = (
                    sa.select(
                        basket_history,
                        sa.func.row_number()
                        .over(
                            partition_by=basket_history.c.customer_id,
                            order_by=(
                                basket_history.c.placed_at.desc(),
                                basket_history.c.order_id.desc(),
                            ),
                        )
                        .label("recency"),
                    )
                    .where(basket_history.c.customer_id.in_(chunk))
                    .subquery()
                )
                rows = await conn.execute(sa.select(recent).where(recent.c.recency <= self._keep))
                for row in rows:
                    known[row.customer_id].append(_stored(row.placed_at, row.order_id, row.skus))
        result = _histories(orders, known, self._keep)
        await self._record(orders)
        return result

    async def _before_sqlite(
        self, sql: _HistorySql, orders: Sequence[OrderPlaced]
    ) -> list[list[str]]:
        """``before`` on SQLite: the reads and the insert in one write transaction, so what
        was read is what the batch's rows were added to (no other writer in between)."""
        if not orders:
            return []
        customers = dict.fromkeys(o.customer_id for o in orders)  # each once, in batch order
        reads = [(c, sql.recent.params({"customer_id": c})) for c in customers]
        writes = [sql.record.params(_row(o)) for o in orders]
        raw = await self._db.run_sqlite(
            lambda conn: _before_sqlite(conn, sql, reads, writes), write=True
        )
        known: dict[str, list[_Entry]] = {
            customer: [sql.entry(row) for row in rows] for customer, rows in raw
        }
        return _histories(orders, known, self._keep)

    async def _record(self, orders: Iterable[OrderPlaced]) -> None:
        rows = [_row(o) for o in orders]
        if rows:
            async with self._db.engine.begin() as conn:
                await conn.execute(self._db.insert_ignore(basket_history), rows)


# -- SQLite: a batch's transaction one function in the connection's thread ---------------------
#
# A prepared statement takes no ``IN (...)`` of any length, so each customer's latest ``keep``
# orders are one lookup on the customer index (microseconds in SQLite), not the engine path's
# window function over an IN list.

_RECORD_KEYS = ("order_id", "customer_id", "placed_at", "skus")


@dataclass(frozen=True, slots=True)
class _HistorySql:
    """The history's statements compiled for SQLite, and how ``placed_at`` is read back."""

    recent: Prepared  # one customer's latest ``keep`` orders: order_id, placed_at, skus
    record: Prepared  # the insert-or-ignore of one order's row
    # SQLAlchemy's processing of the stored text into a ``datetime``, as the engine applies it
    placed_at: Callable[[Any], Any] | None

    @classmethod
    def compile(cls, db: Database, keep: int) -> _HistorySql:
        h = basket_history.c
        dialect = db.engine.dialect
        return cls(
            recent=db.prepare(
                sa.select(h.order_id, h.placed_at, h.skus)
                .where(h.customer_id == sa.bindparam("customer_id"))
                .order_by(h.placed_at.desc(), h.order_id.desc())
                .limit(keep)
            ),
            record=db.prepare(db.insert_ignore(basket_history), _RECORD_KEYS),
            placed_at=h.placed_at.type.dialect_impl(dialect).result_processor(dialect, None),
        )

    def entry(self, row: Sequence[Any]) -> _Entry:
        """A row of ``recent`` read raw as a timeline entry, typed as the engine types it."""
        order_id, placed, skus = row
        return _stored(self.placed_at(placed) if self.placed_at else placed, order_id, skus)


def _before_sqlite(
    conn: sqlite3.Connection,
    sql: _HistorySql,
    reads: Sequence[tuple[str, tuple[Any, ...]]],
    writes: Sequence[tuple[Any, ...]],
) -> list[tuple[str, list[Any]]]:
    """``SqlBasketHistory.before``'s transaction in the SQLite connection's thread
    (``run_sqlite``): each customer's stored orders (raw rows) read before the batch is
    recorded, then the batch's rows inserted or ignored (parameters bound by the caller)."""
    known = [
        (customer, conn.execute(sql.recent.sql, params).fetchall()) for customer, params in reads
    ]
    conn.executemany(sql.record.sql, writes)
    return known


# -- shared by both paths -----------------------------------------------------------------------


def _row(order: OrderPlaced) -> dict[str, object]:
    """An order as the table's columns, on either path."""
    return {
        "order_id": order.order_id,
        "customer_id": order.customer_id,
        "placed_at": order.placed_at,
        "skus": json.dumps([item.sku for item in order.items]),
    }


def _stored(placed: datetime, order_id: str, skus: str) -> _Entry:
    """A stored order as a timeline entry, on either path (PostgreSQL reads ``placed_at`` aware,
    SQLite naive)."""
    if placed.tzinfo is not None:
        placed = placed.astimezone(UTC).replace(tzinfo=None)
    return placed, order_id, orjson.loads(skus)

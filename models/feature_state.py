"""Where the stateful features keep their state, behind one small Protocol.

``InMemoryFeatureState`` serves training, tests and the ``score`` command;
``SqlFeatureState`` (SQLAlchemy async, SQLite by default, PostgreSQL by URL) lets the state
survive a worker restart and a partition moving to another worker. Both answer the same
``StateQuery`` with a ``StateSnapshot`` and take the same ``OrderFacts``, and ``FeatureBuilder``
is the one code path that turns orders into features with either.

Entity state and several workers. The orders are keyed by order id, so one customer's or one
card's orders are handled by different workers; the features must still be the ones a single
worker computes over the sorted stream (what training computes). So the SQL state is read in
event time rather than "as the workers left it":

* its entity rows are a ledger of known orders (one row per order and entity), written
  idempotently by whoever learns of an order first: the enricher's ``OrderLedger``, which
  reads every partition as orders arrive (``register``), or the batch itself (``apply``);
* a batch's snapshot holds, besides what a prune folded, every known order of its customers
  and of its cards, devices and addresses in the window, as ``pending`` entries that
  ``stateful_features`` replays in (placed_at, order id) order: each order sees exactly the
  orders placed before it, however registration and batches interleaved;
* the ledger's gate (``ArrivalGate``, ``enrichers.ledger``) lets a snapshot be read only once
  every order placed up to the batch's latest one is registered.

No lock is needed: writes are insert-or-ignore of facts that do not depend on who writes them,
and a snapshot is one consistent read. Why not a repartition topic keyed by customer id, or
per-key locks around snapshot-then-apply: ``enrichers.ledger`` explains.

Pruning: ``prune`` folds ledger rows older than a cutoff into ``feature_customers`` and
``feature_links`` (lifetime counts, spend and links survive) and deletes them, in one
transaction; ``apply`` does it every ``PRUNE_EVERY_S`` with the cutoff ``PRUNE_LAG_S`` (the
longest window and a day of slack) before its batch.

Idempotence: a fact whose order id has stored features is skipped and a redelivered order gets
its stored features back, so a batch handled twice (say, after a crash between storing and
committing the offset) counts nothing twice.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ingest.events import OrderPlaced
from models.features import (
    FEATURE_SCHEMA_VERSION,
    N_FEATURES,
    WINDOW_LONG_S,
    EntityEvent,
    LedgerEntry,
    OrderFacts,
    OrderFrame,
    StateQuery,
    StateSnapshot,
    basket_features,
    order_entities,
    state_query,
    stateful_features,
)
from pizzashop.core.database import Prepared, chunked, metadata, prepare_for, run_sqlite_on
from pizzashop.core.lifecycle import Resource

logger = logging.getLogger(__name__)

#: How often ``SqlFeatureState.apply`` prunes, at most (seconds, per store object).
PRUNE_EVERY_S = 60.0
#: How far before a batch's earliest order the ledger is folded: the longest window it reads,
#: plus a day of slack for a worker that lags the others or an order that comes late.
PRUNE_LAG_S = 2 * WINDOW_LONG_S


@runtime_checkable
class FeatureStateStore(Protocol):
    async def snapshot(self, query: StateQuery) -> StateSnapshot:
        """The state a batch needs, read before any of the batch is applied."""
        ...

    async def apply(self, facts: Sequence[OrderFacts]) -> None:
        """Store the batch's facts; facts for already-stored order ids are ignored."""
        ...


class InMemoryFeatureState:
    """Dicts in this process. Event lists are pruned to the longest window as time moves on."""

    def __init__(self) -> None:
        self._seen: dict[str, np.ndarray] = {}
        self._events: dict[tuple[str, str], list[EntityEvent]] = defaultdict(list)
        self._customers: dict[str, tuple[int, float]] = {}
        self._links: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
        self._high_water = float("-inf")

    def snapshot_sync(self, query: StateQuery) -> StateSnapshot:
        return StateSnapshot(
            seen={oid: self._seen[oid] for oid in query.order_ids if oid in self._seen},
            events={
                key: [e for e in self._events[key] if e.ts >= query.since]
                for key in query.entities
                if key in self._events
            },
            customers={c: self._customers[c] for c in query.customer_ids if c in self._customers},
            links={link for c in query.customer_ids for link in self._links.get(c, ())},
        )

    def apply_sync(self, facts: Sequence[OrderFacts]) -> None:
        for fact in facts:
            if fact.order_id in self._seen:
                continue
            self._seen[fact.order_id] = fact.features
            event = EntityEvent(fact.order_id, fact.ts, fact.total, fact.customer_id)
            for key in fact.entities:
                self._events[key].append(event)
            prior, spend = self._customers.get(fact.customer_id, (0, 0.0))
            self._customers[fact.customer_id] = (prior + 1, spend + fact.total)
            for kind, value in fact.links:
                self._links[fact.customer_id].add((fact.customer_id, kind, value))
            self._high_water = max(self._high_water, fact.ts)
        self._prune()

    def _prune(self) -> None:
        # keep a day of slack so a moderately late order still sees its full window
        cutoff = self._high_water - 2 * WINDOW_LONG_S
        for key in [k for k, ev in self._events.items() if ev and ev[0].ts < cutoff]:
            kept = [e for e in self._events[key] if e.ts >= cutoff]
            if kept:
                self._events[key] = kept
            else:
                del self._events[key]

    async def snapshot(self, query: StateQuery) -> StateSnapshot:
        return self.snapshot_sync(query)

    async def apply(self, facts: Sequence[OrderFacts]) -> None:
        self.apply_sync(facts)


# -- SQL ---------------------------------------------------------------------------------------

orders_table = sa.Table(
    "feature_orders",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("features", sa.LargeBinary, nullable=False),  # float32 bytes: exact round trip
)
events_table = sa.Table(
    "feature_entity_events",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("entity_id", sa.String(64), primary_key=True),
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("total", sa.Float, nullable=False),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Index("ix_feature_entity_events_key_ts", "kind", "entity_id", "ts"),
    # a batch reads its customers' link rows; a prune deletes by time
    sa.Index("ix_feature_entity_events_customer", "customer_id"),
    sa.Index("ix_feature_entity_events_ts", "ts"),
)
customers_table = sa.Table(
    "feature_customers",
    metadata,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("n_orders", sa.Integer, nullable=False),
    sa.Column("spend", sa.Float, nullable=False),
)
links_table = sa.Table(
    "feature_links",
    metadata,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("value", sa.String(64), primary_key=True),
)


class ArrivalGate(Protocol):
    """What tells a store that every order placed before a batch's orders is known to it
    (``enrichers.ledger.OrderLedger``)."""

    async def wait(self, query: StateQuery) -> None:
        """Return once the state holds every order placed up to ``query.until``; raise
        (``TransientError``) after a bounded wait."""
        ...


#: The entity kinds whose rows the SQL state keeps; NOVEL is derived when the state is read.
_STORED_KINDS = ("customer", "card", "device", "address")
_LINK_KINDS = ("card", "device", "address")


class SqlFeatureState(Resource):
    """The state in SQL tables, read in event time. ``start()`` before use, ``stop()`` after;
    with ``engine`` it borrows that engine (the shop's database) and leaves it open.

    What the tables hold:

    * ``feature_entity_events``: one row per order and entity (customer, card, device, address):
      the ledger of known orders. Rows are written by ``register`` (every order the ledger
      reads, by whichever process gets there first) and by ``apply`` (the batch's own);
      both skip orders already there, so there is one row per order and entity however many
      processes write it.
    * ``feature_customers`` and ``feature_links``: what ``prune`` folded out of the ledger (orders
      older than the cutoff): the counts, spend and links of customers before the rows kept.
    * ``feature_orders``: the features each order got, so a redelivery gets the same answer.

    A batch's snapshot is the folded aggregates of its customers plus, as ``pending`` entries
    sorted by (placed_at, order id), every known order of its customers and of its cards,
    devices and addresses within the window; ``stateful_features`` replays them in event time,
    so an order sees exactly the orders placed before it, whatever order they were registered
    in and however the orders were split across batches and workers.
    """

    def __init__(
        self,
        url: str,
        *,
        engine: AsyncEngine | None = None,
        gate: ArrivalGate | None = None,
        prune_every_s: float = PRUNE_EVERY_S,
    ) -> None:
        self._url = url
        self._engine = engine
        self._owns_engine = engine is None
        self.gate = gate
        self._prune_every_s = prune_every_s
        self._next_prune = 0.0  # monotonic time of the next prune in ``apply``
        self._sqlite: _Sql | None = None  # the statements, compiled when on SQLite

    async def _start(self) -> None:
        if self._engine is None:
            self._engine = create_async_engine(self._url)
        async with self._engine.begin() as conn:
            await conn.run_sync(
                metadata.create_all,
                tables=[orders_table, events_table, customers_table, links_table],
            )
        if self._engine.dialect.name == "sqlite":
            self._sqlite = _Sql.compile(self._engine.dialect)

    async def _stop(self) -> None:
        if self._engine is not None and self._owns_engine:
            await self._engine.dispose()

    @property
    def engine(self) -> AsyncEngine:
        self._check_running()
        assert self._engine is not None
        return self._engine

    async def snapshot(self, query: StateQuery) -> StateSnapshot:
        if self.gate is not None:
            await self.gate.wait(query)
        snap = StateSnapshot(seen={}, events={}, customers={}, links=set())
        entries: dict[str, _Entry] = {}
        if (sql := self._sqlite) is not None:
            await run_sqlite_on(
                self.engine,
                lambda conn: _snapshot_sqlite(conn, sql, query, snap, entries),
                write=False,
            )
        else:
            await self._snapshot_engine(query, snap, entries)
        # The batch's own orders are computed by it, unless they already were (a redelivery).
        computed = set(query.order_ids) - snap.seen.keys()
        snap.pending = sorted(
            (e.freeze() for oid, e in entries.items() if oid not in computed),
            key=lambda e: (e.ts, e.order_id),
        )
        return snap

    async def _snapshot_engine(
        self, query: StateQuery, snap: StateSnapshot, entries: dict[str, _Entry]
    ) -> None:
        t = events_table.c
        customers = set(query.customer_ids)
        async with self.engine.connect() as conn:
            # One snapshot for all the reads: a prune folding rows in between would otherwise
            # count them twice or not at all. pysqlite opens no transaction for a SELECT, so
            # SQLite is told to; PostgreSQL's default isolation takes a snapshot per statement.
            if conn.dialect.name == "postgresql":
                await conn.execution_options(isolation_level="REPEATABLE READ")
            else:
                await conn.exec_driver_sql("BEGIN")
            for chunk in chunked(query.order_ids):
                rows = await conn.execute(
                    sa.select(orders_table.c.order_id, orders_table.c.features).where(
                        orders_table.c.order_id.in_(chunk),
                        # features stored under another schema are recomputed, never reused
                        orders_table.c.schema_version == FEATURE_SCHEMA_VERSION,
                    )
                )
                for oid, blob in map(tuple, rows):
                    snap.seen[oid] = np.frombuffer(blob, dtype=np.float32).copy()
            for chunk in chunked(query.customer_ids):
                rows = await conn.execute(
                    sa.select(customers_table).where(customers_table.c.customer_id.in_(chunk))
                )
                for cid, n, spend in map(tuple, rows):
                    snap.customers[cid] = (n, spend)
                rows = await conn.execute(
                    sa.select(links_table).where(links_table.c.customer_id.in_(chunk))
                )
                snap.links.update((cid, kind, value) for cid, kind, value in map(tuple, rows))
                # the customers' whole unfolded history: lifetime counts and links need it
                rows = await conn.execute(
                    sa.select(t.kind, t.entity_id, t.order_id, t.ts, t.total, t.customer_id).where(
                        sa.or_(
                            sa.and_(t.kind == "customer", t.entity_id.in_(chunk)),
                            sa.and_(t.kind.in_(_LINK_KINDS), t.customer_id.in_(chunk)),
                        )
                    )
                )
                _collect(entries, rows, customers)
            by_kind: dict[str, list[str]] = defaultdict(list)
            for kind, entity in query.entities:
                if kind in _LINK_KINDS:
                    by_kind[kind].append(entity)
            for kind, ids in by_kind.items():
                for chunk in chunked(ids):
                    rows = await conn.execute(
                        sa.select(
                            t.kind, t.entity_id, t.order_id, t.ts, t.total, t.customer_id
                        ).where(t.kind == kind, t.entity_id.in_(chunk), t.ts >= query.since)
                    )
                    _collect(entries, rows, customers)

    async def apply(self, facts: Sequence[OrderFacts]) -> None:
        """Store the batch's features and register its orders (a no-op for known order ids);
        every ``prune_every_s`` the same transaction also prunes."""
        if not facts:
            return
        now = time.monotonic()
        prune_before: float | None = None
        if now >= self._next_prune:
            self._next_prune = now + self._prune_every_s
            prune_before = min(f.ts for f in facts) - PRUNE_LAG_S
        if (sql := self._sqlite) is not None:
            removed = await run_sqlite_on(
                self.engine,
                lambda conn: _apply_sqlite(conn, sql, facts, prune_before),
                write=True,
            )
            if prune_before is not None:
                _log_prune(removed, prune_before)
            return
        async with self.engine.begin() as conn:
            fresh = await self._unknown(conn, facts)
            if fresh:
                await conn.execute(
                    orders_table.insert(),
                    [
                        {
                            "order_id": f.order_id,
                            "ts": f.ts,
                            "schema_version": FEATURE_SCHEMA_VERSION,
                            "features": f.features.astype(np.float32).tobytes(),
                        }
                        for f in fresh
                    ],
                )
                await self._register(conn, _fact_rows(fresh))
            if prune_before is not None:
                await self._prune(conn, prune_before)

    async def register(self, orders: Sequence[OrderPlaced]) -> int:
        """Record ``orders`` in the ledger (idempotent); returns how many were new.

        Orders whose features are stored already are skipped: their rows are there, or were
        folded by a prune, and registering them again would count them twice.
        """
        if not orders:
            return 0
        frame = OrderFrame.from_orders(orders)
        if (sql := self._sqlite) is not None:
            return await run_sqlite_on(
                self.engine, lambda conn: _register_sqlite(conn, sql, frame), write=True
            )
        async with self.engine.begin() as conn:
            stored: set[str] = set()
            for chunk in chunked(sorted(set(frame.order_id))):
                rows = await conn.execute(
                    sa.select(orders_table.c.order_id).where(orders_table.c.order_id.in_(chunk))
                )
                stored.update(r[0] for r in rows)
            return await self._register(conn, _ledger_rows(frame, stored))

    async def _register(
        self, conn: AsyncConnection, rows: Sequence[tuple[str, str, float, float, str, str]]
    ) -> int:
        if not rows:
            return 0
        stmt = self._insert(events_table).on_conflict_do_nothing()
        result = await conn.execute(
            stmt,
            [_event_row(row) for row in rows],
        )
        return max(int(result.rowcount or 0), 0)

    async def _unknown(
        self, conn: AsyncConnection, facts: Sequence[OrderFacts]
    ) -> list[OrderFacts]:
        """The facts whose order has no stored features yet, first of each order id."""
        existing: set[str] = set()
        for chunk in chunked([f.order_id for f in facts]):
            rows = await conn.execute(
                sa.select(orders_table.c.order_id).where(orders_table.c.order_id.in_(chunk))
            )
            existing.update(r[0] for r in rows)
        fresh: dict[str, OrderFacts] = {}
        for f in facts:
            if f.order_id not in existing and f.order_id not in fresh:
                fresh[f.order_id] = f
        return list(fresh.values())

    async def prune(self, before_ts: float) -> int:
        """Fold the ledger rows older than ``before_ts`` (epoch seconds) into the customers'
        counts and links and delete them; returns how many rows went.

        Order ids (and their features) are kept, so redeliveries stay idempotent. ``apply``
        runs this every ``prune_every_s`` with ``before_ts`` one window plus a day of slack
        before its batch (``PRUNE_LAG_S``).
        """
        if (sql := self._sqlite) is not None:
            removed = await run_sqlite_on(
                self.engine, lambda conn: _prune_sqlite(conn, sql, before_ts), write=True
            )
            _log_prune(removed, before_ts)
            return removed
        async with self.engine.begin() as conn:
            return await self._prune(conn, before_ts)

    async def _prune(self, conn: AsyncConnection, before_ts: float) -> int:
        t = events_table.c
        # DELETE ... RETURNING: a row folds exactly once even when two workers prune at once
        # (PostgreSQL's second delete waits on the first's row locks, then finds nothing).
        result = await conn.execute(
            events_table.delete()
            .where(t.ts < before_ts)
            .returning(t.kind, t.entity_id, t.customer_id, t.total)
        )
        deltas: dict[str, tuple[int, float]] = {}
        links: set[tuple[str, str, str]] = set()
        removed = 0
        for kind, entity, cid, total in map(tuple, result):
            removed += 1
            _fold(deltas, links, kind, entity, cid, total)
        if deltas:
            await self._upsert_customers(conn, deltas)
        await self._insert_links(conn, sorted(links))
        _log_prune(removed, before_ts)
        return removed

    def _insert(self, table: sa.Table) -> Any:  # a dialect Insert with on_conflict_*
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    async def _upsert_customers(
        self, conn: AsyncConnection, deltas: dict[str, tuple[int, float]]
    ) -> None:
        stmt = self._insert(customers_table)
        stmt = stmt.on_conflict_do_update(
            index_elements=["customer_id"],
            set_={
                "n_orders": customers_table.c.n_orders + stmt.excluded.n_orders,
                "spend": customers_table.c.spend + stmt.excluded.spend,
            },
        )
        await conn.execute(
            stmt, [{"customer_id": c, "n_orders": n, "spend": s} for c, (n, s) in deltas.items()]
        )

    async def _insert_links(self, conn: AsyncConnection, links: list[tuple[str, str, str]]) -> None:
        if not links:
            return
        stmt = self._insert(links_table).on_conflict_do_nothing()
        await conn.execute(stmt, [{"customer_id": c, "kind": k, "value": v} for c, k, v in links])


# -- SQLite: each operation one function in the connection's thread ----------------------------
#
# Through the async engine every statement (and the BEGIN, the COMMIT, the pool's reset) is a
# hand-off between the event loop and aiosqlite's thread, and the hand-offs, not SQLite, were
# most of a batch's snapshot and apply. So on SQLite each operation runs whole in that thread
# (``run_sqlite_on``), with statements compiled once by SQLAlchemy (the same SQL and type
# processing). Lists are looked up one key per statement: a prepared statement cannot take an
# ``IN (...)`` of any length, and a lookup by key costs SQLite microseconds.

_LEDGER_COLUMNS = (
    events_table.c.kind,
    events_table.c.entity_id,
    events_table.c.order_id,
    events_table.c.ts,
    events_table.c.total,
    events_table.c.customer_id,
)
_EVENT_KEYS = ("kind", "entity_id", "order_id", "ts", "total", "customer_id")


@dataclass(frozen=True, slots=True)
class _Sql:
    """``SqlFeatureState``'s statements compiled for SQLite."""

    seen: Prepared  # the stored features of an order id, under this schema version
    stored: Prepared  # whether an order id has stored features
    customer: Prepared  # a customer's folded counts
    links: Prepared  # a customer's folded links
    own: Prepared  # a customer's ledger rows
    linked: Prepared  # the ledger's card, device and address rows of a customer's orders
    entity: Prepared  # an entity's ledger rows since a time
    insert_order: Prepared
    insert_event: Prepared
    fold: Prepared  # DELETE ... RETURNING the ledger rows before a time
    upsert_customer: Prepared
    insert_link: Prepared

    @classmethod
    def compile(cls, dialect: sa.Dialect) -> _Sql:
        from sqlalchemy.dialects.sqlite import insert

        o, t, c, k = orders_table.c, events_table.c, customers_table.c, links_table.c
        upsert = insert(customers_table)
        upsert = upsert.on_conflict_do_update(
            index_elements=["customer_id"],
            set_={
                "n_orders": c.n_orders + upsert.excluded.n_orders,
                "spend": c.spend + upsert.excluded.spend,
            },
        )
        return cls(
            seen=prepare_for(
                dialect,
                sa.select(o.order_id, o.features).where(
                    o.order_id == sa.bindparam("order_id"),
                    o.schema_version == FEATURE_SCHEMA_VERSION,
                ),
            ),
            stored=prepare_for(
                dialect, sa.select(o.order_id).where(o.order_id == sa.bindparam("order_id"))
            ),
            customer=prepare_for(
                dialect,
                sa.select(customers_table).where(c.customer_id == sa.bindparam("customer_id")),
            ),
            links=prepare_for(
                dialect, sa.select(links_table).where(k.customer_id == sa.bindparam("customer_id"))
            ),
            own=prepare_for(
                dialect,
                sa.select(*_LEDGER_COLUMNS).where(
                    t.kind == "customer", t.entity_id == sa.bindparam("customer_id")
                ),
            ),
            linked=prepare_for(
                dialect,
                sa.select(*_LEDGER_COLUMNS).where(
                    sa.or_(*(t.kind == kind for kind in _LINK_KINDS)),
                    t.customer_id == sa.bindparam("customer_id"),
                ),
            ),
            entity=prepare_for(
                dialect,
                sa.select(*_LEDGER_COLUMNS).where(
                    t.kind == sa.bindparam("kind"),
                    t.entity_id == sa.bindparam("entity_id"),
                    t.ts >= sa.bindparam("since"),
                ),
            ),
            insert_order=prepare_for(
                dialect, orders_table.insert(), ("order_id", "ts", "schema_version", "features")
            ),
            insert_event=prepare_for(
                dialect, insert(events_table).on_conflict_do_nothing(), _EVENT_KEYS
            ),
            fold=prepare_for(
                dialect,
                events_table.delete()
                .where(t.ts < sa.bindparam("before"))
                .returning(t.kind, t.entity_id, t.customer_id, t.total),
            ),
            upsert_customer=prepare_for(dialect, upsert, ("customer_id", "n_orders", "spend")),
            insert_link=prepare_for(
                dialect,
                insert(links_table).on_conflict_do_nothing(),
                ("customer_id", "kind", "value"),
            ),
        )


def _snapshot_sqlite(
    conn: sqlite3.Connection,
    sql: _Sql,
    query: StateQuery,
    snap: StateSnapshot,
    entries: dict[str, _Entry],
) -> None:
    """``SqlFeatureState.snapshot``'s reads, in one read transaction (one snapshot: a prune
    folding rows in between would otherwise count them twice or not at all)."""
    customers = set(query.customer_ids)
    conn.execute("BEGIN")
    try:
        for oid in query.order_ids:
            for oid_, blob in conn.execute(sql.seen.sql, sql.seen.params({"order_id": oid})):
                snap.seen[oid_] = np.frombuffer(blob, dtype=np.float32).copy()
        for cid in query.customer_ids:
            key = {"customer_id": cid}
            for cid_, n, spend in conn.execute(sql.customer.sql, sql.customer.params(key)):
                snap.customers[cid_] = (n, spend)
            snap.links.update(conn.execute(sql.links.sql, sql.links.params(key)))
            # the customers' whole unfolded history: lifetime counts and links need it
            _collect(entries, conn.execute(sql.own.sql, sql.own.params(key)), customers)
            _collect(entries, conn.execute(sql.linked.sql, sql.linked.params(key)), customers)
        for kind, entity in query.entities:
            if kind in _LINK_KINDS:
                row = {"kind": kind, "entity_id": entity, "since": query.since}
                _collect(entries, conn.execute(sql.entity.sql, sql.entity.params(row)), customers)
    finally:
        conn.rollback()  # it only read


def _apply_sqlite(
    conn: sqlite3.Connection, sql: _Sql, facts: Sequence[OrderFacts], prune_before: float | None
) -> int:
    """``SqlFeatureState.apply`` inside its write transaction; returns how many ledger rows a
    prune folded (0 without one)."""
    fresh: dict[str, OrderFacts] = {}
    for f in facts:
        if f.order_id not in fresh and not _stored(conn, sql, f.order_id):
            fresh[f.order_id] = f
    if fresh:
        conn.executemany(
            sql.insert_order.sql,
            [
                sql.insert_order.params(
                    {
                        "order_id": f.order_id,
                        "ts": f.ts,
                        "schema_version": FEATURE_SCHEMA_VERSION,
                        "features": f.features.astype(np.float32).tobytes(),
                    }
                )
                for f in fresh.values()
            ],
        )
        _insert_events(conn, sql, _fact_rows(list(fresh.values())))
    return 0 if prune_before is None else _prune_sqlite(conn, sql, prune_before)


def _register_sqlite(conn: sqlite3.Connection, sql: _Sql, frame: OrderFrame) -> int:
    """``SqlFeatureState.register`` inside its write transaction."""
    stored = {oid for oid in set(frame.order_id) if _stored(conn, sql, oid)}
    return _insert_events(conn, sql, _ledger_rows(frame, stored))


def _prune_sqlite(conn: sqlite3.Connection, sql: _Sql, before_ts: float) -> int:
    """``SqlFeatureState._prune`` inside a write transaction (which the DELETE's lock makes
    the only folding one)."""
    deltas: dict[str, tuple[int, float]] = {}
    links: set[tuple[str, str, str]] = set()
    removed = 0
    for kind, entity, cid, total in conn.execute(
        sql.fold.sql, sql.fold.params({"before": before_ts})
    ).fetchall():
        removed += 1
        _fold(deltas, links, kind, entity, cid, total)
    if deltas:
        conn.executemany(
            sql.upsert_customer.sql,
            [
                sql.upsert_customer.params({"customer_id": c, "n_orders": n, "spend": s})
                for c, (n, s) in deltas.items()
            ],
        )
    if links:
        conn.executemany(
            sql.insert_link.sql,
            [
                sql.insert_link.params({"customer_id": c, "kind": k, "value": v})
                for c, k, v in sorted(links)
            ],
        )
    return removed


def _stored(conn: sqlite3.Connection, sql: _Sql, order_id: str) -> bool:
    return (
        conn.execute(sql.stored.sql, sql.stored.params({"order_id": order_id})).fetchone()
        is not None
    )


def _insert_events(
    conn: sqlite3.Connection, sql: _Sql, rows: Sequence[tuple[str, str, float, float, str, str]]
) -> int:
    if not rows:
        return 0
    cursor = conn.executemany(
        sql.insert_event.sql,
        [sql.insert_event.params(_event_row(row)) for row in rows],
    )
    return max(cursor.rowcount, 0)  # the rows inserted, the known ones ignored


# -- shared by both paths -----------------------------------------------------------------------


def _ledger_rows(
    frame: OrderFrame, stored: set[str]
) -> list[tuple[str, str, float, float, str, str]]:
    """The ledger rows of ``frame``'s orders, but those in ``stored``."""
    rows: list[tuple[str, str, float, float, str, str]] = []
    for i, oid in enumerate(frame.order_id):
        if oid in stored:
            continue
        for kind, entity in order_entities(frame, i):
            rows.append(
                (oid, frame.customer_id[i], float(frame.ts[i]), float(frame.total[i]), kind, entity)
            )
    return rows


def _fact_rows(fresh: Sequence[OrderFacts]) -> list[tuple[str, str, float, float, str, str]]:
    """The ledger rows of scored orders."""
    return [
        (f.order_id, f.customer_id, f.ts, f.total, kind, entity)
        for f in fresh
        for kind, entity in f.entities
        if kind in _STORED_KINDS
    ]


def _fold(
    deltas: dict[str, tuple[int, float]],
    links: set[tuple[str, str, str]],
    kind: str,
    entity: str,
    cid: str,
    total: float,
) -> None:
    """One pruned ledger row into the customers' counts and links."""
    if kind == "customer":
        n, s = deltas.get(cid, (0, 0.0))
        deltas[cid] = (n + 1, s + total)
    elif kind in _LINK_KINDS:
        links.add((cid, kind, entity))


def _log_prune(removed: int, before_ts: float) -> None:
    if removed:
        logger.info("feature state: folded %d ledger rows before %.0f", removed, before_ts)


@dataclass(slots=True)
class _Entry:
    """A known order being gathered from its ledger rows (one row per entity)."""

    order_id: str
    customer_id: str
    ts: float
    total: float
    entities: set[tuple[str, str]] = field(default_factory=set)
    links: list[tuple[str, str]] | None = None

    def freeze(self) -> LedgerEntry:
        links = None if self.links is None else tuple(sorted(set(self.links)))
        return LedgerEntry(
            self.order_id,
            self.customer_id,
            self.ts,
            self.total,
            tuple(sorted(self.entities)),
            links,
        )


def _collect(entries: dict[str, _Entry], rows: Any, customers: set[str]) -> None:
    """Ledger rows into entries; a batch customer's orders also gather their links (the
    customer's rows and link rows come together, so those entries are complete)."""
    for kind, entity, oid, ts, total, cid in map(tuple, rows):
        entry = entries.get(oid)
        if entry is None:
            entry = entries[oid] = _Entry(oid, cid, ts, total)
        entry.entities.add((kind, entity))
        if cid in customers:
            if entry.links is None:
                entry.links = []
            if kind in _LINK_KINDS:
                entry.links.append((kind, entity))


class FeatureBuilder:
    """Orders → feature matrix through a store; the single training-and-serving code path."""

    def __init__(self, store: FeatureStateStore) -> None:
        self.store = store

    async def transform(self, orders: Sequence[OrderPlaced]) -> np.ndarray:
        """Features of ``orders`` in order, updating the store. [n, N_FEATURES] float32.

        Computed in event time, (placed_at, order id), whatever order ``orders`` come in: the
        features of an order depend on the orders placed before it, not on a batch's layout.
        """
        if not orders:
            return np.zeros((0, N_FEATURES), dtype=np.float32)
        order = sorted(range(len(orders)), key=lambda i: (orders[i].placed_at, orders[i].order_id))
        frame = OrderFrame.from_orders([orders[i] for i in order])
        basket = basket_features(frame)
        snap = await self.store.snapshot(state_query(frame))
        computed, facts = stateful_features(frame, basket, snap)
        await self.store.apply(facts)
        features = np.empty_like(computed)
        features[order] = computed
        return features


def features_for_stream(
    orders: Sequence[OrderPlaced],
    state: InMemoryFeatureState | None = None,
    *,
    batch_size: int = 1000,
) -> np.ndarray:
    """Synchronous twin of ``FeatureBuilder.transform`` for training (runs inside notebooks,
    where an event loop is already running). Same frame, same snapshot, same facts."""
    state = state if state is not None else InMemoryFeatureState()
    parts = []
    for start in range(0, len(orders), batch_size):
        frame = OrderFrame.from_orders(orders[start : start + batch_size])
        basket = basket_features(frame)
        snap = state.snapshot_sync(state_query(frame))
        features, facts = stateful_features(frame, basket, snap)
        state.apply_sync(facts)
        parts.append(features)
    return np.concatenate(parts) if parts else np.zeros((0, N_FEATURES), dtype=np.float32)


__all__ = [
    "ArrivalGate",
    "FeatureBuilder",
    "FeatureStateStore",
    "InMemoryFeatureState",
    "SqlFeatureState",
    "features_for_stream",
    "metadata",
]


def _event_row(row: tuple[str, str, float, float, str, str]) -> dict[str, object]:
    """One registered (order, entity) as the events table's columns, on either path."""
    oid, cid, ts, total, kind, entity = row
    return {
        "kind": kind,
        "entity_id": entity,
        "order_id": oid,
        "ts": ts,
        "total": total,
        "customer_id": cid,
    }

"""Where the stateful features keep their state, behind one small Protocol.

``InMemoryFeatureState`` serves training, tests and the ``score`` command;
``SqlFeatureState`` (SQLAlchemy async, SQLite by default, PostgreSQL by URL) lets the state
survive a worker restart and a partition moving to another worker. Both answer the same
``StateQuery`` with the same ``StateSnapshot`` and apply the same ``OrderFacts``, and
``FeatureBuilder`` is the one code path that turns orders into features with either.

Applying facts is idempotent by order id: a fact whose order id is already stored is skipped,
so a redelivered batch (say, after a crash between storing and committing the offset) leaves
the counts as they were.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
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
    OrderFacts,
    OrderFrame,
    StateQuery,
    StateSnapshot,
    basket_features,
    state_query,
    stateful_features,
)
from pizzashop.core.database import chunked, metadata
from pizzashop.core.lifecycle import Resource


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


class SqlFeatureState(Resource):
    """The state in SQL tables (created if missing). ``start()`` before use, ``stop()`` after;
    with ``engine`` it borrows that engine (the shop's database) and leaves it open."""

    def __init__(self, url: str, *, engine: AsyncEngine | None = None) -> None:
        self._url = url
        self._engine = engine
        self._owns_engine = engine is None

    async def _start(self) -> None:
        if self._engine is None:
            self._engine = create_async_engine(self._url)
        async with self._engine.begin() as conn:
            await conn.run_sync(
                metadata.create_all,
                tables=[orders_table, events_table, customers_table, links_table],
            )

    async def _stop(self) -> None:
        if self._engine is not None and self._owns_engine:
            await self._engine.dispose()

    @property
    def engine(self) -> AsyncEngine:
        self._check_running()
        assert self._engine is not None
        return self._engine

    async def snapshot(self, query: StateQuery) -> StateSnapshot:
        snap = StateSnapshot(seen={}, events={}, customers={}, links=set())
        async with self.engine.connect() as conn:
            for chunk in chunked(query.order_ids):
                rows = await conn.execute(
                    sa.select(orders_table.c.order_id, orders_table.c.features).where(
                        orders_table.c.order_id.in_(chunk),
                        # features stored under another schema are recomputed, never reused;
                        # the counts are not redone (apply skips known order ids)
                        orders_table.c.schema_version == FEATURE_SCHEMA_VERSION,
                    )
                )
                for oid, blob in map(tuple, rows):
                    snap.seen[oid] = np.frombuffer(blob, dtype=np.float32).copy()
            by_kind: dict[str, list[str]] = defaultdict(list)
            for kind, entity in query.entities:
                by_kind[kind].append(entity)
            for kind, ids in by_kind.items():
                for chunk in chunked(ids):
                    t = events_table.c
                    rows = await conn.execute(
                        sa.select(t.entity_id, t.order_id, t.ts, t.total, t.customer_id)
                        .where(t.kind == kind, t.entity_id.in_(chunk), t.ts >= query.since)
                        .order_by(t.ts, t.order_id)
                    )
                    for entity, oid, ts, total, cid in map(tuple, rows):
                        snap.events.setdefault((kind, entity), []).append(
                            EntityEvent(oid, ts, total, cid)
                        )
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
        return snap

    async def apply(self, facts: Sequence[OrderFacts]) -> None:
        if not facts:
            return
        async with self.engine.begin() as conn:
            ids = [f.order_id for f in facts]
            existing: set[str] = set()
            for chunk in chunked(ids):
                rows = await conn.execute(
                    sa.select(orders_table.c.order_id).where(orders_table.c.order_id.in_(chunk))
                )
                existing.update(r[0] for r in rows)
            fresh: dict[str, OrderFacts] = {}
            for f in facts:
                if f.order_id not in existing and f.order_id not in fresh:
                    fresh[f.order_id] = f
            if not fresh:
                return
            new = list(fresh.values())
            await conn.execute(
                orders_table.insert(),
                [
                    {
                        "order_id": f.order_id,
                        "ts": f.ts,
                        "schema_version": FEATURE_SCHEMA_VERSION,
                        "features": f.features.astype(np.float32).tobytes(),
                    }
                    for f in new
                ],
            )
            await conn.execute(
                events_table.insert(),
                [
                    {
                        "kind": kind,
                        "entity_id": entity,
                        "order_id": f.order_id,
                        "ts": f.ts,
                        "total": f.total,
                        "customer_id": f.customer_id,
                    }
                    for f in new
                    for kind, entity in f.entities
                ],
            )
            deltas: dict[str, tuple[int, float]] = {}
            for f in new:
                n, s = deltas.get(f.customer_id, (0, 0.0))
                deltas[f.customer_id] = (n + 1, s + f.total)
            await self._upsert_customers(conn, deltas)
            links = sorted({(f.customer_id, kind, value) for f in new for kind, value in f.links})
            await self._insert_links(conn, links)

    async def prune(self, before_ts: float) -> int:
        """Drop entity events older than ``before_ts`` (epoch seconds); returns how many.

        Order ids (and their features) are kept, so redeliveries stay idempotent; run this
        now and then with ``before_ts`` a couple of days back, the windows need one day.
        """
        async with self.engine.begin() as conn:
            result = await conn.execute(events_table.delete().where(events_table.c.ts < before_ts))
        return int(result.rowcount or 0)

    def _insert(self, table: sa.Table) -> Any:  # a dialect Insert with on_conflict_*
        name = self.engine.dialect.name
        if name == "postgresql":
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


class FeatureBuilder:
    """Orders → feature matrix through a store; the single training-and-serving code path."""

    def __init__(self, store: FeatureStateStore) -> None:
        self.store = store

    async def transform(self, orders: Sequence[OrderPlaced]) -> np.ndarray:
        """Features of ``orders`` in order, updating the store. [n, N_FEATURES] float32."""
        if not orders:
            return np.zeros((0, N_FEATURES), dtype=np.float32)
        frame = OrderFrame.from_orders(orders)
        basket = basket_features(frame)
        snap = await self.store.snapshot(state_query(frame))
        features, facts = stateful_features(frame, basket, snap)
        await self.store.apply(facts)
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
    "FeatureBuilder",
    "FeatureStateStore",
    "InMemoryFeatureState",
    "SqlFeatureState",
    "features_for_stream",
    "metadata",
]

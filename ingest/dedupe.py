"""Which events each consumer has already handled, so a redelivery repeats no side effect.

Kafka delivers at least once: after a crash or a rebalance, records past the last commit come
again. The runtime drops the ones whose event id this consumer has marked done.

On SQLite the check and the mark each run whole in the connection's thread, in one hand-off
(``Database.run_sqlite``): they run for every batch, and through the engine each statement,
the commit and the pool's reset were a hand-off of their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Column, DateTime, String, Table, bindparam, func, select

from pizzashop.core.database import Database, Prepared, chunked, metadata

processed_events = Table(
    "processed_events",
    metadata,
    Column("consumer", String(128), primary_key=True),
    Column("event_id", String(64), primary_key=True),
    Column("processed_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)


@dataclass(frozen=True, slots=True)
class _Sql:
    """The statements compiled for SQLite."""

    seen: Prepared  # one event id, by key
    mark: Prepared


class ProcessedEvents:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._sqlite: _Sql | None = None

    async def seen(self, consumer: str, event_ids: Iterable[str]) -> set[str]:
        ids = list(event_ids)
        if not ids:
            return set()
        if sql := self._sql():
            keys = [sql.seen.params({"consumer": consumer, "event_id": i}) for i in ids]
            return await self._db.run_sqlite(
                lambda conn: {
                    row[0] for key in keys for row in conn.execute(sql.seen.sql, key).fetchall()
                },
                write=False,
            )
        found: set[str] = set()
        async with self._db.engine.connect() as conn:
            for chunk in chunked(ids):
                rows = await conn.execute(
                    select(processed_events.c.event_id).where(
                        processed_events.c.consumer == consumer,
                        processed_events.c.event_id.in_(chunk),
                    )
                )
                found.update(row[0] for row in rows)
        return found

    async def mark(self, consumer: str, event_ids: Iterable[str]) -> None:
        rows = [{"consumer": consumer, "event_id": event_id} for event_id in event_ids]
        if not rows:
            return
        if sql := self._sql():
            params = [sql.mark.params(row) for row in rows]
            await self._db.run_sqlite(
                lambda conn: conn.executemany(sql.mark.sql, params), write=True
            )
            return
        async with self._db.engine.begin() as conn:
            await conn.execute(self._db.insert_ignore(processed_events), rows)

    def _sql(self) -> _Sql | None:
        """The statements compiled for SQLite; None on PostgreSQL (through the engine)."""
        if self._sqlite is None and self._db.dialect == "sqlite":
            c = processed_events.c
            self._sqlite = _Sql(
                seen=self._db.prepare(
                    select(c.event_id).where(
                        c.consumer == bindparam("consumer"), c.event_id == bindparam("event_id")
                    )
                ),
                mark=self._db.prepare(
                    self._db.insert_ignore(processed_events), ("consumer", "event_id")
                ),
            )
        return self._sqlite

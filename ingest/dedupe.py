"""Which events each consumer has already handled, so a redelivery repeats no side effect.

Kafka delivers at least once: after a crash or a rebalance, records past the last commit come
again. The runtime drops the ones whose event id this consumer has marked done.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Column, DateTime, String, Table, func, select

from pizzashop.core.database import Database, chunked, metadata

processed_events = Table(
    "processed_events",
    metadata,
    Column("consumer", String(128), primary_key=True),
    Column("event_id", String(64), primary_key=True),
    Column("processed_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)


class ProcessedEvents:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def seen(self, consumer: str, event_ids: Iterable[str]) -> set[str]:
        ids = list(event_ids)
        if not ids:
            return set()
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
        async with self._db.engine.begin() as conn:
            await conn.execute(self._db.insert_ignore(processed_events), rows)

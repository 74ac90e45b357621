"""The transactional outbox: accept now, publish when Kafka can take it.

The order API writes each ``OrderPlaced`` here in the same transaction as the order's first
status row, then answers. ``OutboxRelay`` publishes pending rows in insertion order and marks
them sent after the broker acknowledged. If Kafka is down the rows wait (the API still answers
202, because the order is already durable) and go out once it is back. A crash between publish
and mark publishes a row twice; its event id is the same, so consumers drop the copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from ingest.codec import EncodedRecord, encode
from ingest.events import Event
from ingest.producer import EventProducer
from pizzashop.database import Database, chunked, metadata
from pizzashop.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

outbox = Table(
    "outbox",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("topic", String(255), nullable=False),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("key", LargeBinary, nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("headers", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True, index=True),
)


async def add_to_outbox(
    conn: AsyncConnection, topic: str, event: Event, traceparent: str | None = None
) -> None:
    """Stage an event inside the caller's transaction."""
    record = encode(event, traceparent)
    await conn.execute(
        outbox.insert().values(
            topic=topic,
            event_id=event.event_id,
            key=record.key,
            value=record.value,
            headers=json.dumps([[k, v.decode()] for k, v in record.headers]),
        )
    )


@dataclass(frozen=True, slots=True)
class _Pending:
    id: int
    topic: str
    record: EncodedRecord


class OutboxRelay:
    """Publishes pending outbox rows. ``wake()`` after a commit; it also polls as a safety net."""

    def __init__(
        self,
        db: Database,
        producer: EventProducer,
        *,
        batch_size: int = 500,
        idle_poll_s: float = 1.0,
        retry_delay_s: float = 1.0,
    ) -> None:
        self._db = db
        self._producer = producer
        self._batch_size = batch_size
        self._idle_poll_s = idle_poll_s
        self._retry_delay_s = retry_delay_s
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.published = 0
        self.failures = 0

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = await self.relay_once()
            except BrokerUnavailable as exc:
                self.failures += 1
                logger.warning("outbox relay: Kafka unavailable, rows wait: %s", exc)
                await self._sleep(self._retry_delay_s)
                continue
            if sent < self._batch_size:
                await self._sleep(self._idle_poll_s)
        # One last pass so a clean shutdown leaves nothing behind that Kafka could take.
        try:
            await self.relay_once()
        except BrokerUnavailable:
            logger.warning("outbox relay: stopping with rows pending; they go out on next start")

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def relay_once(self) -> int:
        """Publish up to one batch of pending rows; returns how many were sent."""
        pending = await self._pending()
        if not pending:
            return 0
        by_topic: dict[str, list[EncodedRecord]] = {}
        for row in pending:
            by_topic.setdefault(row.topic, []).append(row.record)
        for topic, records in by_topic.items():
            await self._producer.send_encoded(topic, records)
        await self._mark_sent([row.id for row in pending])
        self.published += len(pending)
        return len(pending)

    async def pending_count(self) -> int:
        async with self._db.engine.connect() as conn:
            result = await conn.execute(
                select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
            )
            return int(result.scalar_one())

    async def _pending(self) -> list[_Pending]:
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(
                select(outbox.c.id, outbox.c.topic, outbox.c.key, outbox.c.value, outbox.c.headers)
                .where(outbox.c.sent_at.is_(None))
                .order_by(outbox.c.id)
                .limit(self._batch_size)
            )
            return [
                _Pending(
                    id=row.id,
                    topic=row.topic,
                    record=EncodedRecord(
                        key=row.key,
                        value=row.value,
                        headers=[(k, v.encode()) for k, v in json.loads(row.headers)],
                    ),
                )
                for row in rows
            ]

    async def _mark_sent(self, ids: Sequence[int]) -> None:
        async with self._db.engine.begin() as conn:
            for chunk in chunked(ids):
                await conn.execute(
                    update(outbox).where(outbox.c.id.in_(chunk)).values(sent_at=func.now())
                )

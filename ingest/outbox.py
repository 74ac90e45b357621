"""The transactional outbox: accept now, publish when Kafka can take it, exactly once.

The order API writes each ``OrderPlaced`` here in the same transaction as the order's first
status row, then answers. ``OutboxRelay`` puts pending rows on their topics and marks them sent.

Exactly once, across broker outages, broken producers and a kill between publish and mark:

1. One relay per database publishes: it holds a lease row (``outbox_lease``), renewed every
   loop; the others wait. The lease is for liveness only; safety comes from step 2.
2. Each batch is one Kafka transaction under a stable transactional id: the rows' records (in
   id order, so one key's events keep their order) plus one record on the progress topic that
   lists the batch's outbox ids. Starting a client with that id fences every older one and
   aborts its open transaction, so a batch is on the topics entirely or not at all.
3. After the commit the rows are marked sent. On start, and after any failure, the relay first
   reconciles: it reads the last committed progress records (``read_committed``) and marks
   their ids sent. Only then does it read pending rows, so only rows Kafka never committed go
   out again. Ids, not a high-water mark: concurrent API transactions commit ids out of order.

Consumers must read with ``isolation_level="read_committed"`` (the runtime does) so records
of aborted transactions stay invisible.

The relay never dies of an error: anything (Kafka, database, a bug) is logged with its
traceback, backed off (capped exponential with jitter) and retried; ``state`` tells health
checks how it is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from ingest.codec import PLAIN_JSON, EncodedRecord, Serializer
from ingest.events import Event
from ingest.producer import TransactionalProducer, translate
from ingest.topics import TopicSpec, ensure_topics
from pizzashop.core.database import Database, Prepared, chunked, metadata
from pizzashop.core.lifecycle import Resource
from pizzashop.core.settings import OutboxSettings

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

# Who may publish: one row per relay name; ``expires_at`` in epoch seconds (dialect-neutral).
outbox_lease = Table(
    "outbox_lease",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("expires_at", Float, nullable=False),
)

PROGRESS_TOPIC = "outbox-progress"


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An event encoded for the outbox, ready to insert: encode in the request's own context
    (the record's trace parent is the current span when none is given), insert later."""

    topic: str
    event_id: str
    record: EncodedRecord

    def row(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "event_id": self.event_id,
            "key": self.record.key,
            "value": self.record.value,
            "headers": json.dumps([[k, v.decode()] for k, v in self.record.headers]),
        }


def outbox_entry(
    topic: str,
    event: Event,
    traceparent: str | None = None,
    *,
    serializer: Serializer = PLAIN_JSON,
) -> OutboxEntry:
    return OutboxEntry(topic, event.event_id, serializer.encode(topic, event, traceparent))


async def add_to_outbox(
    conn: AsyncConnection,
    topic: str,
    event: Event,
    traceparent: str | None = None,
    *,
    serializer: Serializer = PLAIN_JSON,
) -> None:
    """Stage an event inside the caller's transaction."""
    await add_entries_to_outbox(
        conn, [outbox_entry(topic, event, traceparent, serializer=serializer)]
    )


async def add_entries_to_outbox(conn: AsyncConnection, entries: Sequence[OutboxEntry]) -> None:
    """Stage ``entries`` inside the caller's transaction, in their order (the relay publishes
    by id), with one statement: a group commit's many orders cost one round trip here."""
    if entries:
        await conn.execute(outbox.insert(), [entry.row() for entry in entries])


#: The columns ``OutboxEntry.row`` sets.
_ENTRY_KEYS = ("topic", "event_id", "key", "value", "headers")


def prepare_outbox_insert(db: Database) -> Prepared:
    """The outbox INSERT compiled for ``db``, for ``add_entries_sqlite``."""
    return db.prepare(outbox.insert(), _ENTRY_KEYS)


def add_entries_sqlite(
    conn: sqlite3.Connection, insert: Prepared, entries: Sequence[OutboxEntry]
) -> None:
    """``add_entries_to_outbox`` inside a ``Database.run_sqlite`` transaction (``insert`` from
    ``prepare_outbox_insert``)."""
    if entries:
        conn.executemany(insert.sql, [insert.params(entry.row()) for entry in entries])


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    topic: str
    record: EncodedRecord


class OutboxTransport(Protocol):
    """Where the relay puts rows: Kafka in production, a fake in unit tests.

    The relay calls ``committed_ids`` before its first ``publish`` and after every failure;
    ``reset`` after a failure; ``stop`` once, when it ends.
    """

    async def publish(self, rows: Sequence[OutboxRow]) -> None:
        """Put all ``rows`` on their topics, with a progress record naming their ids, atomically;
        return once committed. Raise if unsure (the relay then reconciles)."""

    async def committed_ids(self) -> list[int]:
        """Ids of the last committed batches, after fencing any older publisher."""

    async def reset(self) -> None:
        """Drop the connection after a failure."""

    async def stop(self) -> None:
        """Close for good."""


class KafkaOutboxTransport(Resource):
    """Kafka transactions under ``transactional_id``, with a one-partition compacted progress
    topic (created if missing). Every progress record has the same key, so compaction keeps
    the latest one for as long as the topic lives.

    The relay never calls ``start()``: the first ``committed_ids`` or ``publish`` opens the
    transport (no network until then), and the relay's ``run()`` stops it for good."""

    def __init__(
        self,
        bootstrap: str,
        *,
        transactional_id: str,
        progress_topic: str,
        request_timeout_ms: int = 30_000,
        replication_factor: int = 1,
        progress_window: int = 50,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._client_options = dict(client_options or {})  # security (ingest.security)
        self._progress = TopicPartition(progress_topic, 0)
        self._key = transactional_id.encode()
        self._replication_factor = replication_factor
        self._window = progress_window
        self._timeout_s = request_timeout_ms / 1000
        self._topic_ready = False
        self.producer = TransactionalProducer(
            bootstrap,
            transactional_id,
            client_id="pizzashop-outbox",
            request_timeout_ms=request_timeout_ms,
            # A killed relay's open transaction blocks read_committed readers until aborted.
            transaction_timeout_ms=max(2 * request_timeout_ms, 10_000),
            client_options=self._client_options,
        )

    async def _ensure_topic(self) -> None:
        if self._topic_ready:
            return
        spec = TopicSpec(
            self._progress.topic,
            1,
            {"cleanup.policy": "compact", "min.compaction.lag.ms": str(3600_000)},
        )
        try:
            await asyncio.wait_for(
                ensure_topics(
                    self._bootstrap,
                    [spec],
                    replication_factor=self._replication_factor,
                    client_options=self._client_options,
                ),
                self._timeout_s,
            )
        except KafkaError as exc:
            raise translate(exc, f"cannot create {self._progress.topic}") from exc
        self._topic_ready = True

    async def _start(self) -> None:
        await self.producer.start()

    async def _stop(self) -> None:
        await self.producer.stop()

    async def publish(self, rows: Sequence[OutboxRow]) -> None:
        await self.start()
        await self._ensure_topic()
        progress = EncodedRecord(
            key=self._key,
            value=json.dumps({"ids": [row.id for row in rows]}).encode(),
            headers=[],
        )
        await self.producer.send_transaction(
            [*((row.topic, row.record) for row in rows), (self._progress.topic, progress)]
        )

    async def committed_ids(self) -> list[int]:
        await self.start()
        await self._ensure_topic()
        # Fence first: afterwards no older client can commit, so what we read is final.
        await self.producer.connect()
        try:
            return await asyncio.wait_for(self._read_progress(), 2 * self._timeout_s)
        except TimeoutError as exc:
            raise translate(KafkaError("reading progress timed out"), "reconcile") from exc
        except KafkaError as exc:
            raise translate(exc, f"cannot read {self._progress.topic}") from exc

    async def _read_progress(self) -> list[int]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            client_id="pizzashop-outbox-reconcile",
            request_timeout_ms=int(self._timeout_s * 1000),
            **self._client_options,
        )
        await consumer.start()
        ids: list[int] = []
        try:
            tp = self._progress
            consumer.assign([tp])
            # read_committed: the end is the last stable offset.
            end = (await consumer.end_offsets([tp]))[tp]
            begin = (await consumer.beginning_offsets([tp]))[tp]
            consumer.seek(tp, max(begin, end - self._window))
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=500)
                for record in batch.get(tp, []):
                    if record.offset < end and record.key == self._key and record.value:
                        ids += json.loads(record.value)["ids"]
        finally:
            await consumer.stop()
        return ids

    async def reset(self) -> None:
        await self.producer.reset()


@dataclass(frozen=True, slots=True)
class RelayState:
    """A snapshot for health checks. Times are epoch seconds."""

    running: bool
    has_lease: bool
    published: int
    failures: int
    consecutive_failures: int
    last_success_at: float | None
    failing_since: float | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Backlog:
    pending: int
    oldest_age_s: float | None


class OutboxRelay:
    """Publishes pending outbox rows exactly once. ``wake()`` after a commit; it also polls.

    ``run()`` owns ``transport`` while it runs and stops it on the way out; ``request_stop()``
    asks it to finish (one last pass, then the lease is given back) and wakes its back-off and
    idle waits at once. (Not ``stop()``: that verb means "closed when it returns".)
    """

    LEASE = "outbox-relay"

    def __init__(
        self,
        db: Database,
        transport: OutboxTransport,
        *,
        settings: OutboxSettings | None = None,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._transport = transport
        self._settings = settings or OutboxSettings()
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._clock = clock
        self._sqlite: _RelaySql | None = None  # compiled on first use, SQLite only
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._reconciled = False
        self._has_lease = False
        self._renewed_at = 0.0
        self._running = False
        self.published = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.last_success_at: float | None = None
        self.failing_since: float | None = None
        self.last_error: str | None = None

    @property
    def state(self) -> RelayState:
        return RelayState(
            running=self._running,
            has_lease=self._has_lease,
            published=self.published,
            failures=self.failures,
            consecutive_failures=self.consecutive_failures,
            last_success_at=self.last_success_at,
            failing_since=self.failing_since,
            last_error=self.last_error,
        )

    def wake(self) -> None:
        self._wake.set()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        self._running = True
        try:
            while not self._stop.is_set():
                try:
                    sent = await self.relay_once()
                except Exception as exc:
                    self._failed(exc)
                    await self._sleep(self._backoff())
                    continue
                self._succeeded()
                if sent < self._settings.batch_size:
                    await self._sleep(self._settings.idle_poll_s)
            # One last pass so a clean shutdown leaves nothing behind that Kafka could take;
            # not while failing, where it would only hold up the shutdown for a timeout.
            if not self.consecutive_failures:
                try:
                    await self.relay_once()
                except Exception as exc:
                    logger.warning("outbox relay: stopping with rows pending (%r)", exc)
        finally:
            self._running = False
            with contextlib.suppress(Exception):
                await self._release()
            await self._transport.stop()

    async def relay_once(self) -> int:
        """One step of ``run()``: hold the lease, reconcile if due, publish one batch.
        Returns how many rows it published (0 without the lease)."""
        if not await self._acquire():
            return 0
        if not self._reconciled:
            await self.reconcile()
        pending = await self._pending()
        if not pending:
            return 0
        self._reconciled = False  # from here until marked, a failure leaves us unsure
        await self._transport.publish(pending)
        await self._mark_sent([row.id for row in pending])
        self._reconciled = True
        self.published += len(pending)
        return len(pending)

    async def reconcile(self) -> int:
        """Mark sent what the last committed transactions carried; returns how many rows that
        changed (non-zero only after a failure between commit and mark)."""
        ids = await self._transport.committed_ids()
        marked = await self._mark_sent(ids) if ids else 0
        if marked:
            logger.warning(
                "outbox relay: %d row(s) were committed to Kafka but not marked; marked now",
                marked,
            )
        self._reconciled = True
        return marked

    def _failed(self, exc: Exception) -> None:
        now = self._clock()
        self.failures += 1
        self.consecutive_failures += 1
        self.failing_since = self.failing_since or now
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._reconciled = False
        logger.error(
            "outbox relay: failure %d in a row, retrying after back-off",
            self.consecutive_failures,
            exc_info=exc,
        )

    def _succeeded(self) -> None:
        if self.consecutive_failures:
            logger.info("outbox relay: recovered after %d failure(s)", self.consecutive_failures)
        self.consecutive_failures = 0
        self.failing_since = None
        self.last_success_at = self._clock()

    def _backoff(self) -> float:
        cfg = self._settings
        delay = min(
            cfg.retry_max_delay_s, cfg.retry_base_delay_s * 2.0 ** (self.consecutive_failures - 1)
        )
        return delay * random.uniform(0.5, 1.0)  # jitter: relays of many shops do not align

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def _acquire(self) -> bool:
        """Take or renew the lease; a relay that loses it drops its Kafka client too. A lease
        renewed less than a third of its TTL ago is not renewed again: the renewal is a write
        transaction, and under load the relay loops once per batch, many times a second, on the
        connection the order API commits through. (A lease that passed on is noticed at the next
        renewal, as before: only an expired lease passes on, and Kafka fences the publishing.)"""
        now = self._clock()
        # 0 <=: a clock stepped back renews at once rather than never.
        if self._has_lease and 0 <= now - self._renewed_at < self._settings.lease_ttl_s / 3:
            return True
        expires = now + self._settings.lease_ttl_s
        async with self._db.engine.begin() as conn:
            await conn.execute(
                self._db.insert_ignore(outbox_lease).values(
                    name=self.LEASE, holder=self.holder, expires_at=expires
                )
            )
            result = await conn.execute(
                update(outbox_lease)
                .where(
                    outbox_lease.c.name == self.LEASE,
                    or_(outbox_lease.c.holder == self.holder, outbox_lease.c.expires_at < now),
                )
                .values(holder=self.holder, expires_at=expires)
            )
        held = result.rowcount == 1
        if held != self._has_lease:
            logger.info("outbox relay %s %s the lease", self.holder, "took" if held else "lost")
            if not held:
                await self._transport.reset()
                self._reconciled = False
        self._has_lease = held
        if held:
            self._renewed_at = now
        return held

    async def _release(self) -> None:
        if not self._has_lease:
            return
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(outbox_lease)
                .where(outbox_lease.c.name == self.LEASE, outbox_lease.c.holder == self.holder)
                .values(expires_at=0.0)
            )
        self._has_lease = False

    async def pending_count(self) -> int:
        return (await self.backlog()).pending

    async def backlog(self) -> Backlog:
        """How many rows wait, and how long the oldest has waited (a database round trip)."""
        async with self._db.engine.connect() as conn:
            result = await conn.execute(
                select(func.count(), func.min(outbox.c.created_at)).where(
                    outbox.c.sent_at.is_(None)
                )
            )
            count, oldest = result.one()
        if oldest is None:
            return Backlog(int(count), None)
        if oldest.tzinfo is None:  # SQLite keeps UTC without an offset
            oldest = oldest.replace(tzinfo=UTC)
        age = max(0.0, self._clock() - oldest.timestamp())
        return Backlog(int(count), age)

    def _sql(self) -> _RelaySql | None:
        """The relay's statements compiled for SQLite (``Database.run_sqlite``); None on
        PostgreSQL, which runs them through the engine."""
        if self._sqlite is None and self._db.dialect == "sqlite":
            self._sqlite = _RelaySql(
                pending=self._db.prepare(
                    select(
                        outbox.c.id, outbox.c.topic, outbox.c.key, outbox.c.value, outbox.c.headers
                    )
                    .where(outbox.c.sent_at.is_(None))
                    .order_by(outbox.c.id)
                    .limit(bindparam("limit"))
                ),
                mark=self._db.prepare(
                    update(outbox)
                    .where(outbox.c.id == bindparam("row_id"), outbox.c.sent_at.is_(None))
                    .values(sent_at=bindparam("now"))
                ),
            )
        return self._sqlite

    async def _pending(self) -> list[OutboxRow]:
        limit = self._settings.batch_size
        if sql := self._sql():
            rows = await self._db.run_sqlite(
                lambda conn: conn.execute(
                    sql.pending.sql, sql.pending.params({"limit": limit})
                ).fetchall(),
                write=False,
            )
            return [_outbox_row(*row) for row in rows]
        async with self._db.engine.connect() as conn:
            result = await conn.execute(
                select(outbox.c.id, outbox.c.topic, outbox.c.key, outbox.c.value, outbox.c.headers)
                .where(outbox.c.sent_at.is_(None))
                .order_by(outbox.c.id)
                .limit(limit)
            )
            return [_outbox_row(*row) for row in result]

    async def _mark_sent(self, ids: Sequence[int]) -> int:
        now = datetime.now(UTC)
        if sql := self._sql():
            params = [sql.mark.params({"row_id": row_id, "now": now}) for row_id in ids]
            # One UPDATE per id, by primary key, in one transaction: executemany's rowcount is
            # the sum, and no IN list runs into SQLite's cap on bound parameters.
            return await self._db.run_sqlite(
                lambda conn: conn.executemany(sql.mark.sql, params).rowcount, write=True
            )
        marked = 0
        async with self._db.engine.begin() as conn:
            for chunk in chunked(ids):
                result = await conn.execute(
                    update(outbox)
                    .where(outbox.c.id.in_(chunk), outbox.c.sent_at.is_(None))
                    .values(sent_at=now)
                )
                marked += result.rowcount
        return marked


@dataclass(frozen=True, slots=True)
class _RelaySql:
    pending: Prepared
    mark: Prepared


def _outbox_row(row_id: int, topic: str, key: bytes, value: bytes, headers: str) -> OutboxRow:
    return OutboxRow(
        id=row_id,
        topic=topic,
        record=EncodedRecord(
            key=bytes(key),
            value=bytes(value),
            headers=[(k, v.encode()) for k, v in json.loads(headers)],
        ),
    )

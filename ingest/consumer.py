"""The consumer runtime: fetch in batches, decode, dedupe, handle, retry, dead-letter, commit.

Delivery semantics, per partition, for every batch the broker hands over:

1. Decode each record. Bytes that are not a known event, or an event that breaks the contract,
   go straight to ``<topic>.dlq``: retrying cannot fix them.
2. Drop events this consumer already handled (``ProcessedEvents``): redeliveries after a crash
   or a rebalance repeat no side effect.
3. Hand the rest to the handler as one batch. If the batch fails, fall back to one record at a
   time: a retriable error (``retriable = True``, or an unknown exception) is retried with
   exponential backoff and jitter up to ``retry_max_attempts``; a permanent one, or a record out of
   attempts, goes to the dead-letter topic with everything needed to replay it.
4. Mark the handled events, then commit the offset after the last record. Effects first, commit
   after: a crash in between means a redelivery, which step 2 absorbs.

If even the dead-letter topic cannot be written (the broker is down), nothing is committed: the
partition is rewound to its first unfinished record and tried again after a pause.

Shutdown: ``stop()`` sets an event; the loop finishes the batch in hand, commits, and closes. A
record still being retried then is left uncommitted, to be redelivered on the next start: a
shutdown never dead-letters what might have succeeded.
"""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Self

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord

from ingest.codec import H_TRACEPARENT, Headers, decode, header
from ingest.dedupe import ProcessedEvents
from ingest.dlq import dead_letter_headers
from ingest.events import Event
from ingest.producer import EventProducer
from ingest.topics import DLQ_SUFFIX
from pizzashop.errors import PizzashopError
from pizzashop.settings import ConsumerSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One decoded event and where it came from."""

    topic: str
    partition: int
    offset: int
    event: Event
    headers: Headers
    timestamp_ms: int
    key: bytes | None = None
    value: bytes | None = None

    @property
    def traceparent(self) -> str | None:
        return header(self.headers, H_TRACEPARENT)

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset} order={self.event.order_id}"


class Handler(ABC):
    """What a service does with its events. Subclass, set ``event_types``, implement ``handle``."""

    #: Event types this handler wants; the runtime commits past every other type unread.
    event_types: ClassVar[frozenset[str]]
    #: False: one call per partition (concurrently). True: one call with the whole fetch, in
    #: partition then offset order, for handlers that gain from big batches (model inference).
    whole_batch: ClassVar[bool] = False

    async def start(self) -> None:
        """Called once before the first batch: load models, warm caches, start helpers."""

    async def stop(self) -> None:
        """Called once when the runtime closes, before the producer is flushed."""

    @abstractmethod
    async def handle(self, batch: Sequence[Delivery]) -> None:
        """Called with up to ``batch_max`` new events of ONE partition, in offset order
        (or of the whole fetch, when ``whole_batch``).

        Runs concurrently for different partitions. Must make its effects durable before it
        returns (the runtime commits right after). Raise ``TransientError`` for what may pass,
        ``PermanentError`` for what never will. On failure the runtime calls it again with one
        event at a time, so side effects must be idempotent per event (derive output event ids
        with ``derived_event_id``).
        """


@dataclass(slots=True)
class ConsumerStats:
    handled: int = 0
    duplicates: int = 0
    skipped: int = 0
    retries: int = 0
    dead_lettered: int = 0
    batches: int = 0
    commits: int = 0
    errors_by_class: dict[str, int] = field(default_factory=dict)


class ConsumerRuntime:
    """Runs one handler in one consumer group. ``async with`` starts it; ``run()`` loops."""

    def __init__(
        self,
        *,
        name: str,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        handler: Handler,
        producer: EventProducer,
        processed: ProcessedEvents,
        settings: ConsumerSettings,
    ) -> None:
        self.name = name
        self.group_id = group_id
        self.stats = ConsumerStats()
        self._topics = list(topics)
        self._handler = handler
        self._producer = producer
        self._processed = processed
        self._settings = settings
        self._consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=f"pizzashop-{name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_max,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            isolation_level="read_committed",
        )
        self._stop = asyncio.Event()
        # Held while a batch is handled and committed: a rebalance waits for it, so a revoked
        # partition is never handed over with its work half done.
        self._busy = asyncio.Lock()
        self._started = False
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._closed:
            raise RuntimeError(f"consumer {self.name} was stopped and cannot be restarted")
        if self._started:
            return
        self._consumer.subscribe(self._topics, listener=_DrainOnRevoke(self))
        await self._consumer.start()
        self._started = True
        logger.info(
            "consumer %s started: group=%s topics=%s", self.name, self.group_id, self._topics
        )

    async def handler_start(self) -> None:
        await self._handler.start()

    def stop(self) -> None:
        """Ask the loop to finish its batch, commit and return. Safe to call many times."""
        self._stop.set()

    async def close(self) -> None:
        self.stop()
        if self._started and not self._closed:
            await self._handler.stop()
            await self._consumer.stop()
        self._closed = True

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def run(self) -> None:
        """Fetch, handle and commit until ``stop()``."""
        await self.start()
        settings = self._settings
        fetch: asyncio.Task[dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]] | None = None
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                fetch = asyncio.ensure_future(
                    self._consumer.getmany(
                        timeout_ms=settings.batch_wait_ms, max_records=settings.batch_max
                    )
                )
                await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    break
                batches = fetch.result()
                fetch = None
                if batches:
                    async with self._busy:
                        try:
                            await self._process(batches)
                        except Exception:
                            # Never let one bad batch end the consumer: its offsets were not
                            # committed, so rewind and come back to it after a pause.
                            logger.exception("consumer %s: batch failed; rewinding", self.name)
                            for tp, records in batches.items():
                                self._consumer.seek(tp, records[0].offset)
                            await asyncio.sleep(settings.retry_max_delay_s)
        finally:
            stopping.cancel()
            if fetch is not None and not fetch.done():
                fetch.cancel()

    # -- one fetched batch -----------------------------------------------------------------
    async def _process(
        self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        self.stats.batches += 1
        failed: dict[TopicPartition, BaseException] = {}
        decoded: list[Delivery] = []
        for tp, records in batches.items():
            try:
                decoded += await self._decode(tp, records)
            except Exception as exc:
                failed[tp] = exc
        try:
            fresh = await self._fresh(decoded)
        except Exception as exc:
            # The dedupe table is unreachable: handle nothing rather than risk a repeat.
            fresh = []
            failed.update(dict.fromkeys(batches, exc))
        if self._handler.whole_batch:
            groups = [fresh] if fresh else []
        else:
            by_tp: dict[tuple[str, int], list[Delivery]] = {}
            for delivery in fresh:
                by_tp.setdefault((delivery.topic, delivery.partition), []).append(delivery)
            groups = list(by_tp.values())
        results = await asyncio.gather(
            *(self._handle_group(g) for g in groups), return_exceptions=True
        )
        for group, result in zip(groups, results, strict=True):
            if isinstance(result, BaseException):
                for delivery in group:
                    failed.setdefault(TopicPartition(delivery.topic, delivery.partition), result)
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batches.items():
            if tp in failed:
                # Below the handler something failed (the dead-letter topic or the dedupe table
                # unreachable): rewind and try this partition again after a pause.
                logger.error(
                    "consumer %s: %s[%d] failed from offset %d, rewinding: %r",
                    self.name,
                    tp.topic,
                    tp.partition,
                    records[0].offset,
                    failed[tp],
                )
                self._consumer.seek(tp, records[0].offset)
            else:
                offsets[tp] = records[-1].offset + 1
        if offsets:
            await self._commit(offsets)
        if failed and not self._stop.is_set():
            await asyncio.sleep(self._settings.retry_max_delay_s)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._consumer.commit(offsets)
            self.stats.commits += 1
        except (CommitFailedError, KafkaError) as exc:
            # The group moved on (rebalance): the new owner gets these records again and the
            # dedupe table makes that harmless.
            logger.warning(
                "consumer %s: commit failed, records will be redelivered: %r", self.name, exc
            )

    async def _decode(
        self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
    ) -> list[Delivery]:
        deliveries: list[Delivery] = []
        for record in records:
            headers = list(record.headers)
            try:
                event = decode(record.value, headers)
            except PizzashopError as exc:
                await self._dead_letter(
                    tp.topic,
                    tp.partition,
                    record.offset,
                    record.key,
                    record.value,
                    headers,
                    exc,
                    attempts=1,
                )
                continue
            if event.event_type not in self._handler.event_types:
                self.stats.skipped += 1
                continue
            deliveries.append(
                Delivery(
                    tp.topic,
                    tp.partition,
                    record.offset,
                    event,
                    headers,
                    record.timestamp,
                    record.key,
                    record.value,
                )
            )
        return deliveries

    async def _fresh(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Drop events this group already handled, and copies within the batch itself."""
        if not deliveries:
            return []
        seen = await self._processed.seen(self.group_id, (d.event.event_id for d in deliveries))
        fresh: list[Delivery] = []
        for delivery in deliveries:
            if delivery.event.event_id not in seen:
                seen.add(delivery.event.event_id)
                fresh.append(delivery)
        self.stats.duplicates += len(deliveries) - len(fresh)
        return fresh

    async def _handle_group(self, group: list[Delivery]) -> None:
        try:
            await self._handler.handle(group)
        except Exception as exc:
            self._count_error(exc)
            logger.warning(
                "consumer %s: batch of %d from %s failed (%r); retrying one by one",
                self.name,
                len(group),
                group[0].where,
                exc,
            )
            for delivery in group:
                await self._handle_one(delivery)
        else:
            self.stats.handled += len(group)
            await self._processed.mark(self.group_id, (d.event.event_id for d in group))

    async def _handle_one(self, delivery: Delivery) -> None:
        settings = self._settings
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._handler.handle([delivery])
            except Exception as exc:
                self._count_error(exc)
                retriable = exc.retriable if isinstance(exc, PizzashopError) else True
                if retriable and self._stop.is_set():
                    # Shutting down mid-retry: leave the record uncommitted for the next run
                    # rather than dead-letter something that may well succeed then.
                    raise
                if not retriable or attempt >= settings.retry_max_attempts:
                    logger.error(
                        "consumer %s: %s failed after %d attempt(s), dead-lettering: %r",
                        self.name,
                        delivery.where,
                        attempt,
                        exc,
                    )
                    await self._dead_letter(
                        delivery.topic,
                        delivery.partition,
                        delivery.offset,
                        delivery.key,
                        delivery.value,
                        delivery.headers,
                        exc,
                        attempts=attempt,
                    )
                    await self._processed.mark(self.group_id, [delivery.event.event_id])
                    return
                delay = min(
                    settings.retry_max_delay_s, settings.retry_base_delay_s * 2 ** (attempt - 1)
                )
                delay *= random.uniform(0.5, 1.0)  # jitter: retries of many records do not align
                self.stats.retries += 1
                logger.info(
                    "consumer %s: %s attempt %d failed (%r), retrying in %.2fs",
                    self.name,
                    delivery.where,
                    attempt,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
            else:
                self.stats.handled += 1
                await self._processed.mark(self.group_id, [delivery.event.event_id])
                return

    async def _dead_letter(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        error: BaseException,
        *,
        attempts: int,
    ) -> None:
        letter_headers = dead_letter_headers(
            headers,
            topic=topic,
            partition=partition,
            offset=offset,
            group=self.group_id,
            error=error,
            attempts=attempts,
        )
        await self._producer.send_raw(topic + DLQ_SUFFIX, value, key=key, headers=letter_headers)
        self.stats.dead_lettered += 1
        self._count_error(error)
        logger.warning(
            "consumer %s: %s[%d]@%d dead-lettered: %s: %s",
            self.name,
            topic,
            partition,
            offset,
            type(error).__name__,
            error,
        )

    def _count_error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.stats.errors_by_class[name] = self.stats.errors_by_class.get(name, 0) + 1


class _DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runtime: ConsumerRuntime) -> None:
        self._runtime = runtime

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Wait for the batch in hand to be handled and committed before giving partitions away.
        async with self._runtime._busy:
            pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        logger.info("consumer %s assigned %s", self._runtime.name, sorted(map(str, assigned)))

"""The runtime's transport on confluent-kafka (librdkafka): exactly-once by transactions.

The same contract as ``ingest.kafka_transport``: a ``read_committed`` group consumer fetches,
and each commit writes its records and the consumed offsets in ONE Kafka transaction. Offsets
go in with ``send_offsets_to_transaction(offsets, consumer.consumer_group_metadata())``, so the
broker checks the consumer's generation too (KIP-447): a member that lost its partitions in a
rebalance cannot commit over its successor.

librdkafka calls block, so none runs on the event loop. The consumer lives on one dedicated
thread (every ``consume``/``poll``/``close`` runs there, one at a time, and the rebalance
callbacks fire there, inside them); the transactional producer lives on another. A rebalance
callback hands the listener's coroutine to the loop and blocks the consumer thread until it
finishes; meanwhile the loop is free, and the listener's commits run on the producer thread, so
"finish and commit before the partitions go" cannot deadlock. ``pause``/``resume``/``seek`` are
cheap, thread-safe calls on the handle and run where they are called.

After any failure inside a transaction the producer is dropped and a new one is made under the
same ``transactional.id``: ``init_transactions`` fences the old epoch and aborts whatever it
left open (the same recovery as the aiokafka transport, whatever the error's kind).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from ingest.transport import Outgoing, Partition, RebalanceListener, Record
from pizzashop.core.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a blocking librdkafka call may take before the transport gives up on it.
_CALL_TIMEOUT_S = 30.0


class _Worker:
    """One dedicated thread: librdkafka calls of one client, in order, off the event loop."""

    def __init__(self, name: str) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class ConfluentTransport:
    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        client_id: str,
        transactional_id: str,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
        max_poll_interval_ms: int,
        transaction_timeout_ms: int,
        request_timeout_ms: int = 30_000,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._group_id = group_id
        common = dict(client_options or {})
        self._consumer_config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "client.id": client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": heartbeat_interval_ms,
            # librdkafka refuses a poll interval below the session timeout.
            "max.poll.interval.ms": max(max_poll_interval_ms, session_timeout_ms),
            "logger": logging.getLogger(f"{__name__}.librdkafka"),
            **common,
        }
        self._producer_config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": f"{client_id}-tx",
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "transaction.timeout.ms": transaction_timeout_ms,
            # librdkafka wants a request to time out within the transaction's timeout.
            "socket.timeout.ms": min(request_timeout_ms, transaction_timeout_ms),
            "logger": logging.getLogger(f"{__name__}.librdkafka"),
            **common,
        }
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._consumer_thread = _Worker(f"cfk-consumer-{client_id}")
        self._producer_thread = _Worker(f"cfk-producer-{client_id}")
        self._assigned: frozenset[Partition] = frozenset()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: RebalanceListener | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        if self._closed:
            raise RuntimeError("a stopped ConfluentTransport cannot be started again")
        self._loop = asyncio.get_running_loop()
        self._listener = listener
        consumer = Consumer(self._consumer_config)
        try:
            # librdkafka retries an unreachable broker for ever; start() should fail instead,
            # as the aiokafka transport's does.
            await self._consumer_thread.run(consumer.list_topics, None, _CALL_TIMEOUT_S)
        except KafkaException as exc:
            await self._consumer_thread.run(consumer.close)
            raise BrokerUnavailable(f"consumer {self._group_id} cannot reach Kafka: {exc}") from exc
        consumer.subscribe(
            list(topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._consumer = consumer

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._producer_thread.run(_drop_producer, producer)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            # close() leaves the group, which runs the revoke callback on this thread.
            await self._consumer_thread.run(consumer.close)
        self._consumer_thread.close()
        self._producer_thread.close()

    # -- fetching --------------------------------------------------------------------------
    async def fetch(self, timeout_s: float, max_records: int) -> dict[Partition, list[Record]]:
        consumer = self._ready_consumer()
        messages = await self._consumer_thread.run(_consume, consumer, timeout_s, max_records)
        fetched: dict[Partition, list[Record]] = {}
        for m in messages:
            if (error := m.error()) is not None:
                if error.fatal():
                    raise BrokerUnavailable(f"consumer {self._group_id}: {error}")
                logger.warning("consumer %s: %s", self._group_id, error)
                continue
            topic, partition = m.topic(), m.partition()
            assert topic is not None and partition is not None
            fetched.setdefault(Partition(topic, partition), []).append(
                Record(
                    topic,
                    partition,
                    m.offset() or 0,
                    m.key(),
                    m.value(),
                    list(m.headers() or ()),  # type: ignore[arg-type]
                    m.timestamp()[1],
                )
            )
        return fetched

    def pause(self, partitions: Iterable[Partition]) -> None:
        if owned := self._owned(partitions):
            self._ready_consumer().pause(owned)

    def resume(self, partitions: Iterable[Partition]) -> None:
        if owned := self._owned(partitions):
            self._ready_consumer().resume(owned)

    def seek(self, partition: Partition, offset: int) -> None:
        for tp in self._owned([partition]):
            tp.offset = offset
            try:
                self._ready_consumer().seek(tp)
            except KafkaException as exc:
                # Revoked meanwhile (or not fetching yet): the new owner starts from the last
                # commit anyway, and a paused partition is seeked again before it resumes.
                logger.debug("seek %s@%d refused: %s", partition, offset, exc)

    def assignment(self) -> frozenset[Partition]:
        with self._lock:
            return self._assigned

    def _owned(self, partitions: Iterable[Partition]) -> list[TopicPartition]:
        assigned = self.assignment()
        return [TopicPartition(p.topic, p.partition) for p in partitions if p in assigned]

    def _ready_consumer(self) -> Consumer:
        if self._consumer is None:
            raise BrokerUnavailable("the confluent transport is not started")
        return self._consumer

    # -- committing ------------------------------------------------------------------------
    async def commit(self, records: Sequence[Outgoing], offsets: Mapping[Partition, int]) -> None:
        consumer = self._ready_consumer()
        tps = [TopicPartition(p.topic, p.partition, o) for p, o in offsets.items()]
        if not records:
            if tps:
                try:
                    # On the producer's thread: the consumer's may be inside a rebalance
                    # callback that waits for this very commit.
                    await self._producer_thread.run(_commit_offsets, consumer, tps)
                except KafkaException as exc:
                    raise BrokerUnavailable(f"offset commit failed: {exc}") from exc
            return
        try:
            await self._producer_thread.run(self._transaction, consumer, records, tps)
        except KafkaException as exc:
            raise BrokerUnavailable(f"transaction failed: {exc}") from exc

    def _transaction(
        self, consumer: Consumer, records: Sequence[Outgoing], offsets: list[TopicPartition]
    ) -> None:
        """One transaction, on the producer thread from begin to end."""
        producer = self._producer
        try:
            if producer is None:
                producer = Producer(self._producer_config)
                self._producer = producer
                producer.init_transactions(_CALL_TIMEOUT_S)
            producer.begin_transaction()
            for r in records:
                _produce(producer, r)
            if offsets:
                producer.send_offsets_to_transaction(
                    offsets, consumer.consumer_group_metadata(), _CALL_TIMEOUT_S
                )
            producer.commit_transaction(_CALL_TIMEOUT_S)
        except BaseException:
            # Whatever state the producer is in now, a fresh one under the same id is sound.
            self._producer = None
            if producer is not None:
                _drop_producer(producer)
            raise

    # -- rebalances (on the consumer thread, inside consume/close) --------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = frozenset(Partition(tp.topic, tp.partition) for tp in partitions)
        with self._lock:
            self._assigned = self._assigned | parts
        self._call_listener("assigned", parts)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = frozenset(Partition(tp.topic, tp.partition) for tp in partitions)
        try:
            self._call_listener("revoked", parts)
        finally:
            with self._lock:
                self._assigned = self._assigned - parts

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Already someone else's: the runtime finishes what it holds; its commits will fail.
        self._on_revoke(consumer, partitions)

    def _call_listener(self, hook: str, parts: frozenset[Partition]) -> None:
        if self._listener is None or self._loop is None or not parts:
            return
        method: Callable[[frozenset[Partition]], Coroutine[Any, Any, None]] = getattr(
            self._listener, hook
        )
        future = asyncio.run_coroutine_threadsafe(method(parts), self._loop)
        try:
            future.result()
        except Exception:  # librdkafka must not see it; the rebalance goes on regardless
            logger.exception("consumer %s: rebalance listener %s failed", self._group_id, hook)


def _consume(consumer: Consumer, timeout_s: float, max_records: int) -> list[Message]:
    """Whatever is ready now, else wait up to ``timeout_s`` for the first record and take what
    came with it: ``consume(n, timeout)`` alone would wait for all ``n`` or the timeout."""
    messages = consumer.consume(max_records, 0)
    if messages:
        return messages
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    return [first, *consumer.consume(max_records - 1, 0)] if max_records > 1 else [first]


def _produce(producer: Producer, record: Outgoing) -> None:
    # The stubs want an invariant list of (str, str | bytes | None); ours is narrower.
    headers: Any = record.headers or None
    while True:
        try:
            producer.produce(record.topic, record.value, record.key, headers=headers)
            return
        except BufferError:  # the local queue is full: let deliveries drain it
            producer.poll(0.05)


def _commit_offsets(consumer: Consumer, offsets: list[TopicPartition]) -> None:
    for tp in consumer.commit(offsets=offsets, asynchronous=False) or ():
        if tp.error is not None:
            raise KafkaException(tp.error)


def _drop_producer(producer: Producer) -> None:
    """Abort what it left open if it still can; the next producer fences it either way."""
    try:
        producer.abort_transaction(5.0)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if not (isinstance(error, KafkaError) and error.code() == KafkaError._STATE):
            logger.debug("aborting a failed transactional producer raised", exc_info=True)
    producer.purge()
    producer.close()


__all__ = ["ConfluentTransport"]

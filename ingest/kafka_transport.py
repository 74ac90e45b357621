"""The runtime's transport on Apache Kafka (aiokafka): exactly-once by transactions.

A ``read_committed`` group consumer fetches; a transactional producer writes each commit's
records and the consumed offsets in ONE Kafka transaction (``send_offsets_to_transaction``). A
crash before the transaction commits leaves neither outputs nor offsets: the records come again
and the handler, whose other effects are idempotent, produces the same outputs once more.

A newly assigned partition starts from a *stable* committed offset (KIP-447's
``require_stable``, ``ingest._stable_offsets``): one that no transaction of the previous owner is
still completing, so the new owner never repeats what that transaction published. And the
offsets of a transaction carry the member's generation (KIP-447, ``ingest._fenced_commit``): a
member the group has dropped meanwhile cannot commit its batch after the new owner took over.

A commit with nothing to write commits the offsets through the consumer, which is cheaper and
means the same. After any failure inside a transaction the producer is closed and a new one is
made under the same ``transactional_id``: ``init_transactions`` fences the old epoch and aborts
whatever it left open, and fatal states (out-of-order sequence, unknown producer id, fenced
epoch) need a new producer anyway.

The ``transactional_id`` is ``<group>.<instance>``. A stable instance id (a pod ordinal, say)
lets a restarted member abort its predecessor's open transaction at once; with the default, a
random one, a killed member's open transaction is aborted by the broker after
``transaction_timeout_ms``, and ``read_committed`` readers of the partitions it wrote wait until
then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from ingest._fenced_commit import Membership, fence_offsets_by_generation
from ingest._stable_offsets import stable_committed
from ingest.producer import TRANSACTION_RETRY_BACKOFF_MS
from ingest.transport import Outgoing, Partition, RebalanceListener, Record
from pizzashop.core.errors import BrokerUnavailable

logger = logging.getLogger(__name__)


class KafkaTransport:
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
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            max_poll_interval_ms=max_poll_interval_ms,
            # How long the group waits for members to rejoin; aiokafka's default is the
            # session timeout (10 s), shorter than a revoke that commits its batches in hand:
            # a member that overran it was dropped, and the group ping-ponged its partitions.
            rebalance_timeout_ms=max(session_timeout_ms, min(max_poll_interval_ms, 60_000)),
            isolation_level="read_committed",
            **common,
        )
        self._producer_options: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": f"{client_id}-tx",
            "transactional_id": transactional_id,
            "enable_idempotence": True,
            "acks": "all",
            "linger_ms": 2,
            "retry_backoff_ms": TRANSACTION_RETRY_BACKOFF_MS,
            "transaction_timeout_ms": transaction_timeout_ms,
            "request_timeout_ms": request_timeout_ms,
            **common,
        }
        self._producer: AIOKafkaProducer | None = None
        self._started = False
        self._membership = Membership()
        # Long enough for a killed member's open transaction to be aborted by the broker.
        self._stable_timeout_s = 2 * transaction_timeout_ms / 1000 + 10

    async def start(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self._consumer.subscribe(list(topics), listener=_Listener(self, listener))
        try:
            await self._consumer.start()
        except KafkaError as exc:
            await self._consumer.stop()
            raise BrokerUnavailable(f"consumer {self._group_id} cannot reach Kafka: {exc}") from exc
        self._started = True

    async def stop(self) -> None:
        if self._producer is not None:
            await self._close_producer()
        if self._started:
            await self._consumer.stop()
            self._started = False

    async def fetch(self, timeout_s: float, max_records: int) -> dict[Partition, list[Record]]:
        fetched = await self._consumer.getmany(
            timeout_ms=int(timeout_s * 1000), max_records=max_records
        )
        return {
            Partition(tp.topic, tp.partition): [
                Record(
                    r.topic,
                    r.partition,
                    r.offset,
                    r.key,
                    r.value,
                    list(r.headers),
                    r.timestamp,
                )
                for r in records
            ]
            for tp, records in fetched.items()
            if records
        }

    def pause(self, partitions: Iterable[Partition]) -> None:
        self._consumer.pause(*self._owned(partitions))

    def resume(self, partitions: Iterable[Partition]) -> None:
        self._consumer.resume(*self._owned(partitions))

    def seek(self, partition: Partition, offset: int) -> None:
        for tp in self._owned([partition]):
            # Revoked meanwhile: the new owner starts from the last commit anyway.
            with contextlib.suppress(IllegalStateError):
                self._consumer.seek(tp, offset)

    def assignment(self) -> frozenset[Partition]:
        return frozenset(Partition(tp.topic, tp.partition) for tp in self._consumer.assignment())

    def _owned(self, partitions: Iterable[Partition]) -> list[TopicPartition]:
        assigned = self._consumer.assignment()
        wanted = [TopicPartition(p.topic, p.partition) for p in partitions]
        return [tp for tp in wanted if tp in assigned]

    async def committed(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        tps = [TopicPartition(p.topic, p.partition) for p in partitions]
        offsets = await stable_committed(
            self._consumer, self._group_id, tps, timeout_s=self._stable_timeout_s
        )
        return {Partition(tp.topic, tp.partition): offset for tp, offset in offsets.items()}

    async def commit(self, records: Sequence[Outgoing], offsets: Mapping[Partition, int]) -> None:
        kafka_offsets = {TopicPartition(p.topic, p.partition): o for p, o in offsets.items()}
        if not records:
            if kafka_offsets:
                try:
                    await self._consumer.commit(kafka_offsets)
                except KafkaError as exc:
                    raise BrokerUnavailable(f"offset commit failed: {exc!r}") from exc
            return
        producer = await self._ready_producer()
        try:
            async with producer.transaction():
                futures = [
                    await producer.send(r.topic, r.value, key=r.key, headers=r.headers)
                    for r in records
                ]
                if kafka_offsets:
                    await producer.send_offsets_to_transaction(kafka_offsets, self._group_id)
                await asyncio.gather(*futures)
        except BaseException as exc:
            # Whatever state the producer is in now, a fresh one under the same id is sound.
            await self._close_producer()
            if isinstance(exc, KafkaError):
                raise BrokerUnavailable(f"transaction failed: {exc!r}") from exc
            raise

    async def _ready_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(**self._producer_options)
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()
                raise BrokerUnavailable(f"transactional producer cannot start: {exc!r}") from exc
            fence_offsets_by_generation(producer, self._membership)
            self._producer = producer
        return self._producer

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except Exception:  # it is being thrown away; its open transaction gets aborted
                logger.debug("closing a failed transactional producer raised", exc_info=True)

    async def resume_from_stable_offsets(self, assigned: Sequence[TopicPartition]) -> None:
        """Start newly assigned partitions from committed offsets that no transaction is still
        completing (``ingest._stable_offsets``): held paused until those are known."""
        self._membership.joined(self._consumer)
        self._consumer.pause(*assigned)
        try:
            offsets = await stable_committed(
                self._consumer, self._group_id, assigned, timeout_s=self._stable_timeout_s
            )
        except BrokerUnavailable as exc:
            # Not worse than aiokafka alone: its own (possibly unstable) offsets apply.
            logger.warning("consumer %s: %s; resuming from the last known", self._group_id, exc)
        else:
            owned = self._consumer.assignment()
            for tp, offset in offsets.items():
                if tp in owned:
                    self._consumer.seek(tp, offset)
        self._consumer.resume(*[tp for tp in assigned if tp in self._consumer.assignment()])


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, transport: KafkaTransport, listener: RebalanceListener) -> None:
        self._transport = transport
        self._listener = listener

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._listener.revoked(frozenset(Partition(tp.topic, tp.partition) for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._transport.resume_from_stable_offsets(assigned)
        await self._listener.assigned(
            frozenset(Partition(tp.topic, tp.partition) for tp in assigned)
        )

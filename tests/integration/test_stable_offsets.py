"""A partition changes owner without a repeat: the new owner starts from a stable committed
offset (while a transaction that commits a later offset is still open, ``stable_committed`` does
not answer with the older one), and a member the group dropped cannot commit its transaction."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError

from ingest._fenced_commit import Membership, fence_offsets_by_generation
from ingest._stable_offsets import stable_committed
from ingest.topics import TopicSpec, ensure_topics
from pizzashop.core.errors import BrokerUnavailable


async def test_an_offset_a_transaction_is_committing_is_not_read_until_it_is_done(
    kafka_bootstrap: str,
) -> None:
    topic, group = f"stable-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topic, 0)
    await ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=1)])
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{group}", acks="all"
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await producer.start()
    await consumer.start()
    try:
        for _ in range(3):
            await producer.begin_transaction()
            await producer.send_and_wait(topic, b"x")
            await producer.commit_transaction()
        await producer.begin_transaction()
        await producer.send_offsets_to_transaction({tp: 1}, group)
        await producer.commit_transaction()
        assert await stable_committed(consumer, group, [tp], timeout_s=10) == {tp: 1}

        await producer.begin_transaction()
        await producer.send_offsets_to_transaction({tp: 3}, group)
        # Open: the coordinator holds offset 3 as pending; the stable answer must wait for it.
        with pytest.raises(BrokerUnavailable, match="not stable"):
            await stable_committed(consumer, group, [tp], timeout_s=1.5)
        reading = asyncio.create_task(stable_committed(consumer, group, [tp], timeout_s=30))
        await asyncio.sleep(0.5)
        assert not reading.done()
        await producer.commit_transaction()
        assert await asyncio.wait_for(reading, 30) == {tp: 3}
    finally:
        await consumer.stop()
        await producer.stop()


class _StuckInRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Holds the member in its revoke callback, as a member busy with a batch is held."""

    def __init__(self, membership: Membership) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.membership = membership
        self.consumer: AIOKafkaConsumer | None = None

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if revoked:
            self.entered.set()
            await self.release.wait()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        assert self.consumer is not None
        self.membership.joined(self.consumer)  # as KafkaTransport does


async def test_a_member_the_group_dropped_cannot_commit_its_transaction(
    kafka_bootstrap: str,
) -> None:
    topic, group = f"zombie-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    out = f"{topic}-out"
    tp = TopicPartition(topic, 0)
    await ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=1), TopicSpec(out, 1)])
    membership = Membership()
    stuck = _StuckInRevoke(membership)
    zombie = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        rebalance_timeout_ms=2000,
    )
    zombie.subscribe([topic], listener=stuck)
    stuck.consumer = zombie
    successor = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{group}", acks="all"
    )
    await zombie.start()
    await producer.start()
    fence_offsets_by_generation(producer, membership)
    try:
        while tp not in zombie.assignment():
            await zombie.getmany(timeout_ms=200)
        successor.subscribe([topic])
        await successor.start()
        # The successor's join sends the zombie into its revoke callback, where it stays past
        # the rebalance timeout: the group completes without it and gives the successor tp.
        await asyncio.wait_for(stuck.entered.wait(), 30)
        async with asyncio.timeout(60):
            while tp not in successor.assignment():
                await successor.getmany(timeout_ms=200)

        # aiokafka may already have reset the zombie's generation to -1 (it learnt it was
        # dropped); its commit carries the generation of its assignment all the same.
        assert membership.generation >= 1 and membership.member_id
        await producer.begin_transaction()
        await producer.send_and_wait(out, b"late")
        with pytest.raises(CommitFailedError, match="newer generation"):
            await producer.send_offsets_to_transaction({tp: 5}, group)
        await producer.abort_transaction()
        assert await stable_committed(successor, group, [tp], timeout_s=10) == {}
        reader = AIOKafkaConsumer(
            out,
            bootstrap_servers=kafka_bootstrap,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await reader.start()
        try:
            assert await reader.getmany(timeout_ms=2000) == {}
        finally:
            await reader.stop()
    finally:
        stuck.release.set()
        await successor.stop()
        await zombie.stop()
        await producer.stop()

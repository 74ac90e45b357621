"""A new partition owner starts from a stable committed offset: while a transaction that commits
a later offset is still open, ``stable_committed`` does not answer with the older one."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

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

"""The local Kafka launcher against a real broker, and aiokafka 0.14 against Kafka 4.x."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ingest.broker import LocalKafka, start_detached, status, stop_detached

needs_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="starts its own broker: needs Java and Maven"
)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await client.start()
    yield client
    await client.close()


async def _create_topic(admin: AIOKafkaAdminClient, partitions: int = 6) -> str:
    topic = _unique("test-broker")
    await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    return topic


async def _produce(bootstrap: str, topic: str, value: bytes) -> tuple[int, int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value, key=b"order-1")
    finally:
        await producer.stop()
    return meta.partition, meta.offset


def _consumer(bootstrap: str, topic: str, group: str | None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )


async def test_topic_has_six_partitions(admin: AIOKafkaAdminClient) -> None:
    topic = await _create_topic(admin)
    [description] = await admin.describe_topics([topic])
    assert description["error_code"] == 0
    assert len(description["partitions"]) == 6


async def test_idempotent_producer_round_trip(
    kafka_bootstrap: str, admin: AIOKafkaAdminClient
) -> None:
    topic = await _create_topic(admin)
    partition, offset = await _produce(kafka_bootstrap, topic, b"margherita")
    consumer = _consumer(kafka_bootstrap, topic, group=None)
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    assert (record.value, record.partition, record.offset) == (b"margherita", partition, offset)


async def test_consumer_group_commit_is_kept(
    kafka_bootstrap: str, admin: AIOKafkaAdminClient
) -> None:
    topic, group = await _create_topic(admin), _unique("test-group")
    partition, offset = await _produce(kafka_bootstrap, topic, b"diavola")
    consumer = _consumer(kafka_bootstrap, topic, group=group)
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert record.value == b"diavola"
    committed = await admin.list_consumer_group_offsets(group)
    assert committed[TopicPartition(topic, partition)].offset == offset + 1


@needs_java
async def test_restart_on_the_same_data_dir_keeps_records(
    kafka_cache_dir: Path, tmp_path: Path
) -> None:
    first = LocalKafka(cache_dir=kafka_cache_dir, data_dir=tmp_path)
    bootstrap = await first.start()
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            topic = await _create_topic(admin, partitions=1)
        finally:
            await admin.close()
        await _produce(bootstrap, topic, b"quattro formaggi")
    finally:
        await first.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        await first.start()
    cluster_id = (tmp_path / "cluster.id").read_text()

    async with LocalKafka(cache_dir=kafka_cache_dir, data_dir=tmp_path) as second:
        consumer = _consumer(second.bootstrap, topic, group=None)
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), 30)
        finally:
            await consumer.stop()
    assert record.value == b"quattro formaggi"
    assert (tmp_path / "cluster.id").read_text() == cluster_id
    assert "Kafka Server started" in second.server_log.read_text()


@needs_java
def test_detached_start_status_stop(kafka_cache_dir: Path, tmp_path: Path) -> None:
    assert status(tmp_path) is None
    assert stop_detached(tmp_path) is False
    state = start_detached(cache_dir=kafka_cache_dir, data_dir=tmp_path)
    try:
        assert (tmp_path / "broker.json").is_file()
        assert status(tmp_path) == state
        # Already running and healthy: the same broker comes back, no second JVM.
        assert start_detached(cache_dir=kafka_cache_dir, data_dir=tmp_path) == state
    finally:
        assert stop_detached(tmp_path) is True
    assert status(tmp_path) is None
    assert stop_detached(tmp_path) is False

    again = start_detached(cache_dir=kafka_cache_dir, data_dir=tmp_path)
    try:
        assert again.pid != state.pid
        # Same ports as before, so clients configured with the old bootstrap keep working.
        assert (again.bootstrap, again.controller_port) == (state.bootstrap, state.controller_port)
        assert status(tmp_path) == again
    finally:
        assert stop_detached(tmp_path) is True


async def test_topics_are_created_with_their_partitions_and_twice_is_harmless(
    kafka_bootstrap: str,
) -> None:
    import uuid

    from aiokafka.admin import AIOKafkaAdminClient

    from ingest.topics import Topics, ensure_topics

    topics = Topics(f"t-{uuid.uuid4().hex[:8]}.")
    specs = topics.specs(orders_partitions=6, events_partitions=4)
    created = await ensure_topics(kafka_bootstrap, specs)
    assert sorted(created) == sorted(s.name for s in specs)
    assert await ensure_topics(kafka_bootstrap, specs) == []
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = {
            t["topic"]: len(t["partitions"])
            for t in await admin.describe_topics([s.name for s in specs])
        }
    finally:
        await admin.close()
    assert described[topics.orders] == 6 and described[topics.order_events] == 4
    assert described[Topics.dlq(topics.orders)] == 1

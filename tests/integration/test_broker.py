"""The local Kafka launcher against a real broker, and aiokafka 0.14 against Kafka 4.x."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ingest.broker import LocalKafka, nodes_up, start_detached, status, stop_detached
from ingest.broker._readiness import run_sync
from pizzashop.core.errors import ConfigError

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
    await first.start()
    bootstrap = first.bootstrap
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


async def _stop_under_a_client(bootstrap: str, data_dir: Path) -> bool:
    """Stop the detached broker while a client holds a connection to it: the broker closes it
    first, which leaves TIME_WAIT on its port, the state that used to move a restart elsewhere."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        return await asyncio.to_thread(stop_detached, data_dir)
    finally:
        await producer.stop()


def _plain_bind_fails(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


@needs_java
def test_detached_start_status_stop(kafka_cache_dir: Path, tmp_path: Path) -> None:
    assert status(tmp_path) is None
    assert stop_detached(tmp_path) is False
    state = start_detached(cache_dir=kafka_cache_dir, data_dir=tmp_path)
    try:
        assert (tmp_path / "broker.json").is_file()
        assert status(tmp_path) == state
        assert nodes_up(tmp_path) == {1: True}
        # Already running and healthy: the same broker comes back, no second JVM.
        assert start_detached(cache_dir=kafka_cache_dir, data_dir=tmp_path) == state
    finally:
        assert run_sync(lambda: _stop_under_a_client(state.bootstrap, tmp_path)) is True
    assert _plain_bind_fails(state.port)  # TIME_WAIT: the old probe would have moved the port
    assert status(tmp_path) is None
    assert nodes_up(tmp_path) == {1: False}
    assert stop_detached(tmp_path) is False

    again = start_detached(cache_dir=kafka_cache_dir, data_dir=tmp_path)
    try:
        assert again.pid != state.pid
        # Same ports as before, so clients configured with the old bootstrap keep working.
        assert (again.bootstrap, again.controller_port) == (state.bootstrap, state.controller_port)
        assert status(tmp_path) == again
    finally:
        assert stop_detached(tmp_path) is True

    # A saved port really held by someone else: a clear refusal, not a silent move.
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # over the TIME_WAIT
        squatter.bind(("127.0.0.1", state.port))
        squatter.listen()
        with pytest.raises(ConfigError) as info:
            start_detached(cache_dir=kafka_cache_dir, data_dir=tmp_path)
    message = str(info.value)
    assert f"port {state.port} (client port) is held by pid {os.getpid()}" in message
    assert "broker.json" in message  # says how to pick new ports on purpose
    assert nodes_up(tmp_path) == {1: False}


@needs_java
async def test_a_fixed_port_held_by_another_socket_is_named(
    kafka_cache_dir: Path, tmp_path: Path
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        kafka = LocalKafka(cache_dir=kafka_cache_dir, data_dir=tmp_path, port=port)
        with pytest.raises(ConfigError, match=f"port {port} .* held by pid {os.getpid()}"):
            await kafka.start()
    assert kafka.pid is None


async def _send_in_transaction(producer: AIOKafkaProducer, topic: str, values: list[bytes]) -> None:
    async with producer.transaction():
        for value in values:
            await producer.send(topic, value, key=b"order-1")


async def _read_committed(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        while len(values) < count:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
            values.extend(r.value for records in batch.values() for r in records if r.value)
    finally:
        await consumer.stop()
    return values


@needs_java
@pytest.mark.parametrize("fault", ["terminate", "kill"])
async def test_a_restarted_node_keeps_its_address_and_old_clients_reconnect(
    kafka_cache_dir: Path, tmp_path: Path, fault: str
) -> None:
    async with LocalKafka(cache_dir=kafka_cache_dir, data_dir=tmp_path, heap="384m") as kafka:
        bootstrap = kafka.bootstrap
        assert kafka.node_count == 1 and kafka.node_ids == (1,)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            topic = await _create_topic(admin, partitions=1)
        finally:
            await admin.close()
        # Both clients exist before the fault and are never rebuilt.
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            transactional_id=_unique("test-txn"),
            enable_idempotence=True,
            acks="all",
        )
        plain = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
        await producer.start()
        await plain.start()
        try:
            await _send_in_transaction(producer, topic, [b"before-1", b"before-2"])
            await getattr(kafka, fault)(node=0)
            assert not kafka.running(0) and kafka.pid is None
            began = time.monotonic()
            await kafka.restart(node=0)
            restart_s = time.monotonic() - began
            assert kafka.running(0)
            assert kafka.bootstrap == bootstrap
            await asyncio.wait_for(
                _send_in_transaction(producer, topic, [b"after-1", b"after-2"]), 60
            )
            meta = await asyncio.wait_for(plain.send_and_wait(topic, b"plain", key=b"k"), 60)
        finally:
            await producer.stop()
            await plain.stop()
        assert meta.offset >= 2
        values = await _read_committed(bootstrap, topic, 5)
    assert values == [b"before-1", b"before-2", b"after-1", b"after-2", b"plain"]
    assert restart_s < 60, restart_s


@needs_java
async def test_fault_injection_needs_a_running_instance(
    kafka_cache_dir: Path, tmp_path: Path
) -> None:
    kafka = LocalKafka(cache_dir=kafka_cache_dir, data_dir=tmp_path)
    with pytest.raises(RuntimeError, match="not running"):
        await kafka.kill(node=0)
    with pytest.raises(RuntimeError, match="not running"):
        _ = kafka.bootstrap


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

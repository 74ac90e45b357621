"""A three-node local Kafka: replication settings, a broker crash under load, its return.

Three JVMs on a two-core machine: small heaps, one cluster for the module.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from ingest.broker import LocalKafka, nodes_up, start_detached, status, stop_detached
from ingest.topics import TopicSpec, ensure_topics

pytestmark = pytest.mark.skipif(
    shutil.which("java") is None, reason="starts its own cluster: needs Java and Maven"
)
#: The three-node cluster lives for the module and its tests kill and restart its nodes: they,
#: the cluster and its admin client share one event loop for the module.
on_the_cluster_loop = pytest.mark.asyncio(loop_scope="module")

HEAP = "320m"


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(
    kafka_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalKafka]:
    async with LocalKafka(
        cache_dir=kafka_cache_dir,
        data_dir=tmp_path_factory.mktemp("cluster"),
        nodes=3,
        heap=HEAP,
    ) as kafka:
        yield kafka


@pytest_asyncio.fixture(loop_scope="module")
async def admin(cluster: LocalKafka) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await client.start()
    yield client
    await client.close()


async def _min_isr(admin: AIOKafkaAdminClient, topic: str) -> int:
    [response] = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None})]
    )
    [resource] = response.resources
    [(name, value, *_)] = resource[4]
    assert name == "min.insync.replicas"
    return int(value)


async def _partitions(admin: AIOKafkaAdminClient, topic: str) -> list[dict[str, Any]]:
    """The topic's partitions once the broker asked knows them all with a leader: a new
    topic reaches each broker's metadata a moment after the controller created it."""
    deadline = time.monotonic() + 15
    while True:
        [description] = await admin.describe_topics([topic])
        partitions: list[dict[str, Any]] = description["partitions"]
        if description["error_code"] == 0 and all(p["leader"] >= 0 for p in partitions):
            return partitions
        assert time.monotonic() < deadline, description
        await asyncio.sleep(0.2)


# First in the file: it runs before the module's cluster starts, never beside it.
def test_detached_cluster_restarts_a_lost_node_on_its_ports(
    kafka_cache_dir: Path, tmp_path: Path
) -> None:
    state = start_detached(cache_dir=kafka_cache_dir, data_dir=tmp_path, nodes=3, heap=HEAP)
    try:
        assert state.node_count == 3
        assert len(state.bootstrap.split(",")) == 3
        assert nodes_up(tmp_path) == {1: True, 2: True, 3: True}
        lost = state.nodes[1]
        os.kill(lost.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while nodes_up(tmp_path)[lost.node_id]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # Two of three up: still usable, and status says so.
        assert status(tmp_path) == state
        # Without --nodes, the data dir's own count; only the lost node starts again.
        again = start_detached(cache_dir=kafka_cache_dir, data_dir=tmp_path, heap=HEAP)
        assert again.bootstrap == state.bootstrap
        assert [n.pid == o.pid for n, o in zip(again.nodes, state.nodes, strict=True)] == [
            True,
            False,
            True,
        ]
        assert nodes_up(tmp_path) == {1: True, 2: True, 3: True}
    finally:
        assert stop_detached(tmp_path) is True
    assert nodes_up(tmp_path) == {1: False, 2: False, 3: False}
    assert status(tmp_path) is None


@on_the_cluster_loop
async def test_three_nodes_share_one_bootstrap_list(cluster: LocalKafka) -> None:
    assert cluster.node_count == 3 and cluster.node_ids == (1, 2, 3)
    ports = [cluster.node_bootstrap(i) for i in range(3)]
    assert cluster.bootstrap == ",".join(ports)
    assert len(set(ports)) == 3
    assert all(cluster.running(i) for i in range(3))


@on_the_cluster_loop
async def test_shop_topics_and_internal_topics_get_three_replicas(
    cluster: LocalKafka, admin: AIOKafkaAdminClient
) -> None:
    topic = _unique("cluster-rf")
    # No replication factor given: the cluster's default (3) decides, min ISR follows (2).
    assert await ensure_topics(cluster.bootstrap, [TopicSpec(topic, 3)]) == [topic]
    partitions = await _partitions(admin, topic)
    assert [len(p["replicas"]) for p in partitions] == [3, 3, 3]
    assert await _min_isr(admin, topic) == 2
    # A lower request does not undercut the cluster's default.
    low = _unique("cluster-rf1")
    await ensure_topics(cluster.bootstrap, [TopicSpec(low, 1)], replication_factor=1)
    assert [len(p["replicas"]) for p in await _partitions(admin, low)] == [3]

    # The transaction log and the offsets topic exist once used; use both.
    producer = AIOKafkaProducer(
        bootstrap_servers=cluster.bootstrap, transactional_id=_unique("rf-txn"), acks="all"
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send(topic, b"x", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=cluster.bootstrap,
        group_id=_unique("rf-group"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        await asyncio.wait_for(consumer.getone(), 30)
        await consumer.commit()
    finally:
        await consumer.stop()
    for internal in ("__transaction_state", "__consumer_offsets"):
        partitions = await _partitions(admin, internal)
        assert {len(p["replicas"]) for p in partitions} == {3}, internal
        assert await _min_isr(admin, internal) == 2, internal


@on_the_cluster_loop
async def test_a_killed_broker_loses_nothing_and_rejoins(
    cluster: LocalKafka, admin: AIOKafkaAdminClient
) -> None:
    topic = _unique("cluster-chaos")
    await ensure_topics(cluster.bootstrap, [TopicSpec(topic, 3)])
    [partition0] = [p for p in await _partitions(admin, topic) if p["partition"] == 0]
    victim = cluster.node_ids.index(int(partition0["leader"]))

    producer = AIOKafkaProducer(
        bootstrap_servers=cluster.bootstrap,
        transactional_id=_unique("chaos-txn"),
        acks="all",
        request_timeout_ms=20_000,
    )
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=cluster.bootstrap,
        group_id=_unique("chaos-group"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
    )
    await producer.start()
    await consumer.start()
    seen: list[int] = []

    async def consume(until: int) -> None:
        while len(set(seen)) < until:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                seen.extend(int(r.value) for r in records if r.value is not None)
            if batch:
                await consumer.commit()

    async def produce(first: int, last: int) -> None:
        for start in range(first, last, 10):
            async with producer.transaction():
                for n in range(start, min(start + 10, last)):
                    await producer.send(topic, str(n).encode(), key=str(n % 7).encode())

    try:
        await asyncio.wait_for(produce(0, 100), 60)
        await asyncio.wait_for(consume(100), 60)

        await cluster.kill(node=victim)  # SIGKILL: the leader of partition 0 crashes
        assert not cluster.running(victim)
        began = time.monotonic()
        await asyncio.wait_for(produce(100, 200), 60)
        outage_writes_s = time.monotonic() - began
        await asyncio.wait_for(consume(200), 60)

        await cluster.restart(node=victim)
        await asyncio.wait_for(produce(200, 300), 60)
        await asyncio.wait_for(consume(300), 60)
    finally:
        await consumer.stop()
        await producer.stop()

    # read_committed + a transactional producer: every value exactly once, none lost.
    assert sorted(seen) == list(range(300))
    assert outage_writes_s < 45, outage_writes_s

    # The restarted broker catches up and is back in every ISR.
    deadline = time.monotonic() + 60
    while True:
        isr = {p["partition"]: sorted(p["isr"]) for p in await _partitions(admin, topic)}
        if all(len(members) == 3 for members in isr.values()):
            break
        assert time.monotonic() < deadline, f"ISR not back to 3 within 60s: {isr}"
        await asyncio.sleep(0.5)

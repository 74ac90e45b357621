"""The consumer runtime's behaviour cases (``tests.support.runtime_cases``) over the
confluent-kafka transport (``ingest.confluent_transport``) on a real Kafka: the same cases as
``test_runtime_kafka.py``, through ``ConfluentFlowHarness``; then what librdkafka does its own
way and the transport must make up for (a pause that outlives a rebalance, one call at a time
into a consumer, its partitioner)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import AIOKafkaProducer

from ingest.confluent_transport import ConfluentTransport
from ingest.topics import TopicSpec, ensure_topics
from ingest.transport import Partition, Record
from tests.support.confluent_harness import ConfluentHarnesses
from tests.support.harnesses import HarnessFactory
from tests.support.runtime_cases import Recorder, RuntimeCases, RuntimeHoldsCases, order_on
from tests.support.shop import eventually


@pytest.fixture
def harness_factory(kafka_bootstrap: str) -> HarnessFactory:
    return ConfluentHarnesses(kafka_bootstrap)


class TestRuntimeOnConfluent(RuntimeCases):
    pass


class TestRuntimeHoldsOnConfluent(RuntimeHoldsCases):
    pass


class _Listener:
    def __init__(self) -> None:
        self.revocations = 0

    async def revoked(self, partitions: frozenset[Partition]) -> None:
        self.revocations += 1

    async def assigned(self, partitions: frozenset[Partition]) -> None:
        pass


def _transport(bootstrap: str, group: str) -> ConfluentTransport:
    client_id = f"{group}-{uuid.uuid4().hex[:6]}"
    return ConfluentTransport(
        bootstrap=bootstrap,
        group_id=group,
        client_id=client_id,
        transactional_id=client_id,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_poll_interval_ms=300_000,
        transaction_timeout_ms=10_000,
    )


@contextlib.asynccontextmanager
async def _fetching(
    transport: ConfluentTransport, topic: str, seen: list[Record], listener: _Listener
) -> AsyncIterator[None]:
    """``transport`` started on ``topic`` and fetching into ``seen`` until the exit."""
    await transport.start([topic], listener)

    async def loop() -> None:
        while True:
            for records in (await transport.fetch(0.1, 100)).values():
                seen.extend(records)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await transport.stop()


async def _until(predicate: Callable[[], bool]) -> None:
    async def holds() -> bool:
        return predicate()

    await eventually(holds, every_s=0.05)


@pytest.fixture
async def one_partition(kafka_bootstrap: str) -> str:
    """A topic of one partition holding one record (offset 0)."""
    topic = f"cfk-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"x", key=b"k")
    finally:
        await producer.stop()
    return topic


async def test_a_partition_paused_when_revoked_is_fetched_again_when_it_comes_back(
    kafka_bootstrap: str, one_partition: str
) -> None:
    # librdkafka keeps an application's pause across a rebalance; the runtime pauses every
    # partition with a batch in hand, so without a resume on assignment such a partition
    # would never be fetched again (the chaos run's stuck orders).
    group, p0 = f"g-{uuid.uuid4().hex[:8]}", Partition(one_partition, 0)
    first, listener = _transport(kafka_bootstrap, group), _Listener()
    seen: list[Record] = []
    async with _fetching(first, one_partition, seen, listener):
        await _until(lambda: len(seen) == 1)
        first.pause([p0])  # the batch in hand, never committed
        await _until(lambda: p0 in first._paused)  # applied by the fetch loop
        # Another member comes (and goes): the partition is revoked and comes back, to this
        # member at once or once the other has left.
        other = _transport(kafka_bootstrap, group)
        async with _fetching(other, one_partition, [], _Listener()):
            await _until(
                lambda: listener.revocations > 0 and first.assignment() | other.assignment() == {p0}
            )
        await _until(lambda: first.assignment() == {p0})
        # Back from the committed offset (none: the earliest), as a new owner would read it.
        await _until(lambda: len(seen) >= 2)
    assert [r.offset for r in seen[:2]] == [0, 0]


async def test_pause_resume_and_seek_do_not_wait_for_a_fetch_in_flight(
    kafka_bootstrap: str, one_partition: str
) -> None:
    # confluent-kafka lets one call at a time into a consumer: a pause from the event loop
    # while the consumer thread polls would block the loop until the poll returned.
    group, p0 = f"g-{uuid.uuid4().hex[:8]}", Partition(one_partition, 0)
    transport = _transport(kafka_bootstrap, group)
    await transport.start([one_partition], _Listener())
    try:
        async with asyncio.timeout(30):
            while not await transport.fetch(0.1, 100):
                pass
        fetch = asyncio.create_task(transport.fetch(3.0, 100))  # nothing more: waits 3 s
        await asyncio.sleep(0.3)
        began = time.monotonic()
        transport.pause([p0])
        transport.seek(p0, 0)
        transport.resume([p0])
        took = time.monotonic() - began
        await fetch
        # Applied before the next fetch: from offset 0 again.
        async with asyncio.timeout(30):
            again: dict[Partition, list[Record]] = {}
            while not again:
                again = await transport.fetch(0.1, 100)
    finally:
        await transport.stop()
    assert took < 0.1
    assert [r.offset for r in again[p0]] == [0]


async def test_outputs_land_where_the_java_partitioner_puts_their_keys(
    harness_factory: HarnessFactory,
) -> None:
    # librdkafka's default partitioner (CRC32) differs from the Java client's and aiokafka's
    # (murmur2): one order's events would land on other partitions than the other
    # transport's, and the harness's key_for would name the wrong one.
    handler = Recorder(harness_factory.sink)
    async with harness_factory(handler) as h:
        orders = [order_on(h, p) for p in (0, 1, 2, 0, 1, 2)]
        for order in orders:
            await h.send(h.topics[0], order)
        await h.drained()
    published = h.records(h.outputs[0])
    assert len(published) == len(orders)
    assert all(r.key is not None and r.partition == h.partition_of(r.key) for r in published)

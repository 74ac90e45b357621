"""The outbox relay on a real Kafka under faults: every row on its topic exactly once.

Counts are per event id with a ``read_committed`` reader, in a ``Counter``: a set would hide
the duplicates these tests exist to catch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from aiokafka.cluster import ClusterMetadata
from aiokafka.structs import BrokerMetadata

from api.app import create_app
from ingest.codec import H_EVENT_ID, header
from ingest.outbox import KafkaOutboxTransport, OutboxRelay, add_to_outbox
from ingest.producer import EventProducer
from ingest.reader import read_topics
from ingest.topics import TopicSpec, ensure_topics
from pizzashop.core.database import Database
from pizzashop.core.errors import BrokerUnavailable
from pizzashop.core.settings import HealthSettings, OutboxSettings
from services.scores import ScoreQueries
from tests.support.net import TcpProxy
from tests.support.orders import make_order
from tests.support.shop import eventually

logger = logging.getLogger(__name__)

TIMEOUT_MS = 5_000
SETTINGS = OutboxSettings(
    batch_size=50,
    idle_poll_s=0.2,
    retry_base_delay_s=0.2,
    retry_max_delay_s=2.0,
    lease_ttl_s=30.0,
    request_timeout_ms=TIMEOUT_MS,
)


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    async with Database(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}") as db:
        yield db


@pytest.fixture
def names() -> SimpleNamespace:
    run = uuid.uuid4().hex[:8]
    return SimpleNamespace(
        orders=f"t-{run}.orders", progress=f"t-{run}.outbox-progress", txn=f"t-{run}.outbox-relay"
    )


@pytest.fixture
async def proxy(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TcpProxy]:
    """Every Kafka connection of this test through a proxy, brokers included: the broker
    advertises its own port, so the metadata is rewritten to the proxy's."""
    host, port = kafka_bootstrap.rsplit(":", 1)
    through = TcpProxy(host, int(port))
    original = ClusterMetadata.broker_metadata

    def via_proxy(self: ClusterMetadata, broker_id: int | str) -> BrokerMetadata | None:
        meta = original(self, broker_id)
        if meta is not None and meta.port == int(port):
            return meta._replace(host="127.0.0.1", port=through.port)
        return meta

    monkeypatch.setattr(ClusterMetadata, "broker_metadata", via_proxy)
    await through.open()
    yield through
    await through.close()


async def add_orders(db: Database, topic: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        order = make_order()
        async with db.engine.begin() as conn:
            await add_to_outbox(conn, topic, order)
        ids.append(order.event_id)
    return ids


async def counts(bootstrap: str, topic: str) -> Counter[str]:
    records = await read_topics(bootstrap, [topic], isolation_level="read_committed")
    return Counter(header(r.headers, H_EVENT_ID) or "" for r in records)


def transport(bootstrap: str, names: SimpleNamespace) -> KafkaOutboxTransport:
    return KafkaOutboxTransport(
        bootstrap,
        transactional_id=names.txn,
        progress_topic=names.progress,
        request_timeout_ms=TIMEOUT_MS,
    )


async def stop(relay: OutboxRelay, task: asyncio.Task[None]) -> None:
    relay.request_stop()
    await asyncio.wait_for(task, 30)


async def test_kafka_cut_longer_than_the_request_timeout_loses_and_doubles_nothing(
    kafka_bootstrap: str, proxy: TcpProxy, database: Database, names: SimpleNamespace
) -> None:
    bootstrap = f"127.0.0.1:{proxy.port}"
    await ensure_topics(kafka_bootstrap, [TopicSpec(names.orders, 3)])
    relay = OutboxRelay(database, transport(bootstrap, names), settings=SETTINGS)
    task = asyncio.create_task(relay.run())
    placed: list[str] = []

    async def place(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            placed.extend(await add_orders(database, names.orders, 5))
            relay.wake()
            await asyncio.sleep(0.1)

    await place(2)
    await proxy.close()  # 10 s without Kafka, twice the request timeout
    await place(10)
    await proxy.open()
    reopened = time.monotonic()
    await place(2)

    async def drained() -> bool:
        return await relay.pending_count() == 0

    try:
        await eventually(drained, timeout_s=90)
    finally:
        await stop(relay, task)
    recovered_s = time.monotonic() - reopened
    seen = await counts(kafka_bootstrap, names.orders)
    assert relay.failures >= 1  # it did notice the cut
    assert set(seen) == set(placed)
    assert [k for k, n in seen.items() if n != 1] == []
    logger.warning(
        "cut 10s: %d orders, %d failures, drained %.1fs after reopening, %d client resets",
        len(placed),
        relay.failures,
        recovered_s,
        relay._transport.producer.resets,  # type: ignore[attr-defined]
    )


async def test_a_database_error_keeps_the_relay_alive_and_health_says_so(
    kafka_bootstrap: str, database: Database, names: SimpleNamespace
) -> None:
    await ensure_topics(kafka_bootstrap, [TopicSpec(names.orders, 3)])
    relay = OutboxRelay(database, transport(kafka_bootstrap, names), settings=SETTINGS)
    crashed: list[str] = []
    task = asyncio.create_task(relay.run(), name="outbox-relay")
    shop = SimpleNamespace(
        db=database,
        relay=relay,
        scores=ScoreQueries(database),
        crashed=lambda: [*crashed, *(["outbox-relay"] if task.done() else [])],
        settings=SimpleNamespace(health=HealthSettings(relay_failing_max_s=1.0)),
    )
    app = create_app(shop)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://shop"
        ) as http:
            first = await add_orders(database, names.orders, 20)
            relay.wake()

            async def drained() -> bool:
                return await relay.pending_count() == 0

            await eventually(drained)
            assert (await http.get("/health")).status_code == 200

            async with database.engine.begin() as conn:
                await conn.exec_driver_sql("ALTER TABLE outbox RENAME TO outbox_away")

            async def relay_reported_failing() -> bool:
                response = await http.get("/health")
                reasons = response.json()["reasons"]
                return response.status_code == 503 and any("relay failing" in r for r in reasons)

            await eventually(relay_reported_failing, timeout_s=20)
            assert (await http.get("/health/live")).status_code == 200
            assert not task.done()

            async with database.engine.begin() as conn:
                await conn.exec_driver_sql("ALTER TABLE outbox_away RENAME TO outbox")
            second = await add_orders(database, names.orders, 20)
            relay.wake()

            async def healthy_and_drained() -> bool:
                ok = (await http.get("/health")).status_code == 200
                return ok and await relay.pending_count() == 0

            await eventually(healthy_and_drained, timeout_s=30)
    finally:
        await stop(relay, task)
    seen = await counts(kafka_bootstrap, names.orders)
    assert set(seen) == {*first, *second} and set(seen.values()) == {1}


async def test_a_relay_killed_between_publish_and_mark_leaves_each_row_once(
    kafka_bootstrap: str, database: Database, names: SimpleNamespace
) -> None:
    await ensure_topics(kafka_bootstrap, [TopicSpec(names.orders, 3)])
    short = SETTINGS.model_copy(update={"lease_ttl_s": 2.0})
    first_ids = await add_orders(database, names.orders, 30)
    doomed = OutboxRelay(database, transport(kafka_bootstrap, names), settings=short, holder="a")
    frozen = asyncio.Event()
    never = asyncio.Event()

    async def mark_never_returns(ids: Sequence[int]) -> int:
        frozen.set()  # Kafka has committed the batch; the process "dies" here
        await never.wait()
        return 0

    doomed._mark_sent = mark_never_returns  # type: ignore[method-assign]
    doomed_task = asyncio.create_task(doomed.run())
    await asyncio.wait_for(frozen.wait(), 30)
    assert await doomed.pending_count() == 30  # on Kafka, but not marked

    successor_transport = transport(kafka_bootstrap, names)
    reconciled: list[int] = []
    read_progress = successor_transport.committed_ids

    async def recording() -> list[int]:
        ids = await read_progress()
        reconciled.extend(ids)
        return ids

    successor_transport.committed_ids = recording  # type: ignore[method-assign]
    successor = OutboxRelay(database, successor_transport, settings=short, holder="b")
    successor_task = asyncio.create_task(successor.run())
    later_ids = await add_orders(database, names.orders, 10)
    successor.wake()

    async def drained() -> bool:
        return await successor.pending_count() == 0

    try:
        await eventually(drained, timeout_s=60)
    finally:
        await stop(successor, successor_task)
        doomed_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await doomed_task
    assert len(reconciled) >= 30  # the successor learnt of the batch from the progress topic
    seen = await counts(kafka_bootstrap, names.orders)
    assert set(seen) == {*first_ids, *later_ids}
    assert [k for k, n in seen.items() if n != 1] == []


async def test_the_event_producer_recovers_from_a_cut_longer_than_its_timeout(
    kafka_bootstrap: str, proxy: TcpProxy, names: SimpleNamespace
) -> None:
    await ensure_topics(kafka_bootstrap, [TopicSpec(names.orders, 3)])
    producer = EventProducer(f"127.0.0.1:{proxy.port}", request_timeout_ms=TIMEOUT_MS)
    async with producer:
        before = [make_order() for _ in range(5)]
        await producer.publish_many(names.orders, before)
        await proxy.close()
        during = [make_order() for _ in range(5)]
        cut = asyncio.create_task(producer.publish_many(names.orders, during))
        await asyncio.sleep(10)
        await proxy.open()
        with contextlib.suppress(BrokerUnavailable):
            await cut  # failed, or delivered once the proxy was back
        after = [make_order() for _ in range(20)]
        started = time.monotonic()
        for attempt in range(10):
            try:
                await producer.publish_many(names.orders, after)
                break
            except BrokerUnavailable:
                assert attempt < 9
                await asyncio.sleep(0.5)
        logger.warning(
            "event producer: %d client reset(s); first publish after the cut took %.1fs",
            producer.resets,
            time.monotonic() - started,
        )
    seen = await counts(kafka_bootstrap, names.orders)
    assert all(seen[e.event_id] == 1 for e in [*before, *after])
    assert all(seen[e.event_id] <= 1 for e in during)

"""Delivery under faults on the real broker: a failing partition holds back only itself, dead
letters replay once, the saga always finishes. Effects are counted per key from durable
outputs (topics read with a read_committed reader, the SMTP server's log)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Sequence

import pytest

from ingest.codec import decode
from ingest.consumer import Delivery, Handler, Output
from ingest.dlq import read_dead_letters, replay
from ingest.events import Event, OrderPlaced, ReceiptSent
from ingest.kafka_transport import KafkaTransport
from ingest.producer import EventProducer
from ingest.reader import read_topics
from ingest.runtime import ConsumerRuntime
from ingest.topics import TopicSpec, ensure_topics
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.errors import TransientError
from pizzashop.core.settings import ConsumerSettings, Settings
from services.mailer import SmtpSink
from tests.support.orders import make_order
from tests.support.shop import eventually

# The consumer runtime's promises hold on both transports (conftest.TRANSPORTS).
pytestmark = pytest.mark.both_transports

PARTITIONS = 3
FAIL_S = 60.0


async def committed_events(bootstrap: str, topics: Sequence[str]) -> list[Event]:
    records = await read_topics(bootstrap, topics, isolation_level="read_committed")
    return [decode(r.value, list(r.headers)) for r in records]


class FailsOnePartition(Handler):
    """Echoes every order to ``out``; partition 0 fails with a transient error for a while."""

    event_types = (OrderPlaced,)

    def __init__(self, out: str, fail_until: float) -> None:
        self._out = out
        self._fail_until = fail_until
        self.handled_at: dict[str, float] = {}

    async def handle(self, batch: Sequence[Delivery]) -> list[Output]:
        if batch[0].partition == 0 and time.monotonic() < self._fail_until:
            raise TransientError("partition 0's dependency is down")
        for d in batch:
            self.handled_at.setdefault(d.event.order_id, time.monotonic())
        return [d.emit(self._out, d.event) for d in batch]


async def test_a_failing_partition_holds_back_only_itself(kafka_bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    source, out, group = f"iso-{run}", f"iso-{run}.out", f"iso-{run}"
    await ensure_topics(kafka_bootstrap, [TopicSpec(source, PARTITIONS), TopicSpec(out, 1)])
    settings = ConsumerSettings(
        batch_wait_ms=20,
        retry_budget_s=FAIL_S * 3,  # outlasts the failure: nothing is dead-lettered
        retry_base_delay_s=0.2,
        retry_max_delay_s=2.0,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    handler = FailsOnePartition(out, fail_until=time.monotonic() + FAIL_S)
    transport = KafkaTransport(
        bootstrap=kafka_bootstrap,
        group_id=group,
        client_id=group,
        transactional_id=f"{group}.0",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        transaction_timeout_ms=settings.transaction_timeout_ms,
    )
    runtime = ConsumerRuntime(
        name="iso",
        group_id=group,
        topics=[source],
        handler=handler,
        transport=transport,
        processed=None,
        settings=settings,
    )
    sent_at: dict[str, float] = {}
    partition_of: dict[str, int] = {}
    async with runtime, EventProducer(kafka_bootstrap) as producer:
        task = asyncio.create_task(runtime.run())
        try:
            # A steady trickle over the whole failure: 10 orders/s.
            while time.monotonic() < handler._fail_until - 5:
                order = make_order()
                sent_at[order.order_id] = time.monotonic()
                await producer.publish(source, order)
                await asyncio.sleep(0.1)
            records = await read_topics(kafka_bootstrap, [source])
            partition_of = {r.key.decode(): r.partition for r in records if r.key}

            async def all_handled() -> bool:
                return len(handler.handled_at) == len(sent_at)

            await eventually(all_handled, timeout_s=FAIL_S + 30)
        finally:
            runtime.request_stop()
            await task

    healthy = [o for o in sent_at if partition_of[o] != 0]
    failing = [o for o in sent_at if partition_of[o] == 0]
    assert healthy and failing
    lag = sorted(handler.handled_at[o] - sent_at[o] for o in healthy)
    # The healthy partitions flowed at their normal pace throughout the failure.
    assert lag[int(len(lag) * 0.99) - 1] < 2.0, f"p99 lag {lag[int(len(lag) * 0.99) - 1]:.2f}s"
    # Partition 0's orders waited for the failure to end, then went through.
    assert all(handler.handled_at[o] >= handler._fail_until - 0.5 for o in failing)
    published = Counter(e.order_id for e in await committed_events(kafka_bootstrap, [out]))
    assert set(published) == set(sent_at) and set(published.values()) == {1}
    assert runtime.stats.dead_lettered == 0 and runtime.stats.retries >= 3


async def test_receipts_dead_lettered_in_an_smtp_outage_are_sent_once_on_replay(
    shop_settings: Settings,
) -> None:
    async with SmtpSink() as sink:
        settings = shop_settings.model_copy(
            update={
                "smtp": shop_settings.smtp.model_copy(update={"port": sink.port, "timeout_s": 2}),
                # A short budget, so the outage outlasts it and receipts are dead-lettered.
                "consumer": shop_settings.consumer.model_copy(update={"retry_budget_s": 2.0}),
            }
        )
        wiring = Wiring(api=False, workers=("notification", "kitchen"))
        async with Shop(settings, settings.kafka_bootstrap or "", wiring) as shop:
            await sink.suspend()
            orders = [make_order() for _ in range(12)]
            await shop.producer.publish_many(shop.topics.orders, orders)

            async def all_dead() -> bool:
                letters = await read_dead_letters(shop.bootstrap, shop.topics.dlq_topics())
                return len(letters) == len(orders)

            await eventually(all_dead, timeout_s=60)
            await sink.resume()
            letters = await read_dead_letters(shop.bootstrap, shop.topics.dlq_topics())
            assert {letter.consumer_group for letter in letters} == {settings.group("notification")}
            for _ in range(2):  # a second replay of the same letters has no second effect
                for letter in letters:
                    await replay(shop.producer, letter)

            async def all_mailed() -> bool:
                return len({m.message_id for m in sink.messages}) == len(orders)

            await eventually(all_mailed, timeout_s=60)

            # A mail is in the sink before its ReceiptSent commits; the kitchen is a group of
            # its own. Wait for both on the topic, then leave room for a wrong second copy.
            async def all_committed() -> bool:
                events = await committed_events(shop.bootstrap, [shop.topics.order_events])
                sent = {e.order_id for e in events if isinstance(e, ReceiptSent)}
                accepted = {e.order_id for e in events if e.event_type == "OrderAccepted"}
                return len(sent) == len(accepted) == len(orders)

            await eventually(all_committed, timeout_s=60)
            await asyncio.sleep(2)
            events = await committed_events(shop.bootstrap, [shop.topics.order_events])

    receipts = Counter(m.subject for m in sink.messages)
    assert len(receipts) == len(orders) and set(receipts.values()) == {1}
    confirmations = Counter(e.order_id for e in events if isinstance(e, ReceiptSent))
    assert set(confirmations.values()) == {1} and len(confirmations) == len(orders)
    # The kitchen had handled every order already; the replays were not meant for it.
    accepted = Counter(e.order_id for e in events if e.event_type == "OrderAccepted")
    assert set(accepted.values()) == {1} and len(accepted) == len(orders)


async def test_the_saga_refunds_orders_the_kitchen_never_decided_and_only_once(
    shop_settings: Settings, smtp_sink: SmtpSink
) -> None:
    settings = shop_settings.model_copy(update={"saga_deadline_s": 2.0})
    bootstrap = settings.kafka_bootstrap or ""
    orders = [make_order() for _ in range(4)] + [make_order(skus=[("hawaiian_m", "13.25", 1)])]
    ids = [o.order_id for o in orders]
    saga = Wiring(api=False, workers=("payment", "saga-deadline", "notification", "status"))
    async with Shop(settings, bootstrap, saga) as shop:
        # The kitchen is down: nobody decides these orders.
        await shop.producer.publish_many(shop.topics.orders, orders)

        async def refunded() -> bool:
            return (await shop.queries.counts(ids)).get("RefundNoticeSent", 0) == len(ids)

        await eventually(refunded, timeout_s=60)
        # The kitchen comes back and decides late: accepted orders bake, the pineapple one is
        # rejected. Neither is refunded again.
        async with Shop(settings, bootstrap, Wiring(api=False, workers=("kitchen", "oven"))):

            async def decided() -> bool:
                counts = await shop.queries.counts(ids)
                return counts.get("OrderReady", 0) == 4 and counts.get("OrderRejected", 0) == 1

            await eventually(decided, timeout_s=60)
            await asyncio.sleep(2)  # room for a wrong second refund to show up
        events = await committed_events(shop.bootstrap, [shop.topics.order_events])

    refunds = Counter(e.order_id for e in events if e.event_type == "RefundIssued")
    assert sorted(refunds) == sorted(ids) and set(refunds.values()) == {1}
    notices = Counter(m.subject for m in smtp_sink.messages if m.subject.startswith("Refund"))
    assert len(notices) == len(ids) and set(notices.values()) == {1}

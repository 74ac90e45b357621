"""The outbox relay on a real database with a fake Kafka: reconciliation, lease, failures."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence

import pytest
from sqlalchemy import select, text

from ingest.outbox import OutboxRelay, OutboxRow, add_to_outbox, outbox
from pizzashop.core.database import Database
from pizzashop.core.errors import BrokerUnavailable
from pizzashop.core.settings import OutboxSettings
from tests.support.orders import make_order

FAST = OutboxSettings(
    batch_size=3, idle_poll_s=0.01, retry_base_delay_s=0.01, retry_max_delay_s=0.05
)


class FakeKafka:
    """Commits batches atomically; can fail before a commit or lose the answer after one."""

    def __init__(self) -> None:
        self.committed: list[list[OutboxRow]] = []
        self.fail_before_commit = 0
        self.fail_after_commit = 0
        self.resets = 0
        self.stopped = False
        self.reconciles = 0

    async def publish(self, rows: Sequence[OutboxRow]) -> None:
        if self.fail_before_commit:
            self.fail_before_commit -= 1
            raise BrokerUnavailable("broker away")
        self.committed.append(list(rows))
        if self.fail_after_commit:
            self.fail_after_commit -= 1
            raise BrokerUnavailable("commit answer lost")

    async def committed_ids(self) -> list[int]:
        self.reconciles += 1
        return [row.id for batch in self.committed[-5:] for row in batch]

    async def reset(self) -> None:
        self.resets += 1

    async def stop(self) -> None:
        self.stopped = True

    def event_counts(self) -> Counter[bytes]:
        return Counter(row.record.value for batch in self.committed for row in batch)


async def add_orders(db: Database, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        order = make_order()
        async with db.engine.begin() as conn:
            await add_to_outbox(conn, "orders", order)
        ids.append(order.event_id)
    return ids


async def unsent(db: Database) -> int:
    async with db.engine.connect() as conn:
        rows = await conn.execute(select(outbox.c.id).where(outbox.c.sent_at.is_(None)))
        return len(rows.all())


async def test_rows_go_out_in_id_order_once_and_are_marked(db: Database) -> None:
    await add_orders(db, 7)
    kafka = FakeKafka()
    relay = OutboxRelay(db, kafka, settings=FAST)
    sent = [await relay.relay_once() for _ in range(4)]
    assert sent == [3, 3, 1, 0]
    ids = [row.id for batch in kafka.committed for row in batch]
    assert ids == sorted(ids) and len(ids) == 7
    assert await unsent(db) == 0
    assert kafka.reconciles == 1  # once at start, not per batch


async def test_a_mark_that_fails_after_the_commit_resends_nothing(db: Database) -> None:
    await add_orders(db, 5)
    kafka = FakeKafka()
    relay = OutboxRelay(db, kafka, settings=FAST)
    original = relay._mark_sent
    calls = {"n": 0}

    async def mark_dies_once(ids: Sequence[int]) -> int:
        calls["n"] += 1
        if calls["n"] == 1:  # the mark right after the first commit
            raise ConnectionError("process killed between publish and mark")
        return await original(ids)

    relay._mark_sent = mark_dies_once  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await relay.relay_once()
    relay._failed(ConnectionError("x"))
    while await relay.relay_once():
        pass
    counts = kafka.event_counts()
    assert len(counts) == 5 and set(counts.values()) == {1}
    assert await unsent(db) == 0


async def test_a_lost_commit_answer_is_reconciled_not_resent(db: Database) -> None:
    await add_orders(db, 3)
    kafka = FakeKafka()
    kafka.fail_after_commit = 1
    relay = OutboxRelay(db, kafka, settings=FAST)
    task = asyncio.create_task(relay.run())
    try:
        for _ in range(200):
            if await unsent(db) == 0 and relay.consecutive_failures == 0:
                break
            await asyncio.sleep(0.01)
    finally:
        relay.request_stop()
        await task
    counts = kafka.event_counts()
    assert len(counts) == 3 and set(counts.values()) == {1}
    assert relay.failures == 1 and kafka.reconciles >= 2 and kafka.stopped


async def test_a_batch_that_never_committed_goes_out_again(db: Database) -> None:
    await add_orders(db, 3)
    kafka = FakeKafka()
    kafka.fail_before_commit = 2
    relay = OutboxRelay(db, kafka, settings=FAST)
    task = asyncio.create_task(relay.run())
    try:
        for _ in range(300):
            if await unsent(db) == 0:
                break
            await asyncio.sleep(0.01)
    finally:
        relay.request_stop()
        await task
    assert set(kafka.event_counts().values()) == {1} and len(kafka.event_counts()) == 3
    assert relay.failures == 2 and relay.state.consecutive_failures == 0
    assert relay.state.last_success_at is not None


async def test_a_database_error_does_not_end_the_relay(db: Database) -> None:
    if db.dialect != "sqlite":
        pytest.skip("renames the table the SQLite way")
    await add_orders(db, 2)
    kafka = FakeKafka()
    relay = OutboxRelay(db, kafka, settings=FAST)
    async with db.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE outbox RENAME TO outbox_away"))
    task = asyncio.create_task(relay.run())
    try:
        for _ in range(300):
            if relay.consecutive_failures >= 3:
                break
            await asyncio.sleep(0.01)
        state = relay.state
        assert state.failing_since is not None and "outbox" in (state.last_error or "")
        assert not task.done()
        async with db.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE outbox_away RENAME TO outbox"))
        for _ in range(300):
            if await unsent(db) == 0 and relay.consecutive_failures == 0:
                break
            await asyncio.sleep(0.01)
    finally:
        relay.request_stop()
        await task
    assert relay.state.failing_since is None and len(kafka.event_counts()) == 2


async def test_one_relay_per_database_publishes(db: Database) -> None:
    await add_orders(db, 2)
    now = {"t": 1000.0}
    first = OutboxRelay(db, FakeKafka(), settings=FAST, holder="a", clock=lambda: now["t"])
    second_kafka = FakeKafka()
    second = OutboxRelay(db, second_kafka, settings=FAST, holder="b", clock=lambda: now["t"])
    assert await first.relay_once() == 2
    await add_orders(db, 1)
    assert await second.relay_once() == 0 and not second.state.has_lease
    assert second_kafka.committed == []
    # The holder goes silent (killed): after the TTL the lease passes on.
    now["t"] += FAST.lease_ttl_s + 1
    assert await second.relay_once() == 1 and second.state.has_lease
    # The first one notices on its next loop and drops its Kafka client.
    assert await first.relay_once() == 0 and not first.state.has_lease
    assert first._transport.resets == 1


async def test_a_stopped_relay_hands_its_lease_over(db: Database) -> None:
    first = OutboxRelay(db, FakeKafka(), settings=FAST, holder="a")
    task = asyncio.create_task(first.run())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), 0.1)
    first.request_stop()
    await task
    second = OutboxRelay(db, FakeKafka(), settings=FAST, holder="b")
    await add_orders(db, 1)
    assert await second.relay_once() == 1


def test_backoff_grows_and_is_capped() -> None:
    relay = OutboxRelay(None, FakeKafka(), settings=FAST)  # type: ignore[arg-type]
    delays = []
    for _ in range(8):
        relay._failed(RuntimeError("x"))
        delays.append(relay._backoff())
    assert delays[0] <= FAST.retry_base_delay_s
    assert all(d <= FAST.retry_max_delay_s for d in delays)
    assert delays[-1] >= FAST.retry_max_delay_s / 2


async def test_backlog_reports_the_oldest_pending_row(db: Database) -> None:
    relay = OutboxRelay(db, FakeKafka(), settings=FAST)
    assert (await relay.backlog()).oldest_age_s is None
    await add_orders(db, 2)
    backlog = await relay.backlog()
    assert backlog.pending == 2
    assert backlog.oldest_age_s is not None and backlog.oldest_age_s < 5
    later = OutboxRelay(db, FakeKafka(), settings=FAST, clock=lambda: time.time() + 600)
    aged = (await later.backlog()).oldest_age_s
    assert aged is not None and aged > 590

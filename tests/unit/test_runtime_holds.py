"""What holds a partition back in the consumer runtime, and only that partition: a batch in
hand, a timer (``due_at``), a retriable error with its backoff and budget; and how a shutdown or a
rebalance meets a held or busy partition. On the in-memory transport, waiting on events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest

from ingest.consumer import Delivery, Handler, Output
from ingest.events import Event, OrderAccepted, utcnow
from ingest.memory import MemoryBroker
from ingest.testing import FAST_SETTINGS, FlowHarness
from ingest.transport import Partition
from pizzashop.core.errors import DeliveryFailed
from tests.unit.test_runtime import IN, OUT, P0, Recorder, order_on, outputs, ready


# -- a batch in hand ---------------------------------------------------------------------------
async def test_a_partition_is_paused_while_its_batch_is_in_hand() -> None:
    handler = Recorder()
    async with FlowHarness(handler, topics=[IN]) as h:
        slow, behind, other = order_on(h, 0), order_on(h, 0), order_on(h, 1)
        gate = handler.gates[slow.order_id] = asyncio.Event()
        await h.send(IN, slow)
        await handler.called(1)
        await h.send(IN, behind)
        await h.send(IN, other)
        await h.until(lambda: other.order_id in outputs(h))
        # The other partition went on; the record behind the slow one was not even fetched.
        assert handler.seen() == [slow.order_id, other.order_id]
        gate.set()
        await h.drained()
    assert handler.seen() == [slow.order_id, other.order_id, behind.order_id]
    assert outputs(h) == [slow.order_id, behind.order_id, other.order_id]


# -- timers ------------------------------------------------------------------------------------
class Oven(Handler):
    """Handles an accepted order once it is ready (``ready_by``)."""

    event_types = (OrderAccepted,)

    def __init__(self) -> None:
        self.handled: list[tuple[str, datetime]] = []

    def due_at(self, event: Event) -> datetime | None:
        assert isinstance(event, OrderAccepted)
        return event.ready_by

    async def handle(self, batch: Sequence[Delivery]) -> Sequence[Output]:
        self.handled += [(d.event.order_id, utcnow()) for d in batch]
        return [d.emit(OUT, ready(d.event)) for d in batch]


async def test_due_at_holds_its_partition_until_due_while_others_flow() -> None:
    oven = Oven()
    h = FlowHarness(oven, topics=[IN])
    now = utcnow()
    later = now + timedelta(seconds=0.4)
    first = OrderAccepted(order_id=h.key_for(0, prefix="first"), ready_by=now)
    late = OrderAccepted(order_id=h.key_for(0, prefix="late"), ready_by=later)
    behind = OrderAccepted(order_id=h.key_for(0, prefix="behind"), ready_by=now)
    for event in (first, late, behind):
        await h.send(IN, event)
    async with h:
        await h.until(lambda: first.order_id in outputs(h))
        assert h.offset(P0) == 1  # handled up to the first event not due, and committed
        other = OrderAccepted(order_id=h.key_for(1, prefix="other"), ready_by=now)
        await h.send(IN, other)
        await h.until(lambda: other.order_id in outputs(h))
        assert utcnow() < later, "too slow to tell a hold from a pass"
        assert [order for order, _ in oven.handled] == [first.order_id, other.order_id]
        await h.drained()
    order_ids = [order for order, _ in oven.handled]
    assert order_ids == [first.order_id, other.order_id, late.order_id, behind.order_id]
    assert oven.handled[2][1] >= later  # not before it was due
    assert h.stats.deferred >= 1
    assert h.dead_letters() == []


# -- retriable errors --------------------------------------------------------------------------
async def test_a_transient_error_holds_only_its_partition() -> None:
    handler = Recorder()
    settings = FAST_SETTINGS.model_copy(update={"retry_budget_s": 30.0})
    async with FlowHarness(handler, topics=[IN], settings=settings) as h:
        flaky, behind = order_on(h, 0), order_on(h, 0)
        handler.failures[flaky.order_id] = DeliveryFailed
        await h.send(IN, flaky)
        await h.send(IN, behind)
        await h.until(lambda: h.stats.retries >= 2)
        others = [order_on(h, 1), order_on(h, 2), order_on(h, 1)]
        for order in others:
            await h.send(IN, order)
        await h.until(lambda: all(o.order_id in outputs(h) for o in others))
        # Still failing, still held at the flaky record, nothing of that partition out.
        assert flaky.order_id in handler.failures
        assert h.offset(P0) == 0
        assert sorted(outputs(h)) == sorted(o.order_id for o in others)
        retries = h.stats.retries
        await h.until(lambda: h.stats.retries > retries)  # and being retried meanwhile
        del handler.failures[flaky.order_id]  # the mail server is back
        await h.drained()
    assert outputs(h)[:2] == [flaky.order_id, behind.order_id]
    assert h.dead_letters() == []
    assert h.stats.errors_by_class["DeliveryFailed"] >= 3


async def test_retries_back_off_exponentially_then_dead_letter_after_the_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ingest.runtime")
    base, cap, budget = 0.01, 0.04, 0.3
    settings = FAST_SETTINGS.model_copy(
        update={"retry_base_delay_s": base, "retry_max_delay_s": cap, "retry_budget_s": budget}
    )
    handler = Recorder()
    async with FlowHarness(handler, topics=[IN], settings=settings) as h:
        doomed, behind = order_on(h, 0), order_on(h, 0)
        handler.failures[doomed.order_id] = DeliveryFailed
        await h.send(IN, doomed)
        await h.until(lambda: bool(h.dead_letters()))
        await h.send(IN, behind)
        await h.drained()

    [letter] = h.dead_letters()
    assert (letter.error_class, letter.original_offset) == ("DeliveryFailed", 0)
    attempts = handler.times
    # A record alone in its batch: one handler call per attempt.
    assert len(attempts) - 1 == letter.attempts  # the last call was ``behind``'s
    assert attempts[-2] - attempts[0] >= budget
    holds = [r.args for r in caplog.records if "partition held" in r.getMessage()]
    assert len(holds) == letter.attempts - 1 >= 4
    for n, args in enumerate(holds, start=1):
        assert isinstance(args, tuple)
        attempt, delay = args[2], args[4]
        assert isinstance(delay, float)
        assert attempt == n
        step = min(cap, base * 2 ** (n - 1))
        assert step / 2 <= delay <= step  # capped exponential, jittered down to half
        assert attempts[n] - attempts[n - 1] >= delay  # and honoured
    assert outputs(h) == [behind.order_id]  # the partition moved on after the dead letter
    assert h.stats.retries == letter.attempts - 1


# -- shutdown ----------------------------------------------------------------------------------
async def test_shutdown_while_a_retry_waits_leaves_the_record_for_the_next_run() -> None:
    broker = MemoryBroker()
    failing = Recorder()
    settings = FAST_SETTINGS.model_copy(update={"retry_budget_s": 30.0})
    async with FlowHarness(failing, topics=[IN], settings=settings, broker=broker) as h1:
        done, stuck = order_on(h1, 0), order_on(h1, 0)
        failing.failures[stuck.order_id] = DeliveryFailed
        await h1.send(IN, done)
        await h1.send(IN, stuck)
        await h1.until(lambda: h1.stats.retries >= 2)
    assert h1.dead_letters() == []
    assert h1.offset(P0) == 1  # past ``done``, not past ``stuck``

    healthy = Recorder()
    async with FlowHarness(healthy, topics=[IN], broker=broker) as h2:
        await h2.drained()
    assert healthy.seen() == [stuck.order_id]
    assert outputs(h2) == [done.order_id, stuck.order_id]


async def test_shutdown_during_a_failing_call_does_not_dead_letter_it() -> None:
    broker = MemoryBroker()
    failing = Recorder()
    # No budget at all: without the shutdown rule the first failure would dead-letter.
    settings = FAST_SETTINGS.model_copy(update={"retry_budget_s": 0.0})
    h1 = FlowHarness(failing, topics=[IN], settings=settings, broker=broker)
    stuck = order_on(h1, 0)
    failing.failures[stuck.order_id] = DeliveryFailed
    gate = failing.gates[stuck.order_id] = asyncio.Event()
    async with h1:
        await h1.send(IN, stuck)
        await failing.called(1)
        h1.runtime.request_stop()
        gate.set()
    assert h1.dead_letters() == []
    assert h1.offset(P0) == 0

    healthy = Recorder()
    async with FlowHarness(healthy, topics=[IN], broker=broker) as h2:
        await h2.drained()
    assert outputs(h2) == [stuck.order_id]


async def test_shutdown_finishes_and_commits_a_batch_in_hand() -> None:
    handler = Recorder()
    h = FlowHarness(handler, topics=[IN])
    order = order_on(h, 0)
    gate = handler.gates[order.order_id] = asyncio.Event()
    async with h:
        await h.send(IN, order)
        await handler.called(1)
        stopping = asyncio.create_task(h.stop())
        await asyncio.sleep(0)  # let stop() begin: it must wait for the batch, not drop it
        assert not stopping.done()
        gate.set()
        await stopping
    assert outputs(h) == [order.order_id]
    assert h.offset(P0) == 1


# -- rebalance ---------------------------------------------------------------------------------
async def test_a_rebalance_waits_for_the_batch_in_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = Recorder()
    async with FlowHarness(handler, topics=[IN]) as h:
        first, second = order_on(h, 0), order_on(h, 0)
        gate = handler.gates[first.order_id] = asyncio.Event()
        offsets_when_assigned: list[int] = []
        assigned = h.runtime.assigned

        async def spy(partitions: frozenset[Partition]) -> None:
            offsets_when_assigned.append(h.offset(P0))
            await assigned(partitions)

        monkeypatch.setattr(h.runtime, "assigned", spy)
        await h.send(IN, first)
        await handler.called(1)
        rebalance = asyncio.create_task(h.transport.rebalance())
        await asyncio.sleep(0)
        assert not rebalance.done()
        gate.set()
        await rebalance
        # The batch committed before the partitions came back, so nothing is fetched twice.
        assert offsets_when_assigned == [1]
        await h.send(IN, second)
        await h.drained()
    assert handler.seen() == [first.order_id, second.order_id]
    assert outputs(h) == [first.order_id, second.order_id]


async def test_nothing_is_fetched_while_a_rebalance_is_in_progress() -> None:
    handler = Recorder()
    async with FlowHarness(handler, topics=[IN]) as h:
        slow, other = order_on(h, 0), order_on(h, 1)
        gate, other_gate = asyncio.Event(), asyncio.Event()
        handler.gates = {slow.order_id: gate, other.order_id: other_gate}
        await h.send(IN, slow)
        await handler.called(1)
        rebalance = asyncio.create_task(h.transport.rebalance())
        await h.send(IN, other)  # arrives while the partitions are being revoked
        for _ in range(20):  # turns of the loop, not time: room for a wrong fetch to happen
            await asyncio.sleep(0)
        # As aiokafka: no records while a reassignment is in progress, so no batch starts that
        # ``revoked`` would not wait for.
        assert handler.seen() == [slow.order_id]
        gate.set()
        await rebalance
        other_gate.set()
        await h.drained()
    assert handler.seen() == [slow.order_id, other.order_id]
    assert sorted(outputs(h)) == sorted([slow.order_id, other.order_id])

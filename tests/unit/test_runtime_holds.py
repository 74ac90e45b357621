"""What holds a partition back in the consumer runtime, on the in-memory transport.

The cases of ``tests.support.runtime_cases`` (shared with the Kafka tier), and the ones only
the in-memory broker can provoke: a rebalance at a chosen moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import pytest
import uvloop

from ingest.consumer import Delivery, Output
from ingest.events import OrderAccepted, utcnow
from ingest.testing import FlowHarness
from ingest.transport import Partition
from pizzashop.core.errors import TransientError
from tests.support.runtime_cases import (
    Oven,
    Recorder,
    RuntimeHoldsCases,
    order_on,
    outputs,
    part,
)

IN, OUT = "orders", "order-events"


class TestRuntimeHoldsOnMemory(RuntimeHoldsCases):
    """Collected here with the memory ``harness_factory`` of ``tests/unit/conftest.py``."""


# -- rebalance ---------------------------------------------------------------------------------
async def test_a_rebalance_waits_for_the_batch_in_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = Recorder(OUT)
    async with FlowHarness(handler, topics=[IN], outputs=[OUT]) as h:
        first, second = order_on(h, 0), order_on(h, 0)
        gate = handler.gates[first.order_id] = asyncio.Event()
        offsets_when_assigned: list[int] = []
        assigned = h.runtime.assigned

        async def spy(partitions: frozenset[Partition]) -> None:
            offsets_when_assigned.append(h.offset(part(h)))
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
    handler = Recorder(OUT)
    async with FlowHarness(handler, topics=[IN], outputs=[OUT]) as h:
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


class _FailsWhole(Recorder):
    """A batch of several fails (so it goes one by one); ``gates`` hold single records only."""

    async def handle(self, batch: Sequence[Delivery]) -> Sequence[Output]:
        if len(batch) > 1:
            self.calls.append(list(batch))
            raise TransientError("the batch fails as a whole")
        return await super().handle(batch)


async def test_a_revoke_stops_a_batch_going_one_by_one_at_its_next_record() -> None:
    handler = _FailsWhole(OUT)
    async with FlowHarness(handler, topics=[IN], outputs=[OUT]) as h:
        a, b, c = order_on(h, 0), order_on(h, 0), order_on(h, 0)
        gate = handler.gates[b.order_id] = asyncio.Event()
        later = handler.gates[c.order_id] = asyncio.Event()  # c would hold the revoke up
        for order in (a, b, c):
            await h.send(IN, order)
        await handler.called(3)  # the batch of three, a, then b held at its gate
        rebalance = asyncio.create_task(h.transport.rebalance())
        await asyncio.sleep(0)
        gate.set()
        # The revoke does not wait for c's turn: a and b are committed, c is the next owner's.
        await asyncio.wait_for(rebalance, 1)  # well within the 2 s the revoke would wait
        later.set()
        await h.drained()
    calls = [[d.event.order_id for d in call] for call in handler.calls]
    assert calls == [[a.order_id, b.order_id, c.order_id], [a.order_id], [b.order_id], [c.order_id]]
    assert sorted(outputs(h)) == sorted([a.order_id, b.order_id, c.order_id])


def test_holds_that_come_due_at_once_resume_their_partition_under_uvloop() -> None:
    """uvloop runs a timer that is already due before callbacks queued earlier, so a hold of
    ~0 s can fire before its batch task's done callback: the partition must not stay paused
    (it did, for good, in the three-node chaos run, with three of the oven's six partitions)."""

    async def scenario() -> list[str]:
        oven = Oven(OUT)
        async with FlowHarness(oven, topics=[OUT], outputs=["ready"]) as h:
            now = utcnow()
            events = [
                OrderAccepted(
                    order_id=h.key_for(0, prefix=f"a{i}"),
                    ready_by=now + timedelta(milliseconds=3 * i),
                )
                for i in range(60)
            ]
            for event in events:
                await h.send(OUT, event)
            await h.drained()
            assert h.stats.deferred >= 1, "no hold happened: the case tests nothing"
        return [order for order, _ in oven.handled]

    handled = uvloop.run(scenario())
    assert len(handled) == 60

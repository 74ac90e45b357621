"""What holds a partition back in the consumer runtime, on the in-memory transport.

The cases of ``tests.support.runtime_cases`` (shared with the Kafka tier), and the ones only
the in-memory broker can provoke: a rebalance at a chosen moment.
"""

from __future__ import annotations

import asyncio

import pytest

from ingest.testing import FlowHarness
from ingest.transport import Partition
from tests.support.runtime_cases import Recorder, RuntimeHoldsCases, order_on, outputs, part

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

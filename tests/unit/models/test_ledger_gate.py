"""The order ledger's gate answers from the end offsets one check read after the batch asked:
once the ledger has registered up to them on every partition, no order placed before the batch
is missing, though the partitions' ends have moved on since (orders keep coming)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiokafka import TopicPartition

from enrichers.ledger import OrderLedger
from models.features import OrderFrame, state_query
from models.simulator import SimulatedStream

P0, P1 = TopicPartition("orders", 0), TopicPartition("orders", 1)
BEHIND = {P0: False, P1: False}  # never at the end in the round itself


def _ledger() -> OrderLedger:
    # the gate never touches the store
    return OrderLedger(cast(Any, None), bootstrap="-", topic="orders", group_id="g", wait_s=30.0)


async def _settled() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_registered_past_the_ends_a_check_read_after_the_ask_opens_the_gate(
    stream: SimulatedStream,
) -> None:
    orders = list(stream.orders[:6])
    gate = _ledger()
    waiting = asyncio.create_task(gate.wait(state_query(OrderFrame.from_orders(orders[2:3]))))
    await _settled()
    # the batch's order is registered; its check reads ends the ledger has not reached yet
    await gate._round_done([(P0, orders[2])], BEHIND, ends={P0: 10, P1: 5}, done={P0: 8, P1: 3})
    await _settled()
    assert not waiting.done()  # partition 1 may hold an earlier order below offset 5
    # the next fetch reaches those ends; the ends have moved on, nothing later is registered
    await gate._round_done([(P1, orders[1])], BEHIND, ends={P0: 20, P1: 12}, done={P0: 10, P1: 5})
    await asyncio.wait_for(waiting, 5)


async def test_ends_read_by_a_check_begun_before_the_ask_do_not_count(
    stream: SimulatedStream,
) -> None:
    orders = list(stream.orders[:6])
    gate = _ledger()
    gate._checking = 1  # round 1 is reading the ends as the batch asks
    waiting = asyncio.create_task(gate.wait(state_query(OrderFrame.from_orders(orders[2:3]))))
    await _settled()
    # round 1's ends may predate the batch's orders: reaching them proves nothing
    await gate._round_done([], BEHIND, ends={P0: 10, P1: 5}, done={P0: 10, P1: 5})
    await _settled()
    assert not waiting.done()
    gate._checking = 2
    await gate._round_done([(P0, orders[2])], BEHIND, ends={P0: 15, P1: 5}, done={P0: 12, P1: 5})
    await _settled()
    assert not waiting.done()  # partition 0 is not yet registered up to round 2's end
    # a follower started again reads from the group's offsets: what it registered stays
    gate._checking = 3
    await gate._round_done([], BEHIND, ends={P0: 16, P1: 5}, done={P0: 4, P1: 5})
    await _settled()
    assert not waiting.done() and gate._done[P0] == 12
    gate._checking = 4
    await gate._round_done([], BEHIND, ends={P0: 18, P1: 6}, done={P0: 15, P1: 6})
    await asyncio.wait_for(waiting, 5)

"""The order ledger's follower is started again when it stops completing rounds: a client call
that never answers (a connection half-dead after a broker was killed) must not wedge the
ledger, and with it every enrichment batch, for good."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiokafka import TopicPartition

from enrichers.ledger import OrderLedger


class HangsOnce(OrderLedger):
    """A follower that hangs forever the first time and completes rounds after that."""

    def __init__(self, *, deaf: bool = False) -> None:
        super().__init__(cast(Any, None), bootstrap="-", topic="orders", group_id="g", stall_s=0.2)
        self.follows = 0
        self.cancelled = 0
        self.deaf = deaf  # the hang swallows its first cancelling, as some client calls do

    async def _follow(self) -> None:
        self.follows += 1
        if self.follows == 1:
            while True:
                try:
                    await asyncio.Event().wait()  # never answers
                except asyncio.CancelledError:
                    self.cancelled += 1
                    if not self.deaf or self.cancelled > 1:  # deaf to the first cancel only
                        raise
        tp = TopicPartition("orders", 0)
        while True:
            await self._round_done([], {tp: True})
            await asyncio.sleep(0.05)


async def test_a_follower_that_stops_making_rounds_is_started_again() -> None:
    ledger = HangsOnce()
    async with ledger, asyncio.timeout(10), ledger._changed:
        await ledger._changed.wait_for(lambda: ledger._round >= 5)
    assert ledger.follows == 2 and ledger.cancelled == 1


async def test_a_follower_deaf_to_cancelling_is_left_behind_and_started_anew() -> None:
    ledger = HangsOnce(deaf=True)
    async with ledger, asyncio.timeout(10), ledger._changed:
        await ledger._changed.wait_for(lambda: ledger._round >= 5)
    assert ledger.follows == 2 and ledger.cancelled >= 1


async def test_a_follower_that_keeps_making_rounds_is_left_alone() -> None:
    ledger = HangsOnce()
    ledger.follows = 1  # skip the hang: rounds every 50 ms, well within stall_s
    async with ledger:
        await asyncio.sleep(1.0)
    assert ledger.follows == 2 and ledger._round > 5

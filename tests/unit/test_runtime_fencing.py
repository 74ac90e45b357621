"""A batch still in hand when its partitions are revoked, past the rebalance's wait, must not
commit: the partitions' new owner handles it again, and only one of them may publish."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ingest.consumer import Delivery, Handler, Output
from ingest.events import OrderReady
from ingest.testing import FAST_SETTINGS, FlowHarness


class SlowFirstTime(Handler):
    """Echoes each event to ``out``; the first call blocks until ``release`` is set."""

    event_types = (OrderReady,)

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls = 0

    async def handle(self, batch: Sequence[Delivery]) -> list[Output]:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            await self.release.wait()
        return [d.emit("out", d.event) for d in batch]


async def test_a_batch_revoked_past_the_wait_publishes_nothing() -> None:
    handler = SlowFirstTime()
    settings = FAST_SETTINGS.model_copy(update={"shutdown_deadline_s": 0.1})
    async with FlowHarness(handler, topics=["in"], settings=settings) as h:
        await h.send("in", OrderReady(order_id="o-1"))
        await asyncio.wait_for(handler.entered.wait(), 5)
        # The rebalance waits 0.1 s for the batch in hand, then gives the partition away; it
        # comes back to this member, which fetches the record again from the last commit.
        await h.transport.rebalance()
        await h.until(lambda: handler.calls >= 2)
        await h.drained()
        handler.release.set()  # the first batch finishes now, after losing its partition
        await asyncio.sleep(0.1)
        published = [e.order_id for e in h.events("out")]
    assert handler.calls == 2
    assert published == ["o-1"]

"""The README's "Extending it" example (without its database): a new flow declared with @flow,
run on the real runtime over the in-memory transport."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from ingest.consumer import Delivery, Handler, Output
from ingest.events import EVENT_TYPES, Event, OrderReady, derived_event_id
from ingest.flows import FLOWS, FlowContext, flow
from ingest.testing import FlowHarness
from ingest.topics import ORDER_EVENTS


class StampEarned(Event):
    """A loyalty stamp for a baked order (a test-only event)."""


class Loyalty(Handler):
    event_types = (OrderReady,)

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self.stamped: list[str] = []

    async def handle(self, batch: Sequence[Delivery]) -> list[Output]:
        self.stamped += [d.event.order_id for d in batch]
        return [
            d.emit(
                self._topic,
                StampEarned(
                    event_id=derived_event_id(d.event.event_id, "StampEarned"),
                    order_id=d.event.order_id,
                ),
            )
            for d in batch
        ]


@pytest.fixture
def registered() -> Iterator[None]:
    EVENT_TYPES["StampEarned"] = StampEarned
    try:
        yield
    finally:
        del EVENT_TYPES["StampEarned"]
        FLOWS.pop("loyalty", None)


async def test_a_new_flow_is_declared_where_it_is_and_runs_on_the_real_runtime(
    registered: None,
) -> None:
    @flow("loyalty", topics=(ORDER_EVENTS,))
    def loyalty(ctx: FlowContext) -> Handler:
        return Loyalty(ctx.topics.order_events)

    assert FLOWS["loyalty"].topics == (ORDER_EVENTS,)
    handler = Loyalty("events")
    async with FlowHarness(handler, topics=["events"]) as h:
        ready = OrderReady(order_id="o-1")
        await h.send("events", ready)
        await h.send("events", ready)  # a redelivery: dropped, no second stamp
        await h.drained()
        types = [e.event_type for e in h.events("events")]
        timed = h.stats.handle_seconds.count
    assert sorted(types) == ["OrderReady", "OrderReady", "StampEarned"]
    assert handler.stamped == ["o-1"]
    assert timed >= 1  # the runtime timed the handler call (pizzashop_handler_duration_seconds)

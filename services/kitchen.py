"""The kitchen: accepts or refuses each order, then bakes it.

On ``OrderPlaced`` it emits ``OrderAccepted`` (with the time it will be ready) or, for any pizza
with pineapple on it, ``OrderRejected`` ("we have standards"). Baking is not a sleep inside the
intake path: the kitchen consumes its own ``OrderAccepted`` and emits ``OrderReady`` once
``ready_by`` has passed. An accepted order therefore survives a kitchen crash mid-bake: the
``OrderAccepted`` record is redelivered and the order is finished then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta

from ingest.consumer import Delivery, Handler
from ingest.events import (
    Event,
    OrderAccepted,
    OrderPlaced,
    OrderReady,
    OrderRejected,
    derived_event_id,
    utcnow,
)
from ingest.producer import EventProducer
from services.menu import Menu

logger = logging.getLogger(__name__)

REJECTION_REASON = "we have standards"


def has_pineapple(order: OrderPlaced, menu: Menu) -> bool:
    for item in order.items:
        known = menu.get(item.sku)
        if known is not None and known.has_pineapple:
            return True
        if "pineapple" in item.name.lower() or "hawaiian" in item.name.lower():
            return True
    return False


class Kitchen(Handler):
    event_types = frozenset({"OrderPlaced", "OrderAccepted"})

    def __init__(
        self, producer: EventProducer, events_topic: str, menu: Menu, cook_seconds: float
    ) -> None:
        self._producer = producer
        self._topic = events_topic
        self._menu = menu
        self._cook = timedelta(seconds=cook_seconds)

    async def handle(self, batch: Sequence[Delivery]) -> None:
        out: list[Event] = []
        parents: list[str | None] = []
        bake: list[Delivery] = []
        for delivery in batch:
            event = delivery.event
            if isinstance(event, OrderPlaced):
                out.append(self._decide(event))
                parents.append(delivery.traceparent)
            elif isinstance(event, OrderAccepted):
                bake.append(delivery)
        if bake:
            # Wait once for the whole batch: the latest ready_by in it.
            wait = max(d.event.ready_by for d in bake if isinstance(d.event, OrderAccepted))
            delay = (wait - utcnow()).total_seconds()
            if delay > 0:
                await asyncio.sleep(delay)
            for delivery in bake:
                out.append(
                    OrderReady(
                        event_id=derived_event_id(delivery.event.event_id, "OrderReady"),
                        order_id=delivery.event.order_id,
                    )
                )
                parents.append(delivery.traceparent)
        if out:
            await self._producer.publish_many(self._topic, out, traceparents=parents)

    def _decide(self, order: OrderPlaced) -> Event:
        if has_pineapple(order, self._menu):
            logger.info("kitchen rejects order %s: pineapple", order.order_id)
            return OrderRejected(
                event_id=derived_event_id(order.event_id, "OrderRejected"),
                order_id=order.order_id,
                reason=REJECTION_REASON,
            )
        return OrderAccepted(
            event_id=derived_event_id(order.event_id, "OrderAccepted"),
            order_id=order.order_id,
            ready_by=utcnow() + self._cook,
        )

"""Which service publishes which events on which topic.

Consumers are declared in code (each flow's topics and its handler's ``event_types``);
publishers are not, since a handler returns whatever events it decides on. This table states
them, for the schema registry's subjects (one per topic and event type) and the AsyncAPI
document; ``tests/unit/test_asyncapi.py`` checks that every event type is published somewhere
and consumed only from a topic it is published on.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest.events import (
    ChargebackReported,
    Event,
    OrderAccepted,
    OrderCancelled,
    OrderEnriched,
    OrderFlagged,
    OrderPlaced,
    OrderReady,
    OrderRejected,
    PaymentCaptured,
    ReceiptSent,
    RefundIssued,
    RefundNoticeSent,
    ScoreShadowed,
)
from ingest.topics import CHARGEBACKS, ENRICHED, ORDER_EVENTS, ORDERS, Topics


@dataclass(frozen=True, slots=True)
class Publication:
    """``service`` writes ``events`` to the base topic ``topic``."""

    service: str
    topic: str
    events: tuple[type[Event], ...]
    how: str


PUBLICATIONS: tuple[Publication, ...] = (
    Publication("intake", ORDERS, (OrderPlaced,), "the order API, through the outbox relay"),
    Publication(
        "kitchen", ORDER_EVENTS, (OrderAccepted, OrderRejected, OrderCancelled), "flow kitchen"
    ),
    Publication("oven", ORDER_EVENTS, (OrderReady,), "flow oven"),
    Publication("payment", ORDER_EVENTS, (PaymentCaptured, RefundIssued), "flow payment"),
    Publication("saga-deadline", ORDER_EVENTS, (RefundIssued,), "flow saga-deadline"),
    Publication("notification", ORDER_EVENTS, (ReceiptSent, RefundNoticeSent), "flow notification"),
    Publication("enricher", ENRICHED, (OrderEnriched, ScoreShadowed), "flow enricher"),
    Publication("enricher", ORDER_EVENTS, (OrderFlagged,), "flow enricher (fraud holds)"),
    Publication(
        "card-processor",
        CHARGEBACKS,
        (ChargebackReported,),
        "the card processor's dispute feed, from outside the shop (`models.simulator."
        "chargebacks` in tests)",
    ),
)


def topic_events() -> dict[str, tuple[type[Event], ...]]:
    """Base topic → the event classes published on it, in table order, each once."""
    out: dict[str, list[type[Event]]] = {}
    for pub in PUBLICATIONS:
        listed = out.setdefault(pub.topic, [])
        listed += [cls for cls in pub.events if cls not in listed]
    return {topic: tuple(events) for topic, events in out.items()}


def published_pairs(topics: Topics) -> list[tuple[str, type[Event]]]:
    """``(full topic name, event class)`` of everything the shop publishes."""
    return [(topics.name(base), cls) for base, events in topic_events().items() for cls in events]

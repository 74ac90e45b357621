"""What a flow is: a ``Handler`` that takes decoded events and returns the events it emits.

The runtime (``ingest.runtime``) does everything around it: fetch, decode, dedupe, retries,
dead letters, timers, and the commit that publishes the returned events together with the
consumed offsets (one Kafka transaction). A handler therefore never talks to a producer: it
makes its other effects durable and idempotent (a database row, an e-mail marked by intent) and
returns ``delivery.emit(topic, event)`` for every event it causes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from ingest import tracing
from ingest.codec import H_TRACEPARENT, Headers, header
from ingest.events import Event


@dataclass(frozen=True, slots=True)
class Output:
    """An event to publish when the batch that caused it commits."""

    topic: str
    event: Event
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One decoded event and where it came from."""

    topic: str
    partition: int
    offset: int
    event: Event
    headers: Headers
    timestamp_ms: int
    key: bytes | None = None
    value: bytes | None = None

    @property
    def traceparent(self) -> str | None:
        """The trace context of the span that produced this record (its header)."""
        return header(self.headers, H_TRACEPARENT)

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset} order={self.event.order_id}"

    def emit(self, topic: str, event: Event) -> Output:
        """``event``, caused by this delivery: its record names the span that handled this
        delivery as its parent (``ingest.tracing``), so the next hop is a child of this one.
        Call it inside ``handle``, where that span is open."""
        return Output(topic, event, tracing.traceparent_for(self))


class Handler(ABC):
    """What a service does with its events. Subclass, set ``event_types``, implement ``handle``."""

    #: The event classes this handler wants (classes, so a typo fails at import); the runtime
    #: commits past every other type unread.
    event_types: ClassVar[tuple[type[Event], ...]]
    #: False: one call per partition (partitions run concurrently). True: one call with the
    #: whole fetch, in partition then offset order, for handlers that gain from big batches.
    whole_batch: ClassVar[bool] = False

    @classmethod
    def wants(cls, event_type: str) -> bool:
        return any(t.event_type == event_type for t in cls.event_types)

    def due_at(self, event: Event) -> datetime | None:
        """When ``event`` may be handled; ``None`` means now.

        A timer without a timer thread: the runtime handles a partition up to its first event
        that is not due, commits that, and pauses the partition (the others keep flowing) until
        the event is due. Used by the oven (bake until ``ready_by``) and the saga deadline.
        """
        return None

    async def start(self) -> None:
        """Called once before the first batch: load models, warm caches."""

    async def stop(self) -> None:
        """Called once when the runtime closes, after the last commit."""

    @abstractmethod
    async def handle(self, batch: Sequence[Delivery]) -> Sequence[Output]:
        """Called with new events of ONE partition in offset order (or of the whole fetch, when
        ``whole_batch``); returns the events to publish.

        Must make its other effects durable and idempotent before it returns: the runtime
        publishes the outputs and commits the offsets after it, atomically, and on any failure
        the same events come again (then one at a time). Raise ``TransientError`` for what may
        pass (retried with backoff for ``retry_budget_s``, its partition alone held back),
        ``PermanentError`` for what never will (dead-lettered). Output ids must be derived from
        their cause (``derived_event_id``) so a second run emits the same ids.
        """

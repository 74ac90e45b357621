"""``RegistrySerializer``: events framed in the Confluent wire format, schemas in a registry.

Subject-name strategy: one subject per topic and event type, ``<topic>-<EventType>`` (Confluent's
``TopicRecordNameStrategy`` with the event type as the record name), on the full topic name,
prefix included: ``orders-OrderPlaced``, ``order-events-PaymentCaptured``. Several event types
share a topic, so one subject per topic (``TopicNameStrategy``) would make every new event type
an "incompatible" change of the topic's one schema; one subject per type alone
(``RecordNameStrategy``) would tie a type's evolution across topics that may be owned apart.

The schema registered is the event's JSON Schema as ``ingest.schemas.current_schema`` makes it
from the pydantic model (``x-event-type`` and ``x-schema-version`` included, so a schema fetched
by id says which event it describes). The first use of a subject in a process sets the subject's
compatibility level and registers the schema (the registry answers with the existing id when
it is already the latest); the id is cached, so later records cost one dict lookup. Every id
learnt is also put in the codec's decode cache (``ingest.codec.remember_schema``).

``prepare`` does all of that for known subjects at start-up, off the event loop; ``warm`` fills
the decode cache with every version of the shop's subjects. Without them the first record of a
subject pays a blocking round trip to the registry.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from typing import Any

from ingest.codec import EncodedRecord, encode, frame, remember_schema
from ingest.events import Event
from ingest.registry.client import RegistryClient
from ingest.schemas import current_schema

logger = logging.getLogger(__name__)


def subject_name(topic: str, event_type: str) -> str:
    """The subject of ``event_type`` records on ``topic``: ``<topic>-<EventType>``."""
    return f"{topic}-{event_type}"


class RegistrySerializer:
    """A ``Serializer`` (``ingest.codec``) registering under ``<topic>-<EventType>``.

    ``compatibility`` is set on every subject before its first registration:
    BACKWARD_TRANSITIVE by default (see ``ingest.registry`` for why not FULL_TRANSITIVE).
    """

    def __init__(self, client: RegistryClient, *, compatibility: str = "BACKWARD_TRANSITIVE"):
        self.client = client
        self.compatibility = compatibility
        self._ids: dict[tuple[str, type[Event]], int] = {}
        self._lock = threading.Lock()
        #: Records framed by this serializer (figures for the demo report).
        self.framed = 0

    def schema_id(self, topic: str, cls: type[Event]) -> int:
        """The id of ``cls``'s current schema under its subject on ``topic``; registers it on
        first use. IncompatibleSchema when the subject refuses it (never reaches the topic)."""
        cached = self._ids.get((topic, cls))
        if cached is not None:
            return cached
        with self._lock:  # prepare() may run in a thread while the loop encodes
            cached = self._ids.get((topic, cls))
            if cached is not None:
                return cached
            subject = subject_name(topic, cls.event_type)
            schema = current_schema(cls)
            self.client.set_compatibility(subject, self.compatibility)
            schema_id = self.client.register(subject, schema)
            remember_schema(schema_id, schema)
            self._ids[(topic, cls)] = schema_id
            logger.info("schema of %s registered as id %d", subject, schema_id)
            return schema_id

    def encode(self, topic: str, event: Event, traceparent: str | None = None) -> EncodedRecord:
        plain = encode(event, traceparent)
        framed = frame(self.schema_id(topic, type(event)), plain.value)
        self.framed += 1
        return EncodedRecord(key=plain.key, value=framed, headers=plain.headers)

    async def prepare(self, pairs: Iterable[tuple[str, type[Event]]]) -> dict[str, int]:
        """Register ``(topic, event class)`` pairs now, in a thread; subject → schema id."""

        def run() -> dict[str, int]:
            return {
                subject_name(topic, cls.event_type): self.schema_id(topic, cls)
                for topic, cls in pairs
            }

        return await asyncio.to_thread(run)

    async def warm(self, subjects: Iterable[str]) -> int:
        """Put every version of ``subjects`` in the decode cache, in a thread; how many."""

        def run() -> int:
            count = 0
            for subject in subjects:
                for version in self.client.versions(subject):
                    schema_id, schema = self.client.version(subject, version)
                    remember_schema(schema_id, schema)
                    count += 1
            return count

        return await asyncio.to_thread(run)

    def schema_by_id(self, schema_id: int) -> dict[str, Any] | None:
        """The ``SchemaSource`` of the codec: the registry's schema of ``schema_id``."""
        return self.client.schema_by_id(schema_id)

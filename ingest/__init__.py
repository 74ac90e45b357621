"""The Kafka edge: the event contract, topics, producer, outbox, consumer runtime, dead letters.

Public names load lazily, so ``import ingest.events`` alone does not pull in aiokafka.
"""

from __future__ import annotations

from pizzashop.core.lazy import lazy_exports

_EXPORTS = {
    "ConsumerRuntime": "ingest.consumer",
    "DeadLetter": "ingest.dlq",
    "Delivery": "ingest.consumer",
    "EventProducer": "ingest.producer",
    "Handler": "ingest.consumer",
    "OutboxRelay": "ingest.outbox",
    "ProcessedEvents": "ingest.dedupe",
    "Topics": "ingest.topics",
    "decode": "ingest.codec",
    "encode": "ingest.codec",
    "ensure_topics": "ingest.topics",
    "read_dead_letters": "ingest.dlq",
    "replay": "ingest.dlq",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)

"""The event producer: idempotent, ``acks="all"``, one per process.

``publish`` returns once the broker has acknowledged, so a caller that commits its input offset
afterwards never loses an output.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ingest.codec import EncodedRecord, encode
from ingest.events import Event
from pizzashop.errors import BrokerUnavailable

logger = logging.getLogger(__name__)


class EventProducer:
    """Publishes events keyed by order id. Start once, share, stop once."""

    def __init__(
        self, bootstrap: str, *, client_id: str = "pizzashop", request_timeout_ms: int = 30_000
    ) -> None:
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "request_timeout_ms": request_timeout_ms,
        }
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._stopped = False

    @property
    def started(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        """Connect; raises ``BrokerUnavailable`` if Kafka cannot be reached (call again later)."""
        async with self._starting:
            if self._stopped:
                raise RuntimeError("a stopped EventProducer cannot be restarted")
            if self._producer is not None:
                return
            # A fresh client per attempt: aiokafka clients are not meant to start twice.
            producer = AIOKafkaProducer(**self._options)
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()
                raise BrokerUnavailable(f"producer cannot reach Kafka: {exc}") from exc
            self._producer = producer

    async def stop(self) -> None:
        async with self._starting:
            if self._producer is not None and not self._stopped:
                await self._producer.flush()
                await self._producer.stop()
            self._stopped = True

    async def _ready(self) -> AIOKafkaProducer:
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        return self._producer

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def publish(self, topic: str, event: Event, *, traceparent: str | None = None) -> None:
        await self.publish_many(topic, [event], traceparents=[traceparent])

    async def publish_many(
        self,
        topic: str,
        events: Sequence[Event],
        *,
        traceparents: Sequence[str | None] | None = None,
    ) -> None:
        """Send all, then wait for every acknowledgement (sends pipeline in one linger window)."""
        parents = traceparents or [None] * len(events)
        await self.send_encoded(
            topic, [encode(e, tp) for e, tp in zip(events, parents, strict=True)]
        )

    async def send_encoded(self, topic: str, records: Sequence[EncodedRecord]) -> None:
        producer = await self._ready()
        try:
            futures = [
                await producer.send(topic, r.value, key=r.key, headers=r.headers) for r in records
            ]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise BrokerUnavailable(f"publish to {topic} failed: {exc}") from exc

    async def send_raw(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Send bytes as they are: dead letters, replays, and deliberately broken test records."""
        producer = await self._ready()
        try:
            await producer.send_and_wait(topic, value, key=key, headers=list(headers))
        except KafkaError as exc:
            raise BrokerUnavailable(f"publish to {topic} failed: {exc}") from exc

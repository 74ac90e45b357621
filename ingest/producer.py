"""The producers: ``EventProducer`` (idempotent, ``acks="all"``, one per process) and
``TransactionalProducer`` (one Kafka transaction at a time, for the outbox relay).

``publish`` returns once the broker has acknowledged, so a caller that commits its input offset
afterwards never loses an output.

Errors come out as the project's own, chosen by aiokafka's ``retriable`` flag (see
``translate``): retriable ones and timeouts as ``BrokerUnavailable``; the ones that leave the
client unable to go on (``OutOfOrderSequenceNumber``, ``UnknownProducerId``, ``ProducerFenced``,
``InvalidProducerEpoch``, a dead sender) as ``ProducerReset``; the rest as ``PublishRejected``.

Why a failed send drops the client: an idempotent aiokafka producer numbers each batch per
partition. A batch that expires (Kafka away longer than ``request_timeout_ms``) has used its
sequence number without reaching the broker, so the next batch arrives with a gap, is refused
with ``OutOfOrderSequenceNumber``, and the sender task dies; every later send then fails the same
way, for ever. aiokafka has no epoch bump to heal this, so after any failed send the client is
closed and the next call starts a fresh one (a new producer id, sequences from zero).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidTxnState,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    TransactionCoordinatorFenced,
    UnknownProducerId,
)

from ingest.codec import EncodedRecord, encode
from ingest.events import Event
from pizzashop.core.errors import (
    BrokerUnavailable,
    PizzashopError,
    ProducerReset,
    PublishRejected,
)
from pizzashop.core.lifecycle import Resource

logger = logging.getLogger(__name__)

# After these the client cannot go on: only a new client (new producer id or epoch) can send.
FATAL_PRODUCER_ERRORS: tuple[type[KafkaError], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    ProducerFenced,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidTxnState,
    TransactionCoordinatorFenced,
    ProducerClosed,
)


def translate(exc: KafkaError, what: str, *, client_dead: bool = False) -> PizzashopError:
    """The project error for an aiokafka one, by aiokafka's own ``retriable`` flag.

    ``KafkaTimeoutError`` says ``retriable = False`` in aiokafka, yet it is the very error of a
    broker that is away for a while, so it counts as retriable here.
    """
    message = f"{what}: {type(exc).__name__}: {exc}"
    if client_dead or isinstance(exc, FATAL_PRODUCER_ERRORS):
        return ProducerReset(message)
    if exc.retriable or isinstance(exc, KafkaTimeoutError | KafkaConnectionError):
        return BrokerUnavailable(message)
    return PublishRejected(message)


def client_is_dead(producer: AIOKafkaProducer) -> bool:
    """Whether aiokafka's sender task has ended: then every later send fails (a private field,
    read defensively)."""
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    return task is not None and task.done()


async def close_client(producer: AIOKafkaProducer, timeout_s: float) -> None:
    """Close ``producer`` within ``timeout_s``, even with Kafka away.

    ``stop()`` first waits for in-flight batches, which an idempotent client retries without
    end while the broker is down. Past the deadline the sender is cancelled and whatever it
    still held is failed, so no caller waits for ever on a future nobody will resolve.
    """
    try:
        await asyncio.wait_for(producer.stop(), timeout_s)
    except (TimeoutError, KafkaError, OSError):
        sender = getattr(producer, "_sender", None)
        accumulator = getattr(producer, "_message_accumulator", None)
        with contextlib.suppress(Exception):
            if sender is not None:
                await sender.close()
        with contextlib.suppress(Exception):
            if accumulator is not None:
                accumulator.fail_all(ProducerClosed())
        with contextlib.suppress(Exception):
            await producer.client.close()
        logger.warning("producer closed by force after %.0fs", timeout_s)


#: The backoff of a transactional producer's retries. A transaction begun right after the last
#: one committed finds the coordinator still writing that one's markers: AddPartitionsToTxn and
#: AddOffsetsToTxn answer CONCURRENT_TRANSACTIONS, and aiokafka retries after
#: ``retry_backoff_ms`` (100 by default, 20 only for a transaction's first partition). Those
#: 100 ms were the p90 of the enricher's Kafka commit (14 ms median, 105 ms p90) and most of the
#: end-to-end tail. 20 ms is what aiokafka and the Java client already use for the first case;
#: other retries (metadata, a leader away) stay bounded by the request timeout, only more often.
TRANSACTION_RETRY_BACKOFF_MS = 20


class _Producer(Resource):
    """What both producers share: an ``acks="all"``, idempotent aiokafka client, made when a
    send needs one (``start()`` opens without the network) and replaced after a failure."""

    def __init__(self, request_timeout_ms: int, **options: Any) -> None:
        self._options: dict[str, Any] = {
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "request_timeout_ms": request_timeout_ms,
            **options,
        }
        self._timeout_s = request_timeout_ms / 1000
        self._producer: AIOKafkaProducer | None = None
        self.resets = 0

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def _start(self) -> None:
        """Nothing to open yet: the client connects when a send needs it."""


class EventProducer(_Producer):
    """Publishes events keyed by order id. Start once, share, stop once.

    ``start()`` opens the producer without touching the network; the client connects on the
    first send (so the API takes orders while Kafka is away), and a send on a producer nobody
    started opens it, as an httpx ``Client`` opens on its first request. A send that fails
    drops the underlying client (see the module docstring); the next call connects a fresh
    one. Callers see ``BrokerUnavailable`` (or its ``ProducerReset``) when trying again can
    help, ``PublishRejected`` when it cannot; a stopped producer refuses to send.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str = "pizzashop",
        request_timeout_ms: int = 30_000,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            request_timeout_ms,
            bootstrap_servers=bootstrap,
            client_id=client_id,
            **(client_options or {}),  # security (ingest.security)
        )
        self._connecting = asyncio.Lock()
        # Clients being closed after a failure: stop() waits for them.
        self._retiring: set[asyncio.Task[None]] = set()

    async def _stop(self) -> None:
        async with self._connecting:
            producer, self._producer = self._producer, None
            if producer is not None:
                with contextlib.suppress(KafkaError):
                    await producer.flush()
                await close_client(producer, self._timeout_s)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _ready(self) -> AIOKafkaProducer:
        """The connected client, connecting one if there is none; ``BrokerUnavailable`` if
        Kafka cannot be reached (the next call tries again)."""
        await self.start()
        async with self._connecting:
            self._check_running()  # stopped while this call waited for the lock
            if self._producer is None:
                # A fresh client per attempt: aiokafka clients are not meant to start twice.
                producer = AIOKafkaProducer(**self._options)
                try:
                    await producer.start()
                except KafkaError as exc:
                    await close_client(producer, self._timeout_s)
                    raise translate(exc, "producer cannot reach Kafka") from exc
                self._producer = producer
            return self._producer

    def _retire(self, producer: AIOKafkaProducer, exc: KafkaError) -> bool:
        """Drop ``producer`` if it is still the current client; returns whether it was dead.

        Closing happens in the background: other callers may still await its futures, and
        their outcome (acknowledged or failed) stays true.
        """
        dead = client_is_dead(producer)
        if producer is self._producer:
            self._producer = None
            self.resets += 1
            logger.warning(
                "producer dropped after %s (sender %s); the next send uses a fresh client",
                type(exc).__name__,
                "dead" if dead else "alive",
            )
            task = asyncio.create_task(close_client(producer, self._timeout_s))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return dead

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
            dead = self._retire(producer, exc)
            raise translate(exc, f"publish to {topic} failed", client_dead=dead) from exc

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
            dead = self._retire(producer, exc)
            raise translate(exc, f"publish to {topic} failed", client_dead=dead) from exc


class TransactionalProducer(_Producer):
    """Sends groups of records as single Kafka transactions under a stable transactional id.

    ``connect()`` registers the id with the transaction coordinator (InitProducerId), which
    fences every earlier client with the same id and aborts whatever transaction it left open; a
    transaction the predecessor had already asked to commit completes first. So a restarted
    process, or a replacement client after a failure, never shares a transaction with the old.

    After any failure the client is dropped (``reset()``), not aborted: the next ``connect()``
    fences and aborts on the broker's side, which also covers a commit whose answer was lost.
    The caller must then find out what did commit (the outbox relay reads its progress topic).
    ``start()`` opens the producer without the network (a send opens it too); ``stop()`` closes
    the client for good.
    """

    def __init__(
        self,
        bootstrap: str,
        transactional_id: str,
        *,
        client_id: str = "pizzashop-tx",
        request_timeout_ms: int = 30_000,
        transaction_timeout_ms: int = 60_000,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            request_timeout_ms,
            bootstrap_servers=bootstrap,
            client_id=client_id,
            transactional_id=transactional_id,
            transaction_timeout_ms=transaction_timeout_ms,
            retry_backoff_ms=TRANSACTION_RETRY_BACKOFF_MS,
            **(client_options or {}),  # security (ingest.security)
        )
        self.transactional_id = transactional_id

    async def _stop(self) -> None:
        await self.reset()

    async def connect(self) -> None:
        """Connect if not connected, fencing predecessors; ``BrokerUnavailable`` if Kafka
        cannot be reached (call again later)."""
        await self.start()
        self._check_running()
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(**self._options)
        try:
            # start() waits for the producer id without a deadline of its own.
            await asyncio.wait_for(producer.start(), self._timeout_s)
        except (KafkaError, TimeoutError) as exc:
            await close_client(producer, self._timeout_s)
            if isinstance(exc, TimeoutError):
                raise BrokerUnavailable(
                    f"transactional producer {self.transactional_id}: no producer id within "
                    f"{self._timeout_s:.0f}s"
                ) from exc
            raise translate(exc, f"transactional producer {self.transactional_id}") from exc
        self._producer = producer

    async def reset(self) -> None:
        """Drop the client; the next ``connect()`` fences it and aborts its open transaction."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            self.resets += 1
            await close_client(producer, self._timeout_s)

    async def send_transaction(self, records: Sequence[tuple[str, EncodedRecord]]) -> None:
        """Send ``(topic, record)`` pairs in order, all in one transaction, and commit.

        Returns once the commit is acknowledged. On any error the client is dropped and the
        error raised as the project's own; whether the transaction committed is then unknown.
        """
        await self.connect()
        producer = self._producer
        assert producer is not None
        try:
            await producer.begin_transaction()
            futures = [
                await producer.send(topic, r.value, key=r.key, headers=list(r.headers))
                for topic, r in records
            ]
            await asyncio.wait_for(asyncio.gather(*futures), self._timeout_s)
            await asyncio.wait_for(producer.commit_transaction(), self._timeout_s)
        except (KafkaError, TimeoutError) as exc:
            dead = client_is_dead(producer)
            await self.reset()
            if isinstance(exc, TimeoutError):
                raise BrokerUnavailable(
                    f"transaction of {self.transactional_id} not acknowledged within "
                    f"{self._timeout_s:.0f}s"
                ) from exc
            what = f"transaction of {self.transactional_id} failed"
            raise translate(exc, what, client_dead=dead) from exc
        except BaseException:
            # Cancelled mid-transaction (shutdown): the next connect() aborts it.
            await self.reset()
            raise

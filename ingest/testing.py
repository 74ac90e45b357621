"""Run a handler in the real consumer runtime, over an in-memory broker or a real Kafka, for tests.

```python
async with FlowHarness(Kitchen(...), topics=["orders"]) as h:
    await h.send("orders", order)
    await h.drained()
    assert h.events("order-events") == [...]
```

Both harnesses wire the actual ``ConsumerRuntime`` (decode, dedupe, timers, retries, dead
letters, grouped commits) to a transport, run it in a background task, and stop it cleanly on
exit; they differ only in the transport and in how they wait. One test written against
``Harness`` runs on either.

``FlowHarness`` runs over a ``MemoryTransport``. Waiting is on the broker's announcements (every
produce and every commit, failed or not), never on sleeps: a predicate given to ``until`` is
re-checked after each of them. Two harnesses on one ``MemoryBroker`` and group id continue where
the other committed.

``KafkaFlowHarness`` runs over a ``KafkaTransport`` on a real broker: it creates its topics,
sends with a plain producer, and reads what is visible to a ``read_committed`` consumer and the
group's committed offsets. A real broker announces nothing a test can wait on, so ``until``
*polls*: it re-reads the topics and offsets every ``poll_s`` and re-checks the predicate, for
at most ``timeout_s``. What ``offset``, ``records`` and ``events`` return is the snapshot of the
last such read (``until``, ``drained``, ``refresh`` or ``stop``), not a live view.

On either, records sent before ``async with`` wait in the broker, so the first fetch takes them
all in one batch; ``key_for`` gives keys that land on a partition under that broker's own
partitioner, for inputs and outputs alike.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

from ingest.codec import decode, encode
from ingest.consumer import Handler
from ingest.dedupe import ProcessedEvents
from ingest.dlq import DeadLetter, _to_letter
from ingest.events import Event
from ingest.kafka_transport import KafkaTransport
from ingest.memory import MemoryBroker, MemoryTransport
from ingest.reader import partitions_of
from ingest.runtime import ConsumerRuntime, ConsumerStats
from ingest.topics import DLQ_SUFFIX, TopicSpec, ensure_topics
from ingest.transport import Headers, Partition, Record, Transport
from pizzashop.core.lifecycle import Resource
from pizzashop.core.settings import ConsumerSettings

__all__ = ["FAST_SETTINGS", "FlowHarness", "Harness", "KafkaFlowHarness"]

#: Small delays so retries, rewinds and shutdowns take milliseconds in tests.
FAST_SETTINGS = ConsumerSettings(
    batch_wait_ms=50,
    retry_base_delay_s=0.01,
    retry_max_delay_s=0.05,
    retry_budget_s=2.0,
    rewind_delay_s=0.02,
    shutdown_deadline_s=2.0,
)


class Harness(Resource):
    """One ``ConsumerRuntime`` for ``handler`` in group ``group_id``, run in a background task.

    ``processed=None`` runs without the dedupe table, as a flow declared ``dedupe=False`` does.
    ``outputs`` names the topics the handler writes to (the Kafka harness reads only the topics
    it knows: these, the inputs and the inputs' dead-letter topics).
    """

    #: The default bound of every wait.
    timeout_s: ClassVar[float]
    #: An upper bound, with room, of one record's way from ``send`` to being seen handled and
    #: committed; a test that must tell a hold from a pass scales its timings by it.
    latency_s: ClassVar[float]

    def __init__(
        self,
        handler: Handler,
        transport: Transport,
        *,
        topics: Sequence[str],
        outputs: Sequence[str],
        settings: ConsumerSettings,
        processed: ProcessedEvents | None,
        group_id: str,
        name: str,
    ) -> None:
        self.topics = list(topics)
        self.outputs = list(outputs)
        self.group_id = group_id
        self.runtime = ConsumerRuntime(
            name=name,
            group_id=group_id,
            topics=self.topics,
            handler=handler,
            transport=transport,
            processed=processed,
            settings=settings,
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def stats(self) -> ConsumerStats:
        return self.runtime.stats

    # -- lifecycle (``async with``: ``pizzashop.core.lifecycle.Resource``) -------------------
    async def _start(self) -> None:
        await self._open()
        await self.runtime.start()
        self._task = asyncio.create_task(self.runtime.run(), name=f"harness-{self.group_id}")
        await self._assigned()

    async def _stop(self) -> None:
        """Stop as the shop does: stop fetching, drain the batches in hand, close; re-raises
        what the run loop died of, if it died."""
        task, self._task = self._task, None
        try:
            if task is not None:
                self.runtime.request_stop()
                try:
                    await task
                finally:
                    await self.runtime.stop()
        finally:
            await self._close()

    async def _open(self) -> None:
        """Get the broker side ready (before the first ``send`` or the start)."""

    async def _assigned(self) -> None:
        """Return once the runtime owns its partitions."""

    async def _close(self) -> None:
        """Release the broker side, after the runtime has stopped."""

    # -- input -----------------------------------------------------------------------------
    async def send(self, topic: str, event: Event, *, traceparent: str | None = None) -> Record:
        """Produce ``event`` as the shop's producer would (key, value, headers)."""
        encoded = encode(event, traceparent)
        return await self.send_raw(topic, encoded.key, encoded.value, encoded.headers)

    @abstractmethod
    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> Record:
        """Produce arbitrary bytes: broken records, or a dead letter's original for a replay."""

    @abstractmethod
    def partition_of(self, key: bytes) -> int:
        """The partition a record keyed ``key`` lands on (this broker's partitioner)."""

    def key_for(self, partition: int, prefix: str = "o") -> str:
        """An order id (the record key) that lands on ``partition``."""
        for n in range(10_000):
            key = f"{prefix}-{n}"
            if self.partition_of(key.encode()) == partition:
                return key
        raise AssertionError(f"no key found for partition {partition}")  # pragma: no cover

    # -- waiting ---------------------------------------------------------------------------
    async def until(self, predicate: Callable[[], bool], timeout_s: float | None = None) -> None:
        """Wait until ``predicate()`` holds, for at most ``timeout_s`` (``self.timeout_s``).

        Fails at once with the run loop's exception if the runtime dies meanwhile.
        """
        timeout = self.timeout_s if timeout_s is None else timeout_s
        task = self._task

        def ready() -> bool:
            return (task is not None and task.done()) or predicate()

        try:
            await self._wait_for(ready, timeout)
        except TimeoutError:
            raise AssertionError(f"condition not met within {timeout}s") from None
        if task is not None and task.done() and not predicate():
            task.result()  # raises what it died of
            raise AssertionError("the runtime stopped before the condition held")

    @abstractmethod
    async def _wait_for(self, ready: Callable[[], bool], timeout_s: float) -> None:
        """Return once ``ready()`` holds; ``TimeoutError`` after ``timeout_s``."""

    async def drained(self, timeout_s: float | None = None) -> None:
        """Wait until this group has committed past every record now in its input topics."""
        ends = await self._input_ends()
        await self.until(
            lambda: self._settled() and all(self.offset(p) >= end for p, end in ends.items()),
            timeout_s,
        )

    @abstractmethod
    async def _input_ends(self) -> dict[Partition, int]:
        """The end offset of every partition of the input topics, now."""

    def _settled(self) -> bool:
        """Whether every commit made so far is visible to readers."""
        return True

    async def refresh(self) -> None:
        """Bring ``offset`` and ``records`` up to date (needed on Kafka only)."""

    # -- output ----------------------------------------------------------------------------
    @abstractmethod
    def offset(self, part: Partition) -> int:
        """This group's committed offset of ``part`` (the next record to read); 0 if none."""

    @abstractmethod
    def records(self, topic: str) -> list[Record]:
        """The committed records of ``topic``, partition by partition, in offset order."""

    def events(self, topic: str) -> list[Event]:
        return [decode(r.value, r.headers) for r in self.records(topic)]

    def dead_letters(self) -> list[DeadLetter]:
        """The dead letters of every input topic, as ``pizzashop dlq`` reads them."""
        return [
            _to_letter(r.topic, r.offset, r.key, r.value, list(r.headers))
            for topic in self.topics
            for r in self.records(topic + DLQ_SUFFIX)
        ]


class FlowHarness(Harness):
    """The runtime over a ``MemoryTransport`` on ``broker`` (a new one if not given)."""

    timeout_s = 5.0
    latency_s = 0.2

    def __init__(
        self,
        handler: Handler,
        *,
        topics: Sequence[str],
        outputs: Sequence[str] = (),
        settings: ConsumerSettings = FAST_SETTINGS,
        processed: ProcessedEvents | None = None,
        broker: MemoryBroker | None = None,
        group_id: str = "test-group",
        name: str = "test",
    ) -> None:
        self.broker = broker if broker is not None else MemoryBroker()
        self.transport = MemoryTransport(self.broker, group_id)
        super().__init__(
            handler,
            self.transport,
            topics=topics,
            outputs=outputs,
            settings=settings,
            processed=processed,
            group_id=group_id,
            name=name,
        )

    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> Record:
        return await self.broker.produce(topic, key, value, list(headers or []))

    def partition_of(self, key: bytes) -> int:
        return zlib.crc32(key) % self.broker.partitions

    async def _wait_for(self, ready: Callable[[], bool], timeout_s: float) -> None:
        await self.broker.wait_for(ready, timeout_s)

    async def committed(self, n: int, timeout_s: float | None = None) -> None:
        """Wait until the broker has taken ``n`` successful commits in all (any group)."""
        await self.until(lambda: self.broker.commits >= n, timeout_s)

    async def _input_ends(self) -> dict[Partition, int]:
        return {
            Partition(topic, index): len(log)
            for topic in self.topics
            for index, log in enumerate(self.broker.topic(topic))
        }

    def offset(self, part: Partition) -> int:
        return self.broker.committed.get((self.group_id, part), 0)

    def records(self, topic: str) -> list[Record]:
        # The in-memory broker writes a commit's records in the same step as its offsets.
        return self.broker.records(topic)


class KafkaFlowHarness(Harness):
    """The runtime over a ``KafkaTransport`` on the broker at ``bootstrap``.

    It creates its topics (inputs and outputs with ``partitions`` each, dead-letter topics with
    one, as the shop does) if they do not exist, so harnesses that share topics and group id
    continue where the other committed. Use a topic prefix and a group of the test's own.
    """

    timeout_s = 30.0
    latency_s = 1.5
    #: How often ``until`` re-reads the topics and committed offsets.
    poll_s: ClassVar[float] = 0.05
    #: The transport under the runtime, built with ``KafkaTransport``'s arguments (a subclass
    #: may name another Kafka client's transport).
    transport_class: ClassVar[Callable[..., Transport]] = KafkaTransport

    def __init__(
        self,
        handler: Handler,
        *,
        bootstrap: str,
        topics: Sequence[str],
        outputs: Sequence[str],
        group_id: str,
        settings: ConsumerSettings = FAST_SETTINGS,
        processed: ProcessedEvents | None = None,
        partitions: int = 3,
        session_timeout_ms: int = 6000,
        name: str = "test",
    ) -> None:
        client_id = f"{group_id}-{uuid.uuid4().hex[:6]}"
        self.transport = self.transport_class(
            bootstrap=bootstrap,
            group_id=group_id,
            client_id=client_id,
            transactional_id=client_id,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=session_timeout_ms // 6,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            transaction_timeout_ms=settings.transaction_timeout_ms,
        )
        super().__init__(
            handler,
            self.transport,
            topics=topics,
            outputs=outputs,
            settings=settings,
            processed=processed,
            group_id=group_id,
            name=name,
        )
        self.bootstrap = bootstrap
        self.partitions = partitions
        self._specs = [TopicSpec(t, partitions) for t in [*self.topics, *self.outputs]] + [
            TopicSpec(t + DLQ_SUFFIX, 1) for t in self.topics
        ]
        self._opened = False
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        # Two readers of the same partitions: what read_committed consumers see (it stops at
        # the last stable offset), and where the log ends (the high watermark).
        self._committed_reader: AIOKafkaConsumer | None = None
        self._watermarks: AIOKafkaConsumer | None = None
        self._parts: list[TopicPartition] = []
        self._records: dict[str, list[Record]] = {spec.name: [] for spec in self._specs}
        self._offsets: dict[Partition, int] = {}
        self._stable = False

    # -- lifecycle -------------------------------------------------------------------------
    async def _open(self) -> None:
        if self._opened:
            return
        self._opened = True
        await ensure_topics(self.bootstrap, self._specs)
        # A topic just created may not be described yet (no leader): wait for all of them.
        names, wanted = [spec.name for spec in self._specs], sum(s.partitions for s in self._specs)
        async with asyncio.timeout(self.timeout_s):
            while len(self._parts) < wanted:
                self._parts = await partitions_of(self.bootstrap, names)
                if len(self._parts) < wanted:
                    await asyncio.sleep(self.poll_s)
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        self._committed_reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        self._watermarks = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None)
        await self._producer.start()
        await self._admin.start()
        await self._committed_reader.start()
        await self._watermarks.start()
        self._committed_reader.assign(self._parts)
        self._watermarks.assign(self._parts)

    async def _assigned(self) -> None:
        # The group join happens in the run loop's first fetch; wait for it, so that records
        # sent before the start come in the first batch and timings start from a member.
        await self.until(lambda: bool(self.transport.assignment()))

    async def _close(self) -> None:
        if not self._opened:
            return
        try:
            await self._settle()  # a last snapshot, for assertions after the exit
        finally:
            self._opened = False
            for client in (self._producer, self._committed_reader, self._watermarks):
                if client is not None:
                    await client.stop()
            if self._admin is not None:
                await self._admin.close()

    async def _settle(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        await self.refresh()
        while not self._stable and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(self.poll_s)
            await self.refresh()

    # -- input -----------------------------------------------------------------------------
    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> Record:
        await self._open()
        assert self._producer is not None
        sent = list(headers or [])
        meta = await self._producer.send_and_wait(topic, value, key=key, headers=sent)
        return Record(topic, meta.partition, meta.offset, key, value, sent, meta.timestamp)

    def partition_of(self, key: bytes) -> int:
        # aiokafka's DefaultPartitioner: the Java client's murmur2, for outputs too.
        return (int(murmur2(key)) & 0x7FFFFFFF) % self.partitions

    # -- waiting ---------------------------------------------------------------------------
    async def _wait_for(self, ready: Callable[[], bool], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while True:
                if self._opened:
                    await self.refresh()
                if ready():
                    return
                await asyncio.sleep(self.poll_s)

    async def _input_ends(self) -> dict[Partition, int]:
        assert self._watermarks is not None
        inputs = [tp for tp in self._parts if tp.topic in self.topics]
        ends = await self._watermarks.end_offsets(inputs)
        return {Partition(tp.topic, tp.partition): end for tp, end in ends.items()}

    def _settled(self) -> bool:
        return self._stable

    async def refresh(self) -> None:
        """Read what is new in the topics (``read_committed``) and the committed offsets; note
        whether any transaction is still open (then the last commit may not show yet)."""
        reader, watermarks, admin = self._committed_reader, self._watermarks, self._admin
        assert reader is not None and watermarks is not None and admin is not None
        stable_ends = await reader.end_offsets(self._parts)
        log_ends = await watermarks.end_offsets(self._parts)
        behind = {tp for tp in self._parts if await reader.position(tp) < stable_ends[tp]}
        while behind:
            fetched = await reader.getmany(*behind, timeout_ms=1000)
            for tp, batch in fetched.items():
                self._records[tp.topic] += [
                    Record(
                        r.topic,
                        r.partition,
                        r.offset,
                        r.key,
                        r.value,
                        list(r.headers),
                        r.timestamp,
                    )
                    for r in batch
                    if r.offset < stable_ends[tp]
                ]
            behind = {tp for tp in behind if await reader.position(tp) < stable_ends[tp]}
        committed = await admin.list_consumer_group_offsets(self.group_id)
        self._offsets = {
            Partition(tp.topic, tp.partition): max(meta.offset, 0) for tp, meta in committed.items()
        }
        self._stable = all(stable_ends[tp] == log_ends[tp] for tp in self._parts)

    # -- output ----------------------------------------------------------------------------
    def offset(self, part: Partition) -> int:
        return self._offsets.get(part, 0)

    def records(self, topic: str) -> list[Record]:
        if topic not in self._records:
            raise KeyError(f"{topic} is not a topic of this harness (inputs, outputs, DLQs)")
        return sorted(self._records[topic], key=lambda r: (r.partition, r.offset))

"""Run a handler in the real consumer runtime over an in-memory broker, for tests.

```python
async with FlowHarness(Kitchen(...), topics=["orders"]) as h:
    await h.send("orders", order)
    await h.drained()
    assert h.events("order-events") == [...]
```

``FlowHarness`` wires the actual ``ConsumerRuntime`` (decode, dedupe, timers, retries, dead
letters, grouped commits) to a ``MemoryTransport``, runs it in a background task, and stops it
cleanly on exit. Waiting is on the broker's announcements (every produce and every commit,
failed or not), never on sleeps: a predicate given to ``until`` is re-checked after each of them.

Records sent before ``async with`` wait in the broker, so the first fetch takes them all in one
batch. Two harnesses on one ``MemoryBroker`` and group id continue where the other committed.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from ingest.codec import decode, encode
from ingest.consumer import Handler
from ingest.dedupe import ProcessedEvents
from ingest.dlq import DeadLetter, _to_letter
from ingest.events import Event
from ingest.memory import MemoryBroker, MemoryTransport
from ingest.runtime import ConsumerRuntime, ConsumerStats
from ingest.topics import DLQ_SUFFIX
from ingest.transport import Headers, Partition, Record
from pizzashop.core.settings import ConsumerSettings

__all__ = ["FAST_SETTINGS", "FlowHarness"]

#: Small delays so retries, rewinds and shutdowns take milliseconds in tests.
FAST_SETTINGS = ConsumerSettings(
    batch_wait_ms=50,
    retry_base_delay_s=0.01,
    retry_max_delay_s=0.05,
    retry_budget_s=2.0,
    rewind_delay_s=0.02,
    shutdown_deadline_s=2.0,
)


class FlowHarness:
    """One ``ConsumerRuntime`` for ``handler`` in group ``group_id`` over ``broker``.

    ``processed=None`` runs without the dedupe table, as a flow declared ``dedupe=False`` does.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        topics: Sequence[str],
        settings: ConsumerSettings = FAST_SETTINGS,
        processed: ProcessedEvents | None = None,
        broker: MemoryBroker | None = None,
        group_id: str = "test-group",
        name: str = "test",
    ) -> None:
        self.broker = broker if broker is not None else MemoryBroker()
        self.transport = MemoryTransport(self.broker, group_id)
        self.topics = list(topics)
        self.group_id = group_id
        self.runtime = ConsumerRuntime(
            name=name,
            group_id=group_id,
            topics=self.topics,
            handler=handler,
            transport=self.transport,
            processed=processed,
            settings=settings,
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def stats(self) -> ConsumerStats:
        return self.runtime.stats

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.runtime.start()  # assigned before it returns; run() then goes straight on
        self._task = asyncio.create_task(self.runtime.run(), name=f"harness-{self.group_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop as the shop does: stop fetching, drain the batches in hand, close. Idempotent;
        re-raises what the run loop died of, if it died."""
        task, self._task = self._task, None
        if task is None:
            return
        self.runtime.request_stop()
        try:
            await task
        finally:
            await self.runtime.stop()

    # -- input -----------------------------------------------------------------------------
    async def send(self, topic: str, event: Event, *, traceparent: str | None = None) -> Record:
        """Produce ``event`` as the shop's producer would (key, value, headers)."""
        encoded = encode(event, traceparent)
        return await self.broker.produce(topic, encoded.key, encoded.value, encoded.headers)

    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> Record:
        """Produce arbitrary bytes: broken records, or a dead letter's original for a replay."""
        return await self.broker.produce(topic, key, value, list(headers or []))

    def key_for(self, partition: int, prefix: str = "o") -> str:
        """An order id (the record key) that lands on ``partition`` of the in-memory broker."""
        for n in range(10_000):
            key = f"{prefix}-{n}"
            if zlib.crc32(key.encode()) % self.broker.partitions == partition:
                return key
        raise AssertionError(f"no key found for partition {partition}")  # pragma: no cover

    # -- waiting ---------------------------------------------------------------------------
    async def until(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checked after every produce and commit.

        Fails at once with the run loop's exception if the runtime dies meanwhile.
        """
        task = self._task

        def ready() -> bool:
            return (task is not None and task.done()) or predicate()

        try:
            await self.broker.wait_for(ready, timeout_s)
        except TimeoutError:
            raise AssertionError(f"condition not met within {timeout_s}s") from None
        if task is not None and task.done() and not predicate():
            task.result()  # raises what it died of
            raise AssertionError("the runtime stopped before the condition held")

    async def committed(self, n: int, timeout_s: float = 5.0) -> None:
        """Wait until the broker has taken ``n`` successful commits in all (any group)."""
        await self.until(lambda: self.broker.commits >= n, timeout_s)

    async def drained(self, timeout_s: float = 5.0) -> None:
        """Wait until this group has committed past every record now in its input topics."""
        ends = {
            Partition(topic, index): len(log)
            for topic in self.topics
            for index, log in enumerate(self.broker.topic(topic))
        }
        await self.until(
            lambda: all(self.offset(part) >= end for part, end in ends.items()), timeout_s
        )

    # -- output ----------------------------------------------------------------------------
    def offset(self, part: Partition) -> int:
        """This group's committed offset of ``part`` (the next record to read); 0 if none."""
        return self.broker.committed.get((self.group_id, part), 0)

    def records(self, topic: str) -> list[Record]:
        """What is in ``topic``, partition by partition (committed only: the in-memory broker
        writes a commit's records in the same step as its offsets)."""
        return self.broker.records(topic)

    def events(self, topic: str) -> list[Event]:
        return [decode(r.value, r.headers) for r in self.records(topic)]

    def dead_letters(self) -> list[DeadLetter]:
        """The dead letters of every input topic, as ``pizzashop dlq`` reads them."""
        return [
            _to_letter(r.topic, r.offset, r.key, r.value, list(r.headers))
            for topic in self.topics
            for r in self.records(topic + DLQ_SUFFIX)
        ]

"""An in-memory log with consumer groups: the runtime's transport for tests without Kafka.

``MemoryBroker`` holds topics (lists of partitions of records) and committed offsets per group.
``MemoryTransport`` is one member of one group: it owns every partition of its topics (a
rebalance can be simulated with ``rebalance()``), and ``commit`` appends the outputs and moves
the offsets in one step, as a Kafka transaction would. Faults are injected by name
(``fail_commits``), and every commit is announced so tests wait on events, never on sleeps.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ingest.transport import Headers, Outgoing, Partition, RebalanceListener, Record
from pizzashop.core.errors import BrokerUnavailable


@dataclass(slots=True)
class MemoryBroker:
    partitions: int = 3
    topics: dict[str, list[list[Record]]] = field(default_factory=dict)
    committed: dict[tuple[str, Partition], int] = field(default_factory=dict)
    #: How many commits from now on fail (``BrokerUnavailable``), as when Kafka is away.
    fail_commits: int = 0
    #: How many commits from now on go through but answer with a failure, as when the answer
    #: is lost to a broker restart after the coordinator committed.
    lose_commit_answers: int = 0
    commits: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def topic(self, name: str) -> list[list[Record]]:
        if name not in self.topics:
            self.topics[name] = [[] for _ in range(self.partitions)]
        return self.topics[name]

    def append(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> Record:
        parts = self.topic(topic)
        index = zlib.crc32(key) % len(parts) if key is not None else 0
        log = parts[index]
        record = Record(topic, index, len(log), key, value, list(headers), 0)
        log.append(record)
        return record

    async def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),  # type: ignore[assignment]
    ) -> Record:
        async with self._changed:
            record = self.append(topic, key, value, list(headers))
            self._changed.notify_all()
        return record

    def records(self, topic: str) -> list[Record]:
        """Everything in ``topic``, partition by partition."""
        return [r for part in self.topic(topic) for r in part]

    async def wait_for(self, predicate: object, timeout_s: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checking after every change (produce, commit)."""
        assert callable(predicate)
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


class MemoryTransport:
    """One member of ``group`` that owns all partitions of its topics."""

    def __init__(self, broker: MemoryBroker, group: str) -> None:
        self._broker = broker
        self._group = group
        self._topics: list[str] = []
        self._listener: RebalanceListener | None = None
        self._assigned: frozenset[Partition] = frozenset()
        self._positions: dict[Partition, int] = {}
        self._paused: set[Partition] = set()
        self._rebalancing = False

    async def start(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self._topics = list(topics)
        self._listener = listener
        await self._assign()

    async def stop(self) -> None:
        if self._listener is not None and self._assigned:
            await self._listener.revoked(self._assigned)
        self._assigned = frozenset()

    async def rebalance(self) -> None:
        """Give every partition away and take it back, as a group rebalance does.

        As in aiokafka, ``fetch`` hands out nothing while the reassignment is in progress: a
        batch started then would escape the ``revoked`` callback that waits for batches in hand.
        """
        assert self._listener is not None
        self._rebalancing = True
        try:
            await self._listener.revoked(self._assigned)
            self._assigned = frozenset()
            await self._assign()
        finally:
            self._rebalancing = False
            await self._broker._notify()

    async def _assign(self) -> None:
        parts = frozenset(
            Partition(t, i) for t in self._topics for i in range(len(self._broker.topic(t)))
        )
        self._assigned = parts
        self._paused.clear()
        self._positions = {p: self._broker.committed.get((self._group, p), 0) for p in parts}
        assert self._listener is not None
        await self._listener.assigned(parts)

    async def fetch(self, timeout_s: float, max_records: int) -> dict[Partition, list[Record]]:
        broker = self._broker
        try:
            async with asyncio.timeout(timeout_s), broker._changed:
                await broker._changed.wait_for(self._available)
        except TimeoutError:
            return {}
        out: dict[Partition, list[Record]] = {}
        budget = max_records
        for part in sorted(self._assigned - self._paused):
            log = broker.topic(part.topic)[part.partition]
            start = self._positions[part]
            taken = log[start : start + budget]
            if taken:
                out[part] = taken
                self._positions[part] = start + len(taken)
                budget -= len(taken)
            if budget <= 0:
                break
        return out

    def _available(self) -> bool:
        return not self._rebalancing and any(
            self._positions[p] < len(self._broker.topic(p.topic)[p.partition])
            for p in self._assigned - self._paused
        )

    def pause(self, partitions: Iterable[Partition]) -> None:
        self._paused.update(p for p in partitions if p in self._assigned)

    def resume(self, partitions: Iterable[Partition]) -> None:
        self._paused.difference_update(partitions)
        # A resumed partition may have records waiting: wake a fetch that sleeps.
        asyncio.get_running_loop().create_task(self._broker._notify())

    def seek(self, partition: Partition, offset: int) -> None:
        if partition in self._assigned:
            self._positions[partition] = offset

    def assignment(self) -> frozenset[Partition]:
        return self._assigned

    async def committed(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        committed = self._broker.committed
        return {p: committed[self._group, p] for p in partitions if (self._group, p) in committed}

    async def commit(self, records: Sequence[Outgoing], offsets: Mapping[Partition, int]) -> None:
        broker = self._broker
        async with broker._changed:
            if broker.fail_commits > 0:
                broker.fail_commits -= 1
                # Announced too: a test waits for the failure to see that nothing shows.
                broker._changed.notify_all()
                raise BrokerUnavailable("in-memory broker: commit refused (injected fault)")
            for r in records:
                broker.append(r.topic, r.key, r.value, r.headers)
            for part, offset in offsets.items():
                broker.committed[(self._group, part)] = offset
            broker.commits += 1
            broker._changed.notify_all()
            if broker.lose_commit_answers > 0:
                broker.lose_commit_answers -= 1
                raise BrokerUnavailable("in-memory broker: commit answer lost (injected fault)")

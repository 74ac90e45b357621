"""The seam between the consumer runtime and a log: what the runtime needs, nothing more.

The runtime fetches records from the partitions it was given, pauses and resumes them, seeks
back when it must see records again, and finishes every piece of work with one ``commit``: the
records it emits (events, dead letters) *and* the input offsets it consumed, atomically. On
Kafka that is one transaction (``ingest.kafka_transport``); in memory it is one step under a
lock (``ingest.memory``), so the runtime's semantics can be tested without a broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

Headers = list[tuple[str, bytes]]


class Partition(NamedTuple):
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(frozen=True, slots=True)
class Record:
    """One record as fetched: where it is, and its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int

    @property
    def where(self) -> Partition:
        return Partition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One record to write as part of a commit."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


class RebalanceListener(Protocol):
    async def revoked(self, partitions: frozenset[Partition]) -> None:
        """Called before ``partitions`` go to another member: finish and commit their work."""

    async def assigned(self, partitions: frozenset[Partition]) -> None:
        """Called once ``partitions`` are ours; fetching resumes from their committed offsets,
        unpaused whatever their state under an earlier ownership (the runtime relies on it)."""


class Transport(Protocol):
    """A consumer-group member that can also write, atomically with its offsets."""

    async def start(self, topics: Sequence[str], listener: RebalanceListener) -> None: ...

    async def stop(self) -> None: ...

    async def fetch(self, timeout_s: float, max_records: int) -> dict[Partition, list[Record]]:
        """Records of assigned, unpaused partitions, in offset order; ``{}`` after the timeout."""
        ...

    def pause(self, partitions: Iterable[Partition]) -> None: ...

    def resume(self, partitions: Iterable[Partition]) -> None: ...

    def seek(self, partition: Partition, offset: int) -> None:
        """Fetch ``partition`` from ``offset`` next. Ignored for partitions no longer ours."""
        ...

    def assignment(self) -> frozenset[Partition]: ...

    async def commit(self, records: Sequence[Outgoing], offsets: Mapping[Partition, int]) -> None:
        """Write ``records`` and commit ``offsets`` (next offset to read) all or nothing.

        Raises on failure. The commit may still have happened (its answer was lost, a timeout
        while the coordinator committed it): ``committed`` tells which, once it is decided.
        """
        ...

    async def committed(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        """The committed offsets of ``partitions`` that have one, once no commit is still
        completing on them; raises ``BrokerUnavailable`` if that cannot be known now."""
        ...

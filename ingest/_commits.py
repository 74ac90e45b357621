"""The runtime's transaction committer: concurrent batches share one Kafka transaction, and a
batch whose partitions were revoked meanwhile commits nothing. (``ingest.group_commit`` is the
other kind: concurrent database writes sharing one database transaction.)

Each batch takes the ``epochs`` of its partitions when it is dispatched. A rebalance bumps the
epoch of every revoked partition once it stops waiting for the batches in hand; a batch whose
epochs are no longer current is refused with ``PartitionsRevoked`` instead of being committed,
so it cannot publish what the partitions' new owner publishes too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ingest.transport import Outgoing, Partition, Transport


class PartitionsRevoked(Exception):
    """A batch's partitions went to another member before it could commit."""


@dataclass(frozen=True, slots=True)
class _Pending:
    records: Sequence[Outgoing]
    offsets: Mapping[Partition, int]
    epochs: Mapping[Partition, int]
    done: asyncio.Future[None]


class TransactionCommitter:
    def __init__(self, transport: Transport, *, name: str) -> None:
        self._transport = transport
        self._name = name
        self._epoch: dict[Partition, int] = {}
        self._pending: list[_Pending] = []
        self._task: asyncio.Task[None] | None = None
        #: Transactions (or offset commits) that went through.
        self.commits = 0

    def epochs(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        """The current epochs of ``partitions``: taken when a batch is dispatched."""
        return {part: self._epoch.get(part, 0) for part in partitions}

    def revoke(self, partitions: Iterable[Partition]) -> None:
        """Batches of ``partitions`` dispatched before now will not commit."""
        for part in partitions:
            self._epoch[part] = self._epoch.get(part, 0) + 1

    async def settle(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) for the transaction in flight, if any: after a revoke, the
        partitions' new owner must not read their offsets while it may still write them."""
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task}, timeout=timeout_s)

    async def commit(
        self,
        records: Sequence[Outgoing],
        offsets: Mapping[Partition, int],
        epochs: Mapping[Partition, int],
    ) -> None:
        """Write ``records`` and commit ``offsets`` with whatever else is waiting, atomically;
        raises ``PartitionsRevoked`` if ``epochs`` went stale, or what the commit raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(records, offsets, epochs, done))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name=f"{self._name}-commit")
        await done

    async def _flush(self) -> None:
        while self._pending:
            taken, self._pending = self._pending, []
            for pending in taken:
                if self._stale(pending.epochs):
                    pending.done.set_exception(PartitionsRevoked())
            live = [p for p in taken if not p.done.done()]
            records = [r for p in live for r in p.records]
            offsets = {part: o for p in live for part, o in p.offsets.items()}
            try:
                await self._transport.commit(records, offsets)
            except Exception as exc:
                for pending in live:
                    pending.done.set_exception(exc)
            else:
                self.commits += 1
                for pending in live:
                    pending.done.set_result(None)

    def _stale(self, epochs: Mapping[Partition, int]) -> bool:
        return any(self._epoch.get(part, 0) != epoch for part, epoch in epochs.items())

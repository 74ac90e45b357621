"""Group commit: many concurrent writers, one transaction, each told only once it is durable.

A database commits a transaction of 200 rows about as fast as one of a single row, but a
request that opens its own transaction pays the whole round (begin, statements, commit, and
on SQLite a hand-off to the connection's thread for each) and waits for every other request's
round in front of it. ``GroupCommitter`` lets them share: ``submit(item)`` queues the item and
waits; one flusher task takes everything queued, hands it to ``commit`` as one group and
answers every waiter from what ``commit`` returned. Whatever arrives while a group commits
forms the next group, so groups grow with the load and an idle committer adds no delay (there
is no timer to wait out).

The contract, which is what makes "confirmed means durable" survive the sharing:

* a waiter is answered only after ``commit`` has returned, i.e. after its transaction has
  committed: never a result before the commit;
* if ``commit`` raises, every waiter of that group gets that exception, and nothing of the
  group may have been committed (``commit`` writes it in one transaction);
* ``commit`` may instead answer an item with an exception of its own (returned in the item's
  place): then only that waiter sees it;
* a waiter cancelled while its group commits does not stop the group: the others' orders
  are no less durable for it (its own may be too, as when a client hangs up after sending).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: ``commit(items)``: write ``items`` in ONE transaction and return, once it has committed, one
#: answer per item in order (a result, or an exception for that item's waiter alone).
Commit = Callable[[Sequence[T]], Awaitable[Sequence[R | Exception]]]


@dataclass(slots=True)
class _Waiter(Generic[T, R]):
    item: T
    future: asyncio.Future[R]


class GroupCommitter(Generic[T, R]):
    """Coalesces concurrent ``submit`` calls into groups of at most ``max_group`` items, one
    ``commit`` call (one transaction) per group, one group at a time.

    No task outlives the work: the flusher starts with the first item and ends when nothing
    is queued, so there is nothing to start or stop. ``groups`` and ``items`` count what was
    committed (for tests and metrics)."""

    def __init__(self, commit: Commit[T, R], *, max_group: int = 256) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self._commit = commit
        self._max_group = max_group
        self._queue: list[_Waiter[T, R]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.groups = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        """Queue ``item``; return its answer once its group has committed, or raise what its
        group's commit raised."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiter(item, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="group-commit")
        # Not shielded on purpose: cancelling this wait leaves the group to commit.
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                group = self._queue[: self._max_group]
                del self._queue[: self._max_group]
                await self._run(group)
        finally:
            self._flusher = None
            # Only if this task itself was cancelled (the loop shutting down): nobody is left
            # to commit what is queued, so say so instead of leaving its waiters hanging.
            for waiter in self._queue:
                if not waiter.future.done():
                    waiter.future.set_exception(RuntimeError("group commit stopped"))
            self._queue.clear()

    async def _run(self, group: list[_Waiter[T, R]]) -> None:
        try:
            answers = await self._commit([waiter.item for waiter in group])
            if len(answers) != len(group):
                raise RuntimeError(f"commit answered {len(answers)} of {len(group)} items")
        except Exception as exc:
            # The whole group failed: every waiter hears it, none is confirmed.
            logger.warning("group commit of %d item(s) failed: %r", len(group), exc)
            for waiter in group:
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
            return
        except BaseException as exc:  # cancelled mid-commit: the transaction was rolled back
            for waiter in group:
                if not waiter.future.done():
                    waiter.future.set_exception(RuntimeError(f"group commit stopped ({exc!r})"))
            raise
        self.groups += 1
        self.items += len(group)
        for waiter, answer in zip(group, answers, strict=True):
            if waiter.future.done():  # its request was cancelled meanwhile
                continue
            if isinstance(answer, Exception):
                waiter.future.set_exception(answer)
            else:
                waiter.future.set_result(answer)

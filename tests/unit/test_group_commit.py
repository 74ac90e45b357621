"""The group committer: concurrent submits share a commit, no answer comes before it, and a
failed group fails every one of its waiters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from ingest.group_commit import GroupCommitter


class Store:
    """A commit that records each group, and can be held open or made to fail."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.committed: set[int] = set()
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next: Exception | None = None

    async def commit(self, items: Sequence[int]) -> list[int | Exception]:
        self.groups.append(list(items))
        await self.gate.wait()
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.committed.update(items)
        return [item * 10 if item >= 0 else ValueError(f"bad {item}") for item in items]


async def until(predicate: Callable[[], object], *, rounds: int = 100) -> None:
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_concurrent_submits_share_a_commit_and_each_gets_its_answer() -> None:
    store = Store()
    store.gate.clear()
    committer: GroupCommitter[int, int] = GroupCommitter(store.commit)
    first = asyncio.create_task(committer.submit(0))
    await until(lambda: store.groups)
    rest = [asyncio.create_task(committer.submit(i)) for i in range(1, 20)]
    await asyncio.sleep(0)
    store.gate.set()
    answers = await asyncio.gather(first, *rest)
    assert answers == [i * 10 for i in range(20)]
    # The 19 that came while the first group committed went in together.
    assert store.groups == [[0], list(range(1, 20))]
    assert (committer.groups, committer.items) == (2, 20)


async def test_no_answer_before_the_commit_returns() -> None:
    store = Store()
    store.gate.clear()
    committer: GroupCommitter[int, int] = GroupCommitter(store.commit)
    tasks = [asyncio.create_task(committer.submit(i)) for i in range(5)]
    await until(lambda: store.groups)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not any(task.done() for task in tasks)
    assert not store.committed
    store.gate.set()
    assert await asyncio.gather(*tasks) == [0, 10, 20, 30, 40]
    assert store.committed == set(range(5))


async def test_a_failed_group_fails_every_waiter_and_the_next_group_goes_on() -> None:
    store = Store()
    store.gate.clear()
    store.fail_next = ConnectionError("database went away")
    committer: GroupCommitter[int, int] = GroupCommitter(store.commit)
    failing = [asyncio.create_task(committer.submit(i)) for i in range(4)]
    await until(lambda: store.groups)
    later = [asyncio.create_task(committer.submit(i)) for i in (7, 8)]
    await asyncio.sleep(0)
    store.gate.set()
    results = await asyncio.gather(*failing, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results), results
    assert await asyncio.gather(*later) == [70, 80]
    assert store.committed == {7, 8}
    assert (committer.groups, committer.items) == (1, 2)


async def test_an_item_answered_with_an_exception_fails_only_its_waiter() -> None:
    committer: GroupCommitter[int, int] = GroupCommitter(Store().commit)
    results = await asyncio.gather(
        *(committer.submit(i) for i in (1, -1, 2)), return_exceptions=True
    )
    assert results[0] == 10 and results[2] == 20
    assert isinstance(results[1], ValueError)


async def test_a_cancelled_waiter_does_not_stop_its_group() -> None:
    store = Store()
    store.gate.clear()
    committer: GroupCommitter[int, int] = GroupCommitter(store.commit)
    tasks = [asyncio.create_task(committer.submit(i)) for i in range(3)]
    await until(lambda: store.groups)
    tasks[1].cancel()
    await asyncio.sleep(0)
    store.gate.set()
    assert await tasks[0] == 0 and await tasks[2] == 20
    assert tasks[1].cancelled()
    assert store.committed == {0, 1, 2}  # its item was in the group, and is in


async def test_groups_are_capped_at_max_group() -> None:
    store = Store()
    store.gate.clear()
    committer: GroupCommitter[int, int] = GroupCommitter(store.commit, max_group=4)
    tasks = [asyncio.create_task(committer.submit(i)) for i in range(10)]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(*tasks)
    assert [len(g) for g in store.groups] == [4, 4, 2]


async def test_a_commit_answering_the_wrong_number_of_items_fails_the_group() -> None:
    async def short(items: Sequence[int]) -> list[int | Exception]:
        return [1]

    committer: GroupCommitter[int, int] = GroupCommitter(short)
    results = await asyncio.gather(*(committer.submit(i) for i in range(2)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


def test_max_group_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_group"):
        GroupCommitter(Store().commit, max_group=0)

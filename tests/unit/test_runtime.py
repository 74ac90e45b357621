"""The consumer runtime's delivery semantics, one test per promise of ``ingest.runtime``'s
docstring, on the in-memory transport through ``ingest.testing.FlowHarness``.

This file: what one batch becomes (outputs with offsets, dead letters, skips, dedupe, the
one-by-one fallback, whole batches, trace context, grouped commits, a failed commit).
``test_runtime_holds.py``: what holds a partition back (a batch in hand, timers, retries,
shutdown, rebalance).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable, Sequence

import pytest

from ingest.codec import H_TRACEPARENT, header, new_traceparent
from ingest.consumer import Delivery, Handler, Output
from ingest.dedupe import ProcessedEvents
from ingest.dlq import DLQ_HEADERS, replay
from ingest.events import Event, OrderPlaced, OrderReady, derived_event_id
from ingest.testing import FAST_SETTINGS, FlowHarness
from ingest.transport import Partition
from pizzashop.core.database import Database
from pizzashop.core.errors import PublishRejected, ValidationFailed
from tests.unit.conftest import make_order

IN = "orders"
OUT = "order-events"
P0 = Partition(IN, 0)

_serial = itertools.count()


class Recorder(Handler):
    """Emits one ``OrderReady`` per order. Raises ``failures[order_id]`` for a batch holding
    that order; waits on ``gates[order_id]`` first, if there is one."""

    event_types = (OrderPlaced,)

    def __init__(self) -> None:
        self.calls: list[list[Delivery]] = []
        self.times: list[float] = []  # monotonic, per call
        self.failures: dict[str, type[Exception]] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self._called = asyncio.Condition()

    async def handle(self, batch: Sequence[Delivery]) -> Sequence[Output]:
        self.calls.append(list(batch))
        self.times.append(time.monotonic())
        async with self._called:
            self._called.notify_all()
        for delivery in batch:
            if (gate := self.gates.get(delivery.event.order_id)) is not None:
                await gate.wait()
        for delivery in batch:
            if (error := self.failures.get(delivery.event.order_id)) is not None:
                raise error(f"{delivery.event.order_id} fails")
        return [delivery.emit(OUT, ready(delivery.event)) for delivery in batch]

    async def called(self, n: int) -> None:
        """Wait until ``handle`` has been entered ``n`` times."""
        async with asyncio.timeout(5), self._called:
            await self._called.wait_for(lambda: len(self.calls) >= n)

    def seen(self) -> list[str]:
        """Order ids in the order the handler got them, every call."""
        return [d.event.order_id for call in self.calls for d in call]


class WholeBatch(Recorder):
    whole_batch = True


def ready(cause: Event) -> OrderReady:
    return OrderReady(
        event_id=derived_event_id(cause.event_id, "OrderReady"), order_id=cause.order_id
    )


def order_on(h: FlowHarness, partition: int) -> OrderPlaced:
    return make_order(order_id=h.key_for(partition, prefix=f"o{next(_serial)}"))


def outputs(h: FlowHarness) -> list[str]:
    """Order ids of the published outputs, in log order per partition."""
    return [e.order_id for e in h.events(OUT)]


# -- outputs and offsets ---------------------------------------------------------------------
async def test_outputs_and_offsets_commit_together_or_not_at_all() -> None:
    handler = Recorder()
    # A rewind pause long enough to look at the broker between the failure and the retry.
    settings = FAST_SETTINGS.model_copy(update={"rewind_delay_s": 0.2})
    h = FlowHarness(handler, topics=[IN], settings=settings)
    orders = [order_on(h, 0) for _ in range(3)]
    for order in orders:
        await h.send(IN, order)
    h.broker.fail_commits = 1
    async with h:
        await h.until(lambda: h.broker.fail_commits == 0)
        # Handled, commit refused: none of the outputs shows, the offset has not moved.
        assert handler.seen() == [o.order_id for o in orders]
        assert h.records(OUT) == []
        assert h.offset(P0) == 0
        await h.drained()
    # Rewound and handled again: each output once, with the offsets, in one commit.
    assert handler.seen() == [o.order_id for o in orders] * 2
    assert [e.event_id for e in h.events(OUT)] == [ready(o).event_id for o in orders]
    assert h.offset(P0) == 3
    assert h.broker.commits == 1
    assert h.stats.errors_by_class == {"BrokerUnavailable": 1}
    assert h.stats.handled == 3


async def test_concurrent_partitions_share_one_commit() -> None:
    handler = Recorder()
    h = FlowHarness(handler, topics=[IN])
    gate = asyncio.Event()
    a, b = order_on(h, 0), order_on(h, 1)
    handler.gates = {a.order_id: gate, b.order_id: gate}
    await h.send(IN, a)
    await h.send(IN, b)
    async with h:
        await handler.called(2)  # both partitions in hand at once
        gate.set()
        await h.drained()
    assert sorted(outputs(h)) == sorted([a.order_id, b.order_id])
    assert h.broker.commits == 1
    assert h.offset(P0) == 1 and h.offset(Partition(IN, 1)) == 1


# -- decode, skip, dedupe ----------------------------------------------------------------------
V1 = str(OrderPlaced.schema_version).encode()


@pytest.mark.parametrize(
    ("value", "headers", "error_class"),
    [
        pytest.param(b"{}", [], "DecodeError", id="no-event-type"),
        pytest.param(b"{}", [("event-type", b"Pizza")], "DecodeError", id="unknown-type"),
        pytest.param(
            b"not json",
            [("event-type", b"OrderPlaced"), ("schema-version", V1)],
            "DecodeError",
            id="not-json",
        ),
        pytest.param(
            b'{"order_id": "o-1"}',
            [("event-type", b"OrderPlaced"), ("schema-version", V1)],
            "ValidationFailed",
            id="breaks-contract",
        ),
    ],
)
async def test_an_undecodable_record_is_dead_lettered_with_where_and_why(
    value: bytes, headers: list[tuple[str, bytes]], error_class: str
) -> None:
    handler = Recorder()
    async with FlowHarness(handler, topics=[IN]) as h:
        bad = await h.send_raw(IN, b"k-1", value, headers)
        good = make_order(order_id="k-1")  # same key: same partition, after the bad one
        await h.send(IN, good)
        await h.drained()
    [letter] = h.dead_letters()
    assert letter.dlq_topic == f"{IN}.dlq"
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        IN,
        bad.partition,
        bad.offset,
    )
    assert letter.consumer_group == h.group_id
    assert letter.error_class == error_class
    assert letter.error_message
    assert letter.failed_at
    assert letter.attempts == 1
    assert (letter.key, letter.value, letter.original_headers) == (b"k-1", value, headers)
    [raw] = h.records(f"{IN}.dlq")
    assert set(DLQ_HEADERS) <= {name for name, _ in raw.headers}
    # The handler never saw it; the record behind it went on.
    assert handler.seen() == ["k-1"]
    assert outputs(h) == ["k-1"]
    assert h.stats.dead_lettered == 1
    assert h.offset(Partition(IN, bad.partition)) == 2


async def test_other_event_types_are_committed_past_unread() -> None:
    handler = Recorder()
    async with FlowHarness(handler, topics=[IN]) as h:
        order = order_on(h, 0)
        await h.send(IN, OrderReady(order_id=order.order_id))
        await h.send(IN, order)
        await h.send(IN, OrderReady(order_id=h.key_for(1, prefix="other")))  # nothing else there
        await h.drained()
    assert handler.seen() == [order.order_id]
    assert h.stats.skipped == 2
    assert h.offset(P0) == 2 and h.offset(Partition(IN, 1)) == 1
    assert h.dead_letters() == []


async def test_dedupe_drops_handled_events_and_copies_within_a_batch(db: Database) -> None:
    processed = ProcessedEvents(db)
    handler = Recorder()
    h = FlowHarness(handler, topics=[IN], processed=processed)
    a, b = order_on(h, 0), order_on(h, 0)
    for event in (a, a, b):  # a copy of ``a`` in the same batch
        await h.send(IN, event)
    async with h:
        await h.drained()
        assert handler.seen() == [a.order_id, b.order_id]
        assert h.stats.duplicates == 1
        await h.send(IN, a)  # redelivered after it was handled
        await h.drained()
    assert handler.seen() == [a.order_id, b.order_id]
    assert h.stats.duplicates == 2
    assert outputs(h) == [a.order_id, b.order_id]
    assert await processed.seen(h.group_id, [a.event_id, b.event_id]) == {a.event_id, b.event_id}


class FlakyTable(ProcessedEvents):
    """The dedupe table, failing the next ``fail_seen`` look-ups and ``fail_mark`` marks."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.fail_seen = 0
        self.fail_mark = 0

    async def seen(self, consumer: str, event_ids: Iterable[str]) -> set[str]:
        if self.fail_seen:
            self.fail_seen -= 1
            raise ConnectionError("database away")
        return await super().seen(consumer, event_ids)

    async def mark(self, consumer: str, event_ids: Iterable[str]) -> None:
        if self.fail_mark:
            self.fail_mark -= 1
            raise ConnectionError("database away")
        await super().mark(consumer, event_ids)


async def test_a_failing_dedupe_look_up_rewinds_the_batch(db: Database) -> None:
    table = FlakyTable(db)
    table.fail_seen = 1
    handler = Recorder()
    h = FlowHarness(handler, topics=[IN], processed=table)
    order = order_on(h, 0)
    await h.send(IN, order)
    async with h:
        await h.drained()
    assert handler.seen() == [order.order_id]  # not handled until the look-up worked
    assert outputs(h) == [order.order_id]
    assert h.stats.errors_by_class == {"ConnectionError": 1}


async def test_a_failing_mark_after_the_commit_keeps_the_commit(db: Database) -> None:
    table = FlakyTable(db)
    table.fail_mark = 1
    handler = Recorder()
    async with FlowHarness(handler, topics=[IN], processed=table) as h:
        order, behind = order_on(h, 0), order_on(h, 0)
        await h.send(IN, order)
        await h.drained()
        await h.send(IN, behind)
        await h.drained()
    # Published and committed once; only a replay of ``order`` could now repeat it.
    assert outputs(h) == [order.order_id, behind.order_id]
    assert handler.seen() == [order.order_id, behind.order_id]
    assert await table.seen(h.group_id, [order.event_id, behind.event_id]) == {behind.event_id}


async def test_without_a_dedupe_table_a_redelivery_is_handled_again() -> None:
    handler = Recorder()
    async with FlowHarness(handler, topics=[IN], processed=None) as h:
        a = order_on(h, 0)
        await h.send(IN, a)
        await h.drained()
        await h.send(IN, a)
        await h.drained()
    assert handler.seen() == [a.order_id, a.order_id]
    assert h.stats.duplicates == 0


# -- failures in the handler -------------------------------------------------------------------
async def test_a_failed_batch_goes_one_by_one_and_a_permanent_error_dead_letters() -> None:
    handler = Recorder()
    h = FlowHarness(handler, topics=[IN])
    first, poison, last = (order_on(h, 0) for _ in range(3))
    handler.failures[poison.order_id] = ValidationFailed
    for order in (first, poison, last):
        await h.send(IN, order)
    async with h:
        await h.drained()
    # One batch call, then each record alone; the poison once: no retries for a permanent error.
    assert [len(call) for call in handler.calls] == [3, 1, 1, 1]
    assert handler.seen()[3:] == [first.order_id, poison.order_id, last.order_id]
    assert outputs(h) == [first.order_id, last.order_id]
    [letter] = h.dead_letters()
    assert letter.original_offset == 1
    assert (letter.error_class, letter.attempts) == ("ValidationFailed", 1)
    assert h.stats.retries == 0
    assert (h.stats.handled, h.stats.dead_lettered) == (2, 1)
    # The outputs, the dead letter and the offsets went out in one commit.
    assert h.broker.commits == 1
    assert h.offset(P0) == 3


async def test_a_dead_lettered_event_is_not_marked_so_a_replay_handles_it_once(
    db: Database,
) -> None:
    processed = ProcessedEvents(db)
    handler = Recorder()
    async with FlowHarness(handler, topics=[IN], processed=processed) as h:
        poison, marker = order_on(h, 0), order_on(h, 0)
        handler.failures[poison.order_id] = PublishRejected
        await h.send(IN, poison)
        await h.drained()
        await h.send(IN, marker)  # fetched only once the poison's batch has fully finished
        await h.drained()
        assert await processed.seen(h.group_id, [poison.event_id]) == set()

        # The fix is deployed; ``pizzashop dlq replay`` sends the original bytes back, twice.
        del handler.failures[poison.order_id]
        [letter] = h.dead_letters()
        for _ in range(2):
            await replay(HarnessProducer(h), letter)  # type: ignore[arg-type]
            await h.drained()
    assert outputs(h) == [marker.order_id, poison.order_id]
    assert handler.seen().count(poison.order_id) == 2  # the failed try, then the replay once
    assert h.stats.duplicates == 1
    assert await processed.seen(h.group_id, [poison.event_id]) == {poison.event_id}


class HarnessProducer:
    """The part of ``EventProducer`` that ``ingest.dlq.replay`` uses, onto the harness."""

    def __init__(self, h: FlowHarness) -> None:
        self._h = h

    async def send_raw(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        await self._h.send_raw(topic, key, value, list(headers))


# -- batch shapes and lineage ------------------------------------------------------------------
async def test_a_whole_batch_handler_gets_the_fetch_in_one_call() -> None:
    handler = WholeBatch()
    h = FlowHarness(handler, topics=[IN])
    orders = [order_on(h, 2), order_on(h, 0), order_on(h, 1), order_on(h, 0)]
    for order in orders:
        await h.send(IN, order)
    async with h:
        await h.drained()
    [call] = handler.calls
    assert [(d.partition, d.offset) for d in call] == [(0, 0), (0, 1), (1, 0), (2, 0)]
    assert sorted(outputs(h)) == sorted(o.order_id for o in orders)
    assert h.stats.batches == 1


async def test_a_whole_batch_that_fails_falls_back_per_record() -> None:
    handler = WholeBatch()
    h = FlowHarness(handler, topics=[IN])
    good, poison = order_on(h, 0), order_on(h, 1)
    handler.failures[poison.order_id] = ValidationFailed
    await h.send(IN, good)
    await h.send(IN, poison)
    async with h:
        await h.drained()
    assert [len(call) for call in handler.calls] == [2, 1, 1]
    assert outputs(h) == [good.order_id]
    assert [letter.original_partition for letter in h.dead_letters()] == [1]


async def test_an_output_travels_in_a_child_span_of_its_cause() -> None:
    parent = new_traceparent()
    async with FlowHarness(Recorder(), topics=[IN]) as h:
        await h.send(IN, order_on(h, 0), traceparent=parent)
        await h.drained()
    [out] = h.records(OUT)
    child = header(out.headers, H_TRACEPARENT)
    assert child is not None
    _, parent_trace, parent_span, _ = parent.split("-")
    _, child_trace, child_span, _ = child.split("-")
    assert child_trace == parent_trace
    assert child_span != parent_span

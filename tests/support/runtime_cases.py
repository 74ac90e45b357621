"""The consumer runtime's delivery semantics, one case per promise of ``ingest.runtime``'s
docstring, written once against ``ingest.testing.Harness`` and run on both transports (as
FastStream runs its base test cases against every broker): ``tests/unit/test_runtime*.py``
collect them on the in-memory transport, ``tests/integration/test_runtime_kafka.py`` on a real
Kafka, each through its tier's ``harness_factory`` fixture.

``RuntimeCases``: what one batch becomes (outputs with offsets, dead letters, skips, dedupe, the
one-by-one fallback, whole batches, trace context, grouped commits).
``RuntimeHoldsCases``: what holds a partition back, and only that partition (a batch in hand,
timers, retries) and how a shutdown meets a held or busy partition.

Cases that need faults only the in-memory broker can inject (a refused commit, a forced
rebalance) are in the unit modules alone. The helpers here serve those too.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import pytest

from ingest.codec import H_TRACEPARENT, header
from ingest.consumer import Delivery, Handler, Output
from ingest.dedupe import ProcessedEvents
from ingest.dlq import DLQ_HEADERS, replay
from ingest.events import Event, OrderAccepted, OrderPlaced, OrderReady, derived_event_id, utcnow
from ingest.testing import FAST_SETTINGS, Harness
from ingest.tracing import new_traceparent
from ingest.transport import Partition
from pizzashop.core.database import Database
from pizzashop.core.errors import DeliveryFailed, PublishRejected, ValidationFailed
from tests.support.harnesses import HarnessFactory
from tests.support.orders import make_order

_serial = itertools.count()


class Recorder(Handler):
    """Emits one ``OrderReady`` per order to ``sink``. Raises ``failures[order_id]`` for a batch
    holding that order; waits on ``gates[order_id]`` first, if there is one."""

    event_types = (OrderPlaced,)

    def __init__(self, sink: str) -> None:
        self.sink = sink
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
        return [delivery.emit(self.sink, ready(delivery.event)) for delivery in batch]

    async def called(self, n: int, timeout_s: float = 30.0) -> None:
        """Wait until ``handle`` has been entered ``n`` times."""
        async with asyncio.timeout(timeout_s), self._called:
            await self._called.wait_for(lambda: len(self.calls) >= n)

    def seen(self) -> list[str]:
        """Order ids in the order the handler got them, every call."""
        return [d.event.order_id for call in self.calls for d in call]


class WholeBatch(Recorder):
    whole_batch = True


class Oven(Handler):
    """Handles an accepted order once it is ready (``ready_by``)."""

    event_types = (OrderAccepted,)

    def __init__(self, sink: str) -> None:
        self.sink = sink
        self.handled: list[tuple[str, datetime]] = []

    def due_at(self, event: Event) -> datetime | None:
        assert isinstance(event, OrderAccepted)
        return event.ready_by

    async def handle(self, batch: Sequence[Delivery]) -> Sequence[Output]:
        self.handled += [(d.event.order_id, utcnow()) for d in batch]
        return [d.emit(self.sink, ready(d.event)) for d in batch]


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


class HarnessProducer:
    """The part of ``EventProducer`` that ``ingest.dlq.replay`` uses, onto the harness."""

    def __init__(self, h: Harness) -> None:
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


def ready(cause: Event) -> OrderReady:
    return OrderReady(
        event_id=derived_event_id(cause.event_id, "OrderReady"), order_id=cause.order_id
    )


def order_on(h: Harness, partition: int) -> OrderPlaced:
    return make_order(order_id=h.key_for(partition, prefix=f"o{next(_serial)}"))


def part(h: Harness, partition: int = 0) -> Partition:
    """``partition`` of the harness's input topic."""
    return Partition(h.topics[0], partition)


def outputs(h: Harness) -> list[str]:
    """Order ids of the published outputs, in log order per partition."""
    return [e.order_id for e in h.events(h.outputs[0])]


V1 = str(OrderPlaced.schema_version).encode()


class RuntimeCases:
    """What one batch becomes."""

    # -- outputs and offsets -------------------------------------------------------------------
    async def test_concurrent_partitions_share_one_commit(
        self, harness_factory: HarnessFactory
    ) -> None:
        handler = Recorder(harness_factory.sink)
        h = harness_factory(handler)
        gate = asyncio.Event()
        a, b = order_on(h, 0), order_on(h, 1)
        handler.gates = {a.order_id: gate, b.order_id: gate}
        await h.send(h.topics[0], a)
        await h.send(h.topics[0], b)
        async with h:
            await handler.called(2)  # both partitions in hand at once
            gate.set()
            await h.drained()
        assert sorted(outputs(h)) == sorted([a.order_id, b.order_id])
        assert h.stats.commits == 1
        assert h.offset(part(h, 0)) == 1 and h.offset(part(h, 1)) == 1

    # -- decode, skip, dedupe --------------------------------------------------------------------
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
        self,
        harness_factory: HarnessFactory,
        value: bytes,
        headers: list[tuple[str, bytes]],
        error_class: str,
    ) -> None:
        handler = Recorder(harness_factory.sink)
        source = harness_factory.source
        async with harness_factory(handler) as h:
            bad = await h.send_raw(source, b"k-1", value, headers)
            good = make_order(order_id="k-1")  # same key: same partition, after the bad one
            await h.send(source, good)
            await h.drained()
        [letter] = h.dead_letters()
        assert letter.dlq_topic == f"{source}.dlq"
        assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
            source,
            bad.partition,
            bad.offset,
        )
        assert letter.consumer_group == h.group_id
        assert letter.error_class == error_class
        assert letter.error_message
        assert letter.failed_at
        assert letter.attempts == 1
        assert (letter.key, letter.value, letter.original_headers) == (b"k-1", value, headers)
        [raw] = h.records(f"{source}.dlq")
        assert set(DLQ_HEADERS) <= {name for name, _ in raw.headers}
        # The handler never saw it; the record behind it went on.
        assert handler.seen() == ["k-1"]
        assert outputs(h) == ["k-1"]
        assert h.stats.dead_lettered == 1
        assert h.offset(part(h, bad.partition)) == 2

    async def test_other_event_types_are_committed_past_unread(
        self, harness_factory: HarnessFactory
    ) -> None:
        handler = Recorder(harness_factory.sink)
        source = harness_factory.source
        async with harness_factory(handler) as h:
            order = order_on(h, 0)
            await h.send(source, OrderReady(order_id=order.order_id))
            await h.send(source, order)
            # Nothing else in partition 1: a batch of skips alone still commits.
            await h.send(source, OrderReady(order_id=h.key_for(1, prefix="other")))
            await h.drained()
        assert handler.seen() == [order.order_id]
        assert h.stats.skipped == 2
        assert h.offset(part(h, 0)) == 2 and h.offset(part(h, 1)) == 1
        assert h.dead_letters() == []

    async def test_dedupe_drops_handled_events_and_copies_within_a_batch(
        self, harness_factory: HarnessFactory, db: Database
    ) -> None:
        processed = ProcessedEvents(db)
        handler = Recorder(harness_factory.sink)
        source = harness_factory.source
        h = harness_factory(handler, processed=processed)
        a, b = order_on(h, 0), order_on(h, 0)
        for event in (a, a, b):  # a copy of ``a`` in the same batch
            await h.send(source, event)
        async with h:
            await h.drained()
            assert handler.seen() == [a.order_id, b.order_id]
            assert h.stats.duplicates == 1
            await h.send(source, a)  # redelivered after it was handled
            await h.drained()
        assert handler.seen() == [a.order_id, b.order_id]
        assert h.stats.duplicates == 2
        assert outputs(h) == [a.order_id, b.order_id]
        marked = await processed.seen(h.group_id, [a.event_id, b.event_id])
        assert marked == {a.event_id, b.event_id}

    async def test_a_failing_dedupe_look_up_rewinds_the_batch(
        self, harness_factory: HarnessFactory, db: Database
    ) -> None:
        table = FlakyTable(db)
        table.fail_seen = 1
        handler = Recorder(harness_factory.sink)
        h = harness_factory(handler, processed=table)
        order = order_on(h, 0)
        await h.send(harness_factory.source, order)
        async with h:
            await h.drained()
        assert handler.seen() == [order.order_id]  # not handled until the look-up worked
        assert outputs(h) == [order.order_id]
        assert h.stats.errors_by_class == {"ConnectionError": 1}

    async def test_a_failing_mark_after_the_commit_keeps_the_commit(
        self, harness_factory: HarnessFactory, db: Database
    ) -> None:
        table = FlakyTable(db)
        table.fail_mark = 1
        handler = Recorder(harness_factory.sink)
        source = harness_factory.source
        async with harness_factory(handler, processed=table) as h:
            order, behind = order_on(h, 0), order_on(h, 0)
            await h.send(source, order)
            await h.drained()
            await h.send(source, behind)
            await h.drained()
        # Published and committed once; only a replay of ``order`` could now repeat it.
        assert outputs(h) == [order.order_id, behind.order_id]
        assert handler.seen() == [order.order_id, behind.order_id]
        marked = await table.seen(h.group_id, [order.event_id, behind.event_id])
        assert marked == {behind.event_id}

    async def test_without_a_dedupe_table_a_redelivery_is_handled_again(
        self, harness_factory: HarnessFactory
    ) -> None:
        handler = Recorder(harness_factory.sink)
        source = harness_factory.source
        async with harness_factory(handler, processed=None) as h:
            a = order_on(h, 0)
            await h.send(source, a)
            await h.drained()
            await h.send(source, a)
            await h.drained()
        assert handler.seen() == [a.order_id, a.order_id]
        assert h.stats.duplicates == 0

    # -- failures in the handler -----------------------------------------------------------------
    async def test_a_failed_batch_goes_one_by_one_and_a_permanent_error_dead_letters(
        self, harness_factory: HarnessFactory
    ) -> None:
        handler = Recorder(harness_factory.sink)
        h = harness_factory(handler)
        first, poison, last = (order_on(h, 0) for _ in range(3))
        handler.failures[poison.order_id] = ValidationFailed
        for order in (first, poison, last):
            await h.send(harness_factory.source, order)
        async with h:
            await h.drained()
        # One batch call, then each record alone; the poison once: no retries for a permanent
        # error.
        assert [len(call) for call in handler.calls] == [3, 1, 1, 1]
        assert handler.seen()[3:] == [first.order_id, poison.order_id, last.order_id]
        assert outputs(h) == [first.order_id, last.order_id]
        [letter] = h.dead_letters()
        assert letter.original_offset == 1
        assert (letter.error_class, letter.attempts) == ("ValidationFailed", 1)
        assert h.stats.retries == 0
        assert (h.stats.handled, h.stats.dead_lettered) == (2, 1)
        # The outputs, the dead letter and the offsets went out in one commit.
        assert h.stats.commits == 1
        assert h.offset(part(h)) == 3

    async def test_a_dead_lettered_event_is_not_marked_so_a_replay_handles_it_once(
        self, harness_factory: HarnessFactory, db: Database
    ) -> None:
        processed = ProcessedEvents(db)
        handler = Recorder(harness_factory.sink)
        source = harness_factory.source
        async with harness_factory(handler, processed=processed) as h:
            poison, marker = order_on(h, 0), order_on(h, 0)
            handler.failures[poison.order_id] = PublishRejected
            await h.send(source, poison)
            await h.drained()
            await h.send(source, marker)  # fetched only once the poison's batch has finished
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

    # -- batch shapes and lineage ----------------------------------------------------------------
    async def test_a_whole_batch_handler_gets_the_fetch_in_one_call(
        self, harness_factory: HarnessFactory
    ) -> None:
        handler = WholeBatch(harness_factory.sink)
        h = harness_factory(handler)
        orders = [order_on(h, 2), order_on(h, 0), order_on(h, 1), order_on(h, 0)]
        for order in orders:
            await h.send(harness_factory.source, order)
        async with h:
            await h.drained()
        [call] = handler.calls
        # Every partition of the fetch, each in offset order (partitions in any order).
        where = [(d.partition, d.offset) for d in call]
        assert sorted(where) == [(0, 0), (0, 1), (1, 0), (2, 0)]
        assert [w for w in where if w[0] == 0] == [(0, 0), (0, 1)]
        assert sorted(outputs(h)) == sorted(o.order_id for o in orders)
        assert h.stats.batches == 1

    async def test_a_whole_batch_that_fails_falls_back_per_record(
        self, harness_factory: HarnessFactory
    ) -> None:
        handler = WholeBatch(harness_factory.sink)
        h = harness_factory(handler)
        good, poison = order_on(h, 0), order_on(h, 1)
        handler.failures[poison.order_id] = ValidationFailed
        await h.send(harness_factory.source, good)
        await h.send(harness_factory.source, poison)
        async with h:
            await h.drained()
        assert [len(call) for call in handler.calls] == [2, 1, 1]
        assert outputs(h) == [good.order_id]
        assert [letter.original_partition for letter in h.dead_letters()] == [1]

    async def test_an_output_travels_in_a_child_span_of_its_cause(
        self, harness_factory: HarnessFactory
    ) -> None:
        parent = new_traceparent()
        async with harness_factory(Recorder(harness_factory.sink)) as h:
            await h.send(harness_factory.source, order_on(h, 0), traceparent=parent)
            await h.drained()
        [out] = h.records(harness_factory.sink)
        child = header(out.headers, H_TRACEPARENT)
        assert child is not None
        _, parent_trace, parent_span, _ = parent.split("-")
        _, child_trace, child_span, _ = child.split("-")
        assert child_trace == parent_trace
        assert child_span != parent_span


class RuntimeHoldsCases:
    """What holds a partition back, and only that partition."""

    # -- a batch in hand -------------------------------------------------------------------------
    async def test_a_partition_is_paused_while_its_batch_is_in_hand(
        self, harness_factory: HarnessFactory
    ) -> None:
        handler = Recorder(harness_factory.sink)
        source = harness_factory.source
        async with harness_factory(handler) as h:
            slow, behind, other = order_on(h, 0), order_on(h, 0), order_on(h, 1)
            gate = handler.gates[slow.order_id] = asyncio.Event()
            await h.send(source, slow)
            await handler.called(1)
            await h.send(source, behind)
            await h.send(source, other)
            await h.until(lambda: other.order_id in outputs(h))
            # The other partition went on; the record behind the slow one was not even fetched.
            assert handler.seen() == [slow.order_id, other.order_id]
            gate.set()
            await h.drained()
        assert handler.seen() == [slow.order_id, other.order_id, behind.order_id]
        assert outputs(h) == [slow.order_id, behind.order_id, other.order_id]

    # -- timers ----------------------------------------------------------------------------------
    async def test_due_at_holds_its_partition_until_due_while_others_flow(
        self, harness_factory: HarnessFactory
    ) -> None:
        oven = Oven(harness_factory.sink)
        source = harness_factory.source
        async with harness_factory(oven) as h:
            now = utcnow()
            later = now + timedelta(seconds=2 * h.latency_s)
            first = OrderAccepted(order_id=h.key_for(0, prefix="first"), ready_by=now)
            late = OrderAccepted(order_id=h.key_for(0, prefix="late"), ready_by=later)
            behind = OrderAccepted(order_id=h.key_for(0, prefix="behind"), ready_by=now)
            for event in (first, late, behind):
                await h.send(source, event)
            await h.until(lambda: first.order_id in outputs(h))
            assert h.offset(part(h)) == 1  # handled up to the first event not due, committed
            other = OrderAccepted(order_id=h.key_for(1, prefix="other"), ready_by=now)
            await h.send(source, other)
            await h.until(lambda: other.order_id in outputs(h))
            assert utcnow() < later, "too slow to tell a hold from a pass"
            assert [order for order, _ in oven.handled] == [first.order_id, other.order_id]
            await h.drained()
        order_ids = [order for order, _ in oven.handled]
        assert order_ids == [first.order_id, other.order_id, late.order_id, behind.order_id]
        assert oven.handled[2][1] >= later  # not before it was due
        assert h.stats.deferred >= 1
        assert h.dead_letters() == []

    # -- retriable errors ------------------------------------------------------------------------
    async def test_a_transient_error_holds_only_its_partition(
        self, harness_factory: HarnessFactory
    ) -> None:
        handler = Recorder(harness_factory.sink)
        source = harness_factory.source
        settings = FAST_SETTINGS.model_copy(update={"retry_budget_s": 30.0})
        async with harness_factory(handler, settings=settings) as h:
            flaky, behind = order_on(h, 0), order_on(h, 0)
            handler.failures[flaky.order_id] = DeliveryFailed
            await h.send(source, flaky)
            await h.send(source, behind)
            await h.until(lambda: h.stats.retries >= 2)
            others = [order_on(h, 1), order_on(h, 2), order_on(h, 1)]
            for order in others:
                await h.send(source, order)
            await h.until(lambda: all(o.order_id in outputs(h) for o in others))
            # Still failing, still held at the flaky record, nothing of that partition out.
            assert flaky.order_id in handler.failures
            assert h.offset(part(h)) == 0
            assert sorted(outputs(h)) == sorted(o.order_id for o in others)
            retries = h.stats.retries
            await h.until(lambda: h.stats.retries > retries)  # and being retried meanwhile
            del handler.failures[flaky.order_id]  # the mail server is back
            await h.drained()
        assert outputs(h)[:2] == [flaky.order_id, behind.order_id]
        assert h.dead_letters() == []
        assert h.stats.errors_by_class["DeliveryFailed"] >= 3

    async def test_retries_back_off_exponentially_then_dead_letter_after_the_budget(
        self, harness_factory: HarnessFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="ingest.runtime")
        handler = Recorder(harness_factory.sink)
        source = harness_factory.source
        base, cap = 0.01, 0.04
        # Room for at least five attempts, each a fetch of the record again after its delay.
        budget = 2 * harness_factory.latency_s
        settings = FAST_SETTINGS.model_copy(
            update={"retry_base_delay_s": base, "retry_max_delay_s": cap, "retry_budget_s": budget}
        )
        async with harness_factory(handler, settings=settings) as h:
            doomed, behind = order_on(h, 0), order_on(h, 0)
            handler.failures[doomed.order_id] = DeliveryFailed
            await h.send(source, doomed)
            await h.until(lambda: bool(h.dead_letters()))
            await h.send(source, behind)
            await h.drained()

        [letter] = h.dead_letters()
        assert (letter.error_class, letter.original_offset) == ("DeliveryFailed", 0)
        attempts = handler.times
        # A record alone in its batch: one handler call per attempt.
        assert len(attempts) - 1 == letter.attempts  # the last call was ``behind``'s
        assert attempts[-2] - attempts[0] >= budget
        holds = [r.args for r in caplog.records if "partition held" in r.getMessage()]
        assert len(holds) == letter.attempts - 1 >= 4
        for n, args in enumerate(holds, start=1):
            assert isinstance(args, tuple)
            attempt, delay = args[2], args[4]
            assert isinstance(delay, float)
            assert attempt == n
            step = min(cap, base * 2 ** (n - 1))
            assert step / 2 <= delay <= step  # capped exponential, jittered down to half
            assert attempts[n] - attempts[n - 1] >= delay  # and honoured
        assert outputs(h) == [behind.order_id]  # the partition moved on after the dead letter
        assert h.stats.retries == letter.attempts - 1

    # -- shutdown --------------------------------------------------------------------------------
    async def test_shutdown_while_a_retry_waits_leaves_the_record_for_the_next_run(
        self, harness_factory: HarnessFactory
    ) -> None:
        failing = Recorder(harness_factory.sink)
        source = harness_factory.source
        settings = FAST_SETTINGS.model_copy(update={"retry_budget_s": 30.0})
        async with harness_factory(failing, settings=settings) as h1:
            done, stuck = order_on(h1, 0), order_on(h1, 0)
            failing.failures[stuck.order_id] = DeliveryFailed
            await h1.send(source, done)
            await h1.send(source, stuck)
            await h1.until(lambda: h1.stats.retries >= 2)
        assert h1.dead_letters() == []
        assert h1.offset(part(h1)) == 1  # past ``done``, not past ``stuck``

        healthy = Recorder(harness_factory.sink)
        async with harness_factory(healthy) as h2:
            await h2.drained()
        assert healthy.seen() == [stuck.order_id]
        assert outputs(h2) == [done.order_id, stuck.order_id]

    async def test_shutdown_during_a_failing_call_does_not_dead_letter_it(
        self, harness_factory: HarnessFactory
    ) -> None:
        failing = Recorder(harness_factory.sink)
        # No budget at all: without the shutdown rule the first failure would dead-letter.
        settings = FAST_SETTINGS.model_copy(update={"retry_budget_s": 0.0})
        h1 = harness_factory(failing, settings=settings)
        stuck = order_on(h1, 0)
        failing.failures[stuck.order_id] = DeliveryFailed
        gate = failing.gates[stuck.order_id] = asyncio.Event()
        async with h1:
            await h1.send(harness_factory.source, stuck)
            await failing.called(1)
            h1.runtime.request_stop()
            gate.set()
        assert h1.dead_letters() == []
        assert h1.offset(part(h1)) == 0

        healthy = Recorder(harness_factory.sink)
        async with harness_factory(healthy) as h2:
            await h2.drained()
        assert outputs(h2) == [stuck.order_id]

    async def test_shutdown_finishes_and_commits_a_batch_in_hand(
        self, harness_factory: HarnessFactory
    ) -> None:
        handler = Recorder(harness_factory.sink)
        h = harness_factory(handler)
        order = order_on(h, 0)
        gate = handler.gates[order.order_id] = asyncio.Event()
        async with h:
            await h.send(harness_factory.source, order)
            await handler.called(1)
            stopping = asyncio.create_task(h.stop())
            await asyncio.sleep(0)  # let stop() begin: it must wait for the batch, not drop it
            assert not stopping.done()
            gate.set()
            await stopping
        assert outputs(h) == [order.order_id]
        assert h.offset(part(h)) == 1

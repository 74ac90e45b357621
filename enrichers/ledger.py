"""The order ledger: every order of ``orders`` recorded in the feature state as it arrives, and
the gate that holds a batch's features back until every order placed before it is recorded.

Why. ``orders`` is keyed by order id, so one customer's orders (and one card's, used by several
customers) sit in different partitions, owned by different enrichment workers that run at
their own pace. Features read "the orders placed before this one"; computed from whatever the
workers had happened to store, they depended on who was ahead, and two workers could read a
customer's state at once and each miss the other's order. Two designs were weighed:

* a repartition topic keyed by customer id (Kafka Streams' way) makes one worker own each
  customer, but not each card, device or address (shared across customers), and its order
  per customer is still the order in which the re-keying workers happened to read the source
  partitions: neither makes the features independent of the number of workers;
* serialising snapshot-then-apply per entity in SQL removes the lost update, but not the race
  of *which* order comes first: an order read before an earlier one reached the state misses it.

What this does instead is the event-time way: make the state complete up to an order's
placed_at, then read it as of that instant.

* Every process that enriches runs one ``OrderLedger``: a plain consumer (no group) assigned
  every partition of ``orders``, from the enricher group's committed offsets. Each fetch is
  registered in the SQL state (``SqlFeatureState.register``: one row per order and entity,
  insert-or-ignore, so N ledgers write each order once). It is cheap and never waits on the
  models, so it stays near the head of the topic while the workers lag.
* ``wait(query)``, before a batch's state is read, returns once the ledger has registered the
  batch's orders and, for every partition of ``orders``, either an order placed after the
  batch's latest one or everything up to that partition's end as read after the batch's
  orders were fetched (by the round that registered them, or one begun after the ask).
  Orders are published in placed_at order (the outbox relays them as placed; a partition's
  records are in that order), so no order placed before the batch can turn up later.
* The state is then read in event time (``SqlFeatureState.snapshot``): an order sees exactly
  the orders placed before it, by (placed_at, order id), wherever they were registered.

So one worker and four compute the same features, order by order, as the training path does
on the sorted stream. The costs: a batch waits for the ledger's next fetch (a few hundred
milliseconds at most while orders flow); a partition stuck unread (its leader away) holds back
the batches of every partition until it answers or the wait times out (``TransientError``, the
runtime retries); each process reads the whole topic once more. Orders published out of
placed_at order by more than the ledger's lag can still be seen late; that is the one
assumption left, and the shop's outbox keeps it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ingest.codec import decode
from ingest.events import OrderPlaced
from ingest.reader import partitions_of
from models.feature_state import SqlFeatureState
from models.features import StateQuery
from pizzashop.core.errors import TransientError
from pizzashop.core.lifecycle import Resource

logger = logging.getLogger(__name__)

#: Order ids remembered as registered (the batches in flight are far fewer).
_REMEMBERED = 200_000
#: Rounds whose end offsets are remembered for the batches waiting (a wait spans a few).
_ROUNDS_REMEMBERED = 1_024


class LedgerBehind(TransientError):
    """The ledger did not catch up with a batch in time; the runtime retries the batch."""


class LedgerStalled(TransientError):
    """The ledger's follower completed no round in time; it is started again."""


class OrderLedger(Resource):
    """Registers every order of ``topic`` in ``store`` and gates batches on it (see the module
    docstring). Start it after ``store`` and before the runtime consumes; stop it after."""

    def __init__(
        self,
        store: SqlFeatureState,
        *,
        bootstrap: str,
        topic: str,
        group_id: str,
        client_options: Mapping[str, Any] | None = None,
        wait_s: float = 30.0,
        fetch_ms: int = 200,
        stall_s: float = 20.0,
    ) -> None:
        self._store = store
        self._bootstrap = bootstrap
        self._topic = topic
        self._group_id = group_id
        self._options = dict(client_options or {})
        self._wait_s = wait_s
        self._fetch_ms = fetch_ms
        self._stall_s = stall_s
        self._stopping = False
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._partitions: list[TopicPartition] = []
        self._latest: dict[TopicPartition, float] = {}  # placed_at of the last order registered
        self._at_end: dict[TopicPartition, bool] = {}
        self._round = 0  # fetch-register-check rounds completed
        self._checking = 0  # the round whose end check started last
        self._registered: OrderedDict[str, int] = OrderedDict()  # order id → its round
        # Per round, the ends it read; per partition, the offset registered up to.
        self._ends: OrderedDict[int, dict[TopicPartition, int]] = OrderedDict()
        self._done: dict[TopicPartition, int] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    async def _start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"order-ledger-{self._topic}")

    async def _stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await _settle(self._task, self._stall_s)
        if self._consumer is not None:
            await _settle(asyncio.ensure_future(self._consumer.stop()), self._stall_s)

    # -- the gate -------------------------------------------------------------------------------
    async def wait(self, query: StateQuery) -> None:
        """Return once every order placed up to ``query.until`` is registered."""
        asked = self._round
        check = self._checking + 1  # the first end check to begin after the ask
        try:
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._complete(query, check)),
                    self._wait_s,
                )
        except TimeoutError:
            behind = [
                f"{tp.partition}@{self._latest.get(tp, -math.inf):.3f}"
                for tp in self._partitions
                if not self._at_end.get(tp) and self._latest.get(tp, -math.inf) <= query.until
            ]
            raise LedgerBehind(
                f"the order ledger of {self._topic} did not reach {query.until:.3f} "
                f"within {self._wait_s}s ({self._round - asked} rounds since; partitions "
                f"behind, with their latest order: {', '.join(behind) or 'none'})"
            ) from None

    def _complete(self, query: StateQuery, check: int) -> bool:
        if not self._partitions:
            return False
        # End checks count only if made after the batch's orders were published: a round
        # reads the ends once it has fetched, so any round since the one that registered
        # them will do, or, for orders this ledger has not read (not yet, or registered
        # before it started and redelivered now), a round whose check began after the ask
        # (``check``, numbered in ``wait``).
        rounds = [self._registered.get(oid) for oid in query.order_ids]
        if all(r is not None for r in rounds):
            check = min(check, max((r for r in rounds if r is not None), default=check))
        elif self._round < check:
            return False
        # An order placed before the batch was published before it, so it is registered or
        # below a partition's end as read by such a check (``check``, or a later round's if
        # that one read none), and registered once the ledger is past that end; past the
        # batch's latest order a partition holds only later ones. Waiting for the ends of one
        # check rather than for every partition to be at its end in the same round answers
        # within a round or two while orders keep coming (the end moves on each round).
        ends = self._ends_since(check)
        return all(
            self._at_end[tp]
            or self._latest.get(tp, -math.inf) > query.until
            or (ends is not None and tp in ends and self._done.get(tp, -1) >= ends[tp])
            for tp in self._partitions
        )

    def _ends_since(self, check: int) -> dict[TopicPartition, int] | None:
        """The ends read by round ``check``, or by the first later round that read them."""
        if (ends := self._ends.get(check)) is not None:
            return ends
        return next((e for r, e in self._ends.items() if r >= check), None)

    # -- the loop -------------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = 0.5
        while True:
            started = self._round
            try:
                await self._watched(self._follow())
            except asyncio.CancelledError:
                if self._stopping:
                    raise
                # Not ours: a client call cancelled inside (aiokafka cancels its own tasks on
                # a dead connection). Ending here would leave the gate shut for good.
                logger.warning("order ledger of %s cancelled from inside", self._topic)
            except Exception:
                if self._round > started + 1:  # it had been following: a fresh failure
                    delay = 0.5
                logger.warning(
                    "order ledger of %s failed; starting again in %.1fs",
                    self._topic,
                    delay,
                    exc_info=True,
                )
            if self._consumer is not None:
                await _settle(asyncio.ensure_future(self._consumer.stop()), self._stall_s)
                self._consumer = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _watched(self, follow: Coroutine[Any, Any, None]) -> None:
        """Run ``follow`` while it completes rounds; a round that takes over ``stall_s`` stops
        it with ``LedgerStalled``, and the loop starts it again. A client call that never
        answered after a broker was killed (its connection half-dead) once wedged the ledger,
        and with it every batch, until the end of a chaos run."""
        task = asyncio.ensure_future(follow)
        try:
            while True:
                seen = self._round
                done, _ = await asyncio.wait({task}, timeout=self._stall_s)
                if done:
                    return task.result()
                if self._round == seen:
                    raise LedgerStalled(
                        f"the order ledger of {self._topic} made no progress in {self._stall_s}s"
                    )
        finally:
            if not task.done():
                task.cancel()
                await _settle(task, self._stall_s)

    async def _follow(self) -> None:
        partitions = await partitions_of(
            self._bootstrap, [self._topic], client_options=self._options
        )
        if not partitions:
            raise TransientError(f"topic {self._topic} has no partitions yet")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            client_id="pizzashop-order-ledger",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            **self._options,
        )
        self._consumer = consumer
        await consumer.start()
        consumer.assign(partitions)
        committed = await self._committed(partitions)
        for tp in partitions:
            offset = committed.get(tp)
            if offset is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)
        await self._round_done([], dict.fromkeys(partitions, False))
        while True:
            batches = await consumer.getmany(timeout_ms=self._fetch_ms, max_records=2_000)
            # The ends are read once the fetch is in hand, while it is registered (see
            # ``_complete``): a round takes the longer of the two, not both one after the other.
            self._checking = self._round + 1
            reading = asyncio.ensure_future(consumer.end_offsets(partitions))
            try:
                orders = await self._register(consumer, batches)
                ends = await reading
            finally:
                if not reading.done():
                    reading.cancel()
                    await _settle(reading, self._stall_s)
            done = {tp: await consumer.position(tp) for tp in partitions}
            at_end = {tp: done[tp] >= ends[tp] for tp in partitions}
            await self._round_done(orders, at_end, ends=ends, done=done)

    async def _register(
        self, consumer: AIOKafkaConsumer, batches: Mapping[TopicPartition, Sequence[Any]]
    ) -> list[tuple[TopicPartition, OrderPlaced]]:
        """The orders of a fetch, registered; on failure the consumer is set back to read the
        fetch again."""
        orders: list[tuple[TopicPartition, OrderPlaced]] = []
        for tp, records in batches.items():
            for record in records:
                if record.value is None:
                    continue
                try:
                    event = decode(record.value, list(record.headers))
                except Exception:  # the enricher's runtime dead-letters it; nothing to know
                    continue
                if isinstance(event, OrderPlaced):
                    orders.append((tp, event))
        if orders:
            try:
                await self._store.register([o for _, o in orders])
            except Exception:
                # read again from the first record of this fetch
                for tp, records in batches.items():
                    if records:
                        consumer.seek(tp, records[0].offset)
                raise
        return orders

    async def _round_done(
        self,
        orders: Sequence[tuple[TopicPartition, OrderPlaced]],
        at_end: Mapping[TopicPartition, bool],
        *,
        ends: Mapping[TopicPartition, int] | None = None,
        done: Mapping[TopicPartition, int] | None = None,
    ) -> None:
        """A fetch is registered and the ends checked since: tell the waiting batches.
        ``ends``: the end offsets the check read; ``done``: the positions registered up to
        (what this fetch returned, and all before)."""
        async with self._changed:
            self._partitions = sorted(at_end)
            self._round += 1
            if ends is not None:
                self._ends[self._round] = dict(ends)
                while len(self._ends) > _ROUNDS_REMEMBERED:
                    self._ends.popitem(last=False)
            for tp, offset in (done or {}).items():
                # a follower started again reads from the group's offsets: what it had
                # registered past them stays registered
                self._done[tp] = max(self._done.get(tp, -1), offset)
            for tp, order in orders:
                ts = order.placed_at.timestamp()
                self._latest[tp] = max(self._latest.get(tp, -math.inf), ts)
                self._registered[order.order_id] = self._round
                self._registered.move_to_end(order.order_id)
            while len(self._registered) > _REMEMBERED:
                self._registered.popitem(last=False)
            self._at_end = dict(at_end)
            self._changed.notify_all()

    async def _committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The enricher group's committed offsets: what it has not finished starts there."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap, client_id="pizzashop-order-ledger", **self._options
        )
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(self._group_id, partitions=partitions)
        finally:
            await admin.close()
        return {tp: meta.offset for tp, meta in found.items() if meta.offset >= 0}


async def _settle(task: asyncio.Future[Any], within_s: float) -> None:
    """Wait up to ``within_s`` for ``task`` to end, then leave it. ``asyncio.wait`` rather than
    ``await``: awaiting a task whose client call swallows its cancelling (aiokafka's stop on a
    dead connection) waits as long as it does, and that wedged the ledger in a chaos run."""
    await asyncio.wait({task}, timeout=within_s)
    # Read its outcome when it comes, so an error is not reported as never retrieved.
    task.add_done_callback(lambda done: done.cancelled() or done.exception())

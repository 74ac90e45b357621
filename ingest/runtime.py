"""The consumer runtime: fetch, decode, dedupe, handle, retry, dead-letter, commit, per partition.

Delivery semantics, for every batch of one partition (or of a whole fetch, for ``whole_batch``
handlers):

1. The partition is paused while its batch is in hand, so the fetch loop keeps polling (and
   heartbeating) for the others: a slow or failing partition holds back only itself.
2. Decode each record. Bytes that are not a known event, or an event that breaks the contract,
   become a dead letter: retrying cannot fix them. Other event types are passed over.
3. Drop events this group already handled (``ProcessedEvents``): a safety net for replays and
   for handlers whose effects are outside Kafka.
4. Events not yet due (``Handler.due_at``) stay for later: the partition is handled up to the
   first of them and paused until it is due.
5. Hand the rest to the handler. If the batch fails, fall back to one record at a time: a
   permanent error dead-letters the record; a retriable one (``retriable = True``, or any
   unknown exception) stops the partition at that record, which is fetched again after a capped
   exponential backoff with jitter, until ``retry_budget_s`` has passed since its first failure;
   then it is dead-lettered.
6. Commit: the handler's outputs, the dead letters and the offsets after the last finished
   record go out in ONE transaction (``Transport.commit``). Commits of concurrent partitions are
   grouped into one transaction. Then the handled events are marked in ``ProcessedEvents``.

A dead-lettered event is not marked: replaying it (``pizzashop dlq replay``) handles it once.
If anything below the handler fails (the commit, the dedupe table), the work is undone as a
whole: the partitions are rewound to their first record and tried again after a pause.

Shutdown: ``stop()`` sets an event; fetching stops, batches in hand finish and commit within the
deadline, a record waiting for a retry is left uncommitted for the next run: a shutdown never
dead-letters what might still succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ingest import tracing
from ingest._commits import PartitionsRevoked, TransactionCommitter
from ingest.codec import PLAIN_JSON, Serializer, decode, header
from ingest.consumer import Delivery, Handler, Output
from ingest.dedupe import ProcessedEvents
from ingest.dlq import H_REPLAY_GROUP, Reason, dead_letter_headers
from ingest.events import utcnow
from ingest.topics import DLQ_SUFFIX
from ingest.transport import Outgoing, Partition, Record, Transport
from pizzashop.core.errors import PizzashopError, ValidationFailed
from pizzashop.core.lifecycle import Resource
from pizzashop.core.settings import ConsumerSettings

logger = logging.getLogger(__name__)

Batches = dict[Partition, list[Record]]


#: Upper bounds of the handler-latency buckets, in seconds (Prometheus' default spread).
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Upper bounds of the batch-size buckets, in records.
SIZE_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass(slots=True)
class Buckets:
    """A histogram as Prometheus keeps one: a count per upper bound, plus sum and count."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                return


@dataclass(slots=True)
class ConsumerStats:
    handled: int = 0
    duplicates: int = 0
    skipped: int = 0
    retries: int = 0
    dead_lettered: int = 0
    deferred: int = 0
    batches: int = 0
    commits: int = 0
    errors_by_class: dict[str, int] = field(default_factory=dict)
    #: Seconds per handler call, and deliveries per call (batches and one-by-one tries alike).
    handle_seconds: Buckets = field(default_factory=lambda: Buckets(LATENCY_BOUNDS))
    batch_sizes: Buckets = field(default_factory=lambda: Buckets(SIZE_BOUNDS))


@dataclass(slots=True)
class _Failing:
    """A record whose handling failed with a retriable error: since when, how often."""

    since: float
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class _Hold:
    """Stop a partition at ``offset`` and fetch it again in ``delay_s``."""

    offset: int
    delay_s: float


@dataclass(slots=True)
class _Work:
    """What one batch produced, partition by partition."""

    outputs: list[Outgoing] = field(default_factory=list)
    letters: list[tuple[Partition, int, Outgoing]] = field(default_factory=list)
    handled: list[Delivery] = field(default_factory=list)
    holds: dict[Partition, _Hold] = field(default_factory=dict)


class ConsumerRuntime(Resource):
    """Runs one handler in one consumer group over a ``Transport``. ``run()`` loops."""

    def __init__(
        self,
        *,
        name: str,
        group_id: str,
        topics: Sequence[str],
        handler: Handler,
        transport: Transport,
        processed: ProcessedEvents | None,
        settings: ConsumerSettings,
        serializer: Serializer = PLAIN_JSON,
    ) -> None:
        self.name = name
        self.group_id = group_id
        self.stats = ConsumerStats()
        self._topics = list(topics)
        self._handler = handler
        self._transport = transport
        self._processed = processed
        self._settings = settings
        self._serializer = serializer
        self._stopping = asyncio.Event()
        self._busy: dict[Partition, asyncio.Task[None]] = {}
        self._held: dict[Partition, asyncio.TimerHandle] = {}
        # Partitions being revoked: the batches in hand stop at their next record, so the
        # revoke finishes within the group's rebalance timeout (or this member is dropped).
        self._revoking: set[Partition] = set()
        self._failing: dict[tuple[Partition, int], _Failing] = {}
        self._committer = TransactionCommitter(transport, name=name)
        self._handler_started = False

    # -- lifecycle -------------------------------------------------------------------------
    async def _start(self) -> None:
        await self._transport.start(self._topics, self)
        logger.info(
            "consumer %s started: group=%s topics=%s", self.name, self.group_id, self._topics
        )

    async def handler_start(self) -> None:
        """Warm the handler up (load models) before the first record, not on it."""
        if not self._handler_started:
            await self._handler.start()
            self._handler_started = True

    def request_stop(self) -> None:
        """Ask ``run()`` to stop fetching, finish the batches in hand and return."""
        self._stopping.set()

    async def _stop(self) -> None:
        self._stopping.set()
        await self._drain()
        for handle in self._held.values():
            handle.cancel()
        self._held.clear()
        await self._transport.stop()
        if self._handler_started:
            await self._handler.stop()

    async def run(self) -> None:
        """Fetch and dispatch until ``request_stop()``; then drain the batches in hand."""
        await self.start()
        await self.handler_start()
        settings = self._settings
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                fetch = asyncio.ensure_future(
                    self._transport.fetch(settings.batch_wait_ms / 1000, settings.batch_max)
                )
                await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await fetch
                    break
                try:
                    batches = fetch.result()
                except PizzashopError as exc:
                    logger.warning("consumer %s: fetch failed: %r", self.name, exc)
                    await self._sleep(settings.retry_base_delay_s)
                    continue
                if batches:
                    self._dispatch(batches)
        finally:
            stopping.cancel()
            await self._drain()

    async def _drain(self) -> None:
        tasks = set(self._busy.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self._settings.shutdown_deadline_s)
            for task in late:
                logger.warning("consumer %s: a batch did not finish in time; cancelled", self.name)
                task.cancel()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    # -- dispatch --------------------------------------------------------------------------
    def _dispatch(self, batches: Batches) -> None:
        groups = [batches] if self._handler.whole_batch else [{p: r} for p, r in batches.items()]
        for group in groups:
            self._transport.pause(group)
            epochs = self._committer.epochs(group)
            task = asyncio.create_task(self._work(group, epochs), name=f"{self.name}-batch")
            for part in group:
                self._busy[part] = task
            task.add_done_callback(functools.partial(self._done, parts=tuple(group)))
        self.stats.batches += len(groups)

    def _done(self, task: asyncio.Task[None], *, parts: tuple[Partition, ...]) -> None:
        for part in parts:
            if self._busy.get(part) is task:
                del self._busy[part]
                # A hold that came due before this callback ran (a delay of ~0: uvloop runs
                # due timers before callbacks already queued) found the partition busy and
                # left it paused; nothing else would resume it.
                if part not in self._held and not self._stopping.is_set():
                    self._transport.resume([part])
        if not task.cancelled() and task.exception() is not None:
            logger.error("consumer %s: batch task failed", self.name, exc_info=task.exception())

    def _release(self, part: Partition, hold: _Hold | None) -> None:
        """Let ``part`` be fetched again: now, or from ``hold.offset`` after ``hold.delay_s``."""
        if hold is None:
            self._transport.resume([part])
            return
        self._transport.seek(part, hold.offset)
        if self._stopping.is_set():
            return
        loop = asyncio.get_running_loop()
        self._held[part] = loop.call_later(hold.delay_s, self._unhold, part)

    def _unhold(self, part: Partition) -> None:
        self._held.pop(part, None)
        if part not in self._busy and not self._stopping.is_set():
            self._transport.resume([part])

    # -- one batch -------------------------------------------------------------------------
    async def _work(self, batches: Batches, epochs: Mapping[Partition, int]) -> None:
        try:
            work = await self._handle(batches)
            offsets = {
                part: (work.holds[part].offset if part in work.holds else records[-1].offset + 1)
                for part, records in batches.items()
            }
            letters = [out for part, offset, out in work.letters if offset < offsets[part]]
            await self._committer.commit([*work.outputs, *letters], offsets, epochs)
        except PartitionsRevoked:
            # Another member owns these partitions now and handles the batch again; its
            # effects here were idempotent, and nothing of it was published.
            logger.info("consumer %s: batch of revoked partitions dropped", self.name)
            return
        except Exception as exc:
            self._count_error(exc)
            logger.error(
                "consumer %s: %s failed below the handler, rewinding: %r",
                self.name,
                ", ".join(f"{p}@{r[0].offset}" for p, r in batches.items()),
                exc,
            )
            delay = self._settings.rewind_delay_s
            rewind = await self._rewind_offsets(batches, epochs)
            if rewind is None:
                return  # revoked or stopping: the next owner or run starts from the commit
            for part, records in batches.items():
                offset = rewind.get(part, records[0].offset)
                self._release(part, _Hold(offset, delay * random.uniform(0.5, 1.0)))
            return
        self.stats.commits = self._committer.commits
        self.stats.handled += len(work.handled)
        self.stats.dead_lettered += len(letters)
        await self._mark(work.handled)
        for part in batches:
            self._release(part, work.holds.get(part))

    async def _rewind_offsets(
        self, batches: Batches, epochs: Mapping[Partition, int]
    ) -> dict[Partition, int] | None:
        """Where a batch whose commit failed goes on from: the committed offsets, read back
        once stable. A commit can fail and still have happened (its answer lost to a broker
        restart); going back to the batch's start would then publish it twice. ``None`` when
        the partitions were revoked or the runtime stops before that is known."""
        while not self._stopping.is_set() and self._committer.epochs(batches) == epochs:
            try:
                return await self._transport.committed(batches)
            except Exception as exc:
                logger.warning(
                    "consumer %s: reading back the committed offsets failed (%r); retrying",
                    self.name,
                    exc,
                )
                await self._sleep(self._settings.rewind_delay_s)
        return None

    async def _handle(self, batches: Batches) -> _Work:
        work = _Work()
        fresh: dict[Partition, list[Delivery]] = {}
        for part, records in batches.items():
            fresh[part] = self._decode(part, records, work)
        await self._dedupe(fresh)
        self._cut_at_due(fresh, work)
        groups = (
            [[d for part in fresh for d in fresh[part]]] if self._handler.whole_batch else
            [fresh[part] for part in fresh]
        )  # fmt: skip
        for group in groups:
            if not group:
                continue
            if any(_part(d) in self._revoking for d in group):
                for delivery in group:  # left for the partitions' next owner
                    work.holds.setdefault(_part(delivery), _Hold(delivery.offset, 0.0))
                continue
            if len(group) == 1:
                # A batch of one is its own one-by-one: trying it twice in a row would repeat
                # its side effects and count its failure twice, with no backoff in between.
                await self._one_by_one(_part(group[0]), group, work)
                continue
            try:
                outputs = await self._call(group)
            except Exception as exc:
                self._count_error(exc)
                logger.warning(
                    "consumer %s: batch of %d from %s failed (%r); one by one",
                    self.name,
                    len(group),
                    group[0].where,
                    exc,
                )
                by_part: dict[Partition, list[Delivery]] = {}
                for delivery in group:
                    by_part.setdefault(Partition(delivery.topic, delivery.partition), []).append(
                        delivery
                    )
                for part, deliveries in by_part.items():
                    await self._one_by_one(part, deliveries, work)
            else:
                work.outputs += _encode(outputs, self._serializer)
                work.handled += group
                for delivery in group:
                    self._failing.pop((_part(delivery), delivery.offset), None)
        return work

    async def _call(self, deliveries: Sequence[Delivery]) -> Sequence[Output]:
        """The handler on ``deliveries``, timed, in a span per delivery that is the child of
        its record's producer; the outputs the handler emits carry it (ingest.tracing)."""
        began = time.perf_counter()
        try:
            with tracing.handling(self.name, self.group_id, deliveries):
                return await self._handler.handle(deliveries)
        finally:
            self.stats.handle_seconds.observe(time.perf_counter() - began)
            self.stats.batch_sizes.observe(len(deliveries))

    def _decode(self, part: Partition, records: list[Record], work: _Work) -> list[Delivery]:
        deliveries: list[Delivery] = []
        for record in records:
            replay_for = header(record.headers, H_REPLAY_GROUP)
            if replay_for is not None and replay_for != self.group_id:
                self.stats.skipped += 1  # a replay meant for another group
                continue
            try:
                event = decode(record.value, record.headers)
            except PizzashopError as exc:
                self._count_error(exc)
                logger.warning(
                    "consumer %s: %s@%d cannot be decoded, dead-lettering: %s",
                    self.name,
                    part,
                    record.offset,
                    exc,
                )
                reason: Reason = "contract" if isinstance(exc, ValidationFailed) else "undecodable"
                work.letters.append((part, record.offset, self._letter(record, exc, 1, reason)))
                continue
            if not self._handler.wants(event.event_type):
                self.stats.skipped += 1
                continue
            deliveries.append(
                Delivery(
                    record.topic,
                    record.partition,
                    record.offset,
                    event,
                    record.headers,
                    record.timestamp_ms,
                    record.key,
                    record.value,
                )
            )
        return deliveries

    async def _dedupe(self, fresh: dict[Partition, list[Delivery]]) -> None:
        """Drop events this group already handled, and copies within the batch itself."""
        every = [d for deliveries in fresh.values() for d in deliveries]
        if not every:
            return
        seen: set[str] = set()
        if self._processed is not None:
            seen = await self._processed.seen(self.group_id, (d.event.event_id for d in every))
        for part, deliveries in fresh.items():
            kept = []
            for delivery in deliveries:
                if delivery.event.event_id not in seen:
                    seen.add(delivery.event.event_id)
                    kept.append(delivery)
            self.stats.duplicates += len(deliveries) - len(kept)
            fresh[part] = kept

    def _cut_at_due(self, fresh: dict[Partition, list[Delivery]], work: _Work) -> None:
        now = utcnow()
        for part, deliveries in fresh.items():
            for index, delivery in enumerate(deliveries):
                due = self._handler.due_at(delivery.event)
                if due is not None and due > now:
                    wait = (due - now).total_seconds()
                    work.holds[part] = _Hold(delivery.offset, wait)
                    fresh[part] = deliveries[:index]
                    self.stats.deferred += 1
                    break

    async def _one_by_one(self, part: Partition, deliveries: list[Delivery], work: _Work) -> None:
        settings = self._settings
        for delivery in deliveries:
            if part in self._revoking:
                work.holds[part] = _Hold(delivery.offset, 0.0)  # the next owner goes on
                return
            key = (part, delivery.offset)
            try:
                outputs = await self._call([delivery])  # a span per try
            except Exception as exc:
                self._count_error(exc)
                failing = self._failing.setdefault(key, _Failing(since=time.monotonic()))
                failing.attempts += 1
                retriable = exc.retriable if isinstance(exc, PizzashopError) else True
                if retriable and self._stopping.is_set():
                    # Shutting down: leave the record for the next run rather than
                    # dead-letter something that may well succeed then.
                    work.holds[part] = _Hold(delivery.offset, 0.0)
                    return
                spent = time.monotonic() - failing.since
                if retriable and spent < settings.retry_budget_s:
                    delay = min(
                        settings.retry_max_delay_s,
                        settings.retry_base_delay_s * 2 ** (failing.attempts - 1),
                    ) * random.uniform(0.5, 1.0)  # jitter: many failing partitions do not align
                    self.stats.retries += 1
                    logger.info(
                        "consumer %s: %s attempt %d failed (%r); partition held %.2fs",
                        self.name,
                        delivery.where,
                        failing.attempts,
                        exc,
                        delay,
                    )
                    work.holds[part] = _Hold(delivery.offset, delay)
                    return
                logger.error(
                    "consumer %s: %s failed after %d attempt(s) in %.1fs, dead-lettering: %r",
                    self.name,
                    delivery.where,
                    failing.attempts,
                    spent,
                    exc,
                )
                del self._failing[key]
                record = Record(
                    delivery.topic,
                    delivery.partition,
                    delivery.offset,
                    delivery.key,
                    delivery.value,
                    delivery.headers,
                    delivery.timestamp_ms,
                )
                work.letters.append(
                    (
                        part,
                        delivery.offset,
                        self._letter(
                            record,
                            exc,
                            failing.attempts,
                            "retries-exhausted" if retriable else "handler-permanent",
                        ),
                    )
                )
            else:
                self._failing.pop(key, None)
                work.outputs += _encode(outputs, self._serializer)
                work.handled.append(delivery)

    def _letter(
        self, record: Record, error: BaseException, attempts: int, reason: Reason
    ) -> Outgoing:
        headers = dead_letter_headers(
            record.headers,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            group=self.group_id,
            error=error,
            attempts=attempts,
            reason=reason,
        )
        return Outgoing(record.topic + DLQ_SUFFIX, record.key, record.value, headers)

    # -- commit ----------------------------------------------------------------------------
    async def _mark(self, handled: list[Delivery]) -> None:
        if self._processed is None or not handled:
            return
        try:
            await self._processed.mark(self.group_id, (d.event.event_id for d in handled))
        except Exception:
            # Committed already; only a later replay of these events could repeat them.
            logger.warning("consumer %s: marking handled events failed", self.name, exc_info=True)

    def _count_error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.stats.errors_by_class[name] = self.stats.errors_by_class.get(name, 0) + 1

    # -- rebalances (RebalanceListener) ------------------------------------------------------
    async def revoked(self, partitions: frozenset[Partition]) -> None:
        # Commit what the batches in hand have done (they stop at their next record) before
        # the partitions go to another member.
        self._revoking |= partitions
        try:
            tasks = {self._busy[p] for p in partitions if p in self._busy}
            if tasks:
                await asyncio.wait(tasks, timeout=self._settings.shutdown_deadline_s)
            # A batch still in hand past the wait must not commit (``ingest._commits``), and
            # one already committing must be through before the partitions go.
            self._committer.revoke(partitions)
            await self._committer.settle(self._settings.shutdown_deadline_s)
        finally:
            self._revoking -= partitions
        for part in partitions:
            if (handle := self._held.pop(part, None)) is not None:
                handle.cancel()
        self._failing = {k: v for k, v in self._failing.items() if k[0] not in partitions}

    async def assigned(self, partitions: frozenset[Partition]) -> None:
        logger.info("consumer %s assigned %s", self.name, sorted(map(str, partitions)))


def _part(delivery: Delivery) -> Partition:
    return Partition(delivery.topic, delivery.partition)


def _encode(outputs: Sequence[Output], serializer: Serializer) -> list[Outgoing]:
    encoded = []
    for output in outputs:
        record = serializer.encode(output.topic, output.event, output.traceparent)
        encoded.append(Outgoing(output.topic, record.key, record.value, record.headers))
    return encoded

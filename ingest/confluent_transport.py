"""The runtime's transport on confluent-kafka (librdkafka): exactly-once by transactions.

The same contract as ``ingest.kafka_transport``: a ``read_committed`` group consumer fetches,
and each commit writes its records and the consumed offsets in ONE Kafka transaction. Offsets
go in with ``send_offsets_to_transaction(offsets, consumer_group_metadata)``, so the broker
checks the consumer's generation too (KIP-447): a member that lost its partitions in a
rebalance cannot commit over its successor. librdkafka fetches a new partition's committed
offset with ``require_stable`` itself, so no extra step is needed for that here.

Threads. librdkafka calls block, so none runs on the event loop, and confluent-kafka lets one
call at a time into a consumer: any call from another thread (``pause``, ``seek``,
``consumer_group_metadata``, ``commit``) waits until the consumer thread's ``poll`` returns,
rebalance callbacks included. So *every* consumer call runs on the consumer's own thread:
``pause``/``resume``/``seek`` are queued and applied there before the next fetch (the runtime
always fetches after them), the group metadata a transaction needs is taken there when
partitions are assigned, and commits of offsets alone go through the transactional producer
too. A rebalance callback hands the listener's coroutine to the loop and waits for it; the
listener's commits run on the producer's thread, so "finish and commit before the partitions
go" cannot deadlock.

librdkafka keeps a partition paused by the application across a rebalance, where Kafka's own
clients (and aiokafka) start a newly assigned partition unpaused, as the runtime expects: a
partition paused when it was revoked is resumed when it comes back. The assign callback assigns
the whole new assignment itself: the eager protocol of librdkafka's default assignors (a
``cooperative-sticky`` ``partition.assignment.strategy`` in ``client_options`` would need
``incremental_assign`` there).

Failures. After any failure inside a transaction the producer is dropped and a new one is made
under the same ``transactional.id``: ``init_transactions`` fences the old epoch and aborts
whatever it left open. A librdkafka call that outlives its own timeout by ``_GRACE_S`` (librdkafka
#5456: ``send_offsets_to_transaction`` can wait for ever for a group coordinator it cached) is
abandoned with its thread and its producer, which the next producer fences. Threads are
daemons and every wait in ``stop`` is bounded, so a stuck call never holds a process that is
told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from ingest.transport import Outgoing, Partition, RebalanceListener, Record
from pizzashop.core.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long past its own timeout a librdkafka call may run before it is given up for stuck.
_GRACE_S = 5.0
#: How long a rebalance callback waits for the runtime's listener (it bounds its own waits).
_LISTENER_TIMEOUT_S = 60.0
#: How long a fetch waits, after its first record, for the records that came with it.
_LINGER_S = 0.005
#: The same for the first fetch after an assignment.
_FIRST_LINGER_S = 0.25
#: How long ``stop`` waits for each client to close.
_CLOSE_TIMEOUT_S = 5.0

_Op = tuple[Literal["pause", "resume", "seek"], Partition, int]


class _Stuck(Exception):
    """A librdkafka call did not return within its timeout and the grace after it."""


class _Worker:
    """One daemon thread running one client's blocking calls, in order, off the event loop.

    A daemon, unlike a ``ThreadPoolExecutor``'s threads (joined at exit): a call librdkafka
    never returns from must not keep the process alive after it was told to stop.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, fn: Callable[..., T], *args: Any, timeout_s: float) -> T:
        """``fn(*args)`` on this thread; ``_Stuck`` if it has not returned after ``timeout_s``
        (it goes on running: the caller must abandon this worker then)."""
        self._start()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._calls.put((fn, args, loop, done))
        try:
            return await asyncio.wait_for(asyncio.shield(done), timeout_s)
        except TimeoutError:
            raise _Stuck(f"{getattr(fn, '__name__', fn)} on {self._name}") from None

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """``fn(*args)`` on this thread after what is queued, not waited for (errors logged)."""
        self._start()
        self._calls.put((fn, args, None, None))

    def close(self) -> None:
        """Let the thread end once the calls queued so far have run."""
        self._calls.put(None)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, args, loop, done = call
            del call
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the awaiting coroutine
                result, error = None, exc
            del fn, args
            if loop is None:
                if error is not None:
                    logger.warning("%s: %r", self._name, error)
            else:
                # A closed loop has nobody waiting any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, done, result, error)
            del result, error, done, loop


def _settle(done: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if done.done():  # the waiter was cancelled
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


class _Transactions:
    """The transactional producer and the thread it lives on; replaced whole when stuck."""

    def __init__(self, name: str) -> None:
        self.worker = _Worker(name)
        self.producer: Producer | None = None


class ConfluentTransport:
    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        client_id: str,
        transactional_id: str,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
        max_poll_interval_ms: int,
        transaction_timeout_ms: int,
        request_timeout_ms: int = 30_000,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._group_id = group_id
        self._client_id = client_id
        common = dict(client_options or {})
        librdkafka_log = logging.getLogger(f"{__name__}.librdkafka")
        self._consumer_config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "client.id": client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": heartbeat_interval_ms,
            # librdkafka refuses a poll interval below the session timeout.
            "max.poll.interval.ms": max(max_poll_interval_ms, session_timeout_ms),
            "logger": librdkafka_log,
            **common,
        }
        self._producer_config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": f"{client_id}-tx",
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            # The Java client's (and aiokafka's) partitioner: one key lands on one partition
            # whichever client wrote it (librdkafka's default is CRC32).
            "partitioner": "murmur2_random",
            "transaction.timeout.ms": transaction_timeout_ms,
            # librdkafka wants a request to time out within the transaction's timeout.
            "socket.timeout.ms": min(request_timeout_ms, transaction_timeout_ms),
            "logger": librdkafka_log,
            **common,
        }
        self._call_timeout_s = request_timeout_ms / 1000
        # A step of a transaction that takes longer than the transaction may live is pointless:
        # the broker aborts it meanwhile.
        self._txn_step_s = min(request_timeout_ms, transaction_timeout_ms) / 1000
        self._consumer: Consumer | None = None
        self._consumer_thread = _Worker(f"cfk-consumer-{client_id}")
        self._txn = _Transactions(f"cfk-producer-{client_id}")
        self._lock = threading.Lock()  # guards the three below (loop and consumer thread)
        self._assigned: frozenset[Partition] = frozenset()
        self._ops: list[_Op] = []
        self._group_metadata: object | None = None
        self._paused: set[Partition] = set()  # consumer thread only
        self._fresh = False  # consumer thread only: no fetch since the last assignment
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: RebalanceListener | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        if self._closed:
            raise RuntimeError("a stopped ConfluentTransport cannot be started again")
        self._loop = asyncio.get_running_loop()
        self._listener = listener
        consumer = Consumer(self._consumer_config)
        try:
            # librdkafka retries an unreachable broker for ever; start() should fail instead,
            # as the aiokafka transport's does.
            await self._on_consumer_thread(consumer.list_topics, None, self._call_timeout_s)
            await self._on_consumer_thread(
                consumer.subscribe,
                list(topics),
                self._on_assign,
                self._on_revoke,
                self._on_lost,
            )
        except (KafkaException, _Stuck) as exc:
            await self._close_consumer(consumer)
            raise BrokerUnavailable(f"consumer {self._group_id} cannot reach Kafka: {exc}") from exc
        self._consumer = consumer

    async def stop(self) -> None:
        """Leave the group (the revoke callback, which may still commit, runs meanwhile), then
        drop the producer; each bounded, so a stuck librdkafka call cannot hold the shutdown."""
        if self._closed:
            return
        self._closed = True
        if self._consumer is not None:
            await self._close_consumer(self._consumer)
            self._consumer = None
        self._consumer_thread.close()
        txn = self._txn
        try:
            await txn.worker.run(_discard, txn, timeout_s=_CLOSE_TIMEOUT_S)
        except _Stuck:
            logger.warning("consumer %s: the transactional producer did not close", self._group_id)
        txn.worker.close()

    async def _close_consumer(self, consumer: Consumer) -> None:
        try:
            await self._consumer_thread.run(consumer.close, timeout_s=_CLOSE_TIMEOUT_S)
        except _Stuck:
            logger.warning("consumer %s did not leave its group in time", self._group_id)
        except KafkaException as exc:
            logger.warning("consumer %s: close failed: %s", self._group_id, exc)

    async def _on_consumer_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._consumer_thread.run(fn, *args, timeout_s=self._call_timeout_s + _GRACE_S)

    # -- fetching --------------------------------------------------------------------------
    async def fetch(self, timeout_s: float, max_records: int) -> dict[Partition, list[Record]]:
        consumer = self._ready_consumer()
        try:
            messages = await self._on_consumer_thread(
                self._consume, consumer, timeout_s, max_records
            )
        except _Stuck as exc:
            raise BrokerUnavailable(f"consumer {self._group_id}: fetch stuck: {exc}") from exc
        fetched: dict[Partition, list[Record]] = {}
        for m in messages:
            if (error := m.error()) is not None:
                if error.fatal():
                    raise BrokerUnavailable(f"consumer {self._group_id}: {error}")
                logger.warning("consumer %s: %s", self._group_id, error)
                continue
            topic, partition = m.topic(), m.partition()
            assert topic is not None and partition is not None
            fetched.setdefault(Partition(topic, partition), []).append(
                Record(
                    topic,
                    partition,
                    m.offset() or 0,
                    m.key(),
                    m.value(),
                    list(m.headers() or ()),  # type: ignore[arg-type]
                    m.timestamp()[1],
                )
            )
        return fetched

    def _consume(self, consumer: Consumer, timeout_s: float, max_records: int) -> list[Message]:
        """Apply the queued pauses, resumes and seeks; then whatever is ready now, else wait up
        to ``timeout_s`` for the first record and take what comes with it (``consume(n, t)``
        alone would wait for all ``n`` or the timeout)."""
        self._apply_ops(consumer)
        messages = consumer.consume(max_records, 0)
        linger = 0.0
        if not messages:
            first = consumer.poll(timeout_s)
            if first is None:
                return []
            # librdkafka hands over one fetch response partition by partition: what came
            # with the first record may be a moment behind it.
            messages, linger = [first], _LINGER_S
        if self._fresh:
            # After an assignment the partitions start one by one (each looks up its own
            # starting offset): the first fetch waits longer for the others, so what was
            # waiting for this member comes in one batch, as with aiokafka.
            linger, self._fresh = max(timeout_s, _FIRST_LINGER_S), False
        if linger and len(messages) < max_records:
            messages += consumer.consume(max_records - len(messages), linger)
        return messages

    def pause(self, partitions: Iterable[Partition]) -> None:
        self._queue_ops("pause", partitions)

    def resume(self, partitions: Iterable[Partition]) -> None:
        self._queue_ops("resume", partitions)

    def seek(self, partition: Partition, offset: int) -> None:
        self._queue_ops("seek", [partition], offset)

    def _queue_ops(
        self, kind: Literal["pause", "resume", "seek"], parts: Iterable[Partition], offset: int = 0
    ) -> None:
        """Applied on the consumer thread before the next fetch; ignored for partitions that
        are not ours by then."""
        self._ready_consumer()
        with self._lock:
            self._ops += [(kind, p, offset) for p in parts if p in self._assigned]

    def _apply_ops(self, consumer: Consumer) -> None:
        with self._lock:
            ops, self._ops = self._ops, []
            assigned = self._assigned
        for kind, part, offset in ops:
            if part not in assigned:
                continue
            tp = TopicPartition(part.topic, part.partition, offset)
            try:
                if kind == "pause":
                    consumer.pause([tp])
                    self._paused.add(part)
                elif kind == "resume":
                    consumer.resume([tp])
                    self._paused.discard(part)
                else:
                    consumer.seek(tp)
            except KafkaException as exc:
                # Not fetching yet: the partition starts from its committed offset anyway.
                logger.warning(
                    "consumer %s: %s %s@%d refused: %s", self._group_id, kind, part, offset, exc
                )

    def assignment(self) -> frozenset[Partition]:
        with self._lock:
            return self._assigned

    def _ready_consumer(self) -> Consumer:
        if self._consumer is None:
            raise BrokerUnavailable("the confluent transport is not started")
        return self._consumer

    # -- committing ------------------------------------------------------------------------
    async def committed(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        """librdkafka asks for stable offsets (KIP-447) when reading ``read_committed``."""
        consumer = self._ready_consumer()
        tps = [TopicPartition(p.topic, p.partition) for p in partitions]
        try:
            found = await self._on_consumer_thread(consumer.committed, tps, self._call_timeout_s)
        except (_Stuck, KafkaException) as exc:
            raise BrokerUnavailable(f"consumer {self._group_id}: committed offsets: {exc}") from exc
        return {
            Partition(tp.topic, tp.partition): tp.offset
            for tp in found
            if tp.offset is not None and tp.offset >= 0
        }

    async def commit(self, records: Sequence[Outgoing], offsets: Mapping[Partition, int]) -> None:
        """One transaction, offsets alone included (a consumer commit would have to wait for
        the consumer thread, which may be inside a rebalance callback waiting for this)."""
        self._ready_consumer()
        if not records and not offsets:
            return
        with self._lock:
            metadata = self._group_metadata
        if offsets and metadata is None:
            raise BrokerUnavailable(f"consumer {self._group_id} has no group generation yet")
        tps = [TopicPartition(p.topic, p.partition, o) for p, o in offsets.items()]
        txn = self._txn
        step = self._txn_step_s + _GRACE_S
        try:
            await txn.worker.run(self._begin, txn, records, timeout_s=self._call_timeout_s + step)
            if tps:
                await txn.worker.run(self._send_offsets, txn, tps, metadata, timeout_s=step)
            await txn.worker.run(self._commit, txn, timeout_s=step)
        except _Stuck as exc:
            # Its thread and producer are left behind; the next producer fences them.
            logger.error(
                "consumer %s: %s; the transactional producer is abandoned", self._group_id, exc
            )
            self._txn = _Transactions(f"cfk-producer-{self._client_id}")
            txn.worker.close()
            raise BrokerUnavailable(f"transaction stuck: {exc}") from exc
        except BaseException as exc:
            # Whatever state the producer is in now, a fresh one under the same id is sound.
            txn.worker.submit(_discard, txn)
            if isinstance(exc, KafkaException):
                raise BrokerUnavailable(f"transaction failed: {exc}") from exc
            raise

    def _begin(self, txn: _Transactions, records: Sequence[Outgoing]) -> None:
        if txn.producer is None:
            producer = Producer(self._producer_config)
            try:
                producer.init_transactions(self._call_timeout_s)
            except BaseException:
                _drop(producer)
                raise
            txn.producer = producer
        txn.producer.begin_transaction()
        for r in records:
            _produce(txn.producer, r)

    def _send_offsets(
        self, txn: _Transactions, offsets: list[TopicPartition], metadata: Any
    ) -> None:
        assert txn.producer is not None
        txn.producer.send_offsets_to_transaction(offsets, metadata, self._txn_step_s)

    def _commit(self, txn: _Transactions) -> None:
        assert txn.producer is not None
        txn.producer.commit_transaction(self._txn_step_s)

    # -- rebalances (on the consumer thread, inside consume/close) --------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = frozenset(Partition(tp.topic, tp.partition) for tp in partitions)
        consumer.assign(partitions)
        self._fresh = True
        if stale := [p for p in parts if p in self._paused]:
            # Paused under an earlier ownership: librdkafka would keep it paused for ever.
            consumer.resume([TopicPartition(p.topic, p.partition) for p in stale])
            self._paused.difference_update(stale)
        with self._lock:
            self._assigned = self._assigned | parts
            self._ops = [op for op in self._ops if op[1] not in parts]
            # The generation this assignment belongs to: transactions commit under it.
            self._group_metadata = consumer.consumer_group_metadata()
        self._call_listener("assigned", parts)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = frozenset(Partition(tp.topic, tp.partition) for tp in partitions)
        try:
            self._call_listener("revoked", parts)
        finally:
            with self._lock:
                self._assigned = self._assigned - parts
                # Pauses, resumes and seeks of the batches the listener finished are moot.
                self._ops = [op for op in self._ops if op[1] not in parts]

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Already someone else's: the runtime finishes what it holds; its commits will fail.
        self._on_revoke(consumer, partitions)

    def _call_listener(self, hook: str, parts: frozenset[Partition]) -> None:
        if self._listener is None or self._loop is None or not parts:
            return
        method: Callable[[frozenset[Partition]], Coroutine[Any, Any, None]] = getattr(
            self._listener, hook
        )
        try:
            asyncio.run_coroutine_threadsafe(method(parts), self._loop).result(_LISTENER_TIMEOUT_S)
        except Exception:  # librdkafka must not see it; the rebalance goes on regardless
            logger.exception("consumer %s: rebalance listener %s failed", self._group_id, hook)


def _produce(producer: Producer, record: Outgoing) -> None:
    # The stubs want an invariant list of (str, str | bytes | None); ours is narrower.
    headers: Any = record.headers or None
    while True:
        try:
            producer.produce(record.topic, record.value, record.key, headers=headers)
            return
        except BufferError:  # the local queue is full: let deliveries drain it
            producer.poll(0.05)


def _discard(txn: _Transactions) -> None:
    producer, txn.producer = txn.producer, None
    if producer is not None:
        _drop(producer)


def _drop(producer: Producer) -> None:
    """Abort what it left open if it still can; the next producer fences it either way.

    Not ``close()``: that aborts and flushes with no timeout at all. The handle is destroyed
    when its last reference goes, here on the producer's thread.
    """
    try:
        producer.abort_transaction(_GRACE_S)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if not (isinstance(error, KafkaError) and error.code() == KafkaError._STATE):
            logger.debug("aborting a failed transactional producer raised", exc_info=True)
    producer.purge()


__all__ = ["ConfluentTransport"]

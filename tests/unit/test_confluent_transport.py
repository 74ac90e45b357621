"""The confluent-kafka transport's own recovery, without a broker: a librdkafka call that never
returns (librdkafka #5456: ``send_offsets_to_transaction`` past its timeout, the chaos run's
workers that hung on SIGTERM) must cost one failed commit, not the process.

The librdkafka calls are replaced by stand-ins here; ``tests/integration/test_runtime_confluent.py``
runs the transport on a real Kafka."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from ingest import confluent_transport
from ingest.confluent_transport import ConfluentTransport
from ingest.transport import Outgoing, Partition
from pizzashop.core.errors import BrokerUnavailable

P0 = Partition("orders", 0)
RECORD = Outgoing("order-events", b"k", b"v", [])


class _Calls:
    """Stand-ins for the transaction's librdkafka steps; ``send_offsets`` hangs while
    ``hang`` is clear, as librdkafka's does for a coordinator it cached before a restart."""

    def __init__(self) -> None:
        self.hang = threading.Event()
        self.threads: list[int] = []
        self.commits = 0

    def begin(self, txn: Any, records: Any) -> None:
        self.threads.append(threading.get_ident())
        txn.producer = object()

    def send_offsets(self, txn: Any, offsets: Any, metadata: Any) -> None:
        self.hang.wait()

    def commit(self, txn: Any) -> None:
        self.commits += 1


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> _Calls:
    calls = _Calls()
    monkeypatch.setattr(confluent_transport, "_GRACE_S", 0.2)
    monkeypatch.setattr(confluent_transport, "_CLOSE_TIMEOUT_S", 0.2)
    monkeypatch.setattr(ConfluentTransport, "_begin", lambda self, *a: calls.begin(*a))
    monkeypatch.setattr(
        ConfluentTransport, "_send_offsets", lambda self, *a: calls.send_offsets(*a)
    )
    monkeypatch.setattr(ConfluentTransport, "_commit", lambda self, *a: calls.commit(*a))
    monkeypatch.setattr(confluent_transport, "_discard", lambda txn: None)
    return calls


def _started() -> ConfluentTransport:
    transport = ConfluentTransport(
        bootstrap="127.0.0.1:9",
        group_id="g",
        client_id="c",
        transactional_id="g.c",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_poll_interval_ms=300_000,
        transaction_timeout_ms=10_000,
        request_timeout_ms=100,
    )
    # What a started member has: a consumer and the generation of its assignment.
    transport._consumer = object()  # type: ignore[assignment]
    transport._group_metadata = object()
    transport._assigned = frozenset({P0})
    return transport


async def test_a_call_that_never_returns_fails_its_commit_and_the_next_uses_a_new_producer(
    calls: _Calls,
) -> None:
    transport = _started()
    began = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="stuck"):
        await transport.commit([RECORD], {P0: 1})
    assert time.monotonic() - began < 2.0  # the call's timeout (0.1 s) and the grace (0.2 s)
    calls.hang.set()  # the next one goes through, on another thread than the stuck one
    await transport.commit([RECORD], {P0: 1})
    assert calls.commits == 1
    assert len(set(calls.threads)) == 2
    transport._consumer = None
    await transport.stop()


async def test_stop_does_not_wait_for_a_stuck_call(calls: _Calls) -> None:
    transport = _started()
    commit = asyncio.create_task(transport.commit([RECORD], {P0: 1}))
    await asyncio.sleep(0.05)  # in send_offsets_to_transaction, for ever
    transport._consumer = None  # nothing to close but the producer
    began = time.monotonic()
    await transport.stop()
    assert time.monotonic() - began < 1.0
    with pytest.raises(BrokerUnavailable):
        await commit
    stuck = [t for t in threading.enumerate() if t.name == "cfk-producer-c" and t.is_alive()]
    assert stuck and all(t.daemon for t in stuck)  # it cannot hold the process at exit
    calls.hang.set()


def test_pause_resume_and_seek_of_partitions_not_ours_are_ignored() -> None:
    transport = _started()
    transport.pause([P0, Partition("orders", 1)])
    transport.seek(Partition("orders", 2), 5)
    assert transport._ops == [("pause", P0, 0)]

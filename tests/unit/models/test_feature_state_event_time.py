"""The SQL feature state read in event time: workers that split the orders any way compute
what one worker computes over the sorted stream; a prune folds what no window needs; the
order ledger's gate holds a batch until every order placed before it is known."""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import sqlalchemy as sa
from aiokafka import TopicPartition
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from enrichers.ledger import LedgerBehind, OrderLedger
from ingest.events import OrderPlaced
from models.feature_state import (
    FeatureBuilder,
    SqlFeatureState,
    customers_table,
    events_table,
    features_for_stream,
)
from models.features import WINDOW_LONG_S, OrderFrame, state_query
from models.simulator import SimulatedStream
from pizzashop.core.database import Database
from pizzashop.core.errors import TransientError
from tests.support.db import POSTGRES_URL, db_params


@pytest.fixture(params=db_params())
async def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fs.db'}"
        return
    assert POSTGRES_URL is not None
    # a database of this test's own, migrated like the shop's (the server is shared)
    name = f"pizzashop_fs_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        async with Database(url):
            pass
        yield url
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


def _partition(order: OrderPlaced, partitions: int) -> int:
    return zlib.crc32(order.order_id.encode()) % partitions


async def _work(
    store: SqlFeatureState, orders: Sequence[OrderPlaced], batch: int
) -> dict[str, np.ndarray]:
    builder = FeatureBuilder(store)
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(orders), batch):
        part = orders[start : start + batch]
        got = await builder.transform(part)
        out.update(zip((o.order_id for o in part), got, strict=True))
    return out


@pytest.mark.parametrize("schedule", ["latest-first", "concurrent"])
async def test_workers_splitting_the_orders_compute_what_one_does(
    stream: SimulatedStream, state_url: str, schedule: str
) -> None:
    orders = list(stream.orders[:400])
    reference = features_for_stream(orders)  # one process, the sorted stream
    workers = 4
    parts = [[o for o in orders if _partition(o, workers) == w] for w in range(workers)]
    async with SqlFeatureState(state_url) as store:
        # The ledger knows every order (registered in an order of its own, not placed order)...
        shuffled = sorted(orders, key=lambda o: zlib.crc32(o.event_id.encode()))
        for start in range(0, len(shuffled), 70):
            await store.register(shuffled[start : start + 70])
        # ...and the workers, each with its own partitions and batch size, run either one
        # after the other with the latest partitions first, or all at once.
        if schedule == "latest-first":
            found = [await _work(store, parts[w], 5 + 11 * w) for w in reversed(range(workers))]
        else:
            found = await asyncio.gather(
                *(_work(store, parts[w], 5 + 11 * w) for w in range(workers))
            )
    got = {oid: row for part in found for oid, row in part.items()}
    for i, order in enumerate(orders):
        np.testing.assert_array_equal(got[order.order_id], reference[i], err_msg=order.order_id)


async def test_without_the_ledger_a_lagging_worker_misses_earlier_orders(
    stream: SimulatedStream, tmp_path: Path
) -> None:
    """The gate is what makes it exact: unregistered earlier orders are simply not there."""
    orders = list(stream.orders[:400])
    reference = features_for_stream(orders)
    parts = [[o for o in orders if _partition(o, 4) == w] for w in range(4)]
    async with SqlFeatureState(f"sqlite+aiosqlite:///{tmp_path / 'fs.db'}") as store:
        found = [await _work(store, parts[w], 50) for w in reversed(range(4))]
    got = {oid: row for part in found for oid, row in part.items()}
    wrong = [o for i, o in enumerate(orders) if not np.array_equal(got[o.order_id], reference[i])]
    assert wrong


async def test_prune_folds_what_no_window_needs(stream: SimulatedStream, state_url: str) -> None:
    base = stream.orders[:300]
    start = base[0].placed_at
    # the same customers and cards, spread over 100 hours so that most rows age out
    orders = [
        o.model_copy(update={"placed_at": start + timedelta(minutes=20 * i)})
        for i, o in enumerate(base)
    ]
    reference = features_for_stream(orders)
    parts, folded = [], 0
    async with SqlFeatureState(state_url) as store:
        builder = FeatureBuilder(store)
        for first in range(0, len(orders), 50):
            batch = orders[first : first + 50]
            parts.append(await builder.transform(batch))
            # as far as a prune may go: one window before the next order
            cutoff = batch[-1].placed_at.timestamp() - WINDOW_LONG_S
            folded += await store.prune(cutoff)
            async with store.engine.connect() as conn:
                oldest = await conn.scalar(sa.select(sa.func.min(events_table.c.ts)))
                folded_customers = await conn.scalar(
                    sa.select(sa.func.count()).select_from(customers_table)
                )
            assert oldest is None or oldest >= cutoff  # nothing older than the window is kept
        # a redelivery long after its rows were folded: the same answer, nothing counted twice
        again = await builder.transform(orders[:50])
    assert folded > 0 and folded_customers
    np.testing.assert_array_equal(np.concatenate(parts), reference)
    np.testing.assert_array_equal(again, reference[:50])


async def test_the_gate_waits_until_every_partition_is_past_the_batch(
    stream: SimulatedStream,
) -> None:
    orders = list(stream.orders[:6])
    p0, p1 = TopicPartition("orders", 0), TopicPartition("orders", 1)
    store = cast(Any, None)  # the gate never touches the store

    def ledger(wait_s: float) -> OrderLedger:
        return OrderLedger(store, bootstrap="-", topic="orders", group_id="g", wait_s=wait_s)

    gate = ledger(30.0)
    query = state_query(OrderFrame.from_orders(orders[2:3]))
    waiting = asyncio.create_task(gate.wait(query))

    async def settled() -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    await gate._round_done([(p0, orders[2])], {p0: False, p1: False})
    await settled()
    assert not waiting.done()  # partition 1 may still hold an earlier order
    await gate._round_done([(p1, orders[1])], {p0: False, p1: False})
    await settled()
    assert not waiting.done()  # partition 1 has only earlier ones so far
    await gate._round_done([(p0, orders[4])], {p0: False, p1: True})
    await asyncio.wait_for(waiting, 5)  # partition 1 at its end, partition 0 past the batch

    stuck = ledger(0.05)
    with pytest.raises(LedgerBehind) as raised:
        await stuck.wait(query)
    assert isinstance(raised.value, TransientError)  # the runtime retries the batch

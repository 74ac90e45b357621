"""Serving histories equal training histories: same purchases, strictly before each order."""

from __future__ import annotations

import itertools
import os
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from ingest.events import OrderPlaced
from models.simulator import simulate
from models.upsell.history import (
    InMemoryBasketHistory,
    SqlBasketHistory,
    _Entry,
    _entry,
    _histories,
    basket_history,
)
from models.upsell.training import prior_histories
from pizzashop.core.database import Database

POSTGRES_URL = os.environ.get("PIZZASHOP_TEST_POSTGRES_URL")
NO_POSTGRES = pytest.mark.skipif(POSTGRES_URL is None, reason="set PIZZASHOP_TEST_POSTGRES_URL")


@pytest.mark.parametrize("store", ["memory", "sqlite", pytest.param("postgres", marks=NO_POSTGRES)])
async def test_serving_history_matches_training_history(store: str, tmp_path: Path) -> None:
    orders = sorted(simulate(1500, seed=4).orders, key=lambda o: (o.placed_at, o.order_id))
    baskets = [[i.sku for i in o.items] for o in orders]
    index = {sku: n for n, sku in enumerate(sorted({s for b in baskets for s in b}))}
    training = prior_histories(baskets, [o.customer_id for o in orders], index)

    url = POSTGRES_URL if store == "postgres" else f"sqlite+aiosqlite:///{tmp_path / 'h.db'}"
    async with Database(url or "") as db:
        if store == "memory":
            history: InMemoryBasketHistory | SqlBasketHistory = InMemoryBasketHistory(keep=10_000)
        else:
            history = SqlBasketHistory(db, keep=10_000)
            await history.start()
            async with db.engine.begin() as conn:  # PostgreSQL outlives the test: start empty
                await conn.execute(basket_history.delete())
        served: list[list[str]] = []
        cuts = [0, 1, 200, 201, 777, 1500]
        for a, b in itertools.pairwise(cuts):
            batch = orders[a:b]
            if a == 777:  # an old order redelivered inside a later batch
                again = await history.before([orders[5], *batch])
                assert Counter(again[0]) == Counter(served[5])
                served += again[1:]
            else:
                served += await history.before(batch)

    assert len(served) == len(orders)
    for row, skus in zip(training, served, strict=True):
        counts = np.zeros(len(index), dtype=np.float32)
        for sku in skus:
            counts[index[sku]] += 1
        np.testing.assert_array_equal(row, counts)
    assert sum(map(len, served)) > 0  # customers do come back


def _bounded_reference(keep: int) -> Callable[[Sequence[OrderPlaced]], list[list[str]]]:
    """What a SQL history must answer: each customer's latest ``keep`` stored orders (by
    placed_at, then order id), the first row of an order id kept, fed to the same timeline.
    ``InMemoryBasketHistory`` keeps every order, so it answers the same only while no order
    arrives behind ``keep`` or more stored orders of its customer placed after it."""
    stored: dict[str, dict[str, _Entry]] = defaultdict(dict)

    def before(batch: Sequence[OrderPlaced]) -> list[list[str]]:
        known = {c: sorted(stored[c].values())[-keep:] for c in {o.customer_id for o in batch}}
        out = _histories(batch, known, keep)
        for order in batch:
            stored[order.customer_id].setdefault(order.order_id, _entry(order))
        return out

    return before


@pytest.mark.parametrize("keep", [3, 10_000])
@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=NO_POSTGRES)])
async def test_sql_history_answers_like_the_reference_on_random_batches(
    store: str, keep: int, tmp_path: Path
) -> None:
    """Random batches of a few customers' orders, with ties on placed_at and on nothing else,
    order ids unrelated to placement, late orders, redeliveries (of stored orders and twice in
    one batch): the SQL history (SQLite's one hand-off, PostgreSQL's engine path) answers as
    the reference does and, with ``keep`` past any customer's count, as the in-memory one."""
    rng = random.Random(f"{store}-{keep}")
    start = datetime(2024, 5, 1, 18, tzinfo=UTC)
    ids = rng.sample(range(10**6), 400)  # digits only: the same order under any collation
    orders = [
        o.model_copy(
            update={
                "order_id": f"o{ids[n]:06d}",
                "customer_id": f"c{rng.randrange(12):02d}",
                "placed_at": start + timedelta(minutes=rng.randrange(60)),
            }
        )
        for n, o in enumerate(simulate(400, seed=9).orders)
    ]
    url = POSTGRES_URL if store == "postgres" else f"sqlite+aiosqlite:///{tmp_path / 'h.db'}"
    reference = _bounded_reference(keep)
    memory = InMemoryBasketHistory(keep=keep)
    answered: list[list[str]] = []
    async with Database(url or "") as db, SqlBasketHistory(db, keep=keep) as history:
        async with db.engine.begin() as conn:  # PostgreSQL outlives the test: start empty
            await conn.execute(basket_history.delete())
        assert await history.before([]) == []
        sent = 0
        while sent < len(orders):
            size = rng.randint(1, 60)
            batch = orders[sent : sent + size]
            if sent:
                batch += rng.sample(orders[:sent], min(2, sent))  # redelivered, stored before
            batch.append(rng.choice(batch))  # the same order twice in one batch
            sent += size
            rng.shuffle(batch)
            got = await history.before(batch)
            assert got == reference(batch)
            if keep > len(orders):
                assert got == await memory.before(batch)
            answered += got
    assert any(answered) and not all(answered)
    if keep == 3:
        assert max(map(len, answered)) > 3  # ``keep`` counts orders, not SKUs

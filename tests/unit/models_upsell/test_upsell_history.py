"""Serving histories equal training histories: same purchases, strictly before each order."""

from __future__ import annotations

import itertools
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from models.simulator import simulate
from models.upsell.history import InMemoryBasketHistory, SqlBasketHistory, basket_history
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

"""``_histories`` (each customer's timeline sorted once, bisected per order) gives exactly what
the sort-per-order it replaced gave: the SKUs of the customer's ``keep`` latest orders placed
before this one, stored or earlier in the batch, redeliveries included."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta

import pytest

from ingest.events import OrderPlaced
from models.simulator import simulate
from models.upsell.history import _Entry, _entry, _histories


def _reference(
    orders: Sequence[OrderPlaced], known: dict[str, list[_Entry]], keep: int
) -> list[list[str]]:
    timeline: dict[str, dict[str, _Entry]] = defaultdict(dict)
    for customer, entries in known.items():
        for entry in entries:
            timeline[customer][entry[1]] = entry
    for order in orders:
        timeline[order.customer_id].setdefault(order.order_id, _entry(order))
    out: list[list[str]] = []
    for order in orders:
        mine = _entry(order)
        earlier = sorted(e for e in timeline[order.customer_id].values() if e[:2] < mine[:2])
        out.append([sku for _, _, skus in earlier[-keep:] for sku in skus])
    return out


@pytest.mark.parametrize("keep", [1, 3, 50])
def test_bisected_timelines_equal_the_sorted_filter(keep: int) -> None:
    rng = random.Random(keep)
    orders = list(simulate(1500, seed=11).orders)
    stored, batch = orders[:1200], orders[1200:]
    known: dict[str, list[_Entry]] = defaultdict(list)
    for order in stored:
        known[order.customer_id].append(_entry(order))
    # Redeliveries (an order already stored), ties on placed_at, batches out of order.
    batch += rng.sample(stored, 40)
    twin = batch[0].model_copy(update={"order_id": batch[0].order_id + "-twin"})
    batch.append(twin)
    late = batch[1].model_copy(
        update={"order_id": "late", "placed_at": batch[1].placed_at - timedelta(days=30)}
    )
    batch.append(late)
    rng.shuffle(batch)
    got = _histories(batch, dict(known), keep)
    assert got == _reference(batch, dict(known), keep)
    assert any(got) and not all(got)

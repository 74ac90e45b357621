from __future__ import annotations

import itertools
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from ingest.events import OrderPlaced
from models.feature_state import (
    FeatureBuilder,
    InMemoryFeatureState,
    SqlFeatureState,
    customers_table,
    events_table,
    features_for_stream,
    links_table,
    orders_table,
)
from models.features import FEATURE_NAMES, N_FEATURES, OrderFrame, basket_features
from models.simulator import SimulatedStream
from pizzashop.core.database import Database

COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def _url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


POSTGRES_URL = os.environ.get("PIZZASHOP_TEST_POSTGRES_URL")


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgres",
            marks=pytest.mark.skipif(
                POSTGRES_URL is None, reason="set PIZZASHOP_TEST_POSTGRES_URL"
            ),
        ),
    ]
)
async def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return _url(tmp_path / "fs.db")
    assert POSTGRES_URL is not None
    # One PostgreSQL for the whole run, migrated like the shop's: start from empty feature
    # tables, never drop them (the shared metadata holds every table of the shop).
    async with Database(POSTGRES_URL) as db, db.engine.begin() as conn:
        for table in (orders_table, events_table, customers_table, links_table):
            await conn.execute(table.delete())
    return POSTGRES_URL


async def test_training_features_equal_serving_features(
    stream: SimulatedStream, state_url: str
) -> None:
    orders = stream.orders[:1200]
    training = features_for_stream(orders)  # whole stream, in memory, batches of 1000
    assert training.shape == (len(orders), N_FEATURES)
    # serving: SQLite, uneven batches, one order redelivered inside a later batch and a
    # whole batch redelivered after a "restart" (a fresh store object on the same file)
    cuts = [0, 1, 150, 151, 600, 977, 1200]
    async with SqlFeatureState(state_url) as store:
        builder = FeatureBuilder(store)
        parts = []
        for a, b in itertools.pairwise(cuts):
            batch = list(orders[a:b])
            if a == 600:
                batch.insert(3, orders[10])  # a redelivery of an old order
                got = await builder.transform(batch)
                np.testing.assert_array_equal(got[3], training[10])
                got = np.delete(got, 3, axis=0)
            else:
                got = await builder.transform(batch)
            parts.append(got)
    serving = np.concatenate(parts)
    np.testing.assert_array_equal(serving, training)

    async with SqlFeatureState(state_url) as restarted:
        again = await FeatureBuilder(restarted).transform(list(orders[977:1200]))
    np.testing.assert_array_equal(again, training[977:1200])


async def test_in_memory_async_path_matches_sync_path(stream: SimulatedStream) -> None:
    orders = stream.orders[:400]
    expected = features_for_stream(orders, batch_size=7)
    builder = FeatureBuilder(InMemoryFeatureState())
    got = np.concatenate([await builder.transform(orders[i : i + 64]) for i in range(0, 400, 64)])
    np.testing.assert_array_equal(got, expected)


def _order(base: OrderPlaced, order_id: str, minutes: float, **changes: object) -> OrderPlaced:
    data = base.model_dump()
    data.update(order_id=order_id, placed_at=base.placed_at + timedelta(minutes=minutes), **changes)
    return OrderPlaced.model_validate(data)


def test_point_in_time_and_idempotence(stream: SimulatedStream) -> None:
    base = stream.orders[0].model_copy(update={"customer_id": "c-test"})
    total = float(base.total)
    first = _order(base, "o1", 0)
    second = _order(base, "o2", 5)
    third = _order(base, "o3", 30, device_id="brand-new-device")
    state = InMemoryFeatureState()
    x = features_for_stream([first, second, second, third], state)  # o2 delivered twice
    assert x[0, COL["new_customer"]] == 1
    assert x[0, COL["cust_orders_10m"]] == 0
    assert x[1, COL["new_customer"]] == 0
    assert x[1, COL["cust_orders_10m"]] == 1  # sees o1, not itself
    assert x[1, COL["cust_spend_10m"]] == pytest.approx(np.log1p(total), rel=1e-6)
    np.testing.assert_array_equal(x[2], x[1])  # the duplicate gets the same answer
    assert x[3, COL["cust_orders_10m"]] == 0  # o1 and o2 are 25+ minutes old
    assert x[3, COL["cust_orders_24h"]] == 2  # not 3: o2 counted once
    assert x[3, COL["new_device_for_customer"]] == 1
    assert x[3, COL["spend_vs_usual"]] == pytest.approx(0.0, abs=1e-6)


def test_basket_features_see_price_and_quantity(stream: SimulatedStream) -> None:
    order = stream.orders[0]
    item = order.items[0]
    cheap = item.model_copy(update={"unit_price": item.unit_price / 10, "quantity": 40})
    odd = order.model_copy(update={"items": (cheap,), "total": cheap.unit_price * 40})
    x = basket_features(OrderFrame.from_orders([order, odd]))
    assert x[0, COL["max_price_dev"]] == pytest.approx(0.0, abs=1e-6)
    assert x[1, COL["max_price_dev"]] == pytest.approx(0.9, abs=1e-3)
    assert x[1, COL["max_qty"]] == 40
    assert x[:, COL["hour_sin"]] ** 2 + x[:, COL["hour_cos"]] ** 2 == pytest.approx(1.0)


async def test_sql_prune_keeps_idempotence(stream: SimulatedStream, tmp_path: Path) -> None:
    orders = stream.orders[:50]
    async with SqlFeatureState(_url(tmp_path / "fs.db")) as store:
        builder = FeatureBuilder(store)
        first = await builder.transform(orders)
        removed = await store.prune(orders[-1].placed_at.timestamp() + 1)
        assert removed >= len(orders)  # every order had at least its customer event
        again = await builder.transform(orders)  # redelivered after the prune
    np.testing.assert_array_equal(again, first)


def test_a_takeovers_second_order_still_follows_a_novel_one(stream: SimulatedStream) -> None:
    """The second order on a new device no longer has a new device (the first linked it), but
    the customer's novel order minutes before says what changed; velocities count per card."""
    base = stream.orders[0].model_copy(update={"customer_id": "c-ato"})
    usual = _order(base, "a1", 0, device_id="own-phone")
    taken = _order(base, "a2", 90, device_id="attacker-phone")
    again = _order(base, "a3", 100, device_id="attacker-phone")
    later = _order(base, "a4", 100 + 25 * 60, device_id="attacker-phone")  # a day on
    x = features_for_stream([usual, taken, again, later])
    assert x[1, COL["new_device_for_customer"]] == 1
    assert x[1, COL["new_links_for_customer"]] == 1
    assert x[1, COL["cust_novel_orders_24h"]] == 0  # its own novelty is not before it
    assert x[2, COL["new_device_for_customer"]] == 0
    assert x[2, COL["cust_novel_orders_24h"]] == 1
    assert x[2, COL["cust_novel_log_gap_min"]] == pytest.approx(np.log1p(10.0), rel=1e-5)
    assert x[2, COL["device_orders_1h"]] == 1  # the attacker's phone, a2 only
    assert x[2, COL["device_log_gap_min"]] == pytest.approx(np.log1p(10.0), rel=1e-5)
    assert x[2, COL["cust_log_gap_min"]] == pytest.approx(np.log1p(10.0), rel=1e-5)
    if base.payment.card_fingerprint is not None:
        assert x[2, COL["card_orders_1h"]] == 1  # a1 is 100 minutes old
        assert x[2, COL["card_orders_24h"]] == 2
    assert x[3, COL["cust_novel_orders_24h"]] == 0  # the novelty is older than a day
    assert x[3, COL["cust_novel_log_gap_min"]] == pytest.approx(np.log1p(24 * 60.0), rel=1e-5)

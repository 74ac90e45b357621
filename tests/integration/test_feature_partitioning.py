"""One enrichment worker or several in one group: the same features, order by order.

The orders are keyed by order id, so one customer's (and one card's) orders are spread over
partitions that different workers own. The features must not care: each order sees exactly
the orders placed before it (``enrichers.ledger``), so one, two and three workers store the
very features the training path computes from the sorted stream.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from ingest.codec import decode, encode
from ingest.events import OrderEnriched, OrderPlaced
from ingest.producer import TransactionalProducer
from ingest.reader import read_topics
from models.feature_state import features_for_stream, orders_table
from models.features import FEATURE_NAMES
from models.simulator import simulate
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.database import Database
from pizzashop.core.settings import Settings
from tests.support.shop import eventually

# The consumer runtime's promises hold on both transports (conftest.TRANSPORTS).
pytestmark = pytest.mark.both_transports

ENRICH_ONLY = Wiring(api=False, workers=("enricher",))
N_ORDERS = 360
RELAY_BATCH = 40


@pytest.fixture(scope="module")
def orders() -> list[OrderPlaced]:
    return list(simulate(N_ORDERS, seed=23).orders)


@pytest.fixture(scope="module")
def reference(orders: list[OrderPlaced]) -> dict[str, np.ndarray]:
    """What training computes: the whole stream, in event time, in one process."""
    features = features_for_stream(orders)
    return {o.order_id: features[i] for i, o in enumerate(orders)}


def _settings(base: Settings, tmp_path: Path, run: str) -> Settings:
    # No models: scores are degraded, features are computed all the same (and fast).
    empty = tmp_path / "no-models"
    empty.mkdir(exist_ok=True)
    return base.model_copy(
        update={
            "topic_prefix": f"{base.topic_prefix}{run}.",
            "group_prefix": f"{base.group_prefix}-{run}",
            "home": tmp_path / run,
            "registry_dir": empty,
        }
    )


async def _stored(db: Database) -> dict[str, np.ndarray]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(sa.select(orders_table.c.order_id, orders_table.c.features))
        return {oid: np.frombuffer(blob, dtype=np.float32) for oid, blob in map(tuple, rows)}


async def _enriched(bootstrap: str, topic: str) -> list[object]:
    """Every committed event on ``topic``, decoded."""
    records = await read_topics(bootstrap, [topic], isolation_level="read_committed")
    return [decode(r.value, list(r.headers)) for r in records if r.value is not None]


def _assigned(shop: Shop) -> int:
    transport = shop.runtimes["enricher"]._transport  # the test looks under the runtime
    return len(transport.assignment())


async def enrich(
    settings: Settings, orders: list[OrderPlaced], workers: int
) -> dict[str, np.ndarray]:
    """``orders`` through ``workers`` shops in one enricher group; the features they stored."""
    bootstrap = settings.kafka_bootstrap or ""
    async with contextlib.AsyncExitStack() as stack:
        shops = [
            await stack.enter_async_context(Shop(settings, bootstrap, ENRICH_ONLY))
            for _ in range(workers)
        ]

        async def every_worker_owns_partitions() -> bool:
            counts = [_assigned(shop) for shop in shops]
            return all(counts) and sum(counts) == settings.orders_partitions

        await eventually(every_worker_owns_partitions, timeout_s=60)
        # As the outbox relay publishes: batches in placed order, each one transaction, so
        # read_committed readers see a batch on every partition at once. Quickly: every
        # worker has a backlog of orders of customers and cards it shares with the others.
        relay = await stack.enter_async_context(
            TransactionalProducer(bootstrap, f"{settings.group_prefix}.test-relay")
        )
        await relay.connect()
        topic = shops[0].topics.orders
        for start in range(0, len(orders), RELAY_BATCH):
            await relay.send_transaction(
                [(topic, encode(o)) for o in orders[start : start + RELAY_BATCH]]
            )

        async def all_stored() -> bool:
            return len(await _stored(shops[0].db)) >= len(orders)

        # The features are stored before the batch's Kafka transaction commits, so wait for
        # the output itself too (confluent-kafka commits a whole backlog in one transaction).
        async def all_enriched() -> bool:
            return len(await _enriched(bootstrap, shops[0].topics.enriched)) >= len(orders)

        await eventually(all_stored, timeout_s=90, every_s=0.5)
        await eventually(all_enriched, timeout_s=60, every_s=0.5)
        stored = await _stored(shops[0].db)
        enriched_topic = shops[0].topics.enriched
    # Read again once every worker has stopped: a late duplicate would show here.
    enriched = await _enriched(bootstrap, enriched_topic)
    assert sorted(e.order_id for e in enriched if isinstance(e, OrderEnriched)) == sorted(
        o.order_id for o in orders
    )  # each order enriched once, and only after its features were stored
    return stored


def _differences(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> list[str]:
    out = []
    for oid, expected in want.items():
        actual = got[oid]
        if not np.array_equal(actual, expected):
            cols = [
                f"{FEATURE_NAMES[j]} {actual[j]:.4g} not {expected[j]:.4g}"
                for j in np.flatnonzero(actual != expected)
            ]
            out.append(f"{oid}: {', '.join(cols)}")
    return out


async def test_one_two_and_three_workers_compute_the_same_features(
    shop_settings: Settings,
    tmp_path: Path,
    orders: list[OrderPlaced],
    reference: dict[str, np.ndarray],
) -> None:
    # the stream does share state across partitions, else the test would prove nothing
    customers = [o.customer_id for o in orders]
    assert len(set(customers)) < len(customers)
    runs = {}
    for workers in (1, 2, 3):
        settings = _settings(shop_settings, tmp_path, f"w{workers}")
        runs[workers] = await enrich(settings, orders, workers)
    for workers, stored in runs.items():
        assert set(stored) == set(reference)
        wrong = _differences(stored, runs[1])
        assert not wrong, f"{workers} workers differ from one on {len(wrong)} orders: {wrong[:5]}"
        wrong = _differences(stored, reference)
        assert not wrong, f"{workers} workers differ from training on {len(wrong)}: {wrong[:5]}"

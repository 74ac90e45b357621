"""Enrichment on the real broker: one OrderEnriched per order with lineage, fraud holds,
degraded scores, dead letters, hot reload, shadow scoring and failover."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from ingest.codec import decode
from ingest.dlq import read_dead_letters
from ingest.events import OrderEnriched, OrderPlaced, ScoreShadowed
from ingest.reader import read_topics
from models.registry import Registry
from models.simulator import simulate
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.errors import DependencyPending
from pizzashop.core.settings import Settings
from services.mailer import SmtpSink
from tests.support.orders import order_body
from tests.support.shop import API_HEADERS, eventually, spawn_workers

# The consumer runtime's promises hold on both transports (conftest.TRANSPORTS).
pytestmark = pytest.mark.both_transports

ENRICH = Wiring(api=False, workers=("enricher", "scores"))


@pytest.fixture
def settings(shop_settings: Settings, trained_registry: Path) -> Settings:
    return shop_settings.model_copy(update={"registry_dir": trained_registry})


def orders(n: int, seed: int = 11) -> list[OrderPlaced]:
    return list(simulate(n, seed=seed).orders)


async def enriched_events(shop: Shop) -> list[OrderEnriched]:
    records = await read_topics(
        shop.bootstrap, [shop.topics.enriched], isolation_level="read_committed"
    )
    events = [decode(r.value, list(r.headers)) for r in records]
    return [e for e in events if isinstance(e, OrderEnriched)]


async def wait_scored(shop: Shop, ids: Sequence[str], timeout_s: float = 60) -> None:
    async def scored() -> bool:
        return await shop.scores.count(ids) == len(ids)

    await eventually(scored, timeout_s=timeout_s)


async def test_every_order_is_enriched_once_with_three_scores_and_lineage(
    settings: Settings,
) -> None:
    async with Shop(settings, settings.kafka_bootstrap or "", ENRICH) as shop:
        batch = orders(120)
        await shop.producer.publish_many(shop.topics.orders, batch)
        ids = [o.order_id for o in batch]
        await wait_scored(shop, ids)
        events = await enriched_events(shop)
    per_order = Counter(e.order_id for e in events)
    assert set(per_order) == set(ids) and set(per_order.values()) == {1}
    for event in events:
        for score in (event.fraud, event.anomaly, event.upsell):
            assert score is not None and not score.degraded
            lineage = score.lineage
            assert lineage is not None and lineage.version == 1
            assert lineage.feature_schema_version >= 1 and lineage.latency_ms > 0
        assert event.fraud.lineage and event.fraud.lineage.top_features
        assert 0 <= (event.fraud.probability or 0) <= 1
        assert 0 <= (event.anomaly.percentile or 0) <= 100
        assert event.upsell and len(event.upsell.suggestions) == 3
        source = next(o for o in batch if o.order_id == event.order_id)
        assert event.source_event_id == source.event_id


async def test_a_flagged_order_is_cancelled_refunded_and_the_customer_told(
    settings: Settings, smtp_sink: SmtpSink
) -> None:
    # Threshold 0: every order is "fraud"; a slow oven leaves time for the hold to land.
    held = settings.model_copy(
        update={
            "cook_seconds": 20.0,
            "enricher": settings.enricher.model_copy(update={"fraud_threshold": 0.0}),
        }
    )
    async with Shop(held, held.kafka_bootstrap or "") as shop:
        transport = httpx.ASGITransport(app=create_app(shop))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://shop", headers=API_HEADERS
        ) as http:
            order_id = (await http.post("/orders", json=order_body("pepperoni_m"))).json()[
                "order_id"
            ]

            async def refund_notice_sent() -> bool:
                return any(f"Refund for order {order_id}" == m.subject for m in smtp_sink.messages)

            await eventually(refund_notice_sent, timeout_s=60)

            # The status projection is its own consumer group: it may see the refund later.
            # So is the scores view, which folds OrderEnriched from its own group.
            async def refunded() -> bool:
                status: str = (await http.get(f"/orders/{order_id}")).json()["status"]
                scored = (await http.get(f"/orders/{order_id}/scores")).status_code == 200
                return status == "refunded" and scored

            await eventually(refunded, timeout_s=30)
            state = (await http.get(f"/orders/{order_id}")).json()
            scores = (await http.get(f"/orders/{order_id}/scores")).json()
    types = [e["event_type"] for e in state["timeline"]]
    assert {"OrderFlagged", "OrderCancelled", "RefundIssued"} <= set(types)
    assert "OrderReady" not in types
    assert state["status"] == "refunded"
    assert scores["flagged"] is True
    notice = next(m for m in smtp_sink.messages if m.subject == f"Refund for order {order_id}")
    assert "fraud hold" in notice.body


async def test_a_model_that_times_out_degrades_its_score_but_never_stalls(
    settings: Settings,
) -> None:
    slow = settings.model_copy(
        update={"enricher": settings.enricher.model_copy(update={"model_timeout_s": 1e-6})}
    )
    async with Shop(slow, slow.kafka_bootstrap or "", ENRICH) as shop:
        batch = orders(20, seed=5)
        await shop.producer.publish_many(shop.topics.orders, batch)
        await wait_scored(shop, [o.order_id for o in batch])
        events = await enriched_events(shop)
    assert len(events) == 20
    for event in events:
        assert event.fraud.degraded and event.fraud.probability is None
        assert event.fraud.reason is not None and "timeout" in event.fraud.reason
        assert not event.flagged  # a missing score holds nothing


async def test_an_order_that_cannot_be_scored_at_all_is_dead_lettered(settings: Settings) -> None:
    # A short retry budget: the poison order is retried for a second, then dead-lettered.
    settings = settings.model_copy(
        update={"consumer": settings.consumer.model_copy(update={"retry_budget_s": 1.0})}
    )
    async with Shop(settings, settings.kafka_bootstrap or "", ENRICH) as shop:
        store = next(r for r in shop.resources["enricher"] if hasattr(r, "apply"))
        original = store.apply
        batch = orders(10, seed=9)
        poison = batch[3].order_id

        async def apply(facts: Sequence[object]) -> None:
            if any(getattr(f, "order_id", None) == poison for f in facts):
                raise DependencyPending("feature state refuses this order")
            await original(facts)

        store.apply = apply
        await shop.producer.publish_many(shop.topics.orders, batch)
        await wait_scored(shop, [o.order_id for o in batch if o.order_id != poison])

        async def dead() -> bool:
            return len(await read_dead_letters(shop.bootstrap, shop.topics.dlq_topics())) == 1

        await eventually(dead)
        [letter] = await read_dead_letters(shop.bootstrap, shop.topics.dlq_topics())
        assert letter.key == poison.encode()
        assert letter.consumer_group == settings.group("enricher")
        assert letter.attempts >= 2  # retried within the budget before it was given up
        assert await shop.scores.count([poison]) == 0


def _republish(registry: Registry, name: str) -> int:
    """Publish the latest ``name`` again as a new version (same weights, new number)."""
    latest = registry.load(name)

    def write(target: Path) -> dict[str, object]:
        for item in latest.path.iterdir():
            if item.name != "metadata.json":
                shutil.copy2(item, target / item.name)
        return dict(latest.metadata.params)

    return registry.publish(
        name,
        write,
        training_data_hash=latest.metadata.training_data_hash,
        metrics=latest.metadata.metrics,
    ).version


async def test_new_models_are_picked_up_without_restart_and_shadowed(
    settings: Settings, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    shutil.copytree(settings.resolved_registry_dir, root)
    live = settings.model_copy(
        update={
            "registry_dir": root,
            "enricher": settings.enricher.model_copy(
                update={"reload_every_s": 0.2, "shadow_fraud_version": 1}
            ),
        }
    )
    registry = Registry(root)
    async with Shop(live, live.kafka_bootstrap or "", ENRICH) as shop:
        first = orders(30, seed=21)
        await shop.producer.publish_many(shop.topics.orders, first)
        await wait_scored(shop, [o.order_id for o in first])
        assert _republish(registry, "fraud") == 2
        await asyncio.sleep(0.5)  # the worker looks every 0.2 s, between batches
        second = orders(30, seed=22)
        await shop.producer.publish_many(shop.topics.orders, second)
        await wait_scored(shop, [o.order_id for o in second])

        # The enricher writes ScoreShadowed after its batch's OrderEnriched: wait for those too.
        async def all_shadowed() -> bool:
            return (await shop.scores.summary()).shadowed >= 60

        await eventually(all_shadowed)
        records = await read_topics(
            shop.bootstrap, [shop.topics.enriched], isolation_level="read_committed"
        )
        summary = await shop.scores.summary()
    events = [decode(r.value, list(r.headers)) for r in records]
    enriched = [e for e in events if isinstance(e, OrderEnriched)]
    shadowed = [e for e in events if isinstance(e, ScoreShadowed)]
    version = {e.order_id: e.fraud.lineage.version for e in enriched if e.fraud.lineage}
    per_order = Counter(e.order_id for e in enriched)
    assert set(per_order.values()) == {1} and len(per_order) == 60  # one each, 60 in all
    assert {version[o.order_id] for o in first} == {1}
    assert {version[o.order_id] for o in second} == {2}
    # The challenger (v1) scored every order beside the champion and decided nothing.
    assert len(shadowed) == 60 and {s.challenger_version for s in shadowed} == {1}
    assert {s.champion_version for s in shadowed if s.order_id in {o.order_id for o in second}} == {
        2
    }
    # Same weights under a new number: the challenger agrees with the champion exactly.
    assert all(s.difference is not None and abs(s.difference) < 1e-6 for s in shadowed)
    assert summary.shadowed == 60 and summary.models["fraud-v2"] == 30


async def test_two_workers_share_the_orders_and_survive_one_being_killed(
    settings: Settings,
) -> None:
    log = settings.home / "enrichers.log"
    async with Shop(
        settings, settings.kafka_bootstrap or "", Wiring(api=False, workers=("scores",))
    ) as shop:
        workers = [
            await spawn_workers(settings, "enricher", log, PIZZASHOP_CONSUMER__BATCH_MAX="10")
            for _ in range(2)
        ]
        try:
            batch = orders(300, seed=31)
            ids = [o.order_id for o in batch]
            await shop.producer.publish_many(shop.topics.orders, batch[:100])

            async def some_scored() -> bool:
                assert all(w.returncode is None for w in workers), log.read_text()[-3000:]
                return await shop.scores.count(ids) >= 30

            await eventually(some_scored, timeout_s=90)
            workers[0].send_signal(signal.SIGKILL)
            await workers[0].wait()
            await shop.producer.publish_many(shop.topics.orders, batch[100:])
            await wait_scored(shop, ids, timeout_s=120)
            events = await enriched_events(shop)
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(worker.wait(), 30)
    assert {e.order_id for e in events} == set(ids)
    # A record the dead worker published but never committed is published again under the
    # same event id: harmless downstream, and the projection kept one row per order.
    assert len({e.event_id for e in events}) == len(ids)

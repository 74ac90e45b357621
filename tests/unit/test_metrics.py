"""Prometheus metrics without a broker: the collector over consumer stats, the relay and lag
snapshots; `/metrics` through the API (request latency by route template, the outbox backlog,
score distributions from the score projection); the score feed returns each order once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.metrics import METRIC_NAMES, PartitionLag, ShopMetrics, _Snapshot
from api.stream import ScoreFeed, sse
from ingest.events import (
    AnomalyAssessment,
    FeatureContribution,
    FraudAssessment,
    OrderEnriched,
    ScoreLineage,
)
from ingest.runtime import ConsumerStats
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.menu import load_menu
from pizzashop.core.settings import ApiSettings, Settings
from services.scores import ScoreQueries, _row, order_scores

KEY = "metrics-inspect-key-0123456789"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def enriched(order_id: str, probability: float, *, at: datetime | None = None) -> OrderEnriched:
    lineage = ScoreLineage(
        model="fraud",
        version=3,
        feature_schema_version=1,
        backend="torch",
        latency_ms=4.0,
        top_features=(FeatureContribution(name="amount", contribution=0.4),),
    )
    anomaly = lineage.model_copy(update={"model": "anomaly", "version": 2})
    return OrderEnriched(
        order_id=order_id,
        source_event_id=f"src-{order_id}",
        customer_id="c-1",
        fraud=FraudAssessment(probability=probability, lineage=lineage),
        anomaly=AnomalyAssessment(error=0.2, percentile=90, lineage=anomaly),
        flagged=probability >= 0.9,
        **({"occurred_at": at} if at is not None else {}),
    )


class _Runtime:
    def __init__(self, group_id: str, stats: ConsumerStats) -> None:
        self.group_id = group_id
        self.stats = stats


def test_collector_reads_stats_and_lag() -> None:
    stats = ConsumerStats(handled=10, retries=3, dead_lettered=2, batches=4, commits=4)
    stats.errors_by_class["TransientError"] = 3
    runtimes = {"kitchen": _Runtime("g.kitchen", stats)}
    metrics = ShopMetrics(runtimes=lambda: runtimes)  # type: ignore[arg-type, return-value]
    metrics._snapshot = _Snapshot(lag=[PartitionLag("g.kitchen", "orders", 2, end=15, committed=5)])
    got = samples(metrics.render().decode())
    flow = (("flow", "kitchen"), ("group", "g.kitchen"))
    assert got[("pizzashop_records_handled_total", flow)] == 10
    assert got[("pizzashop_records_retried_total", flow)] == 3
    assert got[("pizzashop_records_dead_lettered_total", flow)] == 2
    assert got[("pizzashop_consumer_commits_total", flow)] == 4
    assert got[("pizzashop_consumer_records_per_batch", flow)] == 2.5
    errors = (("error_class", "TransientError"), *flow)
    assert got[("pizzashop_consumer_errors_total", errors)] == 3
    lag = (("group", "g.kitchen"), ("partition", "2"), ("topic", "orders"))
    assert got[("pizzashop_consumer_lag", lag)] == 10
    assert metrics.dead_lettered() == 2
    stats.handled += 5  # read at scrape time, not copied
    assert samples(metrics.render().decode())[("pizzashop_records_handled_total", flow)] == 15


def test_partition_lag_never_negative() -> None:
    assert PartitionLag("g", "t", 0, end=3, committed=5).lag == 0


def test_scores_by_model_version() -> None:
    metrics = ShopMetrics()
    metrics.observe_score(enriched("o-1", 0.2))
    metrics.observe_score(enriched("o-2", 0.95))
    got = samples(metrics.render().decode())
    fraud = (("model", "fraud"), ("version", "3"))
    assert got[("pizzashop_score_count", fraud)] == 2
    assert got[("pizzashop_score_bucket", (("le", "0.3"), *fraud))] == 1
    assert got[("pizzashop_score_count", (("model", "anomaly"), ("version", "2")))] == 2
    assert got[("pizzashop_model_latency_seconds_sum", fraud)] == pytest.approx(0.008)
    assert got[("pizzashop_orders_flagged_total", ())] == 1


def test_sse_frame_is_one_json_line() -> None:
    frame = sse("score", {"order_id": "a\nb <x>"}).decode()
    assert frame == 'event: score\ndata: {"order_id":"a\\nb <x>"}\n\n'


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    settings = Settings(
        kafka_bootstrap="127.0.0.1:9",  # nothing listens: the lag probe fails and says so
        home=tmp_path,
        api=ApiSettings.model_validate(
            {"keys": [{"name": "ops", "secret": KEY, "scopes": ["inspect"]}]}
        ),
    )
    async with Shop(settings, "127.0.0.1:9", Wiring(workers=(), create_topics=False)) as s:
        yield s


async def test_score_feed_returns_each_order_once(shop: Shop) -> None:
    now = datetime.now(UTC)
    feed = ScoreFeed(ScoreQueries(shop.db), overlap_s=30)

    async def store(*events: OrderEnriched) -> None:
        async with shop.db.engine.begin() as conn:
            await conn.execute(shop.db.insert_ignore(order_scores), [_row(e) for e in events])

    await store(enriched("a", 0.1, at=now - timedelta(seconds=2)))
    assert [e.order_id for e in await feed.poll()] == ["a"]
    assert await feed.poll() == []
    # stored late with an earlier time (another partition was behind): still seen, once
    await store(enriched("b", 0.1, at=now - timedelta(seconds=5)), enriched("c", 0.1, at=now))
    assert [e.order_id for e in await feed.poll()] == ["b", "c"]
    assert await feed.poll() == []


async def test_metrics_endpoint(shop: Shop) -> None:
    app = create_app(shop)
    price = load_menu()["four_cheese_l"].price
    order = {
        "customer_id": "c-9",
        "customer_email": "c9@example.com",
        "items": [{"sku": "four_cheese_l", "quantity": 1, "unit_price": str(price)}],
        "total": str(price),
        "payment": {"kind": "card", "card_fingerprint": "fp-abcdef12", "last4": "1111"},
    }
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop"
    ) as http:
        placed = await http.post("/orders", json=order)
        assert placed.status_code == 202, placed.text
        oid = placed.json()["order_id"]
        status = await http.get(f"/orders/{oid}", headers={"X-API-Key": KEY})
        assert status.status_code == 200
        assert (await http.get("/scores/stream")).status_code == 401
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    got = samples(text)
    latency = "pizzashop_http_request_duration_seconds_count"
    posted = (("method", "POST"), ("route", "/orders"), ("status", "202"))
    assert got[(latency, posted)] == 1
    # the route template, never the order id
    assert any(k[0] == latency and ("route", "/orders/{order_id}") in k[1] for k in got)
    assert oid not in text
    assert got[("pizzashop_outbox_backlog", ())] == 1  # the broker is away: it waits
    assert got[("pizzashop_outbox_oldest_age_seconds", ())] >= 0
    assert got[("pizzashop_consumer_lag_probe_errors_total", ())] >= 1
    for name in METRIC_NAMES:
        assert name.startswith("pizzashop_")


def test_handler_latency_and_batch_size_histograms() -> None:
    stats = ConsumerStats()
    for seconds in (0.002, 0.003, 0.2, 7.0):
        stats.handle_seconds.observe(seconds)
    stats.batch_sizes.observe(1)
    stats.batch_sizes.observe(300)
    runtimes = {"kitchen": _Runtime("g.kitchen", stats)}
    metrics = ShopMetrics(runtimes=lambda: runtimes)  # type: ignore[arg-type, return-value]
    got = samples(metrics.render().decode())
    flow = (("flow", "kitchen"), ("group", "g.kitchen"))

    def bucket(name: str, le: str) -> float:
        return got[(f"{name}_bucket", (*flow[:1], ("group", "g.kitchen"), ("le", le)))]

    assert bucket("pizzashop_handler_duration_seconds", "0.0025") == 1
    assert bucket("pizzashop_handler_duration_seconds", "0.005") == 2
    assert bucket("pizzashop_handler_duration_seconds", "0.25") == 3
    assert bucket("pizzashop_handler_duration_seconds", "+Inf") == 4
    assert got[("pizzashop_handler_duration_seconds_count", flow)] == 4
    assert abs(got[("pizzashop_handler_duration_seconds_sum", flow)] - 7.205) < 1e-9
    assert bucket("pizzashop_handler_batch_size", "1.0") == 1
    assert bucket("pizzashop_handler_batch_size", "500.0") == 2

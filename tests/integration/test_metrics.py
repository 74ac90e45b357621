"""`/metrics` on the real broker: a group's consumer lag rises while its worker is stopped and
falls when it comes back; the outbox backlog drains to zero."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.metrics import consumer_lag
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.menu import load_menu
from pizzashop.core.settings import Settings
from tests.support.shop import eventually, spawn_workers

PRICE = load_menu()["four_cheese_l"].price


def order(n: int) -> dict[str, object]:
    return {
        "customer_id": f"c-{n}",
        "customer_email": f"c{n}@example.com",
        "items": [{"sku": "four_cheese_l", "quantity": 1, "unit_price": str(PRICE)}],
        "total": str(PRICE),
        "payment": {"kind": "card", "card_fingerprint": f"fp-{n:08x}", "last4": "1111"},
    }


async def scrape(http: httpx.AsyncClient) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = await http.get("/metrics")
    assert response.status_code == 200
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_lag_rises_while_a_worker_is_stopped(shop_settings: Settings, tmp_path: Path) -> None:
    settings = shop_settings
    group = settings.group("status")
    orders_topic = f"{settings.topic_prefix}orders"

    async def status_lag(http: httpx.AsyncClient) -> float:
        lag = (await scrape(http)).get("pizzashop_consumer_lag", {})
        return sum(
            v for k, v in lag.items() if ("group", group) in k and ("topic", orders_topic) in k
        )

    bootstrap = settings.kafka_bootstrap or ""
    async with Shop(settings, bootstrap, Wiring(api=True, workers=())) as shop:
        app = create_app(shop)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as http:
            log = tmp_path / "worker.log"
            worker = await spawn_workers(settings, "status", log)
            try:
                for n in range(5):
                    assert (await http.post("/orders", json=order(n))).status_code == 202

                async def caught_up() -> bool:
                    # The worker has committed past all five orders (read from the broker).
                    parts = await consumer_lag(bootstrap, {group: [orders_topic]})
                    committed = sum(p.committed for p in parts)
                    return committed >= 5 and await status_lag(http) <= settings.orders_partitions

                await eventually(caught_up, timeout_s=90, every_s=0.5)
                baseline = await status_lag(http)
                worker.send_signal(signal.SIGTERM)
                await asyncio.wait_for(worker.wait(), 30)
            finally:
                if worker.returncode is None:
                    worker.kill()
                    await worker.wait()

            for n in range(5, 30):
                assert (await http.post("/orders", json=order(n))).status_code == 202

            async def published() -> bool:
                return (await scrape(http))["pizzashop_outbox_backlog"][()] == 0

            await eventually(published, timeout_s=60, every_s=0.5)

            async def risen() -> bool:
                # A scrape reads the lag before the backlog: the one that saw the backlog
                # empty may have read the lag just before the relay's last records.
                return await status_lag(http) >= baseline + 25

            await eventually(risen, timeout_s=30, every_s=0.5)
            stopped = await status_lag(http)
            metrics = await scrape(http)
            assert metrics["pizzashop_outbox_oldest_age_seconds"][()] == 0
            assert metrics["pizzashop_outbox_published_total"][()] >= 30

            worker = await spawn_workers(settings, "status", log)
            try:

                async def resumed() -> bool:
                    # caught up again: at most a transaction marker per partition left
                    return await status_lag(http) <= settings.orders_partitions

                await eventually(resumed, timeout_s=90, every_s=0.5)
            finally:
                worker.send_signal(signal.SIGTERM)
                await asyncio.wait_for(worker.wait(), 30)
            resumed_lag = await status_lag(http)
            print(f"status lag on {orders_topic}: {baseline} -> {stopped} stopped -> {resumed_lag}")

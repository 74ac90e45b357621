"""The live dashboard in a real browser: Debian's Chromium driven by Playwright (no browser
download; ``PIZZASHOP_CHROMIUM`` names another binary). The page asks for a key, refuses a wrong
one, streams enriched orders as they are placed through the API, drills into one order, and
shows the models panel: aliases, drift against training and online precision/recall once a
chargeback has come.
The screenshot is kept under the test's tmp dir (and copied to ``PIZZASHOP_ARTEFACTS`` if set);
its path is printed."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from ingest.events import ChargebackReported, utcnow
from pizzashop.app.demo import serve
from pizzashop.app.shop import Shop
from pizzashop.core.menu import load_menu
from pizzashop.core.settings import Settings
from tests.support.shop import TEST_API_KEY

MENU = load_menu()


def chromium() -> str:
    found = os.environ.get("PIZZASHOP_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.skip("no system Chromium: apt-get install chromium (.ci/run does)")
    return found


def _keep(shot: Path) -> Path:
    """Copy the screenshot to ``PIZZASHOP_ARTEFACTS`` (CI uploads that folder), if set."""
    artefacts = os.environ.get("PIZZASHOP_ARTEFACTS")
    if not artefacts:
        return shot
    Path(artefacts).mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(shot, Path(artefacts) / shot.name))


def order(n: int) -> dict[str, object]:
    skus = ["four_cheese_l", *(["garlic_bread"] if "garlic_bread" in MENU.by_sku else [])]
    items = [{"sku": s, "quantity": 1, "unit_price": str(MENU[s].price)} for s in skus]
    return {
        "customer_id": f"browser-{n}",
        "customer_email": f"browser{n}@example.com",
        "items": items,
        "total": str(sum(MENU[s].price for s in skus)),
        "payment": {"kind": "card", "card_fingerprint": f"fp-{n:08x}", "last4": "4242"},
    }


async def test_dashboard_streams_orders_in_chromium(
    shop_settings: Settings, trained_registry: Path, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    executable = chromium()
    settings = shop_settings.model_copy(
        update={
            "registry_dir": trained_registry,
            # six orders are enough for the panel to show a PSI; every order counts as labelled
            "monitor": shop_settings.monitor.model_copy(
                update={"drift_min_orders": 5, "label_delay_s": 0.0, "refresh_s": 0.0}
            ),
        }
    )
    async with (
        Shop(settings, settings.kafka_bootstrap or "") as shop,
        serve(create_app(shop), "127.0.0.1") as base,
        httpx.AsyncClient(base_url=base) as http,
        async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{base}/dashboard")

            # a key that is no key is refused, and not kept
            await page.fill("#key", "not-a-key-at-all-0000")
            await page.click("#login button")
            await expect(page.locator("#login-error")).to_have_text("that is no key")
            assert await page.evaluate("sessionStorage.length") == 0

            await page.fill("#key", TEST_API_KEY)
            await page.click("#login button")
            await expect(page.locator("#status")).to_have_text("live", timeout=15_000)

            placed = []
            for n in range(6):
                response = await http.post("/orders", json=order(n))
                assert response.status_code == 202, response.text
                placed.append(response.json()["order_id"])
            for order_id in placed:
                row = page.locator(f'tr[data-order="{order_id}"]')
                await expect(row).to_be_visible(timeout=60_000)
            # scored rows have a fraud bar and a model tag; the stats cards are there
            first = page.locator(f'tr[data-order="{placed[0]}"]')
            await expect(first.locator(".bar.fraud")).to_have_count(1)
            await expect(first).to_contain_text("fraud-v")
            # the stats event (every 2 s) counts them too
            await expect(page.locator("#card-orders-scored b")).to_have_text(
                str(len(placed)), timeout=15_000
            )
            await expect(page.locator("#card-consumer-lag")).to_be_visible()

            # the models panel: the serving fraud version, its drift state, and once the
            # first order is charged back, its online precision and recall
            await shop.producer.publish_many(
                shop.topics.chargebacks,
                [
                    ChargebackReported(
                        order_id=placed[0], reported_at=utcnow(), reason="fraud_card_absent"
                    )
                ],
            )
            fraud = page.locator('#model-rows tr[data-model="fraud-v1"]')
            await expect(fraud).to_contain_text("champion", timeout=30_000)
            await expect(fraud.locator(".drift-state")).to_have_text(
                re.compile(r"^(ok|ALERT) \d+\.\d{3}$"), timeout=30_000
            )
            await expect(fraud.locator(".online")).to_contain_text(
                "champion: precision", timeout=30_000
            )
            await expect(fraud.locator(".online")).to_contain_text("1 chargebacks, 6 orders")
            await expect(page.locator("#models-note")).to_contain_text("1 chargebacks")

            # drill down into one order: its timeline and its attributions
            await first.click()
            await expect(page.locator("#detail-id")).to_have_text(placed[0])
            await expect(page.locator("#detail-timeline")).to_contain_text(
                "OrderPlaced", timeout=15_000
            )
            await expect(page.locator("#detail-scores")).to_contain_text("fraud")
            # server data went in as text: no element came from it
            assert await page.locator("#rows img, #rows script").count() == 0

            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            print(f"dashboard screenshot: {_keep(shot)}")
            assert errors == [], errors
        finally:
            await browser.close()

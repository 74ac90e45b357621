"""The whole shop on the real broker: intake → kitchen, payment, notification, saga, status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.app import create_app
from pizzashop.app.shop import Shop
from pizzashop.core.menu import load_menu
from pizzashop.core.settings import Settings
from services.mailer import SmtpSink
from tests.support.orders import order_body
from tests.support.shop import API_HEADERS, eventually

# The consumer runtime's promises hold on both transports (conftest.TRANSPORTS).
pytestmark = pytest.mark.both_transports

MENU = load_menu()


@pytest.fixture
async def shop(shop_settings: Settings) -> AsyncIterator[Shop]:
    async with Shop(shop_settings, shop_settings.kafka_bootstrap or "") as running:
        yield running


@pytest.fixture
async def http(shop: Shop) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(shop))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://shop", headers=API_HEADERS
    ) as client:
        yield client


async def status_of(http: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    response = await http.get(f"/orders/{order_id}")
    assert response.status_code == 200
    return dict(response.json())


async def test_an_order_is_paid_baked_and_receipted(
    http: httpx.AsyncClient, smtp_sink: SmtpSink
) -> None:
    response = await http.post("/orders", json=order_body("pepperoni_l", "cola"))
    assert response.status_code == 202
    order_id = response.json()["order_id"]

    # Payment, kitchen and notification each consume OrderPlaced on their own, so "ready" can
    # be seen before PaymentCaptured is folded in: wait for every step, not just the last.
    async def paid_ready_and_receipted() -> bool:
        state = await status_of(http, order_id)
        types = {e["event_type"] for e in state["timeline"]}
        return state["status"] == "ready" and {"PaymentCaptured", "ReceiptSent"} <= types

    await eventually(paid_ready_and_receipted)
    state = await status_of(http, order_id)
    types = [e["event_type"] for e in state["timeline"]]
    assert types[0] == "OrderPlaced"
    assert {"PaymentCaptured", "OrderAccepted", "OrderReady", "ReceiptSent"} <= set(types)
    assert "RefundIssued" not in types
    [mail] = [m for m in smtp_sink.messages if order_id in m.subject]
    assert mail.recipients == ("c-1@example.com",)
    assert "The Pepperoni Pizza" in mail.body and "Cola" in mail.body
    assert f"Total: {MENU['pepperoni_l'].price + MENU['cola'].price:.2f}" in mail.body


async def test_pineapple_is_rejected_refunded_and_the_customer_told(
    http: httpx.AsyncClient, smtp_sink: SmtpSink
) -> None:
    response = await http.post("/orders", json=order_body("hawaiian_l", customer="c-2"))
    order_id = response.json()["order_id"]

    async def refund_notice_sent() -> bool:
        state = await status_of(http, order_id)
        return "RefundNoticeSent" in {e["event_type"] for e in state["timeline"]}

    await eventually(refund_notice_sent)
    state = await status_of(http, order_id)
    assert state["status"] == "refunded" and state["final"]
    by_type = {e["event_type"]: e for e in state["timeline"]}
    assert by_type["OrderRejected"]["detail"]["reason"] == "we have standards"
    assert by_type["RefundIssued"]["detail"]["amount"] == str(MENU["hawaiian_l"].price)
    assert "OrderReady" not in by_type

    # The receipt (from OrderPlaced on the orders topic) and the refund notice (from RefundIssued
    # on order-events) come from different partitions, so either may be sent first.
    def mails() -> list[str]:
        return sorted(m.subject for m in smtp_sink.messages if order_id in m.subject)

    async def both_mails() -> bool:
        return len(mails()) >= 2

    await eventually(both_mails)
    assert mails() == [
        f"Refund for order {order_id}",
        f"Your Pizzashop receipt for order {order_id}",
    ]


async def test_many_orders_all_finish_exactly_once(
    http: httpx.AsyncClient, shop: Shop, smtp_sink: SmtpSink
) -> None:
    ids = []
    for i in range(30):
        skus = ("thai_ckn_m",) if i % 5 == 0 else ("pepperoni_m",)
        ids.append(
            (await http.post("/orders", json=order_body(*skus, customer=f"c-{i}"))).json()[
                "order_id"
            ]
        )

    async def all_final() -> bool:
        return not await shop.queries.unfinished(ids)

    await eventually(all_final)
    counts = await shop.queries.counts(ids)
    assert counts["OrderRejected"] == 6 and counts["OrderReady"] == 24
    assert counts["RefundIssued"] == 6

    async def all_receipts() -> bool:
        return sum(1 for m in smtp_sink.messages if m.subject.startswith("Your Pizzashop")) == 30

    await eventually(all_receipts)
    receipts = [m.subject for m in smtp_sink.messages if m.subject.startswith("Your Pizzashop")]
    assert len(set(receipts)) == len(receipts) == 30

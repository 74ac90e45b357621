"""The HTTP API, through ASGI, with Kafka unreachable: orders are still confirmed and kept."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from pizzashop.settings import Settings
from pizzashop.shop import Shop, Wiring
from services.menu import load_menu

MENU = load_menu()


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Shop]]:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{_dead_port()}", home=tmp_path)
    shop = Shop(
        settings, settings.kafka_bootstrap or "", Wiring(api=True, workers=(), create_topics=False)
    )
    async with shop:
        transport = httpx.ASGITransport(app=create_app(shop))
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as http:
            yield http, shop


def body(**overrides: Any) -> dict[str, Any]:
    price = MENU["four_cheese_l"].price
    return {
        "customer_id": "c-9",
        "customer_email": "c9@example.com",
        "items": [{"sku": "four_cheese_l", "quantity": 2, "unit_price": str(price)}],
        "total": str(price * 2),
        "payment": {"kind": "card", "card_fingerprint": "fp-abcdef12", "last4": "1111"},
        **overrides,
    }


async def test_order_is_confirmed_and_kept_while_kafka_is_down(
    client: tuple[httpx.AsyncClient, Shop],
) -> None:
    http, shop = client
    response = await http.post("/orders", json=body())
    assert response.status_code == 202
    assert response.json()["status"] == "Confirmed"
    order_id = response.json()["order_id"]
    assert await shop.relay.pending_count() == 1
    status = (await http.get(f"/orders/{order_id}")).json()
    assert status["status"] == "confirmed" and status["total"] == str(
        MENU["four_cheese_l"].price * 2
    )
    assert [e["event_type"] for e in status["timeline"]] == ["OrderPlaced"]
    health = (await http.get("/health")).json()
    assert health["outbox_pending"] == 1


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            {
                "items": [{"sku": "unicorn_xl", "quantity": 1, "unit_price": "9.99"}],
                "total": "9.99",
            },
            "unknown item 'unicorn_xl'",
        ),
        ({"total": "1.00"}, "does not match the items' sum"),
        ({"items": []}, "items"),
        ({"customer_email": "not-an-email"}, "customer_email"),
        ({"payment": {"kind": "card", "card_number": "4242424242424242"}}, "card_number"),
        (
            {
                "items": [{"sku": "four_cheese_l", "quantity": 1000, "unit_price": "17.95"}],
                "total": "17950.00",
            },
            "quantity",
        ),
    ],
)
async def test_bad_orders_get_422_with_a_clear_message(
    client: tuple[httpx.AsyncClient, Shop], overrides: dict[str, Any], fragment: str
) -> None:
    http, shop = client
    response = await http.post("/orders", json=body(**overrides))
    assert response.status_code == 422
    assert fragment in response.json()["detail"]
    assert await shop.relay.pending_count() == 0


async def test_unknown_order_is_404(client: tuple[httpx.AsyncClient, Shop]) -> None:
    http, _ = client
    response = await http.get("/orders/nope")
    assert response.status_code == 404 and "nope" in response.json()["detail"]


async def test_client_order_id_makes_retries_safe(client: tuple[httpx.AsyncClient, Shop]) -> None:
    http, shop = client
    first = await http.post("/orders", json=body(order_id="retry-1"))
    second = await http.post("/orders", json=body(order_id="retry-1"))
    assert first.status_code == second.status_code == 202
    assert second.json() == {"status": "Confirmed", "order_id": "retry-1", "duplicate": True}
    assert await shop.relay.pending_count() == 1


async def test_times_come_back_with_their_offset(client: tuple[httpx.AsyncClient, Shop]) -> None:
    http, _ = client
    order_id = (await http.post("/orders", json=body())).json()["order_id"]
    status = (await http.get(f"/orders/{order_id}")).json()
    assert status["placed_at"].endswith(("Z", "+00:00"))
    assert all(e["occurred_at"].endswith(("Z", "+00:00")) for e in status["timeline"])

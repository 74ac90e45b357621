"""The HTTP API, through ASGI, with Kafka unreachable: orders are still confirmed and kept;
keys, card numbers, masked e-mail addresses and the 422 body as the API really answers them."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from api.app import create_app
from ingest.outbox import outbox
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.menu import load_menu
from pizzashop.core.settings import ApiSettings, Settings
from services.status import orders, timeline
from tests.support.net import dead_port
from tests.support.orders import body

MENU = load_menu()
INSPECT_KEY = "inspect-secret-0123456789"
PLACE_KEY = "place-secret-0123456789ab"
KEYS = [
    {"name": "ops", "secret": INSPECT_KEY, "scopes": ["inspect"]},
    {"name": "till", "secret": PLACE_KEY, "scopes": ["place"]},
]
CARDS = ["4111111111111111", "4111 1111 1111 1111", "4242-4242-4242-4242"]

Client = tuple[httpx.AsyncClient, Shop]


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Opens a shop with no broker and an ASGI client on it, with the given API settings."""
    opened: list[tuple[Shop, httpx.AsyncClient]] = []

    async def make(**api: Any) -> Client:
        home = tmp_path / f"shop{len(opened)}"
        settings = Settings(
            kafka_bootstrap=f"127.0.0.1:{dead_port()}", home=home, api=ApiSettings(**api)
        )
        shop = Shop(
            settings,
            settings.kafka_bootstrap or "",
            Wiring(api=True, workers=(), create_topics=False),
        )
        await shop.__aenter__()
        transport = httpx.ASGITransport(app=create_app(shop))
        http = httpx.AsyncClient(transport=transport, base_url="http://shop")
        opened.append((shop, http))
        return http, shop

    yield make
    for shop, http in reversed(opened):
        await http.aclose()
        await shop.__aexit__(None, None, None)


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> Client:
    """A shop whose inspection key the client sends with every request."""
    http, shop = await make_client(keys=KEYS[:1])
    http.headers["X-API-Key"] = INSPECT_KEY
    return http, shop


async def _stored(shop: Shop) -> tuple[int, int]:
    """Rows in the orders table and the outbox."""
    async with shop.db.engine.connect() as conn:
        placed = (await conn.execute(select(func.count()).select_from(orders))).scalar_one()
        queued = (await conn.execute(select(func.count()).select_from(outbox))).scalar_one()
    return placed, queued


async def test_order_is_confirmed_and_kept_while_kafka_is_down(client: Client) -> None:
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
    ("overrides", "fragment", "loc"),
    [
        (
            {
                "items": [{"sku": "unicorn_xl", "quantity": 1, "unit_price": "9.99"}],
                "total": "9.99",
            },
            "unknown item 'unicorn_xl'",
            ["body", "items", 0, "sku"],
        ),
        ({"total": "1.00"}, "does not match the items' sum", ["body", "total"]),
        ({"items": []}, "items", ["body", "items"]),
        ({"customer_email": "not-an-email"}, "customer_email", ["body", "customer_email"]),
        (
            {"payment": {"kind": "card", "card_number": "4242424242424242"}},
            "card_number",
            ["body", "payment", "card_number"],
        ),
        (
            {
                "items": [{"sku": "four_cheese_l", "quantity": 1000, "unit_price": "17.95"}],
                "total": "17950.00",
            },
            "quantity",
            ["body", "items", 0, "quantity"],
        ),
    ],
)
async def test_bad_orders_get_422_with_every_problem_listed(
    client: Client, overrides: dict[str, Any], fragment: str, loc: list[str | int]
) -> None:
    http, shop = client
    response = await http.post("/orders", json=body(**overrides))
    assert response.status_code == 422
    answer = response.json()
    assert set(answer) == {"detail", "problems"}
    assert fragment in answer["detail"]
    assert loc in [p["loc"] for p in answer["problems"]]
    assert all(set(p) == {"loc", "msg", "type"} for p in answer["problems"])
    assert await shop.relay.pending_count() == 0


async def test_a_request_with_several_problems_gets_them_all(client: Client) -> None:
    http, _ = client
    items = [
        {"sku": "nope", "quantity": 1, "unit_price": "1.00"},
        {"sku": "four_cheese_l", "quantity": 21, "unit_price": "17.95"},
    ]
    response = await http.post("/orders", json=body(items=items, total="1.00"))
    problems = response.json()["problems"]
    assert [(p["loc"], p["type"]) for p in problems] == [
        (["body", "items", 0, "sku"], "unknown_item"),
        (["body", "items", 1, "quantity"], "quantity_too_large"),
    ]


@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize(
    ("where", "place"),
    [
        (["body", "customer_id"], lambda b, c: b | {"customer_id": c}),
        (["body", "device_id"], lambda b, c: b | {"device_id": c}),
        (["body", "order_id"], lambda b, c: b | {"order_id": c.replace(" ", "-")}),
        (["body", "customer_email"], lambda b, c: b | {"customer_email": f"{c}@example.com"}),
        (
            ["body", "delivery_address", "street"],
            lambda b, c: (
                b | {"delivery_address": {"street": f"{c} Main St", "city": "X", "postcode": "1"}}
            ),
        ),
        (
            ["body", "payment", "card_fingerprint"],
            lambda b, c: b | {"payment": {"card_fingerprint": c.replace(" ", ""), "last4": "1111"}},
        ),
    ],
)
async def test_a_card_number_in_any_field_is_refused_and_leaves_no_trace(
    client: Client, card: str, where: list[str], place: Callable[..., dict[str, Any]]
) -> None:
    http, shop = client
    response = await http.post("/orders", json=place(body(), card))
    assert response.status_code == 422, response.text
    problems = response.json()["problems"]
    assert [p["loc"] for p in problems] == [where]
    assert problems[0]["type"] == "card_number"
    digits = card.replace(" ", "").replace("-", "")
    assert digits not in response.text.replace(" ", "").replace("-", "")
    assert await _stored(shop) == (0, 0)


@pytest.mark.parametrize("fingerprint", ["abc", "fingerprint-x", "fp-xyz12345", "fp-1234"])
async def test_card_fingerprint_must_look_like_one(client: Client, fingerprint: str) -> None:
    http, _ = client
    payment = {"kind": "card", "card_fingerprint": fingerprint, "last4": "1111"}
    response = await http.post("/orders", json=body(payment=payment))
    assert response.status_code == 422
    assert response.json()["problems"][0]["loc"] == ["body", "payment", "card_fingerprint"]


async def test_demo_traffic_is_valid(client: Client) -> None:
    from pizzashop.app.traffic import OrderRequests

    http, _ = client
    for _, request in zip(range(30), OrderRequests(MENU, seed=3), strict=False):
        response = await http.post("/orders", json=request)
        assert response.status_code == 202, response.text


async def test_the_timeline_shows_recipients_masked(client: Client) -> None:
    http, shop = client
    order_id = (await http.post("/orders", json=body())).json()["order_id"]
    async with shop.db.engine.begin() as conn:
        await conn.execute(
            timeline.insert().values(
                event_id="e-receipt",
                order_id=order_id,
                event_type="ReceiptSent",
                occurred_at=__import__("datetime").datetime.now(__import__("datetime").UTC),
                detail=json.dumps({"recipient": "c9@example.com"}),
            )
        )
    response = await http.get(f"/orders/{order_id}")
    assert "c9@example.com" not in response.text
    receipt = next(e for e in response.json()["timeline"] if e["event_type"] == "ReceiptSent")
    assert receipt["detail"] == {"recipient": "c***@example.com"}


async def test_unknown_order_is_404(client: Client) -> None:
    http, _ = client
    response = await http.get("/orders/nope")
    assert response.status_code == 404 and "nope" in response.json()["detail"]


async def test_client_order_id_makes_retries_safe(client: Client) -> None:
    http, shop = client
    first = await http.post("/orders", json=body(order_id="retry-1"))
    second = await http.post("/orders", json=body(order_id="retry-1"))
    assert first.status_code == second.status_code == 202
    assert second.json() == {"status": "Confirmed", "order_id": "retry-1", "duplicate": True}
    assert await shop.relay.pending_count() == 1


async def test_times_come_back_with_their_offset(client: Client) -> None:
    http, _ = client
    order_id = (await http.post("/orders", json=body())).json()["order_id"]
    status = (await http.get(f"/orders/{order_id}")).json()
    assert status["placed_at"].endswith(("Z", "+00:00"))
    assert all(e["occurred_at"].endswith(("Z", "+00:00")) for e in status["timeline"])


# -- keys ---------------------------------------------------------------------------------
INSPECTION = ["/orders/o-1", "/orders/o-1/scores", "/scores", "/scores/summary"]


@pytest.mark.parametrize("path", INSPECTION)
async def test_inspection_needs_a_key_with_the_inspect_scope(
    make_client: Callable[..., Any], path: str
) -> None:
    http, _ = await make_client(keys=KEYS)
    missing = await http.get(path)
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
    assert missing.headers["www-authenticate"].startswith("ApiKey")
    wrong = await http.get(path, headers={"X-API-Key": "not-a-key-at-all-0000"})
    assert wrong.status_code == 401
    no_scope = await http.get(path, headers={"X-API-Key": PLACE_KEY})
    assert no_scope.status_code == 403 and "inspect" in no_scope.json()["detail"]
    allowed = await http.get(path, headers={"X-API-Key": INSPECT_KEY})
    assert allowed.status_code in (200, 404)


async def test_without_keys_nobody_may_inspect(make_client: Callable[..., Any]) -> None:
    http, _ = await make_client()
    assert (await http.get("/scores")).status_code == 401
    assert (await http.get("/health")).status_code == 200  # probes need no key


async def test_placing_is_open_until_a_key_has_the_place_scope(
    make_client: Callable[..., Any],
) -> None:
    open_http, _ = await make_client(keys=KEYS[:1])
    assert (await open_http.post("/orders", json=body())).status_code == 202
    http, shop = await make_client(keys=KEYS)
    assert (await http.post("/orders", json=body())).status_code == 401
    inspect_only = await http.post("/orders", json=body(), headers={"X-API-Key": INSPECT_KEY})
    assert inspect_only.status_code == 403
    placed = await http.post("/orders", json=body(), headers={"X-API-Key": PLACE_KEY})
    assert placed.status_code == 202
    assert await _stored(shop) == (1, 1)


async def test_keys_are_never_logged(
    make_client: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        http, _ = await make_client(keys=KEYS)
        for key in (INSPECT_KEY, PLACE_KEY, "wrong-key-0123456789"):
            await http.get("/scores", headers={"X-API-Key": key})
            await http.post("/orders", json=body(), headers={"X-API-Key": key})
    assert caplog.records  # the 403 is logged, by the key's name
    for secret in (INSPECT_KEY, PLACE_KEY, "wrong-key-0123456789"):
        assert secret not in caplog.text


# -- limits -------------------------------------------------------------------------------
async def test_placing_is_rate_limited_per_address_with_retry_after(
    make_client: Callable[..., Any],
) -> None:
    http, shop = await make_client(rate_limit_per_address="3/minute")
    answers = [(await http.post("/orders", json=body())).status_code for _ in range(5)]
    assert answers == [202, 202, 202, 429, 429]
    refused = await http.post("/orders", json=body())
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "too many orders" in refused.json()["detail"]
    assert await _stored(shop) == (3, 3)


async def test_a_key_has_its_own_limit_apart_from_the_address(
    make_client: Callable[..., Any],
) -> None:
    till = {"name": "till", "secret": PLACE_KEY, "scopes": ["place"], "rate_limit": "2/minute"}
    http, _ = await make_client(keys=[till], rate_limit_per_address="1/minute")
    keyed = [
        (await http.post("/orders", json=body(), headers={"X-API-Key": PLACE_KEY})).status_code
        for _ in range(3)
    ]
    assert keyed == [202, 202, 429]
    # anonymous guesses count against the address, before the key is checked
    anonymous = [(await http.post("/orders", json=body())).status_code for _ in range(2)]
    assert anonymous == [401, 429]


async def test_a_large_body_is_refused_with_413_before_it_is_parsed(
    make_client: Callable[..., Any],
) -> None:
    http, shop = await make_client(max_body_bytes=2048)
    padded = body(customer_id="c" * 64, device_id="d" * 64, items=[body()["items"][0]] * 40)
    declared = await http.post("/orders", json=padded)
    assert declared.status_code == 413 and "2048 bytes" in declared.json()["detail"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(10):
            yield b" " * 512

    streamed = await http.post(
        "/orders", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert await _stored(shop) == (0, 0)
    assert (await http.post("/orders", json=body())).status_code == 202

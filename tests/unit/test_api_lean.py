"""``POST /orders``'s short way (``api.app._lean_route``) answers exactly as FastAPI's own
handling does: the same status, body and headers for valid orders and for every kind of
refusal, and the same OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.settings import ApiSettings, Settings
from tests.support.net import dead_port
from tests.support.orders import body

PLACE_KEY = "place-secret-0123456789ab"
OTHER_KEY = "other-secret-0123456789ab"


def raw(value: Any) -> bytes:
    return json.dumps(value).encode()


VALID = body()
#: (body bytes, headers): what a client may send, good and bad.
CASES: list[tuple[bytes, dict[str, str]]] = [
    (raw(VALID), {}),
    (raw(body(order_id="o-lean-1")), {}),
    (raw(body(channel="app", device_id="d-1", currency="USD")), {}),
    (raw(body(delivery_address={"street": "1 Main", "city": "X", "postcode": "1"})), {}),
    (raw(VALID), {"content-type": "application/json; charset=utf-8"}),
    (raw(VALID), {"content-type": "Application/JSON"}),
    (raw(VALID), {"content-type": "application/vnd.api+json"}),
    (raw(VALID), {"content-type": "text/plain"}),
    (raw(VALID), {"content-type": ""}),
    (b"", {}),
    (b"{", {}),
    (b"[]", {}),
    (b"null", {}),
    (b"\xff\xfe{}", {}),
    (json.dumps(VALID).encode("utf-16"), {}),
    (b'{"customer_id": NaN}', {}),
    (raw(VALID).replace(b'"c-9"', b'"c-9", "customer_id": "c-8"'), {}),  # a repeated key
    (raw(body(items=[{"sku": "four_cheese_l", "quantity": 2.0, "unit_price": "1"}])), {}),
    (raw(body(items=[{"sku": "four_cheese_l", "quantity": "2", "unit_price": "21.50"}])), {}),
    (raw(body(items=[{"sku": "four_cheese_l", "quantity": True, "unit_price": "21.50"}])), {}),
    (raw(body(items=[{"sku": "nope", "quantity": 99, "unit_price": "1.999"}])), {}),
    (raw(body(total=43.0)), {}),
    (raw(body(total="1e3")), {}),
    (raw(body(extra="x")), {}),
    (raw(body(customer_id=4111111111111111)), {}),
    (raw(body(customer_id="4111 1111 1111 1111")), {}),
    (raw(body(note={"5555 5555 5555 4444": 1})), {}),  # as a key: named by its path
    (raw(body(items=[{"sku": "4111111111111111", "quantity": 4111111111111111}])), {}),
    (raw(body(customer_id="1234567890123456789012")), {}),  # a long id, not a card
    (raw(body(channel="fax")), {}),
    (raw(body(currency="EUR")), {}),
    (raw(body(payment={"kind": "card", "card_fingerprint": "4111111111111111"})), {}),
    (raw(VALID), {"x-api-key": "not-a-key"}),
    (raw(VALID), {"x-api-key": PLACE_KEY}),
    (raw(VALID), {"x-api-key": OTHER_KEY}),
    (b"{", {"x-api-key": OTHER_KEY}),
    (raw(body(extra="x")), {"x-api-key": PLACE_KEY}),
]


KEYS = [
    {"name": "till", "secret": PLACE_KEY, "scopes": ["place"]},
    {"name": "ops", "secret": OTHER_KEY, "scopes": ["inspect"]},
]


@pytest.fixture(params=["open", "keyed"])
async def clients(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """The API twice, each on a shop of its own: the short way, and FastAPI's own handling
    only. Placing is open, or (`keyed`) needs a key with the `place` scope."""
    keys = KEYS if request.param == "keyed" else []
    async with AsyncExitStack() as stack:
        opened = []
        for lean in (True, False):
            settings = Settings(
                kafka_bootstrap=f"127.0.0.1:{dead_port()}",
                home=tmp_path / str(lean),
                api=ApiSettings(rate_limit_per_address="", keys=keys),
            )
            wiring = Wiring(api=True, workers=(), create_topics=False)
            shop = await stack.enter_async_context(
                Shop(settings, settings.kafka_bootstrap or "", wiring)
            )
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(shop, lean=lean)),
                base_url="http://shop",
            )
            opened.append(await stack.enter_async_context(client))
        yield opened


def _answer(response: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    content = response.json()
    if response.status_code == 202:
        content["order_id"] = "*" if content["order_id"].startswith("ord-") else content["order_id"]
    headers = {k: v for k, v in response.headers.items() if k != "content-length"}
    return response.status_code, content, headers


@pytest.mark.parametrize("case", range(len(CASES)))
async def test_the_short_way_answers_as_fastapi_does(
    clients: list[httpx.AsyncClient], case: int
) -> None:
    content, headers = CASES[case]
    headers = {"content-type": "application/json", **headers}
    answers = []
    for client in clients:
        response = await client.post("/orders", content=content, headers=headers)
        assert b"4111" not in response.content and b"4242-" not in response.content
        answers.append(_answer(response))
    assert answers[0] == answers[1]


async def test_a_query_string_is_refused_alike(clients: list[httpx.AsyncClient]) -> None:
    answers = [_answer(await client.post("/orders?dry=1", json=VALID)) for client in clients]
    assert answers[0][0] == 422
    assert answers[0] == answers[1]


async def test_the_answer_is_byte_for_byte_fastapis(clients: list[httpx.AsyncClient]) -> None:
    for first in (True, False):  # placed, then a duplicate
        lean, generic = [
            await client.post(
                "/orders", json=body(order_id="o-bytes"), headers={"x-api-key": PLACE_KEY}
            )
            for client in clients
        ]
        assert lean.status_code == 202
        assert json.loads(lean.content)["duplicate"] is not first
        assert lean.content == generic.content
        assert lean.headers == generic.headers


async def test_the_openapi_document_is_the_same(clients: list[httpx.AsyncClient]) -> None:
    lean, generic = clients
    assert (await lean.get("/openapi.json")).json() == (await generic.get("/openapi.json")).json()

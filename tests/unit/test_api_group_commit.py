"""POST /orders through the group commit, over ASGI with Kafka unreachable: concurrent orders
share transactions, and every 202 is for an order already stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from api.app import create_app
from ingest.outbox import outbox
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.settings import Settings
from services.group_intake import GroupIntake
from services.status import orders
from tests.support.net import dead_port
from tests.support.orders import body


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{dead_port()}",
        home=tmp_path,
        api={"rate_limit_per_address": ""},
    )
    bootstrap = settings.kafka_bootstrap or ""
    async with Shop(settings, bootstrap, Wiring(workers=(), create_topics=False)) as shop:
        yield shop


async def is_stored(shop: Shop, order_id: str) -> bool:
    async with shop.db.engine.connect() as conn:
        found = await conn.execute(select(orders.c.order_id).where(orders.c.order_id == order_id))
        return found.first() is not None


@pytest.mark.parametrize("group_commit", [True, False])
async def test_every_202_is_for_a_stored_order(shop: Shop, group_commit: bool) -> None:
    transport = httpx.ASGITransport(app=create_app(shop, group_commit=group_commit))
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as http:

        async def place(i: int) -> str:
            response = await http.post("/orders", json=body(customer_id=f"c-{i}"))
            assert response.status_code == 202, response.text
            order_id: str = response.json()["order_id"]
            assert await is_stored(shop, order_id)  # already, as the 202 arrives
            return order_id

        ids = await asyncio.gather(*(place(i) for i in range(30)))
    assert len(set(ids)) == 30
    async with shop.db.engine.connect() as conn:
        rows = (await conn.execute(select(func.count()).select_from(outbox))).scalar_one()
    assert rows == 30


async def test_a_repeated_client_order_id_is_one_order_and_a_duplicate(shop: Shop) -> None:
    transport = httpx.ASGITransport(app=create_app(shop))
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as http:
        answers = await asyncio.gather(
            *(http.post("/orders", json=body(order_id="till-7-0001")) for _ in range(5))
        )
    assert [a.status_code for a in answers] == [202] * 5
    assert sorted(a.json()["duplicate"] for a in answers) == [False, True, True, True, True]
    async with shop.db.engine.connect() as conn:
        rows = (await conn.execute(select(func.count()).select_from(orders))).scalar_one()
    assert rows == 1


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("INSERT", {}, ConnectionError("connection was closed")),
        ConnectionRefusedError(111, "Connection refused"),
    ],
    ids=["dbapi", "refused"],
)
async def test_an_unavailable_database_is_a_503_with_retry_after(
    shop: Shop, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    async def down(*_args: object, **_kwargs: object) -> None:
        raise error

    monkeypatch.setattr(GroupIntake, "place", down)
    transport = httpx.ASGITransport(app=create_app(shop), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as http:
        response = await http.post("/orders", json=body(customer_id="c-down"))
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    assert "unavailable" in response.json()["detail"]

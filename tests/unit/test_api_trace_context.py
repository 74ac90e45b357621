"""With no tracer provider installed, the API keeps only the caller's trace context
(``api/trace_context.py``): an order still joins its caller's trace, as it did through the
instrumentation's no-op spans."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from sqlalchemy import select

from api.app import create_app
from ingest import tracing
from ingest.outbox import outbox
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.settings import ApiSettings, Settings
from tests.support.net import dead_port
from tests.support.orders import body


@pytest.fixture(params=[True, False], ids=["lean", "fastapi"])
async def shop(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Shop, bool]]:
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("a tracer provider is installed in this process")
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{dead_port()}",
        home=tmp_path,
        api=ApiSettings(rate_limit_per_address=""),
    )
    wiring = Wiring(api=True, workers=(), create_topics=False)
    async with Shop(settings, settings.kafka_bootstrap or "", wiring) as started:
        yield started, request.param


async def stored_traceparents(shop: Shop) -> list[str]:
    async with shop.db.engine.connect() as conn:
        return [row.headers for row in await conn.execute(select(outbox.c.headers))]


async def test_an_order_joins_its_callers_trace(shop: tuple[Shop, bool]) -> None:
    started, lean = shop
    caller = tracing.new_traceparent()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(started, lean=lean)), base_url="http://shop"
    ) as client:
        joined = await client.post("/orders", json=body(), headers={"traceparent": caller})
        alone = await client.post("/orders", json=body())
    assert (joined.status_code, alone.status_code) == (202, 202)
    first, second = await stored_traceparents(started)
    # The caller's span is the order's parent, as a no-op server span passes it through.
    assert caller in first
    # No caller: the order starts a trace of its own.
    assert caller.split("-")[1] not in second and "traceparent" in second

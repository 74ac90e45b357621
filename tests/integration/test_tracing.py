"""One order, one trace, on the real broker: the API's request span is the parent of the order's
record (through the outbox), and every consumer's span is a child of the span that produced the
record it handled."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from api.app import create_app
from pizzashop.app.shop import Shop
from pizzashop.core.menu import load_menu
from pizzashop.core.settings import Settings
from tests.support.shop import API_HEADERS, eventually

MENU = load_menu()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Finished spans in memory, from the process's tracer provider (installed here if none
    is; OpenTelemetry lets a process set it once, so it stays for later tests)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not isinstance(provider, TracerProvider):
        pytest.skip(f"the process's tracer provider is not the SDK's: {provider!r}")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # keeps nothing from later tests


@pytest.fixture
async def http(
    shop_settings: Settings, spans: InMemorySpanExporter
) -> AsyncIterator[httpx.AsyncClient]:
    async with Shop(shop_settings, shop_settings.kafka_bootstrap or "") as shop:
        transport = httpx.ASGITransport(app=create_app(shop))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://shop", headers=API_HEADERS
        ) as client:
            yield client


def by_hop(spans: InMemorySpanExporter, trace_id: int) -> dict[tuple[str, str], list[ReadableSpan]]:
    """Consumer spans of one trace by (flow, event type handled)."""
    hops: dict[tuple[str, str], list[ReadableSpan]] = defaultdict(list)
    for span in spans.get_finished_spans():
        if span.kind is SpanKind.CONSUMER and span.context.trace_id == trace_id:
            attributes = span.attributes or {}
            hops[(span.name.split(" ")[0], str(attributes["pizzashop.event_type"]))].append(span)
    return hops


async def test_one_order_is_one_trace_with_a_parent_at_every_hop(
    http: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    items = [{"sku": "pepperoni_l", "quantity": 1, "unit_price": str(MENU["pepperoni_l"].price)}]
    response = await http.post(
        "/orders",
        json={
            "customer_id": "c-trace",
            "customer_email": "c-trace@example.com",
            "items": items,
            "total": str(MENU["pepperoni_l"].price),
            "payment": {"kind": "card", "card_fingerprint": "fp-11112222", "last4": "2222"},
        },
    )
    assert response.status_code == 202
    order_id = response.json()["order_id"]
    [api] = [
        s
        for s in spans.get_finished_spans()
        if s.kind is SpanKind.SERVER and s.name == "POST /orders"
    ]
    trace_id = api.context.trace_id

    # cause → effect: (flow, event handled) and the hop whose span must be its parent
    chain = {
        ("kitchen", "OrderPlaced"): "api",
        ("payment", "OrderPlaced"): "api",
        ("notification", "OrderPlaced"): "api",
        ("enricher", "OrderPlaced"): "api",
        ("status", "OrderPlaced"): "api",
        ("oven", "OrderAccepted"): ("kitchen", "OrderPlaced"),
        ("status", "OrderAccepted"): ("kitchen", "OrderPlaced"),
        ("payment", "OrderReady"): ("oven", "OrderAccepted"),
        ("scores", "OrderEnriched"): ("enricher", "OrderPlaced"),
    }

    async def every_hop_traced() -> bool:
        return set(chain) <= set(by_hop(spans, trace_id))

    await eventually(every_hop_traced, timeout_s=60)
    hops = by_hop(spans, trace_id)
    for hop, cause in chain.items():
        parents = (
            {api.context.span_id}
            if cause == "api"
            else {
                s.context.span_id
                for s in hops[cause]  # type: ignore[index]
            }
        )
        for span in hops[hop]:
            assert span.parent is not None and span.parent.span_id in parents, (hop, cause)
            assert (span.attributes or {})["pizzashop.order_id"] == order_id
    # Nothing of this order landed outside its trace.
    strays = [
        s.name
        for s in spans.get_finished_spans()
        if (s.attributes or {}).get("pizzashop.order_id") == order_id
        and s.context.trace_id != trace_id
    ]
    assert strays == []

"""``pizzashop demo``: the whole shop on real parts, N orders through the HTTP API, one report.

Starts what is needed (a local Kafka unless one is configured or running, a loopback SMTP sink,
the API on a loopback port, every worker including the enricher; the default models are trained
first if the registry has none), places N realistic orders over HTTP, writes a few deliberately
malformed records straight onto the orders topic, waits until every confirmed order is final,
enriched and every email has arrived, and reports. Each run has its own topics and consumer
groups (a run id prefix), so runs never see each other's records.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import uvicorn

from api.app import create_app
from ingest.codec import decode, encode, unframe
from ingest.dlq import read_dead_letters
from ingest.events import Event, OrderEnriched, OrderItem, OrderPlaced, PaymentMethod, utcnow
from ingest.reader import read_topics
from pizzashop.app.kafka import kafka, schema_registry
from pizzashop.app.shop import Shop
from pizzashop.app.traffic import OrderRequests
from pizzashop.core.errors import PizzashopError
from pizzashop.core.settings import Settings
from services.mailer import SmtpSink

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class DemoReport:
    orders_submitted: int = 0
    orders_confirmed: int = 0
    api_errors: int = 0
    accepted: int = 0
    rejected: int = 0
    ready: int = 0
    receipts_emailed: int = 0
    refunds_issued: int = 0
    refund_notices_emailed: int = 0
    enriched: int = 0
    enriched_records: int = 0
    flagged: int = 0
    cancelled: int = 0
    degraded_scores: int = 0
    dlq_records: int = 0
    malformed_injected: int = 0
    lost: int = 0
    duplicates_skipped: int = 0
    placing_seconds: float = 0.0
    settle_seconds: float = 0.0
    orders_per_second: float = 0.0
    p50_confirm_ms: float = 0.0
    p99_confirm_ms: float = 0.0
    bootstrap: str = ""
    schema_registry: str | None = None
    registry_framed_records: int = 0
    plain_records: int = 0
    run_id: str = ""
    timed_out: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def malformed_records(order_id_prefix: str) -> list[tuple[bytes | None, list[tuple[str, bytes]]]]:
    """Records no consumer can accept, each broken in a different way."""
    good = OrderPlaced(
        order_id=f"{order_id_prefix}-bad-total",
        customer_id="c-x",
        customer_email="x@example.com",
        items=(OrderItem(sku="pepperoni_m", name="P", size="M", quantity=1, unit_price=12),),
        total=12,
        placed_at=utcnow(),
        payment=PaymentMethod(card_fingerprint="fingerprint-x", last4="0000"),
    )
    headers = encode(good).headers
    body = json.dumps({**good.model_dump(mode="json"), "total": "99.00"})
    return [
        (b"{not json", headers),  # bytes that are not JSON
        (body.encode(), headers),  # total does not match the items
        (good.model_dump_json().encode(), [h for h in headers if h[0] != "event-type"]),
        (b'{"x": 1}', [("event-type", b"PizzaTeleported"), ("schema-version", b"1")]),
        (None, headers),  # empty value
    ]


@contextlib.asynccontextmanager
async def serve(app: Any, host: str) -> AsyncIterator[str]:
    config = uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task


async def run_demo(
    settings: Settings,
    orders: int,
    *,
    timeout_s: float = 180.0,
    concurrency: int = 16,
    with_registry: bool = True,
) -> DemoReport:
    run_id = uuid.uuid4().hex[:8]
    report = DemoReport(run_id=run_id)
    await asyncio.to_thread(ensure_models, settings)
    async with contextlib.AsyncExitStack() as stack:
        bootstrap = await stack.enter_async_context(kafka(settings))
        sink = await stack.enter_async_context(SmtpSink())
        if with_registry:
            # Every event then goes out framed, its schema registered and checked.
            report.schema_registry = await stack.enter_async_context(schema_registry(settings))
            settings = settings.model_copy(
                update={
                    "schema_registry": settings.schema_registry.model_copy(
                        update={"url": report.schema_registry}
                    )
                }
            )
        report.bootstrap = bootstrap
        run_settings = settings.model_copy(
            update={
                "topic_prefix": f"{settings.topic_prefix}demo-{run_id}.",
                "group_prefix": f"{settings.group_prefix}.demo-{run_id}",
                "smtp": settings.smtp.model_copy(update={"host": sink.host, "port": sink.port}),
                # The demo is one client placing many orders: no per-address limit.
                "api": settings.api.model_copy(update={"rate_limit_per_address": ""}),
            }
        )
        async with (
            Shop(run_settings, bootstrap) as shop,
            serve(create_app(shop), settings.api_host) as url,
        ):
            confirmed = await _place_orders(url, shop, orders, concurrency, report)
            await _inject_malformed(shop, report)
            began = time.monotonic()
            await _settle(shop, sink, confirmed, report, timeout_s)
            report.settle_seconds = round(time.monotonic() - began, 2)
            await _count(shop, sink, confirmed, report)
            await _count_enrichments(shop, confirmed, report)
            await _count_framing(shop, report)
            report.duplicates_skipped = sum(r.stats.duplicates for r in shop.runtimes.values())
    return report


async def _place_orders(
    url: str, shop: Shop, orders: int, concurrency: int, report: DemoReport
) -> list[str]:
    requests = list(itertools.islice(OrderRequests(shop.menu, seed=int(time.time())), orders))
    confirmed: list[str] = []
    latencies: list[float] = []
    slots = asyncio.Semaphore(concurrency)

    async def place(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
        async with slots:
            began = time.perf_counter()
            response = await client.post("/orders", json=body)
            latencies.append((time.perf_counter() - began) * 1000)
        report.orders_submitted += 1
        if response.status_code == 202 and response.json()["status"] == "Confirmed":
            confirmed.append(response.json()["order_id"])
        else:
            report.api_errors += 1
            logger.warning("order refused: %s %s", response.status_code, response.text)

    began = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(place(client, body) for body in requests))
    report.placing_seconds = round(time.monotonic() - began, 2)
    report.orders_confirmed = len(confirmed)
    report.orders_per_second = round(orders / max(report.placing_seconds, 1e-9), 1)
    latencies.sort()
    if latencies:
        report.p50_confirm_ms = round(latencies[len(latencies) // 2], 2)
        report.p99_confirm_ms = round(
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2
        )
    return confirmed


async def _count_enrichments(shop: Shop, confirmed: list[str], report: DemoReport) -> None:
    """Read ``orders.enriched`` whole: how many ``OrderEnriched`` each order got, and how."""
    ours = set(confirmed)
    enriched = [
        event
        for record in await read_topics(
            shop.bootstrap, [shop.topics.enriched], client_options=shop.client_options
        )
        if (event := _decode_or_none(record.value, list(record.headers))) is not None
        and isinstance(event, OrderEnriched)
        and event.order_id in ours
    ]
    report.enriched_records = len(enriched)
    report.flagged = sum(1 for e in enriched if e.flagged)
    report.degraded_scores = sum(
        e.fraud.degraded + e.anomaly.degraded + bool(e.upsell and e.upsell.degraded)
        for e in enriched
    )


def _decode_or_none(value: bytes | None, headers: list[tuple[str, bytes]]) -> Event | None:
    try:
        return decode(value, headers)
    except PizzashopError:
        return None


def ensure_models(settings: Settings) -> None:
    """Train the default models once, if the registry has none (about 20 s here)."""
    from models.registry import Registry
    from models.training import train

    if Registry(settings.resolved_registry_dir).latest("fraud") is None:
        logger.warning("no models in %s yet: training the defaults", settings.resolved_registry_dir)
        train(settings.resolved_registry_dir, progress=False)


async def _inject_malformed(shop: Shop, report: DemoReport) -> None:
    for value, headers in malformed_records(f"demo-{report.run_id}"):
        await shop.producer.send_raw(shop.topics.orders, value, key=b"malformed", headers=headers)
        report.malformed_injected += 1


async def _settle(
    shop: Shop, sink: SmtpSink, confirmed: list[str], report: DemoReport, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await _count(shop, sink, confirmed, report)
        if (
            report.lost == 0
            and report.receipts_emailed >= report.orders_confirmed
            and report.refund_notices_emailed >= report.refunds_issued
            and report.enriched >= report.orders_confirmed
        ):
            # Reading the dead-letter topics whole is the costly check: only once the rest holds.
            await _count_dead_letters(shop, report)
            if report.dlq_records >= report.malformed_injected:
                return
        await asyncio.sleep(0.5)
    await _count_dead_letters(shop, report)
    report.timed_out = True


async def _count(shop: Shop, sink: SmtpSink, confirmed: list[str], report: DemoReport) -> None:
    counts = await shop.queries.counts(confirmed)
    report.accepted = counts.get("OrderAccepted", 0)
    report.rejected = counts.get("OrderRejected", 0)
    report.ready = counts.get("OrderReady", 0)
    report.refunds_issued = counts.get("RefundIssued", 0)
    report.cancelled = counts.get("OrderCancelled", 0)
    report.enriched = await shop.scores.count(confirmed)
    report.lost = len(await shop.queries.unfinished(confirmed))
    ours = set(confirmed)
    receipts = {
        m.subject.rsplit(" ", 1)[-1]
        for m in sink.messages
        if m.subject.startswith("Your Pizzashop receipt")
    }
    refunds = {
        m.subject.rsplit(" ", 1)[-1]
        for m in sink.messages
        if m.subject.startswith("Refund for order")
    }
    report.receipts_emailed = len(receipts & ours)
    report.refund_notices_emailed = len(refunds & ours)


async def _count_framing(shop: Shop, report: DemoReport) -> None:
    """How many records on the shop's topics carry a registry frame (magic byte and id)."""
    topics = [shop.topics.orders, shop.topics.order_events, shop.topics.enriched]
    for record in await read_topics(
        shop.bootstrap,
        topics,
        isolation_level="read_committed",
        client_options=shop.client_options,
    ):
        if record.value and unframe(record.value)[0] is not None:
            report.registry_framed_records += 1
        else:
            report.plain_records += 1


async def _count_dead_letters(shop: Shop, report: DemoReport) -> None:
    """Distinct records dead-lettered: each consumer group letters a bad record on its own."""
    letters = await read_dead_letters(
        shop.bootstrap, shop.topics.dlq_topics(), client_options=shop.client_options
    )
    report.dlq_records = len(
        {(d.original_topic, d.original_partition, d.original_offset) for d in letters}
    )

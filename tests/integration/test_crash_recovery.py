"""A worker process killed with SIGKILL mid-stream loses no order and repeats no refund."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from ingest.codec import H_EVENT_TYPE, H_ORDER_ID, header
from ingest.reader import read_topics
from ingest.topics import Topics
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.settings import Settings
from services.mailer import SmtpSink
from tests.support.orders import order_body
from tests.support.shop import API_HEADERS, eventually, spawn_workers

# The consumer runtime's promises hold on both transports (conftest.TRANSPORTS).
pytestmark = pytest.mark.both_transports


async def _start_workers(settings: Settings, log: Path) -> asyncio.subprocess.Process:
    return await spawn_workers(
        settings,
        "payment,saga-deadline,kitchen,oven,notification",
        log,
        PIZZASHOP_COOK_SECONDS="1.0",
        PIZZASHOP_CONSUMER__BATCH_MAX="5",
        # The mails the killed worker had claimed pass to its replacement after this.
        PIZZASHOP_SMTP__CLAIM_LEASE_S="3",
    )


async def test_sigkilled_workers_lose_no_order(
    shop_settings: Settings, smtp_sink: SmtpSink
) -> None:
    wiring = Wiring(api=True, workers=("status",))
    async with Shop(shop_settings, shop_settings.kafka_bootstrap or "", wiring) as shop:
        transport = httpx.ASGITransport(app=create_app(shop))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://shop", headers=API_HEADERS
        ) as http:
            log = shop_settings.home / "workers.log"
            first = await _start_workers(shop_settings, log)
            ids = []
            for i in range(40):
                sku = "hawaiian_m" if i % 4 == 0 else "pepperoni_m"
                response = await http.post("/orders", json=order_body(sku, customer=f"c-{i}"))
                ids.append(response.json()["order_id"])

            async def some_done() -> bool:
                counts = await shop.queries.counts(ids)
                return counts.get("OrderAccepted", 0) >= 5

            await eventually(some_done, timeout_s=60)
            first.send_signal(signal.SIGKILL)
            await first.wait()
            unfinished_at_crash = len(await shop.queries.unfinished(ids))

            second = await _start_workers(shop_settings, log)
            try:

                async def all_final() -> bool:
                    assert second.returncode is None, "workers died:\n" + log.read_text()[-3000:]
                    return not await shop.queries.unfinished(ids)

                await eventually(all_final, timeout_s=90)

                async def all_mail_sent() -> bool:
                    subjects = Counter(m.subject for m in smtp_sink.messages)
                    receipts = [s for s in subjects if s.startswith("Your")]
                    refunds = [s for s in subjects if s.startswith("Refund")]
                    return len(receipts) == len(ids) and len(refunds) == 10

                await eventually(all_mail_sent, timeout_s=30)
                counts = await shop.queries.counts(ids)
            finally:
                second.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(second.wait(), 30) == 0

    assert unfinished_at_crash > 0, "the crash came too late to test anything"
    assert counts["OrderRejected"] == counts["RefundIssued"] == 10
    assert counts["OrderReady"] == 30
    # Counted per key, not as sets, so that a second email or a second record shows.
    per_subject = Counter(m.subject for m in smtp_sink.messages)
    per_message = Counter((m.subject, m.message_id) for m in smtp_sink.messages)
    assert len(per_subject) == len(ids) + 10
    # A resend after the crash must carry the first one's Message-ID (the receiver drops it)...
    assert len(per_message) == len(per_subject), "a resend with a new Message-ID"
    # ...and only the mails between their 250 and their sent mark when the process died (at
    # most smtp.max_unconfirmed) may go out twice.
    resent = {subject: n for subject, n in per_subject.items() if n > 1}
    resends = sum(resent.values()) - len(resent)
    bound = shop_settings.smtp.max_unconfirmed
    assert resends <= bound, f"{resends} emails sent twice after one crash: {sorted(resent)}"
    events = await read_topics(
        shop_settings.kafka_bootstrap or "",
        [Topics(shop_settings.topic_prefix).order_events],
        isolation_level="read_committed",
    )
    per_order_and_type = Counter(
        (header(r.headers, H_ORDER_ID), header(r.headers, H_EVENT_TYPE)) for r in events
    )
    repeated = {key: n for key, n in per_order_and_type.items() if n > 1}
    assert not repeated, repeated
    assert sum(1 for (_, t) in per_order_and_type if t == "RefundIssued") == 10

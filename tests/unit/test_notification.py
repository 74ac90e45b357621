"""Receipts go out once: a mail already sent is not sent again, and a mail another worker is
sending (two workers holding one batch across a rebalance) waits for that worker's mark."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from ingest.consumer import Delivery
from pizzashop.core.database import Database
from pizzashop.core.errors import DeliveryFailed
from services.notification import Notifier
from tests.support.orders import make_order


class SlowMailer:
    """Stands in for the SMTP pool: records each send; ``gate`` holds sends until set."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def send(
        self,
        *,
        to: str,
        subject: str,
        body: str,
        message_id: str,
        accepted: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.entered.set()
        await self.gate.wait()
        self.sent.append(message_id)
        if accepted is not None:
            await accepted()


def delivery(offset: int = 0) -> Delivery:
    return Delivery("orders", 0, offset, ORDER, [], 0)


ORDER = make_order()


async def test_a_redelivered_order_sends_no_second_receipt(db: Database) -> None:
    mailer = SlowMailer()
    notifier = Notifier(db, mailer, "events")  # type: ignore[arg-type]
    first = await notifier.handle([delivery()])
    again = await notifier.handle([delivery(1)])
    assert len(mailer.sent) == 1
    assert [o.event.event_id for o in first] == [o.event.event_id for o in again]


async def test_a_mail_another_worker_is_sending_waits_for_its_mark(db: Database) -> None:
    mailer = SlowMailer()
    mailer.gate.clear()
    a = Notifier(db, mailer, "events")  # type: ignore[arg-type]
    b = Notifier(db, mailer, "events")  # type: ignore[arg-type]
    sending = asyncio.create_task(a.handle([delivery()]))
    await asyncio.wait_for(mailer.entered.wait(), 5)
    with pytest.raises(DeliveryFailed, match="another worker"):
        await b.handle([delivery()])  # claimed by a: b must not send it too
    mailer.gate.set()
    await sending
    confirmed = await b.handle([delivery()])  # a's mark is there now: b only confirms
    assert len(mailer.sent) == 1
    assert [o.event.event_type for o in confirmed] == ["ReceiptSent"]


async def test_a_claim_of_a_dead_sender_passes_on_after_the_lease(db: Database) -> None:
    mailer = SlowMailer()
    mailer.gate.clear()
    dead = Notifier(db, mailer, "events", claim_lease_s=0.0)  # type: ignore[arg-type]
    stuck = asyncio.create_task(dead.handle([delivery()]))
    await asyncio.wait_for(mailer.entered.wait(), 5)
    stuck.cancel()  # as if its process were killed between claim and send
    live_mailer = SlowMailer()
    live = Notifier(db, live_mailer, "events", claim_lease_s=0.0)  # type: ignore[arg-type]
    await live.handle([delivery()])
    assert len(live_mailer.sent) == 1

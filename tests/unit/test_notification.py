"""Receipts go out once: a mail already sent is not sent again, a mail another worker is
sending (two workers holding one batch across a rebalance) waits for that worker's mark, and a
slow sender whose claim passed on does not send it after all; a refused mail is free at once."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ingest.consumer import Delivery
from ingest.events import derived_event_id
from pizzashop.core.database import Database
from pizzashop.core.errors import DeliveryFailed, NotSent
from services.notification import Notifier, email_intents
from tests.support.orders import make_order


class SlowMailer:
    """Stands in for the SMTP pool: records each send; ``gate`` holds sends until set."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.refuse = 0  # the next N sends are refused (certainly not sent)
        self._unconfirmed = asyncio.Lock()

    async def send(
        self,
        *,
        to: str,
        subject: str,
        body: str,
        message_id: str,
        accepted: Callable[[], Awaitable[None]] | None = None,
        before_data: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.entered.set()
        await self.gate.wait()
        if self.refuse:
            self.refuse -= 1
            raise NotSent("451 try again later")
        async with self._unconfirmed:  # as the real mailer: one between hand-over and mark
            if before_data is not None:
                await before_data()
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


async def test_a_refused_mail_is_released_for_the_next_sender_at_once(db: Database) -> None:
    mailer = SlowMailer()
    mailer.refuse = 1
    a = Notifier(db, mailer, "events", claim_lease_s=600)  # type: ignore[arg-type]
    with pytest.raises(NotSent):
        await a.handle([delivery()])
    b = Notifier(db, mailer, "events", claim_lease_s=600)  # type: ignore[arg-type]
    await b.handle([delivery()])  # not "being sent by another worker" for ten minutes
    assert len(mailer.sent) == 1


async def test_a_slow_sender_whose_claim_passed_on_does_not_send(db: Database) -> None:
    slow_mailer = SlowMailer()
    slow_mailer.gate.clear()
    slow = Notifier(db, slow_mailer, "events", claim_lease_s=0.3, smtp_timeout_s=0.1)  # type: ignore[arg-type]
    stalled = asyncio.create_task(slow.handle([delivery()]))
    await asyncio.wait_for(slow_mailer.entered.wait(), 5)
    await asyncio.sleep(0.4)  # its claim has expired: a rebalance hands the batch on
    mailer = SlowMailer()
    other = Notifier(db, mailer, "events", claim_lease_s=0.3, smtp_timeout_s=0.1)  # type: ignore[arg-type]
    await other.handle([delivery()])
    slow_mailer.gate.set()  # the stalled sender wakes up before handing the mail over
    with pytest.raises(NotSent, match="another sender"):
        await stalled
    assert mailer.sent == [ORDER_RECEIPT_ID] and slow_mailer.sent == []


ORDER_RECEIPT_ID = derived_event_id(ORDER.event_id, "ReceiptSent")


async def test_a_mark_the_database_could_not_take_stops_sending_and_is_written_first(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailer = SlowMailer()
    notifier = Notifier(db, mailer, "events", claim_lease_s=0.0)  # type: ignore[arg-type]
    write = notifier._write_marks
    down = True

    async def flaky(conn: AsyncConnection, message_ids: set[str]) -> None:
        if down and message_ids:
            raise OSError("the database is away")
        await write(conn, message_ids)

    monkeypatch.setattr(notifier, "_write_marks", flaky)
    if db.dialect == "sqlite":  # the group-committed marks take one hand-off there
        run_sqlite = db.run_sqlite

        async def flaky_sqlite(work: Callable[[sqlite3.Connection], None], *, write: bool) -> None:
            if down and write:
                raise OSError("the database is away")
            await run_sqlite(work, write=write)

        monkeypatch.setattr(db, "run_sqlite", flaky_sqlite)
    first, second = make_order(), make_order()
    batch = [Delivery("orders", 0, 0, first, [], 0), Delivery("orders", 0, 1, second, [], 0)]
    with pytest.raises((OSError, NotSent)):
        await notifier.handle(batch)
    # One mail went out and could not be marked; the other was not handed over after it.
    assert len(mailer.sent) == 1
    down = False
    confirmed = await notifier.handle(batch)  # the mark is written first: no second copy
    assert sorted(mailer.sent) == sorted(
        derived_event_id(o.event_id, "ReceiptSent") for o in (first, second)
    )
    assert len(confirmed) == 2


async def test_a_batch_is_marked_sent_with_its_time_and_a_redelivery_sends_nothing(
    db: Database,
) -> None:
    mailer = SlowMailer()
    notifier = Notifier(db, mailer, "events")  # type: ignore[arg-type]
    orders = [make_order() for _ in range(30)]
    batch = [Delivery("orders", 0, i, o, [], 0) for i, o in enumerate(orders)]
    assert len(await notifier.handle(batch)) == 30
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(email_intents))).all()
    assert len(rows) == 30
    assert all(r.sent_at is not None and r.sent_at.year >= 2024 for r in rows)
    assert await notifier.handle(batch) and len(mailer.sent) == 30  # all marked: none again

"""Notification: emails the receipt of every placed order and a notice of every refund.

Consumes ``OrderPlaced`` in its own consumer group (it never waits for the kitchen) and
``RefundIssued``. E-mail is an effect outside Kafka, so it is made idempotent by hand: each
message's id is derived from its cause (the confirmation event's id, also its ``Message-ID``),
its intent is recorded before it is sent, and it is marked sent right after the SMTP server
took it. A redelivered event, a retried batch or a replay finds the mark and sends nothing.
The one window left is a crash between the server's 250 and the mark: the message then goes
out twice, both times with the same ``Message-ID``, which mail systems use to drop the copy.

The confirmations (``ReceiptSent``, ``RefundNoticeSent``) are returned as outputs, so they are
published in the runtime's transaction with the offsets.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Column, DateTime, String, Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ingest.consumer import Delivery, Handler, Output
from ingest.events import (
    Event,
    OrderPlaced,
    ReceiptSent,
    RefundIssued,
    RefundNoticeSent,
    derived_event_id,
    utcnow,
)
from ingest.flows import FlowContext, flow
from ingest.group_commit import GroupCommitter
from ingest.topics import ORDER_EVENTS, ORDERS
from pizzashop.core.database import Database, chunked, metadata
from pizzashop.core.errors import DeliveryFailed, NotSent
from services.mailer import Mailer

logger = logging.getLogger(__name__)

email_intents = Table(
    "email_intents",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("order_id", String(64), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    # Who is sending it now, and since when: one sender at a time, even when a rebalance lets
    # two workers hold the same batch; a claim older than the lease passes on (its holder died).
    Column("claim", String(36), nullable=True),
    Column("claimed_at", DateTime(timezone=True), nullable=True),
)


def render_receipt(order: OrderPlaced) -> tuple[str, str]:
    lines = [f"Thank you for your order {order.order_id}.", ""]
    for item in order.items:
        lines.append(
            f"  {item.quantity} x {item.name} ({item.size})  {item.unit_price * item.quantity:.2f}"
        )
    lines += ["", f"Total: {order.total:.2f} {order.currency}", "Status: Confirmed"]
    return f"Your Pizzashop receipt for order {order.order_id}", "\n".join(lines)


def render_refund(refund: RefundIssued) -> tuple[str, str]:
    body = (
        f"We refunded {refund.amount:.2f} {refund.currency} for order {refund.order_id}.\n"
        f"Reason: {refund.reason}.\n"
    )
    return f"Refund for order {refund.order_id}", body


@dataclass(slots=True)
class _Claim:
    """The mails one call holds (``ids``, those not yet sent), under ``token`` since
    ``renewed_at`` (monotonic); renewed before a hand-over once older than ``renew_after``."""

    token: str
    ids: set[str]
    renewed_at: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Notifier(Handler):
    event_types = (OrderPlaced, RefundIssued)

    def __init__(
        self,
        db: Database,
        mailer: Mailer,
        events_topic: str,
        *,
        claim_lease_s: float = 60.0,
        smtp_timeout_s: float = 10.0,
    ) -> None:
        self._db = db
        self._mailer = mailer
        self._topic = events_topic
        self._lease = timedelta(seconds=claim_lease_s)
        # A hand-over checked at this age ends (one SMTP timeout later) before the lease does,
        # so a sender that was slow (a full batch, a stalled server) never sends a mail whose
        # claim has passed on to another worker; it renews the claim instead.
        self._renew_after = max(0.0, claim_lease_s - 1.5 * smtp_timeout_s)
        # Mails the server took whose sent mark could not be written (the database away):
        # written before anything else, and no mail is handed over while they cannot be.
        self._unmarked: set[str] = set()
        # Marks of mails accepted at about the same time share one transaction: with several
        # mails between their 250 and their mark (smtp.max_unconfirmed), a transaction per
        # mark made the database, not SMTP, the pace of every send.
        self._marks: GroupCommitter[str, None] = GroupCommitter(self._commit_marks)

    async def handle(self, batch: Sequence[Delivery]) -> list[Output]:
        confirmations = {d.event.event_id: _confirmation(d.event) for d in batch}
        claim, elsewhere = await self._claim(batch, confirmations)
        results = await asyncio.gather(
            *(
                self._send(d.event, confirmations[d.event.event_id], claim)
                for d in batch
                if confirmations[d.event.event_id].event_id in claim.ids
            ),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if elsewhere:
            # Another worker is sending these right now (it held the batch across a
            # rebalance): wait for its mark rather than send them a second time.
            failures.append(
                DeliveryFailed(f"{len(elsewhere)} mail(s) being sent by another worker")
            )
        if failures:
            # Those that went out are marked; the runtime retries the rest one by one.
            raise failures[0]
        return [d.emit(self._topic, confirmations[d.event.event_id]) for d in batch]

    async def _claim(
        self, batch: Sequence[Delivery], confirmations: dict[str, Event]
    ) -> tuple[_Claim, set[str]]:
        """Record each message's intent and claim the unsent ones nobody else holds; returns
        the claim on those this call may send and the ids another sender holds (the rest are
        sent)."""
        rows = [
            {
                "message_id": confirmations[d.event.event_id].event_id,
                "order_id": d.event.order_id,
                "kind": confirmations[d.event.event_id].event_type,
            }
            for d in batch
        ]
        claim = _Claim(str(uuid.uuid4()), set(), time.monotonic())
        elsewhere: set[str] = set()
        async with self._db.engine.begin() as conn:
            await conn.execute(self._db.insert_ignore(email_intents), rows)
            pending = set(self._unmarked)
            await self._write_marks(conn, pending)
            unsent = await self._take(conn, claim.token, [r["message_id"] for r in rows])
        self._unmarked -= pending
        for message_id, holder in unsent.items():
            (claim.ids if holder == claim.token else elsewhere).add(message_id)
        return claim, elsewhere

    async def _take(self, conn: AsyncConnection, token: str, ids: list[str]) -> dict[str, str]:
        """Claim (or renew) the unsent mails among ``ids`` that are free, expired or already
        ours; returns each unsent mail's holder."""
        now = utcnow()
        holders: dict[str, str] = {}
        for chunk in chunked(ids):
            await conn.execute(
                update(email_intents)
                .where(
                    email_intents.c.message_id.in_(chunk),
                    email_intents.c.sent_at.is_(None),
                    email_intents.c.claim.is_(None)
                    | (email_intents.c.claim == token)
                    | (email_intents.c.claimed_at < now - self._lease),
                )
                .values(claim=token, claimed_at=now)
            )
            found = await conn.execute(
                select(email_intents.c.message_id, email_intents.c.claim).where(
                    email_intents.c.message_id.in_(chunk), email_intents.c.sent_at.is_(None)
                )
            )
            holders.update({row.message_id: row.claim for row in found})
        return holders

    async def _hold(self, claim: _Claim, message_id: str) -> None:
        """Right before a hand-over: make sure ``message_id`` is still ours, renewing the claim
        on the whole remainder in one statement when it is getting old."""
        async with claim.lock:
            if self._unmarked:
                pending = set(self._unmarked)
                try:
                    async with self._db.engine.begin() as conn:
                        await self._write_marks(conn, pending)
                except Exception as exc:
                    raise NotSent(
                        f"{len(pending)} sent mark(s) cannot be written ({exc!r}): no mail is "
                        "handed over until they are"
                    ) from exc
                self._unmarked -= pending
            if time.monotonic() - claim.renewed_at >= self._renew_after:
                async with self._db.engine.begin() as conn:
                    holders = await self._take(conn, claim.token, sorted(claim.ids))
                claim.ids = {m for m, holder in holders.items() if holder == claim.token}
                claim.renewed_at = time.monotonic()
            if message_id not in claim.ids:
                raise NotSent(f"mail {message_id} passed to another sender")

    async def _release(self, claim: _Claim, message_id: str) -> None:
        """Give up the claim on a mail that certainly did not go out, so a retry (by anyone)
        may send it at once rather than after the lease."""
        claim.ids.discard(message_id)
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(email_intents)
                .where(
                    email_intents.c.message_id == message_id,
                    email_intents.c.claim == claim.token,
                    email_intents.c.sent_at.is_(None),
                )
                .values(claim=None, claimed_at=None)
            )

    async def _send(self, event: Event, confirmation: Event, claim: _Claim) -> None:
        if isinstance(event, OrderPlaced):
            subject, body = render_receipt(event)
            to = event.customer_email
        else:
            assert isinstance(event, RefundIssued)
            subject, body = render_refund(event)
            to = event.customer_email
        message_id = confirmation.event_id
        try:
            await self._mailer.send(
                to=to,
                subject=subject,
                body=body,
                message_id=message_id,
                before_data=functools.partial(self._hold, claim, message_id),
                accepted=functools.partial(self._mark_sent, claim, message_id),
            )
        except NotSent:
            try:
                await self._release(claim, message_id)
            except Exception:  # the database is away: the claim lapses after its lease
                logger.warning("releasing the claim on mail %s failed", message_id, exc_info=True)
            raise

    async def _mark_sent(self, claim: _Claim, message_id: str) -> None:
        claim.ids.discard(message_id)
        try:
            await self._marks.submit(message_id)
        except Exception:
            self._unmarked.add(message_id)  # sent: recorded as soon as the database answers
            raise

    async def _commit_marks(self, message_ids: Sequence[str]) -> list[None]:
        # Every send waits for its mark within its max_unconfirmed slot, so this transaction's
        # latency paces them all. On SQLite it is one hand-off to the connection's thread;
        # through the engine it was five (cursor, execute, close, commit, reset), each a wake-up
        # of both threads, and the commit took ~5 ms under load, most of a slot's time.
        ids = sorted(set(message_ids))
        if self._db.dialect == "sqlite":
            await self._db.run_sqlite(functools.partial(_write_marks_sqlite, ids), write=True)
        else:
            async with self._db.engine.begin() as conn:
                await self._write_marks(conn, set(ids))
        return [None] * len(message_ids)

    async def _write_marks(self, conn: AsyncConnection, message_ids: set[str]) -> None:
        for chunk in chunked(sorted(message_ids)):
            await conn.execute(
                update(email_intents)
                .where(email_intents.c.message_id.in_(chunk), email_intents.c.sent_at.is_(None))
                .values(sent_at=func.now())
            )


def _write_marks_sqlite(message_ids: Sequence[str], conn: sqlite3.Connection) -> None:
    """``_write_marks`` in the SQLite connection's thread (``Database.run_sqlite``): the same
    statement, ``sent_at`` the database's ``CURRENT_TIMESTAMP`` as ``func.now()`` renders."""
    table, c = email_intents.name, email_intents.c
    for chunk in chunked(message_ids):
        conn.execute(
            # Names from the table, values bound: nothing from outside is formatted in.
            f"UPDATE {table} SET {c.sent_at.name} = CURRENT_TIMESTAMP "
            f"WHERE {c.sent_at.name} IS NULL AND {c.message_id.name} "
            f"IN ({', '.join('?' * len(chunk))})",
            tuple(chunk),
        )


def _confirmation(event: Event) -> Event:
    if isinstance(event, OrderPlaced):
        event_id = derived_event_id(event.event_id, "ReceiptSent")
        return ReceiptSent(
            event_id=event_id,
            order_id=event.order_id,
            recipient=event.customer_email,
            message_id=event_id,
        )
    assert isinstance(event, RefundIssued)
    event_id = derived_event_id(event.event_id, "RefundNoticeSent")
    return RefundNoticeSent(
        event_id=event_id,
        order_id=event.order_id,
        recipient=event.customer_email,
        message_id=event_id,
    )


@flow("notification", topics=(ORDERS, ORDER_EVENTS))
def notification_flow(ctx: FlowContext) -> Handler:
    mailer = Mailer(ctx.settings.smtp)
    ctx.resources.append(mailer)  # started before consuming, its connections closed after
    smtp = ctx.settings.smtp
    return Notifier(
        ctx.db,
        mailer,
        ctx.topics.order_events,
        claim_lease_s=smtp.claim_lease_s,
        smtp_timeout_s=smtp.timeout_s,
    )

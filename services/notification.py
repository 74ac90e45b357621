"""Notification: emails the receipt of every placed order and a notice of every refund.

Consumes ``OrderPlaced`` in its own consumer group (it never waits for the kitchen) and
``RefundIssued``. Each email is marked sent right after the SMTP server accepted it, under the
causing event's id, so a redelivered event or a retried batch sends no second email.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from ingest.consumer import Delivery, Handler
from ingest.dedupe import ProcessedEvents
from ingest.events import (
    Event,
    OrderPlaced,
    ReceiptSent,
    RefundIssued,
    RefundNoticeSent,
    derived_event_id,
)
from ingest.producer import EventProducer
from services.mailer import Mailer

logger = logging.getLogger(__name__)


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


class Notifier(Handler):
    event_types = frozenset({"OrderPlaced", "RefundIssued"})

    def __init__(
        self,
        mailer: Mailer,
        producer: EventProducer,
        processed: ProcessedEvents,
        events_topic: str,
        *,
        consumer_name: str,
        concurrency: int = 8,
    ) -> None:
        self._mailer = mailer
        self._producer = producer
        self._processed = processed
        self._topic = events_topic
        self._sent_key = f"{consumer_name}.emails"
        self._slots = asyncio.Semaphore(concurrency)

    async def handle(self, batch: Sequence[Delivery]) -> None:
        already = await self._processed.seen(self._sent_key, (d.event.event_id for d in batch))
        results = await asyncio.gather(
            *(self._notify(d.event) for d in batch if d.event.event_id not in already),
            return_exceptions=True,
        )
        # Publish the confirmations of everything that did go out, whatever else failed.
        confirmations: list[Event] = [
            *(self._confirmation(d.event) for d in batch if d.event.event_id in already),
            *(r for r in results if isinstance(r, Event)),
        ]
        if confirmations:
            await self._producer.publish_many(self._topic, confirmations)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]

    async def _notify(self, event: Event) -> Event:
        async with self._slots:
            if isinstance(event, OrderPlaced):
                subject, body = render_receipt(event)
                to = event.customer_email
            elif isinstance(event, RefundIssued):
                subject, body = render_refund(event)
                to = event.customer_email
            else:  # pragma: no cover - filtered by event_types
                raise TypeError(event.event_type)
            confirmation = self._confirmation(event)
            await self._mailer.send(
                to=to, subject=subject, body=body, message_id=confirmation.event_id
            )
            await self._processed.mark(self._sent_key, [event.event_id])
            return confirmation

    @staticmethod
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

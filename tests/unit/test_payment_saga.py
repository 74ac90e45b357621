"""Capture, then compensate: every failed order is refunded once, whatever arrives first."""

from __future__ import annotations

from ingest.consumer import Delivery
from ingest.events import Event, OrderRejected, RefundIssued
from pizzashop.database import Database
from services.payment import PaymentSaga
from tests.unit.conftest import RecordingProducer, make_order


def deliver(event: Event, offset: int = 0) -> Delivery:
    return Delivery("t", 0, offset, event, [], 0)


async def test_placed_then_rejected_captures_then_refunds(db: Database) -> None:
    producer = RecordingProducer()
    saga = PaymentSaga(db, producer, "events")  # type: ignore[arg-type]
    order = make_order(skus=[("hawaiian_m", "13.25", 2)])
    await saga.handle([deliver(order)])
    assert [e.event_type for _, e in producer.published] == ["PaymentCaptured"]
    rejected = OrderRejected(order_id=order.order_id, reason="we have standards")
    await saga.handle([deliver(rejected)])
    refunds = producer.of_type("RefundIssued")
    assert len(refunds) == 1
    refund = refunds[0]
    assert isinstance(refund, RefundIssued)
    assert str(refund.amount) == "26.50" and refund.reason == "we have standards"
    assert refund.customer_email == order.customer_email


async def test_rejection_seen_before_the_capture_still_refunds(db: Database) -> None:
    producer = RecordingProducer()
    saga = PaymentSaga(db, producer, "events")  # type: ignore[arg-type]
    order = make_order()
    await saga.handle([deliver(OrderRejected(order_id=order.order_id, reason="we have standards"))])
    assert producer.published == []  # nothing captured yet, nothing to refund
    await saga.handle([deliver(order)])
    assert [e.event_type for _, e in producer.published] == ["PaymentCaptured", "RefundIssued"]


async def test_redelivery_repeats_the_same_event_ids(db: Database) -> None:
    producer = RecordingProducer()
    saga = PaymentSaga(db, producer, "events")  # type: ignore[arg-type]
    order = make_order()
    rejected = OrderRejected(order_id=order.order_id, reason="we have standards")
    for _ in range(2):
        await saga.handle([deliver(order), deliver(rejected, 1)])
    ids = {e.event_type: set() for _, e in producer.published}
    for _, e in producer.published:
        ids[e.event_type].add(e.event_id)
    # Emitted again (a crash may have eaten the first publish) but under the same ids.
    assert {k: len(v) for k, v in ids.items()} == {"PaymentCaptured": 1, "RefundIssued": 1}


async def test_accepted_orders_are_never_refunded(db: Database) -> None:
    producer = RecordingProducer()
    saga = PaymentSaga(db, producer, "events")  # type: ignore[arg-type]
    await saga.handle([deliver(make_order()), deliver(make_order(), 1)])
    assert producer.of_type("RefundIssued") == []
    assert len(producer.of_type("PaymentCaptured")) == 2

"""Capture, then compensate: every failed order is refunded once, whatever arrives first, and an
order with no outcome by the saga deadline is refunded too."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

from ingest.consumer import Delivery, Output
from ingest.events import Event, OrderReady, OrderRejected, PaymentCaptured, RefundIssued
from pizzashop.core.database import Database
from services.payment import DEADLINE_REASON, PaymentSaga, SagaDeadline
from tests.support.orders import make_order


def deliver(event: Event, offset: int = 0) -> Delivery:
    return Delivery("t", 0, offset, event, [], 0)


def types(outputs: Sequence[Output]) -> list[str]:
    return [o.event.event_type for o in outputs]


async def test_placed_then_rejected_captures_then_refunds(db: Database) -> None:
    saga = PaymentSaga(db, "events")
    order = make_order(skus=[("hawaiian_m", "13.25", 2)])
    assert types(await saga.handle([deliver(order)])) == ["PaymentCaptured"]
    rejected = OrderRejected(order_id=order.order_id, reason="we have standards")
    out = await saga.handle([deliver(rejected)])
    assert types(out) == ["RefundIssued"]
    refund = out[0].event
    assert isinstance(refund, RefundIssued)
    assert str(refund.amount) == "26.50" and refund.reason == "we have standards"
    assert refund.customer_email == order.customer_email
    assert all(o.topic == "events" for o in out)


async def test_rejection_seen_before_the_capture_still_refunds(db: Database) -> None:
    saga = PaymentSaga(db, "events")
    order = make_order()
    rejected = OrderRejected(order_id=order.order_id, reason="we have standards")
    assert await saga.handle([deliver(rejected)]) == []  # nothing captured, nothing to refund
    assert types(await saga.handle([deliver(order)])) == ["PaymentCaptured", "RefundIssued"]


async def test_a_redelivery_of_the_deciding_event_repeats_the_same_ids(db: Database) -> None:
    saga = PaymentSaga(db, "events")
    order = make_order()
    rejected = OrderRejected(order_id=order.order_id, reason="we have standards")
    emitted: list[Output] = []
    for _ in range(2):  # the first transaction may never have committed
        emitted += await saga.handle([deliver(order), deliver(rejected, 1)])
    ids = Counter((o.event.event_type, o.event.event_id) for o in emitted)
    assert sorted(Counter(t for t, _ in ids).items()) == [
        ("PaymentCaptured", 1),
        ("RefundIssued", 1),
    ]
    assert set(ids.values()) == {2}


async def test_only_the_owner_of_a_refund_emits_it(db: Database) -> None:
    saga = PaymentSaga(db, "events")
    order = make_order()
    await saga.handle([deliver(order)])
    first = OrderRejected(order_id=order.order_id, reason="we have standards")
    second = OrderRejected(order_id=order.order_id, reason="we have standards")
    assert types(await saga.handle([deliver(first)])) == ["RefundIssued"]
    assert await saga.handle([deliver(second)]) == []  # another failure: no second refund


async def test_accepted_orders_are_never_refunded(db: Database) -> None:
    saga = PaymentSaga(db, "events")
    out = await saga.handle([deliver(make_order()), deliver(make_order(), 1)])
    assert types(out) == ["PaymentCaptured", "PaymentCaptured"]


async def _captured(db: Database) -> tuple[PaymentSaga, PaymentCaptured]:
    saga = PaymentSaga(db, "events")
    (output,) = await saga.handle([deliver(make_order())])
    assert isinstance(output.event, PaymentCaptured)
    return saga, output.event


async def test_the_deadline_refunds_an_order_without_outcome(db: Database) -> None:
    saga, captured = await _captured(db)
    deadline = SagaDeadline(db, "events", timedelta(seconds=60))
    due = deadline.due_at(captured)
    assert due is not None and due == captured.occurred_at + timedelta(seconds=60)
    out = await deadline.handle([deliver(captured)])
    assert types(out) == ["RefundIssued"]
    assert isinstance(out[0].event, RefundIssued) and out[0].event.reason == DEADLINE_REASON
    # A late decision is ignored: neither a rejection nor a ready order refunds again.
    late = OrderRejected(order_id=captured.order_id, reason="we have standards")
    assert await saga.handle([deliver(late)]) == []
    assert await saga.handle([deliver(OrderReady(order_id=captured.order_id))]) == []


async def test_the_deadline_leaves_fulfilled_and_refunded_orders_alone(db: Database) -> None:
    saga, captured = await _captured(db)
    await saga.handle([deliver(OrderReady(order_id=captured.order_id))])
    deadline = SagaDeadline(db, "events", timedelta(seconds=60))
    assert await deadline.handle([deliver(captured)]) == []

    saga, captured = await _captured(db)
    rejected = OrderRejected(order_id=captured.order_id, reason="we have standards")
    assert types(await saga.handle([deliver(rejected)])) == ["RefundIssued"]
    assert await deadline.handle([deliver(captured)]) == []

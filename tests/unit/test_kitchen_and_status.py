"""The kitchen's decision and the status a person reads."""

from __future__ import annotations

from ingest.consumer import Delivery
from ingest.events import (
    OrderAccepted,
    OrderCancelled,
    OrderFlagged,
    OrderReady,
    OrderRejected,
    utcnow,
)
from pizzashop.database import Database
from services.kitchen import REJECTION_REASON, Kitchen, has_pineapple
from services.menu import load_menu
from services.status import derive_status
from tests.unit.conftest import RecordingProducer, make_order

MENU = load_menu()


def test_pineapple_is_found_by_menu_and_by_name() -> None:
    assert has_pineapple(make_order(skus=[("thai_ckn_l", "20.75", 1)]), MENU)
    assert has_pineapple(
        make_order(skus=[("pepperoni_m", "12.50", 1), ("hawaiian_s", "10.50", 1)]), MENU
    )
    assert not has_pineapple(make_order(skus=[("pepperoni_m", "12.50", 3)]), MENU)


async def test_kitchen_rejects_pineapple_and_accepts_the_rest(db: Database) -> None:
    producer = RecordingProducer()
    kitchen = Kitchen(db, producer, "events", MENU, cook_seconds=30)  # type: ignore[arg-type]
    good, bad = make_order(), make_order(skus=[("hawaiian_m", "13.25", 1)])
    await kitchen.handle([Delivery("o", 0, 0, good, [], 0), Delivery("o", 0, 1, bad, [], 0)])
    accepted, rejected = (e for _, e in producer.published)
    assert isinstance(accepted, OrderAccepted) and accepted.order_id == good.order_id
    assert (accepted.ready_by - utcnow()).total_seconds() > 25
    assert isinstance(rejected, OrderRejected) and rejected.reason == REJECTION_REASON


async def test_the_oven_takes_out_due_orders_once(db: Database) -> None:
    producer = RecordingProducer()
    kitchen = Kitchen(db, producer, "events", MENU, cook_seconds=0)  # type: ignore[arg-type]
    order = make_order()
    await kitchen.handle([Delivery("o", 0, 0, order, [], 0)])
    assert await kitchen.take_out_due() == 1
    assert await kitchen.take_out_due() == 0
    ready = producer.of_type("OrderReady")
    assert len(ready) == 1 and isinstance(ready[0], OrderReady)
    assert ready[0].order_id == order.order_id


async def test_orders_still_baking_stay_in_the_oven(db: Database) -> None:
    producer = RecordingProducer()
    kitchen = Kitchen(db, producer, "events", MENU, cook_seconds=60)  # type: ignore[arg-type]
    await kitchen.handle([Delivery("o", 0, 0, make_order(), [], 0)])
    assert await kitchen.take_out_due() == 0
    assert producer.of_type("OrderReady") == []


async def test_a_redelivered_order_keeps_its_first_ready_by(db: Database) -> None:
    producer = RecordingProducer()
    kitchen = Kitchen(db, producer, "events", MENU, cook_seconds=30)  # type: ignore[arg-type]
    order = make_order()
    for offset in range(2):
        await kitchen.handle([Delivery("o", 0, offset, order, [], 0)])
    first, second = producer.of_type("OrderAccepted")
    assert isinstance(first, OrderAccepted) and isinstance(second, OrderAccepted)
    assert (first.event_id, first.ready_by) == (second.event_id, second.ready_by)


def test_status_follows_the_furthest_fact() -> None:
    assert derive_status({"OrderPlaced"}) == "confirmed"
    assert derive_status({"OrderPlaced", "PaymentCaptured", "OrderAccepted"}) == "baking"
    assert derive_status({"OrderPlaced", "OrderAccepted", "OrderReady"}) == "ready"
    assert derive_status({"OrderPlaced", "OrderRejected"}) == "rejected"
    assert derive_status({"OrderPlaced", "OrderRejected", "RefundIssued"}) == "refunded"


async def test_a_fraud_hold_cancels_an_order_still_in_the_oven(db: Database) -> None:
    producer = RecordingProducer()
    kitchen = Kitchen(db, producer, "events", MENU, cook_seconds=0)  # type: ignore[arg-type]
    order = make_order()
    await kitchen.handle([Delivery("o", 0, 0, order, [], 0)])
    flag = OrderFlagged(order_id=order.order_id, fraud_score=0.97, threshold=0.9, model="fraud-v1")
    await kitchen.handle([Delivery("e", 0, 1, flag, [], 0)])
    assert await kitchen.take_out_due() == 0
    types = [e.event_type for _, e in producer.published]
    assert types == ["OrderAccepted", "OrderCancelled"]  # and never OrderReady
    cancelled = producer.of_type("OrderCancelled")[0]
    assert isinstance(cancelled, OrderCancelled) and "fraud hold" in cancelled.reason


async def test_a_fraud_hold_comes_too_late_for_a_ready_order(db: Database) -> None:
    producer = RecordingProducer()
    kitchen = Kitchen(db, producer, "events", MENU, cook_seconds=0)  # type: ignore[arg-type]
    order = make_order()
    await kitchen.handle([Delivery("o", 0, 0, order, [], 0)])
    assert await kitchen.take_out_due() == 1
    flag = OrderFlagged(order_id=order.order_id, fraud_score=0.97, threshold=0.9, model="fraud-v1")
    await kitchen.handle([Delivery("e", 0, 2, flag, [], 0)])
    assert [e.event_type for _, e in producer.published] == ["OrderAccepted", "OrderReady"]


async def test_an_order_held_before_the_kitchen_saw_it_is_never_started(db: Database) -> None:
    producer = RecordingProducer()
    kitchen = Kitchen(db, producer, "events", MENU, cook_seconds=0)  # type: ignore[arg-type]
    order = make_order()
    flag = OrderFlagged(order_id=order.order_id, fraud_score=0.97, threshold=0.9, model="fraud-v1")
    await kitchen.handle([Delivery("e", 0, 0, flag, [], 0)])
    await kitchen.handle([Delivery("o", 0, 0, order, [], 0)])
    assert [e.event_type for _, e in producer.published] == ["OrderCancelled"]

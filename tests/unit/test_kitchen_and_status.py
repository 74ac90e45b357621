"""The kitchen's decision and the status a person reads."""

from __future__ import annotations

from ingest.consumer import Delivery
from ingest.events import OrderAccepted, OrderReady, OrderRejected, utcnow
from services.kitchen import REJECTION_REASON, Kitchen, has_pineapple
from services.menu import load_menu
from services.status import derive_status
from tests.unit.conftest import RecordingProducer, make_order

MENU = load_menu()


def test_pineapple_is_found_by_menu_and_by_name() -> None:
    assert has_pineapple(make_order(skus=[("thai_ckn_l", "20.75", 1)]), MENU)
    assert has_pineapple(make_order(skus=[("pepperoni_m", "12.50", 1), ("hawaiian_s", "10.50", 1)]), MENU)
    assert not has_pineapple(make_order(skus=[("pepperoni_m", "12.50", 3)]), MENU)


async def test_kitchen_rejects_pineapple_and_accepts_the_rest() -> None:
    producer = RecordingProducer()
    kitchen = Kitchen(producer, "events", MENU, cook_seconds=30)  # type: ignore[arg-type]
    good, bad = make_order(), make_order(skus=[("hawaiian_m", "13.25", 1)])
    await kitchen.handle([Delivery("o", 0, 0, good, [], 0), Delivery("o", 0, 1, bad, [], 0)])
    accepted, rejected = (e for _, e in producer.published)
    assert isinstance(accepted, OrderAccepted) and accepted.order_id == good.order_id
    assert (accepted.ready_by - utcnow()).total_seconds() > 25
    assert isinstance(rejected, OrderRejected) and rejected.reason == REJECTION_REASON


async def test_baked_orders_become_ready_after_ready_by() -> None:
    producer = RecordingProducer()
    kitchen = Kitchen(producer, "events", MENU, cook_seconds=0)  # type: ignore[arg-type]
    accepted = OrderAccepted(order_id="o-1", ready_by=utcnow())
    await kitchen.handle([Delivery("e", 0, 0, accepted, [], 0)])
    [(_, ready)] = producer.published
    assert isinstance(ready, OrderReady) and ready.order_id == "o-1"


def test_status_follows_the_furthest_fact() -> None:
    assert derive_status({"OrderPlaced"}) == "confirmed"
    assert derive_status({"OrderPlaced", "PaymentCaptured", "OrderAccepted"}) == "baking"
    assert derive_status({"OrderPlaced", "OrderAccepted", "OrderReady"}) == "ready"
    assert derive_status({"OrderPlaced", "OrderRejected"}) == "rejected"
    assert derive_status({"OrderPlaced", "OrderRejected", "RefundIssued"}) == "refunded"

"""The kitchen's decision and the status a person reads."""

from __future__ import annotations

from collections.abc import Sequence

from ingest.consumer import Delivery, Output
from ingest.events import (
    OrderAccepted,
    OrderCancelled,
    OrderFlagged,
    OrderReady,
    OrderRejected,
    utcnow,
)
from pizzashop.core.database import Database
from pizzashop.core.menu import load_menu
from services.kitchen import REJECTION_REASON, Kitchen, Oven, has_pineapple
from services.status import derive_status
from tests.support.orders import make_order

MENU = load_menu()


def test_pineapple_is_found_by_menu_and_by_name() -> None:
    assert has_pineapple(make_order(skus=[("thai_ckn_l", "20.75", 1)]), MENU)
    assert has_pineapple(
        make_order(skus=[("pepperoni_m", "12.50", 1), ("hawaiian_s", "10.50", 1)]), MENU
    )
    assert not has_pineapple(make_order(skus=[("pepperoni_m", "12.50", 3)]), MENU)


def types(outputs: Sequence[Output]) -> list[str]:
    return [o.event.event_type for o in outputs]


def kitchen(db: Database, cook_seconds: float = 0) -> Kitchen:
    return Kitchen(db, "events", MENU, cook_seconds=cook_seconds)


async def bake(db: Database, outputs: Sequence[Output]) -> list[Output]:
    """Hand the oven the OrderAccepted among ``outputs``, as the runtime does once due."""
    accepted = [
        Delivery("e", 0, 0, o.event, [], 0)
        for o in outputs
        if o.event.event_type == "OrderAccepted"
    ]
    return list(await Oven(db, "events").handle(accepted))


async def test_kitchen_rejects_pineapple_and_accepts_the_rest(db: Database) -> None:
    good, bad = make_order(), make_order(skus=[("hawaiian_m", "13.25", 1)])
    out = await kitchen(db, 30).handle(
        [Delivery("o", 0, 0, good, [], 0), Delivery("o", 0, 1, bad, [], 0)]
    )
    accepted, rejected = (o.event for o in out)
    assert isinstance(accepted, OrderAccepted) and accepted.order_id == good.order_id
    assert (accepted.ready_by - utcnow()).total_seconds() > 25
    assert isinstance(rejected, OrderRejected) and rejected.reason == REJECTION_REASON


async def test_the_oven_waits_for_ready_by_and_takes_out_once(db: Database) -> None:
    order = make_order()
    decided = await kitchen(db, 30).handle([Delivery("o", 0, 0, order, [], 0)])
    oven = Oven(db, "events")
    due = oven.due_at(decided[0].event)
    assert due is not None and (due - utcnow()).total_seconds() > 25
    ready = await bake(db, decided)
    assert types(ready) == ["OrderReady"] and isinstance(ready[0].event, OrderReady)
    assert ready[0].event.order_id == order.order_id
    # A redelivery (its transaction never committed) emits the same id again.
    again = await bake(db, decided)
    assert [o.event.event_id for o in again] == [ready[0].event.event_id]


async def test_a_redelivered_order_keeps_its_first_ready_by(db: Database) -> None:
    k = kitchen(db, 30)
    order = make_order()
    first, second = [
        (await k.handle([Delivery("o", 0, offset, order, [], 0)]))[0].event for offset in range(2)
    ]
    assert isinstance(first, OrderAccepted) and isinstance(second, OrderAccepted)
    assert (first.event_id, first.ready_by) == (second.event_id, second.ready_by)


def test_status_follows_the_furthest_fact() -> None:
    assert derive_status({"OrderPlaced"}) == "confirmed"
    assert derive_status({"OrderPlaced", "PaymentCaptured", "OrderAccepted"}) == "baking"
    assert derive_status({"OrderPlaced", "OrderAccepted", "OrderReady"}) == "ready"
    assert derive_status({"OrderPlaced", "OrderRejected"}) == "rejected"
    assert derive_status({"OrderPlaced", "OrderRejected", "RefundIssued"}) == "refunded"


def flag(order_id: str) -> OrderFlagged:
    return OrderFlagged(order_id=order_id, fraud_score=0.97, threshold=0.9, model="fraud-v1")


async def test_a_fraud_hold_cancels_an_order_still_in_the_oven(db: Database) -> None:
    k = kitchen(db)
    order = make_order()
    decided = await k.handle([Delivery("o", 0, 0, order, [], 0)])
    out = await k.handle([Delivery("e", 0, 1, flag(order.order_id), [], 0)])
    assert types(decided) == ["OrderAccepted"] and types(out) == ["OrderCancelled"]
    assert await bake(db, decided) == []  # and never OrderReady
    cancelled = out[0].event
    assert isinstance(cancelled, OrderCancelled) and "fraud hold" in cancelled.reason


async def test_a_fraud_hold_comes_too_late_for_a_ready_order(db: Database) -> None:
    k = kitchen(db)
    order = make_order()
    decided = await k.handle([Delivery("o", 0, 0, order, [], 0)])
    assert types(await bake(db, decided)) == ["OrderReady"]
    assert await k.handle([Delivery("e", 0, 2, flag(order.order_id), [], 0)]) == []


async def test_an_order_held_before_the_kitchen_saw_it_is_never_started(db: Database) -> None:
    k = kitchen(db)
    order = make_order()
    held = await k.handle([Delivery("e", 0, 0, flag(order.order_id), [], 0)])
    assert types(held) == ["OrderCancelled"]
    assert await k.handle([Delivery("o", 0, 0, order, [], 0)]) == []


async def test_one_batch_decides_holds_and_reads_back_in_one_transaction(db: Database) -> None:
    """Orders placed and flagged within one batch (the SQLite path runs it as one function):
    a hold after the acceptance cancels it, a refusal stands, a repeat decides nothing more."""
    k = kitchen(db, 30)
    held, refused, kept = make_order(), make_order(skus=[("hawaiian_m", "13.25", 1)]), make_order()
    batch = [
        Delivery("o", 0, 0, held, [], 0),
        Delivery("o", 0, 1, refused, [], 0),
        Delivery("o", 0, 2, kept, [], 0),
        Delivery("o", 0, 3, kept, [], 0),  # the same event twice: emitted for each delivery
        Delivery("e", 0, 0, flag(held.order_id), [], 0),
        Delivery("e", 0, 1, flag(refused.order_id), [], 0),
    ]
    out = await k.handle(batch)
    assert [(o.event.event_type, o.event.order_id) for o in out] == [
        ("OrderRejected", refused.order_id),
        ("OrderAccepted", kept.order_id),
        ("OrderAccepted", kept.order_id),
        ("OrderCancelled", held.order_id),
    ]
    accepted = out[1].event
    assert isinstance(accepted, OrderAccepted) and accepted.ready_by.utcoffset() is not None
    assert 25 < (accepted.ready_by - utcnow()).total_seconds() <= 30
    again = out[2].event
    assert isinstance(again, OrderAccepted)
    assert (again.event_id, again.ready_by) == (accepted.event_id, accepted.ready_by)
    # Only the kept order comes out of the oven; the held one was accepted, then cancelled.
    taken = [Delivery("e", 0, 9, OrderAccepted(order_id=held.order_id, ready_by=utcnow()), [], 0)]
    ready = await bake(db, out[1:2]) + await Oven(db, "events").handle(taken)
    assert [(o.event.event_type, o.event.order_id) for o in ready] == [
        ("OrderReady", kept.order_id)
    ]


async def test_a_batch_longer_than_one_in_list_reads_back_every_ticket(db: Database) -> None:
    orders = [make_order() for _ in range(501)]  # chunked reads: 500 keys, then 1
    out = await kitchen(db).handle([Delivery("o", 0, n, o, [], 0) for n, o in enumerate(orders)])
    assert types(out) == ["OrderAccepted"] * 501
    assert [o.event.order_id for o in out] == [o.order_id for o in orders]

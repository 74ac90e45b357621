"""Order validation against the menu, and the durable accept-then-publish intake."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from ingest.outbox import outbox
from pizzashop.core.database import Database
from pizzashop.core.errors import Problem, ValidationFailed
from pizzashop.core.menu import load_menu
from services.intake import OrderIntake, OrderRequest, build_order
from services.status import StatusQueries

MENU = load_menu()


def request(**overrides: Any) -> OrderRequest:
    items = overrides.pop(
        "items",
        [{"sku": "pepperoni_m", "quantity": 2, "unit_price": str(MENU["pepperoni_m"].price)}],
    )
    total = overrides.pop(
        "total", str(sum(Decimal(i["unit_price"]) * i["quantity"] for i in items))
    )
    body = {
        "customer_id": "c-1",
        "customer_email": "c1@example.com",
        "items": items,
        "total": total,
        "payment": {"kind": "card", "card_fingerprint": "fp-12345678", "last4": "4242"},
        **overrides,
    }
    return OrderRequest.model_validate(body)


def test_valid_request_takes_names_sizes_and_prices_from_the_menu() -> None:
    order = build_order(request(), MENU, "o-1")
    assert order.items[0].name == "The Pepperoni Pizza"
    assert order.items[0].size == "M"
    assert order.total == MENU["pepperoni_m"].price * 2


P = MENU["pepperoni_m"].price


def line(quantity: int, price: Decimal = P, sku: str = "pepperoni_m") -> dict[str, Any]:
    return {"sku": sku, "quantity": quantity, "unit_price": str(price)}


@pytest.mark.parametrize(
    ("items", "total", "match"),
    [
        ([line(1, Decimal("1.00"), "pizza_with_gold")], "1.00", "unknown item 'pizza_with_gold'"),
        ([line(0)], "0.00", "quantity must be at least 1, got 0"),
        ([line(-3)], "0.00", "quantity must be at least 1, got -3"),
        ([line(500)], str(P * 500), "more than the 20"),
        ([line(1, Decimal("0.01"))], "0.01", f"does not match the menu price {P}"),
        ([line(1)], "99.00", "total 99.00 does not match the items' sum"),
    ],
)
def test_invalid_requests_say_what_is_wrong(
    items: list[dict[str, Any]], total: str, match: str
) -> None:
    with pytest.raises(ValidationFailed, match=match):
        build_order(request(items=items, total=total), MENU, "o-1")


def test_every_problem_is_reported_at_once() -> None:
    items = [
        {"sku": "nope", "quantity": 1, "unit_price": "1.00"},
        {"sku": "pepperoni_m", "quantity": 99, "unit_price": str(MENU["pepperoni_m"].price)},
    ]
    with pytest.raises(ValidationFailed) as caught:
        build_order(request(items=items, total="1.00"), MENU, "o-1")
    assert "items[0]" in str(caught.value) and "items[1]" in str(caught.value)
    assert caught.value.problems == (
        Problem(("items", 0, "sku"), "unknown item 'nope'", "unknown_item"),
        Problem(
            ("items", 1, "quantity"),
            "quantity 99 of pepperoni_m is more than the 20 one order may hold",
            "quantity_too_large",
        ),
        Problem(("items",), "100 items in one order is more than 60", "too_many_items"),
    )


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        ({"customer_id": "4111 1111 1111 1111"}, ("customer_id",)),
        ({"device_id": "dev-4111-1111-1111-1111"}, ("device_id",)),
        (
            {"delivery_address": {"street": "4242424242424242", "city": "X", "postcode": "1"}},
            ("delivery_address", "street"),
        ),
        (
            {
                "items": [{"sku": "pepperoni_m", "quantity": 4111111111111111, "unit_price": "1"}],
                "total": "1.00",
            },
            ("items", 0, "quantity"),
        ),
        ({"note": "card 4111111111111111"}, ("note",)),  # not even a field of the contract
    ],
)
def test_a_card_number_anywhere_is_the_only_problem_named(
    overrides: dict[str, Any], loc: tuple[str | int, ...]
) -> None:
    with pytest.raises(ValidationError) as caught:
        request(**overrides)
    errors = caught.value.errors()
    assert [(e["loc"], e["type"]) for e in errors] == [(loc, "card_number")]
    assert "4111" not in str(caught.value) and "4242" not in str(caught.value)


@pytest.mark.parametrize(
    ("fingerprint", "ok"),
    [
        ("fp-12345678", True),
        ("fp-8f3a1c0e9b7d2a64", True),
        ("8F3A1C0E9B7D2A64C0FFEE00", True),
        ("fp-1234567", False),
        ("fingerprint-x", False),
        ("0123456789abcde", False),
        ("fp-" + "a" * 62, False),
    ],
)
def test_card_fingerprint_format(fingerprint: str, ok: bool) -> None:
    payment = {"kind": "card", "card_fingerprint": fingerprint, "last4": "4242"}
    if ok:
        assert request(payment=payment).payment.card_fingerprint == fingerprint
    else:
        with pytest.raises(ValidationError, match="card_fingerprint"):
            request(payment=payment)


def test_other_currencies_are_refused() -> None:
    with pytest.raises(ValidationFailed, match="currency EUR"):
        build_order(request(currency="EUR"), MENU, "o-1")


async def test_intake_stores_order_and_outbox_row_in_one_go(db: Database) -> None:
    woken: list[bool] = []
    intake = OrderIntake(db, MENU, "orders", on_committed=lambda: woken.append(True))
    placed = await intake.place(request())
    assert woken == [True] and not placed.duplicate
    view = await StatusQueries(db).order(placed.order_id)
    assert view is not None and view.status == "confirmed"
    assert [e.event_type for e in view.timeline] == ["OrderPlaced"]
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(outbox.c.event_id, outbox.c.topic))).all()
    assert rows == [(placed.event_id, "orders")]


async def test_same_client_order_id_places_the_order_once(db: Database) -> None:
    intake = OrderIntake(db, MENU, "orders")
    first = await intake.place(request(order_id="client-42"))
    second = await intake.place(request(order_id="client-42"))
    assert second.duplicate and second.event_id == first.event_id
    async with db.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(outbox))).scalar_one()
    assert count == 1


async def test_invalid_order_leaves_no_trace(db: Database) -> None:
    intake = OrderIntake(db, MENU, "orders")
    with pytest.raises(ValidationFailed):
        await intake.place(request(total="1.00"))
    async with db.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(outbox))).scalar_one()
    assert count == 0


async def test_a_database_from_an_older_schema_is_refused_with_a_clear_error(
    tmp_path: Path,
) -> None:
    import sqlite3

    import services.kitchen  # noqa: F401  (its table is what the old file lacks)
    from pizzashop.core.errors import ConfigError

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE kitchen_tickets (order_id TEXT PRIMARY KEY, accepted BOOLEAN)")
    with pytest.raises(ConfigError, match=r"table kitchen_tickets lacks .*ready_by"):
        await Database(f"sqlite+aiosqlite:///{path}").start()

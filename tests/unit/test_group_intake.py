"""The intake through a group commit: orders share transactions, each is confirmed only once it
is stored, a failed group stores and confirms none of its orders, idempotency keys hold."""

from __future__ import annotations

import asyncio
import sqlite3
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from ingest.outbox import add_entries_sqlite, add_entries_to_outbox, outbox
from pizzashop.core.database import Database
from pizzashop.core.menu import load_menu
from services.group_intake import GroupIntake
from services.intake import OrderIntake, OrderRequest
from services.status import orders, timeline

MENU = load_menu()
PRICE = MENU["pepperoni_m"].price


def request(order_id: str | None = None, customer: str = "c-1") -> OrderRequest:
    body: dict[str, Any] = {
        "customer_id": customer,
        "customer_email": f"{customer}@example.com",
        "items": [{"sku": "pepperoni_m", "quantity": 2, "unit_price": str(PRICE)}],
        "total": str(PRICE * Decimal(2)),
        "payment": {"kind": "card", "card_fingerprint": "fp-12345678", "last4": "4242"},
    }
    if order_id is not None:
        body["order_id"] = order_id
    return OrderRequest.model_validate(body)


async def count(db: Database, table: Any) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def stored(db: Database, order_id: str) -> bool:
    """Visible on a connection of its own: committed."""
    async with db.engine.connect() as conn:
        row = await conn.execute(select(orders.c.order_id).where(orders.c.order_id == order_id))
        return row.first() is not None


async def test_concurrent_orders_share_commits_and_each_is_stored_when_confirmed(
    db: Database,
) -> None:
    woken: list[int] = []
    intake = GroupIntake(db, MENU, "orders", on_committed=lambda: woken.append(1))

    async def place(i: int) -> str:
        placed = await intake.place(request(customer=f"c-{i}"))
        # Confirmed means durable: the order is already visible to any other connection.
        assert await stored(db, placed.order_id)
        assert not placed.duplicate
        return placed.order_id

    ids = await asyncio.gather(*(place(i) for i in range(40)))
    assert len(set(ids)) == 40
    assert intake.committer.items == 40
    assert intake.committer.groups < 40  # shared: fewer transactions than orders
    assert len(woken) == intake.committer.groups  # the relay is woken once per commit
    assert await count(db, orders) == 40
    assert await count(db, timeline) == 40
    assert await count(db, outbox) == 40


async def test_outbox_rows_keep_the_order_of_the_group(db: Database) -> None:
    intake = GroupIntake(db, MENU, "orders")
    ids = await asyncio.gather(*(intake.place(request(f"o-{i}")) for i in range(10)))
    async with db.engine.connect() as conn:
        keys = [r.key for r in await conn.execute(select(outbox.c.key).order_by(outbox.c.id))]
    assert keys == [p.order_id.encode() for p in ids]


async def test_a_failed_group_confirms_and_stores_none_of_its_orders(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    intake = GroupIntake(db, MENU, "orders")
    failures = [OperationalError("INSERT INTO outbox", {}, Exception("disk I/O error"))]

    async def failing_once(conn: Any, entries: Any) -> None:
        if failures:
            raise failures.pop()
        await add_entries_to_outbox(conn, entries)

    def failing_once_sqlite(conn: Any, insert: Any, entries: Any) -> None:
        # In the connection's thread: a sqlite3 error, which comes out as SQLAlchemy's.
        if failures:
            failures.pop()
            raise sqlite3.OperationalError("disk I/O error")
        add_entries_sqlite(conn, insert, entries)

    # The outbox insert fails after the orders' rows went in: SQLite runs the group in the
    # connection's thread, PostgreSQL through the engine.
    monkeypatch.setattr("services.group_intake.add_entries_to_outbox", failing_once)
    monkeypatch.setattr("services.group_intake.add_entries_sqlite", failing_once_sqlite)
    results = await asyncio.gather(
        *(intake.place(request(customer=f"c-{i}")) for i in range(8)), return_exceptions=True
    )
    assert all(isinstance(r, OperationalError) for r in results), results
    # Rolled back whole: not even the orders' rows written before the outbox's are there.
    assert await count(db, orders) == 0
    assert await count(db, outbox) == 0
    # The next group is not held back by it.
    placed = await intake.place(request())
    assert await stored(db, placed.order_id)


async def test_a_client_order_id_places_once_within_a_group_and_across_groups(
    db: Database,
) -> None:
    intake = GroupIntake(db, MENU, "orders")
    first, again = await asyncio.gather(intake.place(request("o-1")), intake.place(request("o-1")))
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.event_id == first.event_id
    later = await intake.place(request("o-1"))
    assert later.duplicate and later.event_id == first.event_id
    assert await count(db, orders) == 1
    assert await count(db, outbox) == 1


async def test_an_order_placed_by_the_one_transaction_intake_is_a_duplicate(
    db: Database,
) -> None:
    placed = await OrderIntake(db, MENU, "orders").place(request("o-9"))
    again = await GroupIntake(db, MENU, "orders").place(request("o-9"))
    assert again.duplicate and again.event_id == placed.event_id


async def test_an_id_stored_by_another_process_after_the_check_answers_only_its_request(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race another process can win: its order lands between a group's check and insert.
    The insert fails on the key; the group is retried one order at a time, so the other
    orders are stored and the raced one is a duplicate."""
    other = await OrderIntake(db, MENU, "orders").place(request("o-raced"))
    intake = GroupIntake(db, MENU, "orders")
    real_stored, real_stored_sqlite = intake._stored, intake._stored_sqlite
    calls: list[int] = []

    async def blind_first(order_ids: Any) -> dict[str, str]:
        calls.append(1)
        return {} if len(calls) == 1 else await real_stored(order_ids)

    def blind_first_sqlite(conn: Any, sql: Any, order_ids: Any) -> dict[str, str]:
        # On SQLite the check runs in the group's own transaction (where the race cannot
        # happen): a blind check stands in for it.
        calls.append(1)
        return {} if len(calls) == 1 else real_stored_sqlite(conn, sql, order_ids)

    monkeypatch.setattr(intake, "_stored", blind_first)
    monkeypatch.setattr(intake, "_stored_sqlite", blind_first_sqlite)
    results = await asyncio.gather(
        intake.place(request("o-a")), intake.place(request("o-raced")), intake.place(request("o-b"))
    )
    assert [r.duplicate for r in results] == [False, True, False]
    assert results[1].event_id == other.event_id
    assert await count(db, orders) == 3
    assert await count(db, outbox) == 3


def test_the_sqlite_statements_set_every_column_the_row_builders_fill() -> None:
    """The SQLite path binds rows by the column keys it compiled with: a key the status
    projection's row builders add must be compiled in too, or it would be dropped."""
    from ingest.outbox import _ENTRY_KEYS, outbox_entry
    from services.group_intake import _ORDER_KEYS, _TIMELINE_KEYS
    from services.intake import build_order
    from services.status import _order_row, _timeline_row

    event = build_order(request(), MENU, "o-keys")
    assert set(_order_row(event)) == set(_ORDER_KEYS)
    assert set(_timeline_row(event)) == set(_TIMELINE_KEYS)
    assert set(outbox_entry("orders", event).row()) == set(_ENTRY_KEYS)

"""The relay renews its lease once a third of the TTL has passed, not on every loop: each
renewal is a write transaction on the connection the order API commits through."""

from __future__ import annotations

from sqlalchemy import select

from ingest.outbox import OutboxRelay, outbox_lease
from pizzashop.core.database import Database
from pizzashop.core.settings import OutboxSettings
from tests.unit.test_outbox import FakeKafka, add_orders

SETTINGS = OutboxSettings(batch_size=3, idle_poll_s=0.01, lease_ttl_s=30.0)


async def lease_expiry(db: Database) -> float:
    async with db.engine.connect() as conn:
        row = (await conn.execute(select(outbox_lease.c.expires_at))).one()
    return float(row.expires_at)


async def test_a_fresh_lease_is_not_renewed_on_every_loop(db: Database) -> None:
    now = {"t": 1000.0}
    relay = OutboxRelay(db, FakeKafka(), settings=SETTINGS, holder="a", clock=lambda: now["t"])
    await add_orders(db, 2)
    assert await relay.relay_once() == 2
    assert await lease_expiry(db) == 1030.0
    now["t"] += 9.0  # under a third of the TTL: no renewal
    await add_orders(db, 1)
    assert await relay.relay_once() == 1
    assert await lease_expiry(db) == 1030.0
    now["t"] += 2.0  # past a third of it: renewed
    assert await relay.relay_once() == 0
    assert await lease_expiry(db) == 1041.0
    now["t"] -= 100.0  # a clock stepped back renews at once
    assert await relay.relay_once() == 0
    assert await lease_expiry(db) == 941.0


async def test_a_lease_that_passed_on_is_noticed_at_the_next_renewal(db: Database) -> None:
    now = {"t": 1000.0}
    first = OutboxRelay(db, FakeKafka(), settings=SETTINGS, holder="a", clock=lambda: now["t"])
    second = OutboxRelay(db, FakeKafka(), settings=SETTINGS, holder="b", clock=lambda: now["t"])
    await add_orders(db, 1)
    assert await first.relay_once() == 1
    now["t"] += SETTINGS.lease_ttl_s + 1  # the first one stalled past its lease
    await add_orders(db, 1)
    assert await second.relay_once() == 1 and second.state.has_lease
    assert await first.relay_once() == 0 and not first.state.has_lease

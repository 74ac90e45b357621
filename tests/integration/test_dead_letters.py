"""Malformed records go to ``<topic>.dlq`` with everything a replay needs; the rest flows on."""

from __future__ import annotations

import dataclasses

import pytest

from ingest.dlq import (
    read_dead_letters,
    replay,
)
from pizzashop.app.demo import malformed_records
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.settings import Settings
from tests.support.shop import eventually

# The consumer runtime's promises hold on both transports (conftest.TRANSPORTS).
pytestmark = pytest.mark.both_transports


async def test_malformed_records_are_dead_lettered_once_per_group(shop_settings: Settings) -> None:
    async with Shop(
        shop_settings, shop_settings.kafka_bootstrap or "", Wiring(api=False, workers=("kitchen",))
    ) as shop:
        bad = malformed_records("t")
        for value, headers in bad:
            await shop.producer.send_raw(shop.topics.orders, value, key=b"k", headers=headers)

        # The runtime counts a dead letter once its batch's transaction has committed, which the
        # letter may be readable a moment before.
        async def all_dead() -> bool:
            letters = await read_dead_letters(shop.bootstrap, shop.topics.dlq_topics())
            return len(letters) == shop.runtimes["kitchen"].stats.dead_lettered == len(bad)

        await eventually(all_dead, timeout_s=30)
        letters = await read_dead_letters(shop.bootstrap, shop.topics.dlq_topics())
        assert {d.original_topic for d in letters} == {shop.topics.orders}
        assert {d.consumer_group for d in letters} == {shop_settings.group("kitchen")}
        assert len({d.original_offset for d in letters}) == len(bad)
        classes = {d.error_class for d in letters}
        assert classes == {"DecodeError", "ValidationFailed"}
        bad_total = next(d for d in letters if d.error_class == "ValidationFailed")
        assert "total" in bad_total.error_message
        assert all(d.failed_at and d.attempts == 1 for d in letters)
        assert shop.runtimes["kitchen"].stats.dead_lettered == len(bad)


async def test_a_replayed_letter_is_handled_once_its_cause_is_gone(shop_settings: Settings) -> None:
    from ingest.codec import encode
    from ingest.events import OrderPlaced
    from tests.support.orders import make_order

    wiring = Wiring(api=False, workers=("kitchen", "status"))
    async with Shop(shop_settings, shop_settings.kafka_bootstrap or "", wiring) as shop:
        order = make_order()
        record = encode(order)
        # Sent without its event-type header: undecodable, so dead-lettered by both groups.
        stripped = [h for h in record.headers if h[0] != "event-type"]
        await shop.producer.send_raw(
            shop.topics.orders, record.value, key=record.key, headers=stripped
        )

        async def dead_twice() -> bool:
            return len(await read_dead_letters(shop.bootstrap, shop.topics.dlq_topics())) == 2

        await eventually(dead_twice)
        letters = await read_dead_letters(shop.bootstrap, shop.topics.dlq_topics())
        assert all(letter.value == record.value for letter in letters)
        assert all(letter.key == record.key for letter in letters)
        assert all(letter.original_headers == stripped for letter in letters)
        # "The fix": the letters are replayed with the header restored, each for its group.
        for letter in letters:
            await replay(
                shop.producer, dataclasses.replace(letter, original_headers=record.headers)
            )

        async def accepted() -> bool:
            view = await shop.queries.order(order.order_id)
            return view is not None and view.status in ("baking", "ready")

        await eventually(accepted)
        assert isinstance(OrderPlaced.model_validate_json(letters[0].value or b""), OrderPlaced)

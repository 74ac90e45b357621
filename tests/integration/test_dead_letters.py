"""Malformed records go to ``<topic>.dlq`` with everything a replay needs; the rest flows on."""

from __future__ import annotations

from ingest.dlq import (
    H_ERROR_CLASS,
    read_dead_letters,
    replay,
)
from pizzashop.demo import malformed_records
from pizzashop.settings import Settings
from pizzashop.shop import Shop, Wiring
from tests.integration.conftest import eventually


async def test_malformed_records_are_dead_lettered_once_per_group(shop_settings: Settings) -> None:
    async with Shop(shop_settings, shop_settings.kafka_bootstrap or "", Wiring(api=False, workers=("kitchen",))) as shop:
        bad = malformed_records("t")
        for value, headers in bad:
            await shop.producer.send_raw(shop.topics.orders, value, key=b"k", headers=headers)

        async def all_dead() -> bool:
            letters = await read_dead_letters(shop.bootstrap, shop.topics.dlq_topics())
            return len(letters) == len(bad)

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

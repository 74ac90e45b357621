"""What goes wrong: Kafka away, SMTP failing for a while, redelivered records."""

from __future__ import annotations

import httpx
import pytest

from api.app import create_app
from ingest.codec import encode
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.settings import Settings
from services.mailer import SmtpSink
from tests.support.net import TcpProxy
from tests.support.orders import make_order, order_body
from tests.support.shop import API_HEADERS, eventually

# The consumer runtime's promises hold on both transports (conftest.TRANSPORTS).
pytestmark = pytest.mark.both_transports


async def test_orders_taken_while_kafka_is_down_are_relayed_when_it_is_back(
    shop_settings: Settings,
) -> None:
    host, port = (shop_settings.kafka_bootstrap or "").rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    bootstrap = shop_settings.kafka_bootstrap or ""
    # The workers see Kafka; the API's process reaches it only through the proxy, closed for now.
    async with Shop(shop_settings, bootstrap, Wiring(api=False)) as workers:
        api_settings = shop_settings.model_copy(
            update={"kafka_bootstrap": f"127.0.0.1:{proxy.port}"}
        )
        api = Shop(
            api_settings,
            api_settings.kafka_bootstrap or "",
            Wiring(api=True, workers=(), create_topics=False),
        )
        async with api:
            transport = httpx.ASGITransport(app=create_app(api))
            async with httpx.AsyncClient(
                transport=transport, base_url="http://shop", headers=API_HEADERS
            ) as http:
                ids = []
                for i in range(5):
                    response = await http.post(
                        "/orders", json=order_body("pepperoni_m", customer=f"c-{i}")
                    )
                    assert response.status_code == 202
                    ids.append(response.json()["order_id"])
                assert await api.relay.pending_count() == 5
                assert api.relay.published == 0

                await proxy.open()
                try:

                    async def relayed() -> bool:
                        return await api.relay.pending_count() == 0

                    await eventually(relayed, timeout_s=60)

                    async def all_ready() -> bool:
                        return not await workers.queries.unfinished(ids)

                    await eventually(all_ready, timeout_s=60)
                finally:
                    await proxy.close()
        assert api.relay.failures >= 1
        counts = await workers.queries.counts(ids)
        assert counts["OrderReady"] == 5


async def test_transient_smtp_failures_are_retried_and_mail_goes_out_once(
    shop_settings: Settings,
) -> None:
    async with SmtpSink(temporary_failures=2) as sink:
        settings = shop_settings.model_copy(
            update={"smtp": shop_settings.smtp.model_copy(update={"port": sink.port})}
        )
        async with Shop(
            settings, settings.kafka_bootstrap or "", Wiring(api=False, workers=("notification",))
        ) as shop:
            order = make_order()
            await shop.producer.publish(shop.topics.orders, order)

            async def delivered() -> bool:
                return len(sink.messages) == 1

            await eventually(delivered)
            stats = shop.runtimes["notification"].stats
            assert stats.retries >= 1 and stats.dead_lettered == 0
            assert stats.errors_by_class.get("NotSent", 0) >= 2  # 451: certainly not sent
            assert sink.messages[0].recipients == (order.customer_email,)


async def test_redelivered_events_send_no_second_email(
    shop_settings: Settings, smtp_sink: SmtpSink
) -> None:
    async with Shop(
        shop_settings,
        shop_settings.kafka_bootstrap or "",
        Wiring(api=False, workers=("notification",)),
    ) as shop:
        order = make_order()
        record = encode(order)
        for _ in range(3):  # the same record three times: what a redelivery looks like
            await shop.producer.send_raw(
                shop.topics.orders, record.value, key=record.key, headers=record.headers
            )
        marker = make_order()
        await shop.producer.publish(shop.topics.orders, marker)

        async def marker_mailed() -> bool:
            return any(marker.order_id in m.subject for m in smtp_sink.messages)

        await eventually(marker_mailed)
        stats = shop.runtimes["notification"].stats

        async def committed() -> bool:  # the mail goes out before its batch commits
            return stats.commits > 0 and stats.handled + stats.duplicates >= 4

        await eventually(committed)
        mails = [m for m in smtp_sink.messages if order.order_id in m.subject]
        assert len(mails) == 1
        assert stats.duplicates == 2


async def test_a_shutdown_mid_retry_dead_letters_nothing_and_the_next_run_delivers(
    shop_settings: Settings, smtp_sink: SmtpSink
) -> None:
    from ingest.dlq import read_dead_letters
    from tests.support.net import dead_port

    patient = shop_settings.model_copy(
        update={
            "smtp": shop_settings.smtp.model_copy(update={"port": dead_port()}),
            "consumer": shop_settings.consumer.model_copy(
                update={"retry_budget_s": 300.0, "retry_base_delay_s": 0.2}
            ),
        }
    )
    wiring = Wiring(api=False, workers=("notification",))
    order = make_order()
    async with Shop(patient, patient.kafka_bootstrap or "", wiring) as shop:
        await shop.producer.publish(shop.topics.orders, order)

        async def retrying() -> bool:
            return shop.runtimes["notification"].stats.retries >= 2

        await eventually(retrying)
    # The mail server is back (the real sink); the same group picks the order up again.
    async with Shop(shop_settings, shop_settings.kafka_bootstrap or "", wiring) as shop:

        async def delivered() -> bool:
            return any(order.order_id in m.subject for m in smtp_sink.messages)

        await eventually(delivered)
        assert await read_dead_letters(shop.bootstrap, shop.topics.dlq_topics()) == []


async def test_an_unreachable_dedupe_table_pauses_the_consumer_and_loses_nothing(
    shop_settings: Settings, smtp_sink: SmtpSink
) -> None:
    fast = shop_settings.model_copy(
        update={"consumer": shop_settings.consumer.model_copy(update={"rewind_delay_s": 0.2})}
    )
    wiring = Wiring(api=False, workers=("notification",))
    async with Shop(fast, fast.kafka_bootstrap or "", wiring) as shop:
        original = shop.processed.seen
        failures = {"left": 3}

        async def flaky_seen(consumer: str, event_ids: object) -> set[str]:
            if failures["left"] > 0:
                failures["left"] -= 1
                raise ConnectionError("database went away")
            return await original(consumer, event_ids)  # type: ignore[arg-type]

        shop.processed.seen = flaky_seen  # type: ignore[method-assign]
        order = make_order()
        await shop.producer.publish(shop.topics.orders, order)

        async def mailed() -> bool:
            return any(order.order_id in m.subject for m in smtp_sink.messages)

        await eventually(mailed)
        assert failures["left"] == 0
        assert "notification" not in " ".join(shop.crashed())
        assert len([m for m in smtp_sink.messages if order.order_id in m.subject]) == 1

"""Kafka security settings on a broker that wants them: a local broker whose only client listener
is SASL_PLAINTEXT (PLAIN, users from its JAAS line). The shop, configured with a user's
credentials, takes an order through to ready; with a wrong password it refuses to start, saying
why."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from api.app import create_app
from ingest.broker import LocalKafka
from ingest.security import client_options
from ingest.topics import TopicSpec, ensure_topics
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.errors import ConfigError
from pizzashop.core.menu import load_menu
from pizzashop.core.settings import KafkaSecuritySettings, Settings
from tests.support.shop import API_HEADERS, eventually

MENU = load_menu()
USERS = {"broker": "broker-secret-1", "shop": "shop-secret-2"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sasl_bootstrap(
    kafka_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    async with LocalKafka(
        cache_dir=kafka_cache_dir,
        data_dir=tmp_path_factory.mktemp("kafka-sasl"),
        heap="320m",
        sasl_users=USERS,
    ) as kafka:
        yield kafka.bootstrap


def sasl_settings(base: Settings, bootstrap: str, password: str) -> Settings:
    security = KafkaSecuritySettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="shop",
        sasl_password=password,
    )
    return base.model_copy(update={"kafka_bootstrap": bootstrap, "kafka_security": security})


async def test_the_broker_refuses_a_client_without_credentials(sasl_bootstrap: str) -> None:
    with pytest.raises(Exception, match="bootstrap"):
        await ensure_topics(sasl_bootstrap, [TopicSpec("nobody", 1)])
    security = KafkaSecuritySettings(
        security_protocol="SASL_PLAINTEXT", sasl_username="shop", sasl_password=USERS["shop"]
    )
    created = await ensure_topics(
        sasl_bootstrap, [TopicSpec("somebody", 1)], client_options=client_options(security)
    )
    assert created == ["somebody"]


async def test_an_order_goes_through_over_sasl(
    sasl_bootstrap: str, shop_settings: Settings
) -> None:
    settings = sasl_settings(shop_settings, sasl_bootstrap, USERS["shop"])
    wiring = Wiring(workers=("kitchen", "oven", "payment", "status"))
    async with Shop(settings, sasl_bootstrap, wiring) as shop:
        transport = httpx.ASGITransport(app=create_app(shop))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://shop", headers=API_HEADERS
        ) as http:
            item = {"sku": "pepperoni_l", "quantity": 1}
            response = await http.post(
                "/orders",
                json={
                    "customer_id": "c-sasl",
                    "customer_email": "c-sasl@example.com",
                    "items": [{**item, "unit_price": str(MENU["pepperoni_l"].price)}],
                    "total": str(MENU["pepperoni_l"].price),
                    "payment": {"kind": "card", "card_fingerprint": "fp-11112222", "last4": "2222"},
                },
            )
            assert response.status_code == 202
            order_id = response.json()["order_id"]

            async def ready() -> bool:
                state = await http.get(f"/orders/{order_id}")
                return state.status_code == 200 and state.json()["status"] == "ready"

            await eventually(ready, timeout_s=60)
        assert not list(shop.crashed())


async def test_a_wrong_password_is_refused_with_a_clear_error(
    sasl_bootstrap: str, shop_settings: Settings
) -> None:
    settings = sasl_settings(shop_settings, sasl_bootstrap, "not-the-password")
    with pytest.raises(ConfigError, match=r"refused SASL user 'shop' \(PLAIN\)") as refused:
        async with Shop(settings, sasl_bootstrap, Wiring(api=False, workers=())):
            pass
    assert "not-the-password" not in str(refused.value)

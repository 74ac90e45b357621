"""One Kafka for the whole integration session.

The broker (and the schema registry) are session fixtures with a session event loop of their
own; tests and their other fixtures run on a loop per test, as in the unit tier: they take only
the broker's address from it (tests/README.md, "Event loops", has the measurement).

``PIZZASHOP_KAFKA_BOOTSTRAP`` names an external cluster to use instead; otherwise a
``LocalKafka`` starts in a temporary data dir, with its jars cached in ``<repo>/.cache`` so later
runs skip Maven.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from ingest.broker import LocalKafka
from pizzashop.core.settings import Settings
from services.mailer import SmtpSink
from tests.support.harnesses import HarnessFactory, KafkaHarnesses
from tests.support.shop import TEST_API_KEY

HERE = Path(__file__).parent
REPO = HERE.parents[1]


#: The consumer runtime's transports; tests marked ``both_transports`` run on each.
TRANSPORTS = ("aiokafka", "confluent")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "transport" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_transports"
    ):
        metafunc.parametrize("transport", TRANSPORTS, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Hooks in this conftest see every collected item, not just this folder's.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_cache_dir() -> Path:
    return REPO / ".cache"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def kafka_bootstrap(
    kafka_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    external = os.environ.get("PIZZASHOP_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    async with LocalKafka(
        cache_dir=kafka_cache_dir, data_dir=tmp_path_factory.mktemp("kafka")
    ) as kafka:
        yield kafka.bootstrap


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def schema_registry_url(
    kafka_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """A Confluent-API schema registry for the session: ``PIZZASHOP_SCHEMA_REGISTRY__URL``, or
    a local Apicurio (built with Maven into ``.cache`` the first time), data in memory."""
    from ingest.registry import LocalRegistry

    external = os.environ.get("PIZZASHOP_SCHEMA_REGISTRY__URL")
    if external:
        yield external
        return
    async with LocalRegistry(
        cache_dir=kafka_cache_dir, log_dir=tmp_path_factory.mktemp("schema-registry")
    ) as registry:
        yield registry.url


@pytest.fixture
def harness_factory(kafka_bootstrap: str) -> HarnessFactory:
    """The runtime's behaviour cases on the session's Kafka, with topics and a group of the
    test's own."""
    return KafkaHarnesses(kafka_bootstrap)


@pytest.fixture
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as sink:
        yield sink


@pytest.fixture
def transport(request: pytest.FixtureRequest) -> str:
    """The consumer runtime's transport: each of ``TRANSPORTS`` for a test marked
    ``both_transports``, else ``PIZZASHOP_CONSUMER__TRANSPORT`` or the default."""
    default = os.environ.get("PIZZASHOP_CONSUMER__TRANSPORT", "aiokafka")
    return str(getattr(request, "param", default))


@pytest.fixture
def shop_settings(
    tmp_path: Path, smtp_sink: SmtpSink, kafka_bootstrap: str, transport: str
) -> Settings:
    """Settings with topics, groups and database of this test only."""
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=f"t-{run}.",
        group_prefix=f"t-{run}",
        home=tmp_path,
        cook_seconds=0.2,
        smtp={"host": smtp_sink.host, "port": smtp_sink.port},
        # Slow models are degraded after model_timeout_s; on a starved CI machine a batch of
        # 15 orders once took over the default 2 s and the test saw degraded scores. The tests
        # of timeouts set their own.
        enricher={"model_timeout_s": 30.0},
        api={"keys": [{"name": "tests", "secret": TEST_API_KEY, "scopes": ["inspect", "operate"]}]},
        consumer={
            "transport": transport,
            "batch_wait_ms": 50,
            "retry_base_delay_s": 0.05,
            "retry_max_delay_s": 0.5,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
        },
    )


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small but real models (fraud, anomaly, upsell) for the enrichment tests."""
    from models.training import train

    root = tmp_path_factory.mktemp("registry")
    train(root, n_orders=8000, seed=3, progress=False, fraud_epochs=8, anomaly_epochs=8)
    return root

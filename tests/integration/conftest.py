"""One Kafka for the whole integration session.

``PIZZASHOP_KAFKA_BOOTSTRAP`` names an external cluster to use instead; otherwise a
``LocalKafka`` starts in a temporary data dir, with its jars cached in ``<repo>/.cache`` so later
runs skip Maven.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from ingest.broker import LocalKafka
from pizzashop.core.settings import Settings
from services.mailer import SmtpSink

HERE = Path(__file__).parent
#: The key tests send to read orders and scores (inspect) and to operate.
TEST_API_KEY = "integration-tests-key-0123"
API_HEADERS = {"X-API-Key": TEST_API_KEY}
REPO = HERE.parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Hooks in this conftest see every collected item, not just this folder's.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_cache_dir() -> Path:
    return REPO / ".cache"


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
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
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as sink:
        yield sink


@pytest.fixture
def shop_settings(tmp_path: Path, smtp_sink: SmtpSink, kafka_bootstrap: str) -> Settings:
    """Settings with topics, groups and database of this test only."""
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=f"t-{run}.",
        group_prefix=f"t-{run}",
        home=tmp_path,
        cook_seconds=0.2,
        smtp={"host": smtp_sink.host, "port": smtp_sink.port},
        api={"keys": [{"name": "tests", "secret": TEST_API_KEY, "scopes": ["inspect", "operate"]}]},
        consumer={
            "batch_wait_ms": 50,
            "retry_base_delay_s": 0.05,
            "retry_max_delay_s": 0.5,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
        },
    )


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 30.0, every_s: float = 0.1
) -> None:
    """Wait until ``check()`` holds; fail the test with a clear message if it never does."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition {check.__name__} not met within {timeout_s}s")
        await asyncio.sleep(every_s)


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small but real models (fraud, anomaly, upsell) for the enrichment tests."""
    from models.training import train

    root = tmp_path_factory.mktemp("registry")
    train(root, n_orders=8000, seed=3, progress=False, fraud_epochs=8, anomaly_epochs=8)
    return root


async def spawn_workers(
    settings: Settings, workers: str, log: Path, **env: str
) -> asyncio.subprocess.Process:
    """``pizzashop run --no-api --workers ...`` as a real process on the test's topics and
    database, so a test can SIGKILL it. Output goes to ``log``; ``env`` adds settings."""
    environment = {
        **os.environ,
        "PIZZASHOP_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "PIZZASHOP_TOPIC_PREFIX": settings.topic_prefix,
        "PIZZASHOP_GROUP_PREFIX": settings.group_prefix,
        "PIZZASHOP_HOME": str(settings.home),
        "PIZZASHOP_REGISTRY_DIR": str(settings.resolved_registry_dir),
        "PIZZASHOP_SMTP__PORT": str(settings.smtp.port),
        "PIZZASHOP_CONSUMER__SESSION_TIMEOUT_MS": "6000",
        "PIZZASHOP_CONSUMER__HEARTBEAT_INTERVAL_MS": "1000",
        **env,
    }
    with log.open("ab") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pizzashop.app.cli", "run", "--no-api", "--verbose",
            "--workers", workers, env=environment, stdout=sink, stderr=sink,
        )  # fmt: skip

"""Helpers for tests of the whole shop on a real broker: the API key, waiting on a condition
by polling, and the shop's workers as a real process."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from pizzashop.core.settings import Settings

#: The key tests send to read orders and scores (inspect) and to operate.
TEST_API_KEY = "integration-tests-key-0123"
API_HEADERS = {"X-API-Key": TEST_API_KEY}


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 30.0, every_s: float = 0.1
) -> None:
    """Wait until ``check()`` holds; fail the test with a clear message if it never does."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition {check.__name__} not met within {timeout_s}s")
        await asyncio.sleep(every_s)


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
        "PIZZASHOP_CONSUMER__TRANSPORT": settings.consumer.transport,
        **env,
    }
    with log.open("ab") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pizzashop.app.cli", "run", "--no-api", "--verbose",
            "--workers", workers, env=environment, stdout=sink, stderr=sink,
        )  # fmt: skip

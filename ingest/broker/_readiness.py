"""Proving a broker serves: an open port, then a metadata request that lists node 1.

The port opens before the broker is unfenced, so only the metadata answer counts. Polls back
off from 50 ms to 500 ms; nothing here sleeps a fixed guess.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient

from ingest.broker._config import NODE_ID
from pizzashop.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def _port_open(host: str, port: int, timeout_s: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def lists_broker(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True when a metadata request to ``bootstrap`` names broker ``NODE_ID``."""
    host, _, port = bootstrap.rpartition(":")
    if not await _port_open(host, int(port), timeout_s):
        return False
    timeout_ms = max(int(timeout_s * 1000), 1000)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="pizzashop-readiness",
        request_timeout_ms=timeout_ms,
        connections_max_idle_ms=timeout_ms + 1000,
    )
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
    except Exception:
        # While the broker boots, any failure (refused, fenced, no node yet) just means "not yet";
        # the caller's deadline bounds the wait.
        logger.debug("metadata request to %s failed", bootstrap, exc_info=True)
        return False
    finally:
        await admin.close()
    return any(broker["node_id"] == NODE_ID for broker in cluster["brokers"])


async def wait_ready(
    bootstrap: str,
    *,
    timeout_s: float,
    alive: Callable[[], bool],
    log_tail: Callable[[], str],
) -> None:
    """Return once the broker answers; BrokerUnavailable if it dies or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        if not alive():
            raise BrokerUnavailable(f"the Kafka broker exited while starting:\n{log_tail()}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrokerUnavailable(
                f"the Kafka broker at {bootstrap} was not ready within {timeout_s:.0f}s:\n"
                f"{log_tail()}"
            )
        if await lists_broker(bootstrap, timeout_s=min(5.0, max(left, 0.5))):
            return
        await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
        delay = min(delay * 2, 0.5)


def run_sync(coro_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code, on a private loop in a worker thread.

    Never ``asyncio.run`` on the calling thread: it would fail inside a running loop, and on the
    main thread it resets the current event loop that a caller (pytest-asyncio, say) relies on.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coro_factory())).result()

"""Proving a node serves: its port open, then a metadata request to it that lists the node.

The port opens before the broker is unfenced, so only the metadata answer counts: a node is
listed once the controller quorum has it registered and caught up. Polls back
off from 50 ms to 500 ms; nothing here sleeps a fixed guess.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from aiokafka.cluster import ClusterMetadata
from aiokafka.conn import create_conn
from aiokafka.protocol.metadata import MetadataRequest

from ingest.broker._config import NODE_ID
from pizzashop.core.errors import BrokerUnavailable

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


async def lists_broker(
    bootstrap: str,
    timeout_s: float = 5.0,
    *,
    node_id: int = NODE_ID,
    client_options: Mapping[str, Any] | None = None,
) -> bool:
    """True when a metadata request sent to the node at ``bootstrap`` (``host:port``) itself
    lists broker ``node_id``.

    One connection to that node only: a client would send the request to whichever broker it
    likes, and in a cluster with a node down that may be the dead one. ``client_options``
    (aiokafka's ``security_protocol``, ``sasl_*``) for a broker that wants credentials.
    """
    host, _, port = bootstrap.rpartition(":")
    if not await _port_open(host, int(port), timeout_s):
        return False
    timeout_ms = max(int(timeout_s * 1000), 1000)
    conn = None
    try:
        conn = await asyncio.wait_for(
            create_conn(
                host,
                int(port),
                client_id="pizzashop-readiness",
                request_timeout_ms=timeout_ms,
                **(client_options or {}),
            ),
            timeout_s,
        )
        response = await conn.send(MetadataRequest([]))
    except Exception:
        # While the broker boots, any failure (refused, fenced, no node yet) just means "not yet";
        # the caller's deadline bounds the wait.
        logger.debug("metadata request to %s failed", bootstrap, exc_info=True)
        return False
    finally:
        if conn is not None:
            conn.close()
    cluster = ClusterMetadata()
    cluster.update_metadata(response)
    return any(broker.nodeId == node_id for broker in cluster.brokers())


async def wait_ready(
    bootstrap: str,
    *,
    node_id: int = NODE_ID,
    timeout_s: float,
    alive: Callable[[], bool],
    log_tail: Callable[[], str],
    client_options: Mapping[str, Any] | None = None,
) -> None:
    """Return once node ``node_id`` at ``bootstrap`` serves; BrokerUnavailable if it dies or the
    deadline passes."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        if not alive():
            raise BrokerUnavailable(
                f"Kafka node {node_id} ({bootstrap}) exited while starting:\n{log_tail()}"
            )
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrokerUnavailable(
                f"Kafka node {node_id} at {bootstrap} was not ready within {timeout_s:.0f}s:\n"
                f"{log_tail()}"
            )
        if await lists_broker(
            bootstrap,
            timeout_s=min(5.0, max(left, 0.5)),
            node_id=node_id,
            client_options=client_options,
        ):
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


async def wait_all(awaitables: Iterable[Awaitable[Any]]) -> None:
    """Await them concurrently; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    if not tasks:
        return
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = task.exception()
            if error is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

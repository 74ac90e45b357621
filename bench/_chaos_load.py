"""Orders at a steady rate through the real HTTP API, whatever else is going on.

Order ``i`` is sent at ``start + i / rate`` (never earlier; later only when ``concurrency``
requests are already in flight). Only a ``202 Confirmed`` answer makes an order confirmed; any
other answer, a timeout or a refused connection counts as an API error and the order is not
retried (a client that never heard back may not assume anything).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from pizzashop.app.traffic import OrderRequests
from pizzashop.core.menu import load_menu

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LoadResult:
    submitted: int = 0
    confirmed_at: dict[str, float] = field(default_factory=dict)  # order id -> wall clock
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0


async def place_orders(
    url: str,
    *,
    orders: int,
    rate: float,
    seed: int,
    result: LoadResult,
    concurrency: int = 64,
    timeout_s: float = 30.0,
    overrun_s: float = 300.0,
) -> LoadResult:
    """Place ``orders`` at ``rate``; stop submitting ``overrun_s`` past the planned end (an API
    that hangs must not hold the run for hours), so ``submitted`` may fall short."""
    bodies = itertools.islice(OrderRequests(load_menu(), seed=seed), orders)
    slots = asyncio.Semaphore(concurrency)
    began = time.monotonic()

    async def place(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
        try:
            sent = time.perf_counter()
            response = await client.post("/orders", json=body)
            result.latencies_ms.append((time.perf_counter() - sent) * 1000)
            if response.status_code == 202 and response.json().get("status") == "Confirmed":
                result.confirmed_at[response.json()["order_id"]] = time.time()
            else:
                result.errors[f"http {response.status_code}"] += 1
        except httpx.HTTPError as exc:
            result.errors[type(exc).__name__] += 1
        finally:
            slots.release()

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with (
        httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client,
        asyncio.TaskGroup() as tasks,
    ):
        give_up = began + orders / rate + overrun_s
        for i, body in enumerate(bodies):
            if time.monotonic() > give_up:
                logger.warning("load: %d of %d orders submitted; giving up", i, orders)
                break
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            result.submitted += 1
            tasks.create_task(place(client, body))
    result.seconds = round(time.monotonic() - began, 2)
    return result

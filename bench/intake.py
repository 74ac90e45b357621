"""Order intake throughput and latency over real HTTP, with the outbox relaying to real Kafka.

    .venv/bin/python bench/intake.py --json [--orders 2000] [--concurrency 16]

Runs the API alone in this process (uvicorn on loopback, SQLite, the outbox relay), places
``--orders`` realistic orders from ``--concurrency`` clients, and reports confirmed orders per
second, the confirm latency p50/p99, and how long the relay took to get the last order onto
Kafka. Uses PIZZASHOP_KAFKA_BOOTSTRAP if set, else starts a local broker in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

from api.app import create_app
from pizzashop.app.demo import serve
from pizzashop.app.kafka import kafka
from pizzashop.app.shop import Shop, Wiring
from pizzashop.app.traffic import OrderRequests
from pizzashop.core.settings import Settings

REPO = Path(__file__).resolve().parents[1]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-api-")))
        # PIZZASHOP_KAFKA_BOOTSTRAP if set, else a local broker for the run.
        bootstrap = await stack.enter_async_context(
            kafka(Settings(home=tmp, cache_dir=REPO / ".cache"))
        )
        run = uuid.uuid4().hex[:6]
        settings = Settings(
            kafka_bootstrap=bootstrap,
            home=tmp,
            topic_prefix=f"bench-{run}.",
            api={"rate_limit_per_address": ""},
        )
        shop = await stack.enter_async_context(Shop(settings, bootstrap, Wiring(workers=())))
        url = await stack.enter_async_context(serve(create_app(shop), "127.0.0.1"))
        bodies = list(itertools.islice(OrderRequests(shop.menu, seed=1), args.orders))
        latencies: list[float] = []
        slots = asyncio.Semaphore(args.concurrency)

        async def place(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
            async with slots:
                began = time.perf_counter()
                response = await client.post("/orders", json=body)
                latencies.append((time.perf_counter() - began) * 1000)
            response.raise_for_status()

        limits = httpx.Limits(max_connections=args.concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            await asyncio.gather(*(place(client, b) for b in bodies[:50]))  # warm-up
            latencies.clear()
            began = time.perf_counter()
            await asyncio.gather(*(place(client, b) for b in bodies[50:]))
            placed = time.perf_counter() - began
        while await shop.relay.pending_count():  # noqa: ASYNC110 - polling the database is the point
            await asyncio.sleep(0.01)
        relayed = time.perf_counter() - began
        latencies.sort()
        return {
            "cores": os.cpu_count(),
            "orders": len(latencies),
            "concurrency": args.concurrency,
            "confirmed_per_s": round(len(latencies) / placed, 1),
            "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 2),
            "all_on_kafka_s": round(relayed, 2),
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="one JSON object")
    options = parser.parse_args()
    result = asyncio.run(main(options))
    if options.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")

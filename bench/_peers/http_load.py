"""The order API's load, from a process of its own (so it never competes with the server's
event loop), and the end-to-end probe.

    closed: ``--connections`` clients place ``--orders`` orders back to back; orders/s and
            the confirm latency p50/p99 (every response must be a 202).
    rates:  orders offered at each of ``--rates`` per second for ``--seconds``; the latency of
            each from the start of its ``POST /orders`` to its ``OrderEnriched`` read from
            ``--enriched`` by a consumer in this process (one clock at both ends).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

from ingest.codec import decode
from ingest.events import OrderEnriched
from pizzashop.app.traffic import OrderRequests
from pizzashop.core.menu import load_menu


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def closed(args: argparse.Namespace, bodies: Any) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = list(itertools.islice(bodies, args.orders))

    async def client_loop(client: httpx.AsyncClient, mine: list[dict[str, Any]]) -> None:
        for body in mine:
            began = time.perf_counter()
            response = await client.post("/orders", json=body)
            latencies.append((time.perf_counter() - began) * 1000)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    limits = httpx.Limits(max_connections=args.connections)
    async with httpx.AsyncClient(base_url=args.url, timeout=60, limits=limits) as client:
        warm = [next(bodies) for _ in range(50)]
        await asyncio.gather(*(client.post("/orders", json=b) for b in warm))
        began = time.perf_counter()
        shares = [queue[i :: args.connections] for i in range(args.connections)]
        await asyncio.gather(*(client_loop(client, share) for share in shares))
        elapsed = time.perf_counter() - began
    return {
        "orders_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": percentile(latencies, 0.99),
        "connections": args.connections,
        "orders": len(latencies),
        "statuses": {str(k): v for k, v in statuses.items()},
    }


class Probe:
    def __init__(self, bootstrap: str, topic: str) -> None:
        self.arrived: dict[str, float] = {}
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="latest", enable_auto_commit=False
        )

    async def run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=20)
            now = time.perf_counter()
            for records in batch.values():
                for r in records:
                    event = decode(r.value, list(r.headers))
                    if isinstance(event, OrderEnriched):
                        self.arrived.setdefault(event.order_id, now)

    async def __aenter__(self) -> Probe:
        await self._consumer.start()
        await self._consumer.getmany(timeout_ms=500)  # joined and positioned before orders go
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()


async def offered(args: argparse.Namespace, bodies: Any) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with Probe(args.bootstrap, args.enriched) as probe:
        probing = asyncio.create_task(probe.run())
        limits = httpx.Limits(max_connections=args.max_in_flight)
        async with httpx.AsyncClient(base_url=args.url, timeout=60, limits=limits) as client:
            for rate in args.rates:
                sent: dict[str, float] = {}
                refused: list[int] = []

                async def place(
                    body: dict[str, Any], sent: dict[str, float], refused: list[int]
                ) -> None:
                    began = time.perf_counter()
                    try:
                        response = await client.post("/orders", json=body)
                    except httpx.HTTPError:  # the server dropped it: an order not placed
                        refused.append(0)
                        return
                    if response.status_code == 202:
                        sent[response.json()["order_id"]] = began
                    else:
                        refused.append(response.status_code)

                n = int(rate * args.seconds)
                tasks = []
                start = time.perf_counter()
                for i in range(n):
                    if (delay := start + i / rate - time.perf_counter()) > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(place(next(bodies), sent, refused)))
                await asyncio.gather(*tasks)
                offered_s = time.perf_counter() - start
                deadline = time.perf_counter() + args.settle_s
                while any(o not in probe.arrived for o in sent):
                    if time.perf_counter() > deadline:
                        break
                    await asyncio.sleep(0.05)
                latencies = [
                    (probe.arrived[o] - t) * 1000 for o, t in sent.items() if o in probe.arrived
                ]
                results[str(int(rate))] = {
                    "p50": round(statistics.median(latencies), 1) if latencies else None,
                    "p99": percentile(latencies, 0.99) if latencies else None,
                    "p999": percentile(latencies, 0.999) if latencies else None,
                    "achieved_offered_per_s": round(n / offered_s, 1),
                    "orders": n,
                    "confirmed": len(sent),
                    "enriched": len(latencies),
                    "refused": len(refused),
                }
        probing.cancel()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("closed", "rates"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--enriched", default="")
    parser.add_argument("--rates", type=lambda s: [float(r) for r in s.split(",")], default=[200])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--settle-s", type=float, default=60.0)
    parser.add_argument("--max-in-flight", type=int, default=256)
    args = parser.parse_args()
    bodies = iter(OrderRequests(load_menu(), seed=int(time.time())))
    result = await (closed(args, bodies) if args.mode == "closed" else offered(args, bodies))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())

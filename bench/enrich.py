"""Enrichment throughput and end-to-end latency on a real Kafka.

    .venv/bin/python bench/enrich.py --json

Latency is from ``OrderPlaced`` produced (acknowledged by the broker) to ``OrderEnriched``
consumed by a separate consumer (reading headers only), both in this process, so one clock
measures both ends. Two phases: a fixed offered rate (``--rate`` orders/s for ``--seconds``),
then saturation (``--burst`` orders at once; throughput = orders / time until the last is
enriched; ``drain_per_s`` counts only what was enriched after the last order was produced, the
enricher alone on the process; ``cpu_ms_per_order`` is this process's CPU time per order,
steadier than throughput on a shared machine). The enricher runs in this process too, as one
worker with its own consumer group. Uses PIZZASHOP_KAFKA_BOOTSTRAP if set, else starts a local
broker in a temp dir; trains small models unless --registry has some.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: the repository's packages, bench included
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer

from bench._served_heap import as_served
from bench._window_profile import profiled_window
from ingest.codec import H_EVENT_TYPE, H_ORDER_ID
from ingest.events import OrderEnriched, OrderPlaced
from models.registry import Registry
from models.simulator import simulate
from pizzashop.app.kafka import kafka
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.settings import Settings

REPO = Path(__file__).resolve().parents[1]


class Probe:
    """Consumes orders.enriched and records when each order's enrichment arrived.

    It reads the routing headers only (``event-type``, ``order-id``), not the body: the probe
    shares the enricher's process and interpreter lock, and decoding every record it measures
    cost the enricher a tenth of its CPU time."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.arrived: dict[str, float] = {}
        self.degraded = 0
        self._pending: set[str] = set()
        self._all_in = asyncio.Event()
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"bench-probe-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._consumer.stop()

    async def _run(self) -> None:
        enriched = OrderEnriched.event_type.encode()
        while True:
            batch = await self._consumer.getmany(timeout_ms=50)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    headers = dict(record.headers)
                    if headers.get(H_EVENT_TYPE) != enriched:
                        continue
                    order_id = headers[H_ORDER_ID].decode()
                    if order_id not in self.arrived and b'"degraded":true' in record.value:
                        self.degraded += 1  # some model's score is missing (a timeout, say)
                    self.arrived.setdefault(order_id, now)
                    self._pending.discard(order_id)
            if not self._pending:
                self._all_in.set()

    async def wait_for(self, ids: list[str], timeout_s: float) -> None:
        self._pending = {i for i in ids if i not in self.arrived}
        self._all_in.clear()
        if not self._pending:
            return
        try:
            await asyncio.wait_for(self._all_in.wait(), timeout_s)
        except TimeoutError:
            missing = len(self._pending)
            raise TimeoutError(
                f"{missing} of {len(ids)} orders not enriched in {timeout_s}s"
            ) from None


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _offered(
    shop: Shop, probe: Probe, orders: list[OrderPlaced], rate: float
) -> dict[str, Any]:
    sent: dict[str, float] = {}
    in_flight: list[asyncio.Task[None]] = []
    degraded = probe.degraded
    stats = shop.runtimes["enricher"].stats
    handled, batches, busy = stats.handled, stats.batch_sizes.count, stats.handle_seconds.total
    began = time.perf_counter()
    for i, order in enumerate(orders):
        due = began + i / rate
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        # Not awaited one by one: the offered rate must not depend on the ack round trip.
        sent[order.order_id] = time.perf_counter()
        in_flight.append(asyncio.create_task(shop.producer.publish(shop.topics.orders, order)))
    await asyncio.gather(*in_flight)
    await probe.wait_for(list(sent), timeout_s=120)
    latencies = [(probe.arrived[i] - t) * 1000 for i, t in sent.items()]
    elapsed = max(probe.arrived[i] for i in sent) - began
    return {
        "offered_per_s": round(len(orders) / (max(sent.values()) - began), 1),
        "achieved_per_s": round(len(orders) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(_percentile(latencies, 0.99), 1),
        "orders": len(orders),
        "degraded": probe.degraded - degraded,
        # Per handler call: records, and milliseconds (the rest of a record's latency is the
        # fetch wait, the transaction commit and the probe's fetch).
        "mean_batch": round(
            (stats.handled - handled) / max(stats.batch_sizes.count - batches, 1), 1
        ),
        "handler_ms": round(
            1000 * (stats.handle_seconds.total - busy) / max(stats.batch_sizes.count - batches, 1),
            1,
        ),
    }


async def _saturate(shop: Shop, probe: Probe, orders: list[OrderPlaced]) -> dict[str, Any]:
    stats = shop.runtimes["enricher"].stats
    degraded = probe.degraded
    handled, batches, busy = stats.handled, stats.batch_sizes.count, stats.handle_seconds.total
    ids = [o.order_id for o in orders]
    async with profiled_window():
        began, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(orders), 500):
            await shop.producer.publish_many(shop.topics.orders, orders[start : start + 500])
        produced = time.perf_counter()
        await probe.wait_for(ids, timeout_s=300)
        cpu = time.process_time() - cpu
    done = max(probe.arrived[i] for i in ids)
    latencies = [(probe.arrived[i] - began) * 1000 for i in ids]
    # Enriched once the backlog was all produced: the enricher alone on the process.
    after = sum(probe.arrived[i] > produced for i in ids)
    return {
        "throughput_per_s": round(len(orders) / (done - began), 1),
        "drain_per_s": round(after / (done - produced), 1) if done > produced else None,
        # CPU of this whole process (enricher, producer, probe) per order: steadier than
        # throughput on a shared machine.
        "cpu_ms_per_order": round(1000 * cpu / len(orders), 3),
        # Orders with some model degraded: a throughput bought with missing scores is no gain.
        "degraded": probe.degraded - degraded,
        "produce_s": round(produced - began, 2),
        # How the enricher spent the phase: records per handler call, and handler time over
        # the phase's wall time (above 1: batches of several partitions handled at once).
        "mean_batch": round(
            (stats.handled - handled) / max(stats.batch_sizes.count - batches, 1), 1
        ),
        "handler_share": round((stats.handle_seconds.total - busy) / (done - began), 2),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(_percentile(latencies, 0.99), 1),
        "orders": len(orders),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-enrich-")))
        # PIZZASHOP_KAFKA_BOOTSTRAP if set, else a local broker for the run.
        bootstrap = await stack.enter_async_context(
            kafka(Settings(home=tmp, cache_dir=REPO / ".cache"))
        )
        registry = Path(args.registry) if args.registry else tmp / "registry"
        if Registry(registry).latest("fraud") is None:
            from models.training import train

            await asyncio.to_thread(train, registry, n_orders=8000, seed=3, progress=False)
        run = uuid.uuid4().hex[:6]
        settings = Settings(
            kafka_bootstrap=bootstrap,
            home=tmp,
            registry_dir=registry,
            topic_prefix=f"bench-{run}.",
            group_prefix=f"bench-{run}",
            consumer={"batch_max": args.batch_max, "batch_wait_ms": args.batch_wait_ms},
        )
        shop = await stack.enter_async_context(
            Shop(settings, bootstrap, Wiring(api=False, workers=("enricher",)))
        )
        stack.enter_context(as_served())
        probe = Probe(bootstrap, shop.topics.enriched)
        await probe.start()
        stack.push_async_callback(probe.stop)
        stream = simulate(int(args.rate * args.seconds) + args.burst + 200, seed=42).orders
        warm = list(stream[:200])
        await _saturate(shop, probe, warm)  # join, load, warm up: not measured
        fixed = await _offered(
            shop, probe, list(stream[200 : 200 + int(args.rate * args.seconds)]), args.rate
        )
        saturation = await _saturate(shop, probe, list(stream[-args.burst :]))
        return {
            "cores": os.cpu_count(),
            "throughput_per_s": saturation["throughput_per_s"],
            "drain_per_s": saturation["drain_per_s"],
            "cpu_ms_per_order": saturation["cpu_ms_per_order"],
            "degraded": saturation["degraded"] + fixed["degraded"],
            "offered_per_s": fixed["offered_per_s"],
            "p50_ms": fixed["p50_ms"],
            "p99_ms": fixed["p99_ms"],
            "fixed_rate": fixed,
            "saturation": saturation,
            "batch_max": args.batch_max,
            "batch_wait_ms": args.batch_wait_ms,
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="offered orders per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--burst", type=int, default=5000, help="orders for the saturation phase")
    parser.add_argument("--batch-max", type=int, default=500)
    parser.add_argument("--batch-wait-ms", type=int, default=20)
    parser.add_argument("--registry", default=None)
    parser.add_argument("--json", action="store_true", help="one JSON object")
    options = parser.parse_args()
    result = asyncio.run(main(options))
    if options.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>18}: {value}")

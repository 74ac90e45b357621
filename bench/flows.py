"""Throughput of the core flows from a preloaded backlog, on a real Kafka, with their durable
effects and exactly-once commits.

    .venv/bin/python bench/flows.py --orders 5000 --runs 3 --json

For each flow (kitchen, payment, notification, status): ``--orders`` ``OrderPlaced`` records are
produced to a fresh ``orders`` topic first; then the flow starts alone in its own consumer group
and the clock runs until the group's committed offsets reach the end of the topic. The reference
in the same run is a bare aiokafka passthrough (consume, decode, encode, produce in a
transaction per fetch with the offsets) over the same backlog, so the ratio says how close to
the client's own speed the flow is. Median of ``--runs`` with min and max; ``cpu`` says how many
cores this process (the flow) and the SMTP server (its own process) kept busy meanwhile. Uses
PIZZASHOP_KAFKA_BOOTSTRAP if set, else a local broker in a temp dir; SQLite in a temp dir, or
PIZZASHOP_DATABASE_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: the repository's packages, bench included
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench._served_heap import as_served
from bench._window_profile import profiled_window
from ingest.codec import decode, encode
from ingest.producer import EventProducer
from ingest.topics import Topics, ensure_topics
from models.simulator import simulate
from pizzashop.app.kafka import kafka
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.net import free_port
from pizzashop.core.settings import Settings

REPO = Path(__file__).resolve().parents[1]
FLOWS = ("kitchen", "payment", "notification", "status")


async def preload(settings: Settings, bootstrap: str, n: int) -> Topics:
    topics = Topics(f"bench-{uuid.uuid4().hex[:8]}.")
    await ensure_topics(bootstrap, topics.specs(settings.orders_partitions))
    orders = list(simulate(n, seed=7).orders)
    async with EventProducer(bootstrap) as producer:
        for start in range(0, n, 1000):
            await producer.publish_many(topics.orders, orders[start : start + 1000])
    return topics


async def committed_total(admin: AIOKafkaAdminClient, group: str, topic: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(o.offset for tp, o in offsets.items() if tp.topic == topic and o.offset > 0)


async def wait_committed(bootstrap: str, group: str, topic: str, n: int) -> None:
    """Until ``group`` has committed ``n`` offsets of ``topic``. One admin client for the whole
    wait: a client per poll (connect, metadata, close every 50 ms) cost the flow measured in
    this process 2-8% of its samples in py-spy."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # The broker's committed offsets are the measure; nothing here can signal them.
        while await committed_total(admin, group, topic) < n:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


@dataclass(frozen=True, slots=True)
class FlowRun:
    """One run: records/s, and the CPU over the run's wall time (1.0 = one core busy) of this
    process (the flow, plus the broker polls that time it) and of the SMTP server's."""

    per_s: float
    process_cpu: float
    smtp_server_cpu: float


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def run_flow(settings: Settings, bootstrap: str, flow: str, n: int, home: Path) -> FlowRun:
    topics = await preload(settings, bootstrap, n)
    run = uuid.uuid4().hex[:8]
    flow_settings = settings.model_copy(
        update={
            "topic_prefix": topics.prefix,
            "group_prefix": f"bench-{run}",
            "database_url": settings.database_url or f"sqlite+aiosqlite:///{home / run}.db",
        }
    )
    group = flow_settings.group(flow)
    port = free_port()
    # The mail server in its own process, as in production: in this one it would fight the
    # flow for the GIL on every SMTP round trip.
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
        "-c", "aiosmtpd.handlers.Sink",
    )  # fmt: skip
    smtp = flow_settings.smtp.model_copy(update={"port": port})
    try:
        async with Shop(
            flow_settings.model_copy(update={"smtp": smtp}),
            bootstrap,
            Wiring(api=False, workers=(flow,)),
        ):
            with as_served():
                async with profiled_window():
                    started, cpu_started = time.perf_counter(), _cpu_s(resource.RUSAGE_SELF)
                    await wait_committed(bootstrap, group, topics.orders, n)
                    elapsed = time.perf_counter() - started
                    process_cpu = (_cpu_s(resource.RUSAGE_SELF) - cpu_started) / elapsed
    finally:
        # The server's CPU, from start to end (it idles outside the run), once it is reaped.
        children = _cpu_s(resource.RUSAGE_CHILDREN)
        server.terminate()
        await server.wait()
        server_cpu = _cpu_s(resource.RUSAGE_CHILDREN) - children
    return FlowRun(n / elapsed, process_cpu, server_cpu / elapsed)


async def passthrough(settings: Settings, bootstrap: str, n: int) -> float:
    """The client's own speed on the same work: decode, encode, produce + offsets per fetch."""
    topics = await preload(settings, bootstrap, n)
    group = f"bench-pass-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(
        topics.orders,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=500,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"{group}.tx", linger_ms=2
    )
    await consumer.start()
    await producer.start()
    done = 0
    started = time.perf_counter()
    try:
        while done < n:
            fetched = await consumer.getmany(timeout_ms=100, max_records=500)
            if not fetched:
                continue
            async with producer.transaction():
                offsets: dict[TopicPartition, int] = {}
                for tp, records in fetched.items():
                    for r in records:
                        out = encode(decode(r.value, list(r.headers)))
                        await producer.send(
                            topics.order_events, out.value, key=out.key, headers=out.headers
                        )
                    offsets[tp] = records[-1].offset + 1
                    done += len(records)
                await producer.send_offsets_to_transaction(offsets, group)
        return n / (time.perf_counter() - started)
    finally:
        await producer.stop()
        await consumer.stop()


def summary(values: Sequence[float], digits: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


async def main(
    orders: int, runs: int, flows: Sequence[str], *, with_passthrough: bool = True
) -> dict[str, Any]:
    settings = Settings(home=REPO / ".pizzashop", cache_dir=REPO / ".cache")
    async with kafka(settings) as bootstrap:
        with tempfile.TemporaryDirectory() as tmp:
            results: dict[str, list[float]] = {f: [] for f in flows}
            cpu: dict[str, dict[str, list[float]]] = {
                f: {"process": [], "smtp_server": []} for f in flows
            }
            if with_passthrough:
                results["passthrough"] = []
            # Interleaved, so the noise of a shared machine falls on all alike.
            for _ in range(runs):
                if with_passthrough:
                    results["passthrough"].append(await passthrough(settings, bootstrap, orders))
                for flow in flows:
                    run = await run_flow(settings, bootstrap, flow, orders, Path(tmp))
                    results[flow].append(run.per_s)
                    cpu[flow]["process"].append(run.process_cpu)
                    cpu[flow]["smtp_server"].append(run.smtp_server_cpu)
    report: dict[str, Any] = {
        "orders": orders,
        "runs": runs,
        "per_s": {name: summary(values) for name, values in results.items()},
        # Cores busy during the runs: is the flow's process or the mail server the limit?
        "cpu": {
            flow: {who: summary(values, digits=2) for who, values in shares.items()}
            for flow, shares in cpu.items()
        },
    }
    if with_passthrough:
        reference = statistics.median(results["passthrough"])
        report["ratio_to_passthrough"] = {
            name: round(statistics.median(values) / reference, 3)
            for name, values in results.items()
        }
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flows", default=",".join(FLOWS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--no-passthrough", action="store_true", help="the flows alone (bench/suite.py has its own)"
    )
    args = parser.parse_args()
    report = asyncio.run(
        main(
            args.orders,
            args.runs,
            args.flows.split(","),
            with_passthrough=not args.no_passthrough,
        )
    )
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))

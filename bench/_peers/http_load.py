"""The order API's load, from a process of its own (so it never competes with the server's
event loop), and the end-to-end probe.

    closed: ``--connections`` clients place ``--orders`` orders back to back; orders/s and
            the confirm latency p50/p99 (every response must be a 202).
    rates:  orders offered at each of ``--rates`` per second for ``--seconds`` (open loop, on
            keep-alive connections added as needed up to ``--max-connections``); the latency
            of each from when its ``POST /orders`` was due to its ``OrderEnriched`` read from
            ``--enriched`` by a consumer in this process (one clock at both ends). A rate the
            shop cannot keep (more than ``--max-lag-s`` of it in flight, or offered below 95%)
            is cut short and marked not sustained; the higher rates are then not offered.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvloop
from aiokafka import AIOKafkaConsumer

from ingest.codec import H_EVENT_TYPE
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
    """Reads ``OrderEnriched`` records as soon as their transactions commit (what any consumer
    downstream sees) and notes when each order's first one arrived, by the record key (the
    order id) and the event-type header: nothing decoded, so the probe stays cheap at 5,000/s."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.arrived: dict[str, float] = {}
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )

    async def run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=20)
            now = time.perf_counter()
            for records in batch.values():
                for r in records:
                    if r.key is not None and _ENRICHED in r.headers:
                        self.arrived.setdefault(r.key.decode(), now)

    async def __aenter__(self) -> Probe:
        await self._consumer.start()
        await self._consumer.getmany(timeout_ms=500)  # joined and positioned before orders go
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()


_ENRICHED = (H_EVENT_TYPE, OrderEnriched.event_type.encode())


def encode_request(host: str, body: dict[str, Any]) -> bytes:
    """One ``POST /orders`` as HTTP/1.1 bytes, encoded before the clock starts."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST /orders HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, the server keeps the connection) of one HTTP/1.1 response with a
    Content-Length (what uvicorn sends for JSON)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, keep = 0, True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
        elif name == b"transfer-encoding":
            raise ValueError(f"a chunked response is not read here: {head!r}")
    return status, (await reader.readexactly(length) if length else b""), keep


def order_id_of(body: bytes) -> str | None:
    start = body.find(b'"order_id":"')
    if start < 0:
        return None
    start += len(b'"order_id":"')
    return body[start : body.index(b'"', start)].decode()


@dataclass
class Step:
    """One offered rate's bookkeeping. A request's clock starts when it is due (its place in
    the schedule), not when a connection picks it up: waiting for a free connection is
    latency the shop's client would see (no coordinated omission)."""

    written: int = 0
    answered: int = 0
    errors: int = 0
    sent: dict[str, float] = field(default_factory=dict)  # order id -> when it was due
    confirm_ms: list[float] = field(default_factory=list)
    refused: Counter[int] = field(default_factory=Counter)


class Offer:
    """Open-loop load on a pool of keep-alive connections, each with one request at a time.
    The schedule puts each request on a queue when it is due; a connection takes the next one
    when it is free; another connection opens (up to ``max_connections``) whenever requests
    wait. Requests are bytes encoded beforehand, so offering one costs a queue put and a
    socket write."""

    def __init__(self, url: str, max_connections: int, initial: int) -> None:
        parsed = urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.max_connections = max_connections
        self.initial = initial
        self.queue: asyncio.Queue[tuple[float, bytes, Step]] = asyncio.Queue()
        self.connections: list[asyncio.Task[None]] = []

    def grow(self) -> None:
        """``initial`` connections, then one more per call while requests wait (the schedule
        calls it every millisecond or so), up to ``max_connections``."""
        want = max(self.initial, len(self.connections) + (1 if self.queue.qsize() else 0))
        while len(self.connections) < min(want, self.max_connections):
            self.connections.append(asyncio.create_task(self._connection()))

    async def _connection(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            while True:
                due, request, step = await self.queue.get()
                writer.write(request)
                step.written += 1
                try:
                    status, body, keep = await read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    # The server dropped it: an order not placed; a new connection goes on.
                    step.errors += 1
                    step.answered += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                    continue
                step.answered += 1
                now = time.perf_counter()
                order_id = order_id_of(body) if status == 202 else None
                if order_id is not None:
                    step.sent[order_id] = due
                    step.confirm_ms.append((now - due) * 1000)
                else:
                    step.refused[status] += 1
                if not keep:
                    writer.close()
                    reader, writer = await asyncio.open_connection(self.host, self.port)
        finally:
            writer.close()

    def discard_waiting(self) -> int:
        n = 0
        while not self.queue.empty():
            self.queue.get_nowait()
            n += 1
        return n

    async def close(self) -> None:
        for task in self.connections:
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)


async def offer_rate(
    offer: Offer, probe: Probe, requests: Iterator[bytes], rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Offer ``rate`` orders/s for ``args.seconds``, or until more than ``args.max_lag_s``
    seconds of orders are in flight (placed, not yet enriched): then the shop cannot keep
    the rate, and it is marked not sustained instead of queueing for minutes."""
    step = Step()
    n = int(rate * args.seconds)
    cap = max(50, int(rate * args.max_lag_s))
    arrived_before = len(probe.arrived)
    placed, peak, stopped = 0, 0, None
    started_at, start = time.time(), time.perf_counter()
    while placed < n:
        due_now = min(n, int((time.perf_counter() - start) * rate) + 1)
        while placed < due_now:
            offer.queue.put_nowait((start + placed / rate, next(requests), step))
            placed += 1
        offer.grow()
        in_flight = placed - (len(probe.arrived) - arrived_before)
        peak = max(peak, in_flight)
        if in_flight > cap:
            stopped = f"{in_flight} orders in flight, more than {args.max_lag_s} s of the rate"
            break
        await asyncio.sleep(0.001)
    window = time.perf_counter() - start
    written_in_window = step.written
    not_sent = offer.discard_waiting() if stopped else 0
    deadline = time.perf_counter() + (args.settle_s if stopped is None else 2.0)
    # Polls: the answers and the probe's records are counted, nothing signals them.
    while step.answered + not_sent < placed and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    confirmed_s = time.perf_counter() - start
    pending = set(step.sent)
    while pending and time.perf_counter() < deadline:
        pending -= probe.arrived.keys()
        await asyncio.sleep(0.02)
    latencies = [(probe.arrived[o] - t) * 1000 for o, t in step.sent.items() if o in probe.arrived]
    achieved = written_in_window / window
    complete = len(latencies) == len(step.sent) == placed
    sustained = stopped is None and complete and achieved >= 0.95 * rate
    if stopped is None and not sustained:
        stopped = (
            f"offered {achieved:.0f}/s of {rate:.0f}/s"
            if achieved < 0.95 * rate
            else f"{placed - len(latencies)} of {placed} orders not enriched in time"
        )
    return {
        "p50": round(statistics.median(latencies), 1) if latencies else None,
        "p99": percentile(latencies, 0.99) if latencies else None,
        "p999": percentile(latencies, 0.999) if latencies else None,
        "confirm_p50": round(statistics.median(step.confirm_ms), 1) if step.confirm_ms else None,
        "confirm_p99": percentile(step.confirm_ms, 0.99) if step.confirm_ms else None,
        "achieved_offered_per_s": round(achieved, 1),
        "confirmed_per_s": round(len(step.sent) / confirmed_s, 1),
        "sustained": sustained,
        "not_sustained_because": stopped,
        "orders": placed,
        "confirmed": len(step.sent),
        "enriched": len(latencies),
        "refused": sum(step.refused.values()) + step.errors,
        "peak_in_flight": peak,
        "connections": len(offer.connections),
        "seconds": round(window, 2),
        # Wall clock, for other processes' measures of the same window (CPU by process).
        "started_at": started_at,
    }


async def offered(args: argparse.Namespace, bodies: Iterator[dict[str, Any]]) -> dict[str, Any]:
    host = urlsplit(args.url).netloc
    total = args.warmup + sum(int(rate * args.seconds) for rate in args.rates)
    # Encoded before any clock starts; a long run reuses them (the API numbers each order).
    encoded = [encode_request(host, b) for b in itertools.islice(bodies, min(total, 20_000))]
    requests = itertools.cycle(encoded)
    results: dict[str, Any] = {}
    async with Probe(args.bootstrap, args.enriched) as probe:
        probing = asyncio.create_task(probe.run())
        offer = Offer(args.url, args.max_connections, initial=8)
        try:
            await warm_up(offer, probe, requests, args)
            failed: str | None = None
            for rate in args.rates:
                if failed is not None:  # a higher rate than one the shop could not keep
                    results[str(int(rate))] = not_offered(f"{failed}/s was not sustained")
                    continue
                results[str(int(rate))] = row = await offer_rate(offer, probe, requests, rate, args)
                if not row["sustained"]:
                    failed = str(int(rate))
        finally:
            await offer.close()
            probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probing
    return results


async def warm_up(
    offer: Offer, probe: Probe, requests: Iterator[bytes], args: argparse.Namespace
) -> None:
    """``--warmup`` orders at 50/s, waiting (up to ``--ready-s``) until every one is enriched:
    the enricher's process has joined its group and loaded its models. Not measured."""
    step = Step()
    start = time.perf_counter()
    for i in range(args.warmup):
        offer.queue.put_nowait((start + i / 50, next(requests), step))
        offer.grow()
        await asyncio.sleep(max(0.0, start + (i + 1) / 50 - time.perf_counter()))
    deadline = time.perf_counter() + args.ready_s
    while step.answered < args.warmup or any(o not in probe.arrived for o in step.sent):
        if time.perf_counter() > deadline:
            raise SystemExit(
                f"warm-up: {len(step.sent)} of {args.warmup} orders confirmed, "
                f"{sum(o in probe.arrived for o in step.sent)} enriched in {args.ready_s} s"
            )
        await asyncio.sleep(0.05)


def not_offered(why: str) -> dict[str, Any]:
    return {
        "p50": None,
        "p99": None,
        "p999": None,
        "confirm_p50": None,
        "confirm_p99": None,
        "achieved_offered_per_s": None,
        "confirmed_per_s": None,
        "sustained": False,
        "not_sustained_because": f"not offered: {why}",
        "orders": 0,
        "confirmed": 0,
        "enriched": 0,
        "refused": 0,
        "peak_in_flight": 0,
        "connections": 0,
        "seconds": 0.0,
    }


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
    parser.add_argument(
        "--settle-s", type=float, default=30.0, help="for the last orders of a sustained rate"
    )
    parser.add_argument(
        "--max-lag-s",
        type=float,
        default=1.0,
        help="a rate with more than this many seconds of its orders in flight is not sustained",
    )
    parser.add_argument("--max-connections", type=int, default=64, help="the pool's cap")
    parser.add_argument("--warmup", type=int, default=100, help="orders before measuring")
    parser.add_argument("--ready-s", type=float, default=180.0, help="for the warm-up orders")
    args = parser.parse_args()
    bodies = iter(OrderRequests(load_menu(), seed=int(time.time())))
    result = await (closed(args, bodies) if args.mode == "closed" else offered(args, bodies))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    uvloop.run(main())

"""The faults of a chaos run: when each happens, and doing it for real.

Every fault is drawn from one seeded ``random.Random`` at the start, so a seed replays the same
schedule (the moments are relative to the start of the load, the victims chosen at the time).

- worker kills: SIGKILL of a live worker process (roles take turns, the slot is random),
  replaced at once. About a third are aimed at a rebalance: 1-4 s after the previous kill's
  replacement started, in the same role, while its groups are still reassigning partitions;
  the rest fall at random moments under load, so mostly in the middle of a batch.
- broker restarts: alternately a clean stop (SIGTERM, Kafka's shutdown hook) and a SIGKILL of
  the JVM, each down for ``broker_down_s``, one after another, never overlapping.
- an SMTP outage: the SMTP server stops listening for ``smtp_outage_s`` and comes back on the
  same port.
- a database outage (PostgreSQL only): every shop process reaches the database through a
  loopback gate in this process; the gate cuts every connection and refuses new ones.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from bench._chaos_audit import MALFORMED_KEY
from bench._chaos_broker import ChaosBroker
from bench._chaos_procs import ShopProcesses
from ingest.producer import EventProducer
from pizzashop.app.demo import malformed_records
from pizzashop.core.net import TcpProxy
from services.mailer import SmtpSink

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class FaultLog:
    """What was actually done, with the moments (seconds from the start of the load)."""

    kills: list[dict[str, Any]] = field(default_factory=list)
    broker_restarts: list[dict[str, Any]] = field(default_factory=list)
    smtp_outages: list[dict[str, Any]] = field(default_factory=list)
    db_outages: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """How many of each fault, and how long; zero leaves a fault out."""

    kills: int
    broker_restarts: int
    broker_down_s: float
    broker_kill_first: bool  # else the first restart is a clean stop; then they alternate
    smtp_outage_s: float
    db_outage_s: float


async def under_load(
    load: Coroutine[Any, Any, Any],
    plan: FaultPlan,
    *,
    window_s: float,
    rng: random.Random,
    procs: ShopProcesses,
    broker: ChaosBroker | None,
    sink: SmtpSink,
    gate: TcpProxy | None,
    log: FaultLog,
) -> None:
    """Run ``load`` while the faults of ``plan`` happen; return when all of them are over.

    A supervisor restarts any process that exits by itself meanwhile.
    """
    schedule = Schedule.draw(
        rng,
        window_s=window_s,
        kills=plan.kills,
        broker_restarts=plan.broker_restarts if broker is not None else 0,
        broker_down_s=plan.broker_down_s,
        smtp_outage=plan.smtp_outage_s > 0,
        db_outage=gate is not None and plan.db_outage_s > 0,
    )
    began = time.monotonic()
    supervisor = asyncio.create_task(procs.supervise())
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(load)
            tasks.create_task(run_kills(schedule, procs, rng, began, log))
            if broker is not None:
                restarts = run_broker_restarts(
                    schedule,
                    broker,
                    plan.broker_down_s,
                    began,
                    log,
                    kill_first=plan.broker_kill_first,
                )
                tasks.create_task(restarts)
            tasks.create_task(run_smtp_outage(schedule, sink, plan.smtp_outage_s, began, log))
            tasks.create_task(run_db_outage(schedule, gate, plan.db_outage_s, began, log))
    finally:
        supervisor.cancel()


async def inject_malformed(bootstrap: str, topic: str, count: int, *, tag: str) -> int:
    """Write ``count`` records no consumer can read straight onto ``topic``; returns how many."""
    bad = malformed_records(tag)
    async with EventProducer(bootstrap, client_id="chaos-malformed") as producer:
        for value, headers in itertools.islice(itertools.cycle(bad), count):
            await producer.send_raw(topic, value, key=MALFORMED_KEY, headers=headers)
    return count


@dataclass(frozen=True, slots=True)
class Schedule:
    kills: tuple[tuple[float, bool], ...]  # (at, aimed at a rebalance)
    broker_restarts: tuple[float, ...]
    smtp_outage_at: float | None
    db_outage_at: float | None

    @classmethod
    def draw(
        cls,
        rng: random.Random,
        *,
        window_s: float,
        kills: int,
        broker_restarts: int,
        broker_down_s: float,
        smtp_outage: bool,
        db_outage: bool,
    ) -> Schedule:
        # Faults start once the shop has taken some load and end before the load does.
        lo, hi = 0.1 * window_s, 0.85 * window_s
        times = sorted(rng.uniform(lo, hi) for _ in range(kills))
        # Every third kill, from the second on, follows the one before it into its rebalance.
        kill_plan = tuple((at, i % 3 == 1) for i, at in enumerate(times))
        slot = (hi - lo) / max(broker_restarts, 1)
        restarts = tuple(
            lo + i * slot + rng.uniform(0, max(slot - broker_down_s, 0))
            for i in range(broker_restarts)
        )
        return cls(
            kills=kill_plan,
            broker_restarts=restarts,
            smtp_outage_at=rng.uniform(lo, hi) if smtp_outage else None,
            db_outage_at=rng.uniform(lo, hi) if db_outage else None,
        )


async def _sleep_until(began: float, at: float) -> None:
    await asyncio.sleep(max(0.0, began + at - time.monotonic()))


async def run_kills(
    schedule: Schedule, procs: ShopProcesses, rng: random.Random, began: float, log: FaultLog
) -> None:
    worker_roles = [role for role in procs.flows if role != "api"]
    role = worker_roles[0]
    turn = 0
    for at, rebalance in schedule.kills:
        if not rebalance:
            # Roles take turns; a rebalance kill stays in the role whose groups are rebalancing.
            role = worker_roles[turn % len(worker_roles)]
            turn += 1
        if rebalance:
            # 1-4 s after the last worker (re)start: its groups are mid-rebalance.
            await asyncio.sleep(
                max(0.0, procs.last_change() + rng.uniform(1, 4) - time.monotonic())
            )
        else:
            await _sleep_until(began, at)
        live = [m for m in procs.live_workers() if m.role == role] or procs.live_workers()
        if not live:
            continue
        victim = rng.choice(live)
        age = time.monotonic() - victim.started_at
        since_change = time.monotonic() - procs.last_change()
        fresh = await procs.kill_and_replace(victim)
        log.kills.append(
            {
                "at_s": round(time.monotonic() - began, 1),
                "victim": victim.name,
                "pid": victim.process.pid,
                "victim_age_s": round(age, 1),
                "since_last_start_s": round(since_change, 1),
                "aimed_at_rebalance": rebalance,
                "replacement_pid": fresh.process.pid,
            }
        )
        logger.warning("killed %s (pid %d)", victim.name, victim.process.pid)


async def run_broker_restarts(
    schedule: Schedule,
    broker: ChaosBroker,
    down_s: float,
    began: float,
    log: FaultLog,
    *,
    kill_first: bool = False,
) -> None:
    for i, at in enumerate(schedule.broker_restarts):
        await _sleep_until(began, at)
        kill = (i % 2 == 1) != kill_first
        node = i % broker.node_count
        started = time.monotonic()
        await broker.down(kill=kill, node=node)
        stopped = time.monotonic()
        await asyncio.sleep(down_s)
        await broker.up(node=node)
        log.broker_restarts.append(
            {
                "at_s": round(started - began, 1),
                "how": "SIGKILL" if kill else "clean stop",
                "node": node,
                "stop_s": round(stopped - started, 1),
                "down_s": round(time.monotonic() - stopped, 1),
            }
        )
        logger.warning("broker node %d back after %s", node, "SIGKILL" if kill else "clean stop")


async def run_smtp_outage(
    schedule: Schedule, sink: SmtpSink, outage_s: float, began: float, log: FaultLog
) -> None:
    if schedule.smtp_outage_at is None:
        return
    await _sleep_until(began, schedule.smtp_outage_at)
    started = time.monotonic()
    await sink.suspend()
    try:
        await asyncio.sleep(outage_s)
    finally:
        await sink.resume()
    log.smtp_outages.append(
        {"at_s": round(started - began, 1), "down_s": round(time.monotonic() - started, 1)}
    )


async def run_db_outage(
    schedule: Schedule, gate: TcpProxy | None, outage_s: float, began: float, log: FaultLog
) -> None:
    if schedule.db_outage_at is None or gate is None:
        return
    await _sleep_until(began, schedule.db_outage_at)
    started = time.monotonic()
    await gate.close()
    try:
        await asyncio.sleep(outage_s)
    finally:
        await gate.open()
    log.db_outages.append(
        {"at_s": round(started - began, 1), "down_s": round(time.monotonic() - started, 1)}
    )

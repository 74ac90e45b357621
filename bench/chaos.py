"""The chaos suite: real load, real faults, then the shop's promises checked from durable outputs.

    .venv/bin/python bench/chaos.py --json                        # the full run (about 15 min)
    .venv/bin/python bench/chaos.py --json --orders 1500 --rate 15 --kills 2 \\
        --broker-restarts 1 --broker-down-s 15 --smtp-outage-s 15   # a short one, 2.5 min

The shop runs as real processes (``pizzashop run``, configured through the environment): one
API process (HTTP, outbox relay, a status consumer) and worker processes, every consumer group
spread over at least two of them. Orders go in through HTTP at a steady rate while faults are
injected (see ``bench/_chaos_faults.py``): worker SIGKILLs (each replaced by a fresh process, as
a supervisor would), broker restarts (clean stop, SIGKILL of the JVM; with ``--nodes 3`` one
node of three), an SMTP outage, a database outage (PostgreSQL only: ``PIZZASHOP_DATABASE_URL``
naming a fresh database), and a few malformed records written straight onto the orders topic.
Then: wait until nothing moves, replay the dead letters that are not malformed records
(``pizzashop dlq replay``, one copy per letter), wait again, stop the shop, and check.

Definitions (``confirmed`` = order ids the API answered ``202 Confirmed``; topics read whole
with a ``read_committed`` reader):

- ``lost``: confirmed orders with no ``OrderPlaced`` on ``orders``.
- ``stuck``: confirmed orders with no final outcome on ``order-events``: an ``OrderReady``, or
  a ``RefundIssued`` after an ``OrderRejected``/``OrderCancelled``.
- ``charged_not_refunded``: ``PaymentCaptured`` but neither ``OrderReady`` nor ``RefundIssued``.
- ``duplicate_records``: over every topic of the run but the dead-letter topics, the sum of
  (count - 1) per (topic, order id, event type), ``OrderEnriched``/``ScoreShadowed`` included;
  the copies this run's own replay sent back are not counted (they are ``replay_copies``).
- ``duplicate_emails``: the sum of (count - 1) per (order, email kind) in the SMTP server's log;
  ``duplicate_emails_same_message_id`` of those repeated an earlier Message-ID (a receiver can
  drop them), ``duplicate_emails_new_message_id`` did not.
- ``dlq_records``: distinct original records with a dead letter at the end that was not
  replayed (each consumer group letters a bad record on its own: ``dlq_letters`` counts those).
- ``replayed``: distinct original records sent back by the replay (one copy per letter).

A promise is broken (exit code 2) when lost, stuck, charged_not_refunded, duplicate_records,
a duplicate e-mail with a new Message-ID or more duplicate e-mails than kills times
``smtp.max_unconfirmed``, a missing receipt or refund notice, a confirmed order missing from
the database, a confirmed order without ``OrderEnriched`` (``not_enriched``, when the enricher
runs), or ``dlq_records != malformed_injected``. All traffic stays on 127.0.0.1; every wait
has a deadline, so the run ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy.engine import make_url

from bench import _chaos_faults as faults
from bench._chaos_audit import (
    audit_database,
    audit_emails,
    audit_topics,
    read_committed,
    run_topics,
)
from bench._chaos_broker import ChaosBroker
from bench._chaos_load import LoadResult, place_orders
from bench._chaos_procs import ShopProcesses, roles
from bench._chaos_settle import Replayed, Settled, replay_dead_letters, settle
from ingest.topics import Topics, ensure_topics
from pizzashop.core.database import Database
from pizzashop.core.net import TcpProxy, free_port
from pizzashop.core.settings import Settings
from services.mailer import SmtpSink

logger = logging.getLogger("bench.chaos")


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    orders: int = 20_000
    rate: float = 25.0
    kills: int = 10
    broker_restarts: int = 3
    broker_down_s: float = 35.0
    broker_kill_first: bool = False  # else the first restart is a clean stop, then they alternate
    smtp_outage_s: float = 60.0
    db_outage_s: float = 20.0
    nodes: int = 1
    malformed: int = 5
    enricher: bool = True
    replicas: int = 2
    seed: int = 1
    settle_timeout_s: float = 900.0
    quiet_s: float = 60.0
    workdir: Path | None = None


@dataclass(slots=True)
class _Run:
    """What the run did, filled in as it goes."""

    load: LoadResult = field(default_factory=LoadResult)
    log: faults.FaultLog = field(default_factory=faults.FaultLog)
    phases: dict[str, float] = field(default_factory=dict)
    malformed_injected: int = 0
    replayed: Replayed | None = None
    notes: list[str] = field(default_factory=list)


def _registry(settings: Settings, workdir: Path) -> Path:
    """The configured registry when it has models, else small models trained here (~30 s)."""
    from models.registry import Registry
    from models.training import train

    if settings.registry_dir is not None and Registry(settings.registry_dir).latest("fraud"):
        return settings.registry_dir
    root = workdir / "registry"
    if Registry(root).latest("fraud") is None:
        logger.warning("training small models into %s", root)
        train(root, n_orders=8000, seed=3, progress=False, fraud_epochs=8, anomaly_epochs=8)
    return root


async def run_chaos(settings: Settings, options: ChaosOptions) -> dict[str, Any]:
    """One chaos run on its own broker, topics, groups, database and SMTP server; the report."""
    began = time.monotonic()
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="pizzashop-chaos-"))
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    run = _Run()
    db_url = settings.database_url
    postgres = bool(db_url and db_url.startswith("postgresql"))
    registry = await asyncio.to_thread(_registry, settings, workdir) if options.enricher else None
    run.phases["prepare_s"] = round(time.monotonic() - began, 1)

    async with contextlib.AsyncExitStack() as stack:
        broker: ChaosBroker | None = None
        if settings.kafka_bootstrap:
            bootstrap = settings.kafka_bootstrap
            run.notes.append("external Kafka: no broker restarts")
        else:
            broker = ChaosBroker(settings, workdir / "kafka", nodes=options.nodes)
            await stack.enter_async_context(broker)
            bootstrap = broker.bootstrap
        sink = await stack.enter_async_context(SmtpSink(log_path=logs / "smtp.jsonl"))
        gate: TcpProxy | None = None
        if postgres and db_url:
            url = make_url(db_url)
            gate = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
            await gate.open()
            stack.push_async_callback(gate.close)
            db_url_for_shop = url.set(host="127.0.0.1", port=gate.port).render_as_string(
                hide_password=False
            )
        run_settings = settings.model_copy(
            update={
                "kafka_bootstrap": bootstrap,
                "topic_prefix": f"chaos-{run_id}.",
                "group_prefix": f"chaos-{run_id}",
                "home": workdir / "home",
                "registry_dir": registry,
                "api_port": free_port(),
                "database_url": db_url_for_shop if gate is not None else None,
                "smtp": settings.smtp.model_copy(update={"host": sink.host, "port": sink.port}),
                "topic_replication_factor": broker.node_count if broker else 1,
                # One client stands for many customers: no per-address limit (as in the demo).
                **(
                    {"api": settings.api.model_copy(update={"rate_limit_per_address": ""})}
                    if hasattr(settings, "api")
                    else {}
                ),
            }
        )
        run_settings.home.mkdir(parents=True, exist_ok=True)
        audit_db_url = db_url if postgres and db_url else run_settings.resolved_database_url
        topics = Topics(run_settings.topic_prefix)
        await ensure_topics(
            bootstrap,
            topics.specs(run_settings.orders_partitions, run_settings.events_partitions),
            replication_factor=run_settings.topic_replication_factor,
        )
        # The schema first, as a deployment's migration step would: not raced by five processes.
        async with Database(audit_db_url):
            pass
        procs = ShopProcesses(
            run_settings, logs, roles=roles(enricher=options.enricher), replicas=options.replicas
        )
        stack.push_async_callback(procs.stop)
        await procs.start()
        run.phases["start_s"] = round(time.monotonic() - began, 1)

        run.malformed_injected = await faults.inject_malformed(
            bootstrap, topics.orders, options.malformed, tag=f"chaos-{run_id}"
        )
        if options.db_outage_s > 0 and gate is None:
            run.notes.append("no database outage: it needs a PostgreSQL PIZZASHOP_DATABASE_URL")
        plan = faults.FaultPlan(
            kills=options.kills,
            broker_restarts=options.broker_restarts if broker is not None else 0,
            broker_down_s=options.broker_down_s,
            broker_kill_first=options.broker_kill_first,
            smtp_outage_s=options.smtp_outage_s,
            db_outage_s=options.db_outage_s if gate is not None else 0.0,
        )
        load = place_orders(
            procs.api_url,
            orders=options.orders,
            rate=options.rate,
            seed=options.seed,
            result=run.load,
        )
        await faults.under_load(
            load,
            plan,
            window_s=options.orders / options.rate,
            rng=random.Random(options.seed),
            procs=procs,
            broker=broker,
            sink=sink,
            gate=gate,
            log=run.log,
        )
        run.phases["load_s"] = round(time.monotonic() - began, 1)

        confirmed = list(run.load.confirmed_at)

        async def wait_settled() -> Settled:
            return await settle(
                bootstrap=bootstrap,
                topics=await run_topics(bootstrap, topics.prefix),
                db_url=audit_db_url,
                confirmed=confirmed,
                sink=sink,
                timeout_s=options.settle_timeout_s,
                quiet_s=options.quiet_s,
            )

        supervisor = asyncio.create_task(procs.supervise())
        try:
            first = await wait_settled()
            run.replayed = await replay_dead_letters(bootstrap, topics.dlq_topics())
            second = await wait_settled()
        finally:
            supervisor.cancel()
        run.phases["settle_s"] = round(time.monotonic() - began, 1)
        await procs.stop()

        records = await read_committed(
            bootstrap, await run_topics(bootstrap, topics.prefix), timeout_s=300
        )
        topic_audit = audit_topics(
            records,
            prefix=topics.prefix,
            orders_topic=topics.orders,
            events_topic=topics.order_events,
            confirmed_at=run.load.confirmed_at,
            replay_copies=run.replayed.copies,
            replayed_letters=run.replayed.letters,
        )
        emails = audit_emails(sink.messages, confirmed, topic_audit.refunded)
        database = await audit_database(audit_db_url, confirmed)
        run.phases["audit_s"] = round(time.monotonic() - began, 1)

    figures = topic_audit.figures
    report: dict[str, Any] = {
        "orders": run.load.submitted,
        "confirmed": len(confirmed),
        "api_errors": dict(run.load.errors),
        "kills": len(run.log.kills),
        "max_unconfirmed": settings.smtp.max_unconfirmed,
        "broker_restarts": len(run.log.broker_restarts),
        "smtp_outage_s": sum(o["down_s"] for o in run.log.smtp_outages),
        "db_outage_s": sum(o["down_s"] for o in run.log.db_outages),
        "nodes": options.nodes,
        "lost": figures["lost"],
        "stuck": figures["stuck"],
        "charged_not_refunded": figures["charged_not_refunded"],
        "duplicate_records": figures["duplicate_records"],
        "duplicate_emails": emails["duplicate_emails"],
        "dlq_records": figures["dlq_records"],
        "malformed_injected": run.malformed_injected,
        "replayed": run.replayed.records,
        "replayed_by_group_and_error": dict(sorted(run.replayed.why.items())),
        "seconds": round(time.monotonic() - began, 1),
        **{k: v for k, v in figures.items() if k not in ("lost", "stuck")},
        **emails,
        **database,
        "settle": [asdict(first), asdict(second)],
        "offered_rate": options.rate,
        "achieved_rate": round(run.load.submitted / max(run.load.seconds, 1e-9), 1),
        "confirm_p99_ms": _p99(run.load.latencies_ms),
        "processes": procs.flows,
        "replicas": options.replicas,
        "process_starts": procs.starts,
        "unexpected_exits": procs.unexpected_exits,
        "phases": run.phases,
        "faults": {
            "kills": run.log.kills,
            "broker_restarts": run.log.broker_restarts,
            "smtp_outages": run.log.smtp_outages,
            "db_outages": run.log.db_outages,
        },
        "notes": run.notes,
        "workdir": str(workdir),
    }
    report["broken"] = broken_promises(report)
    return report


def broken_promises(report: dict[str, Any]) -> list[str]:
    """The names of the promises this run saw broken (empty: all kept)."""
    broken = [
        name
        for name in (
            "lost",
            "stuck",
            "charged_not_refunded",
            "duplicate_records",
            "duplicate_emails_new_message_id",
            "receipts_missing",
            "refund_notices_missing",
            "db_orders_missing",
        )
        if report[name]
    ]
    # A kill between the server's 250 and the sent mark repeats those mails, with their
    # Message-IDs: at most smtp.max_unconfirmed per kill; more is a broken promise.
    if report["duplicate_emails"] > report["kills"] * report["max_unconfirmed"]:
        broken.append("duplicate_emails > kills x max_unconfirmed")
    if report["processes"].get("enrich") and report["not_enriched"]:
        broken.append("not_enriched")
    if report["dlq_records"] != report["malformed_injected"]:
        broken.append("dlq_records != malformed_injected")
    return broken


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[int(len(ordered) * 0.99)], 1) if ordered else 0.0


def _options(argv: list[str] | None) -> tuple[ChaosOptions, bool, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = ChaosOptions()
    parser.add_argument("--orders", type=int, default=d.orders)
    parser.add_argument("--rate", type=float, default=d.rate, help="orders per second")
    parser.add_argument("--kills", type=int, default=d.kills, help="worker SIGKILLs")
    parser.add_argument("--broker-restarts", type=int, default=d.broker_restarts)
    parser.add_argument("--broker-down-s", type=float, default=d.broker_down_s)
    parser.add_argument(
        "--broker-kill-first", action="store_true", help="first restart a SIGKILL, not a stop"
    )
    parser.add_argument("--smtp-outage-s", type=float, default=d.smtp_outage_s)
    parser.add_argument("--db-outage-s", type=float, default=d.db_outage_s, help="PostgreSQL only")
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=d.nodes)
    parser.add_argument("--malformed", type=int, default=d.malformed)
    parser.add_argument("--no-enricher", action="store_true")
    parser.add_argument("--replicas", type=int, default=d.replicas, help="processes per role")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--settle-timeout-s", type=float, default=d.settle_timeout_s)
    parser.add_argument("--quiet-s", type=float, default=d.quiet_s)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.replicas < 2:
        parser.error("--replicas must be at least 2: every group spans two processes")
    options = ChaosOptions(
        orders=args.orders,
        rate=args.rate,
        kills=args.kills,
        broker_restarts=args.broker_restarts,
        broker_down_s=args.broker_down_s,
        broker_kill_first=args.broker_kill_first,
        smtp_outage_s=args.smtp_outage_s,
        db_outage_s=args.db_outage_s,
        nodes=args.nodes,
        malformed=args.malformed,
        enricher=not args.no_enricher,
        replicas=args.replicas,
        seed=args.seed,
        settle_timeout_s=args.settle_timeout_s,
        quiet_s=args.quiet_s,
        workdir=args.workdir,
    )
    return options, args.json, args.verbose


def main(argv: list[str] | None = None) -> int:
    options, as_json, verbose = _options(argv)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    for chatty in ("httpx", "mail.log"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    report = asyncio.run(run_chaos(Settings(), options))
    if as_json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>34}: {value}")
    return 2 if report["broken"] else 0


if __name__ == "__main__":
    sys.exit(main())

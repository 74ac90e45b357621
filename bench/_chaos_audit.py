"""The check at the end of a chaos run, from durable outputs only.

Three witnesses, none of them a service's own opinion of itself:

- every topic of the run (its prefix), read whole with a ``read_committed`` reader, so records
  of aborted transactions do not count and records of committed ones do;
- the database (the order rows the API committed, the outbox, the status projection);
- the SMTP server's log: every message it accepted, with its Message-ID.

Everything is counted per key with ``collections.Counter``: a set would hide the very
duplicates this is looking for.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord
from sqlalchemy import func, select

from ingest import dlq
from ingest.codec import H_EVENT_TYPE, H_ORDER_ID, header
from ingest.outbox import outbox
from ingest.reader import read_topics
from ingest.topics import DLQ_SUFFIX
from pizzashop.core.database import Database, chunked
from services.mailer import ReceivedMail
from services.status import StatusQueries
from services.status import orders as order_rows

MALFORMED_KEY = b"malformed"
FAILED = frozenset({"OrderRejected", "OrderCancelled"})
# Error classes of a record that cannot be read at all; only those of an injected malformed
# record stay in the dead-letter topics, everything else is replayed.
UNREADABLE = frozenset({"DecodeError", "ValidationFailed"})


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter, as the chaos run needs it."""

    dlq_topic: str
    dlq_offset: int
    original: tuple[str, int, int]  # topic, partition, offset
    group: str
    error_class: str
    malformed: bool

    @classmethod
    def of(cls, record: ConsumerRecord[bytes, bytes]) -> Letter:
        headers = list(record.headers)

        def get(name: str, default: str) -> str:
            return header(headers, name) or default

        error_class = get(dlq.H_ERROR_CLASS, "")
        return cls(
            dlq_topic=record.topic,
            dlq_offset=record.offset,
            original=(
                get(dlq.H_TOPIC, "?"),
                int(get(dlq.H_PARTITION, "-1")),
                int(get(dlq.H_OFFSET, "-1")),
            ),
            group=get(dlq.H_GROUP, "?"),
            error_class=error_class,
            malformed=record.key == MALFORMED_KEY and error_class in UNREADABLE,
        )


async def run_topics(bootstrap: str, prefix: str) -> list[str]:
    """Every topic of the run: those under its prefix (retry topics too, if there are any)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="chaos-audit")
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(prefix))
    finally:
        await admin.close()


async def read_committed(
    bootstrap: str, topics: Sequence[str], timeout_s: float
) -> list[ConsumerRecord[bytes, bytes]]:
    return await asyncio.wait_for(
        read_topics(bootstrap, topics, isolation_level="read_committed"), timeout_s
    )


@dataclass(slots=True)
class Audit:
    """The findings from the topics; ``figures`` go into the report as they are."""

    figures: dict[str, Any] = field(default_factory=dict)
    refunded: list[str] = field(default_factory=list)  # orders with a RefundIssued


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1)


def _base(topic: str, prefix: str) -> str:
    return topic.removeprefix(prefix)


def audit_topics(
    records: Iterable[ConsumerRecord[bytes, bytes]],
    *,
    prefix: str,
    orders_topic: str,
    events_topic: str,
    confirmed_at: dict[str, float],
    replay_copies: Counter[tuple[str, str, str]],
    replayed_letters: set[tuple[str, int]],
) -> Audit:
    """Lost, stuck, charged-not-refunded, duplicate records and dead letters, from the topics."""
    per_key: Counter[tuple[str, str, str]] = Counter()
    types_of: dict[str, Counter[str]] = defaultdict(Counter)
    final_ts: dict[str, int] = {}
    letters: list[Letter] = []
    malformed_on_topic = 0
    bookkeeping: Counter[str] = Counter()
    for record in records:
        if record.topic.endswith(DLQ_SUFFIX):
            letters.append(Letter.of(record))
            continue
        if record.key == MALFORMED_KEY:
            malformed_on_topic += 1
            continue
        headers = list(record.headers)
        event_type = header(headers, H_EVENT_TYPE)
        if event_type is None:
            # Not an event of an order: the runtime's own bookkeeping (outbox progress...).
            bookkeeping[_base(record.topic, prefix)] += 1
            continue
        order_id = header(headers, H_ORDER_ID) or (record.key or b"").decode(errors="replace")
        per_key[record.topic, order_id, event_type] += 1
        if record.topic in (orders_topic, events_topic) or event_type == "OrderEnriched":
            types_of[order_id][event_type] += 1
        if event_type in ("OrderReady", "RefundIssued"):
            final_ts[order_id] = max(final_ts.get(order_id, 0), record.timestamp)

    excess: Counter[tuple[str, str]] = Counter()
    for key, count in per_key.items():
        extra = count - 1 - replay_copies[key]
        if extra > 0:
            excess[_base(key[0], prefix), key[2]] += extra

    lost = [o for o in confirmed_at if types_of[o]["OrderPlaced"] == 0]
    stuck, charged_not_refunded, refunded_not_charged = [], [], []
    for order_id in confirmed_at:
        seen = types_of[order_id]
        ready, refunded = seen["OrderReady"] > 0, seen["RefundIssued"] > 0
        failed = any(seen[t] for t in FAILED)
        if not (ready or (failed and refunded)):
            stuck.append(order_id)
        if seen["PaymentCaptured"] and not ready and not refunded:
            charged_not_refunded.append(order_id)
        if refunded and not seen["PaymentCaptured"]:
            refunded_not_charged.append(order_id)
    unconfirmed = sum(
        1 for o, seen in types_of.items() if seen["OrderPlaced"] and o not in confirmed_at
    )

    replayed_away = [x for x in letters if (x.dlq_topic, x.dlq_offset) in replayed_letters]
    left = [x for x in letters if (x.dlq_topic, x.dlq_offset) not in replayed_letters]
    left_records = Counter(x.original for x in left)
    malformed_left = Counter(x.original for x in left if x.malformed)
    latencies = [final_ts[o] / 1000 - at for o, at in confirmed_at.items() if o in final_ts]
    outcome = Counter(
        "ready" if types_of[o]["OrderReady"] else "refunded" if types_of[o]["RefundIssued"] else "-"
        for o in confirmed_at
    )
    audit = Audit(refunded=[o for o, seen in types_of.items() if seen["RefundIssued"]])
    audit.figures = {
        "lost": len(lost),
        "stuck": len(stuck),
        "charged_not_refunded": len(charged_not_refunded),
        "refunded_not_charged": len(refunded_not_charged),
        "not_enriched": sum(1 for o in confirmed_at if not types_of[o]["OrderEnriched"]),
        "duplicate_records": sum(excess.values()),
        "duplicate_records_by_type": {f"{t}/{e}": n for (t, e), n in sorted(excess.items())},
        "replay_copies": sum(replay_copies.values()),
        "dlq_records": len(left_records),
        "dlq_letters": len(left),
        "dlq_malformed_records": len(malformed_left),
        "dlq_by_group_and_error": {
            f"{group}/{error}": n
            for (group, error), n in sorted(Counter((x.group, x.error_class) for x in left).items())
        },
        "dlq_letters_replayed": len(replayed_away),
        "malformed_on_topic": malformed_on_topic,
        "records_by_topic": dict(
            sorted(Counter(_base(t, prefix) for (t, _, _) in per_key.elements()).items())
        ),
        "records_by_type": dict(sorted(Counter(e for (_, _, e) in per_key.elements()).items())),
        "bookkeeping_records_by_topic": dict(sorted(bookkeeping.items())),
        "orders_unconfirmed_but_placed": unconfirmed,
        "outcomes": dict(outcome),
        "e2e_latency_p50_s": _percentile(latencies, 0.5),
        "e2e_latency_p99_s": _percentile(latencies, 0.99),
        "e2e_latency_max_s": round(max(latencies), 1) if latencies else 0.0,
        "records_read": sum(per_key.values())
        + malformed_on_topic
        + len(letters)
        + sum(bookkeeping.values()),
        "examples": {
            "lost": lost[:5],
            "stuck": stuck[:5],
            "charged_not_refunded": charged_not_refunded[:5],
        },
    }
    return audit


def email_kind(subject: str) -> tuple[str, str] | None:
    """(order id, kind) of one of the shop's emails, from its subject."""
    order_id = subject.rsplit(" ", 1)[-1]
    if subject.startswith("Your Pizzashop receipt"):
        return order_id, "receipt"
    if subject.startswith("Refund for order"):
        return order_id, "refund"
    return None


def audit_emails(
    messages: Sequence[ReceivedMail], confirmed: Iterable[str], refunded: Iterable[str]
) -> dict[str, Any]:
    """Duplicate emails per (order, kind), and how many of those repeated a Message-ID."""
    per_kind: Counter[tuple[str, str]] = Counter()
    per_message_id: Counter[tuple[str, str, str]] = Counter()
    for mail in messages:
        kind = email_kind(mail.subject)
        if kind is None:
            continue
        per_kind[kind] += 1
        per_message_id[(*kind, mail.message_id)] += 1
    duplicates = sum(n - 1 for n in per_kind.values())
    same_id = sum(n - 1 for n in per_message_id.values())
    return {
        "emails": len(messages),
        "duplicate_emails": duplicates,
        "duplicate_emails_same_message_id": same_id,
        "duplicate_emails_new_message_id": duplicates - same_id,
        "receipts_missing": sum(1 for o in confirmed if per_kind[o, "receipt"] == 0),
        "refund_notices_missing": sum(1 for o in refunded if per_kind[o, "refund"] == 0),
    }


async def audit_database(url: str, confirmed: Sequence[str]) -> dict[str, Any]:
    """What the database says: committed order rows, unsent outbox rows, unfinished orders."""
    async with Database(url) as db:
        present = 0
        async with db.engine.connect() as conn:
            for chunk in chunked(confirmed):
                rows = await conn.execute(
                    select(func.count()).where(order_rows.c.order_id.in_(chunk))
                )
                present += int(rows.scalar_one())
            unsent = await conn.execute(
                select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
            )
            outbox_unsent = int(unsent.scalar_one())
        unfinished = await StatusQueries(db).unfinished(confirmed)
    return {
        "db_orders_missing": len(confirmed) - present,
        "db_outbox_unsent": outbox_unsent,
        "db_status_unfinished": len(unfinished),
    }

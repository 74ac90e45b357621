"""After the load: wait until nothing moves, and replay the dead letters that deserve it.

"Nothing moves" means no topic of the run grew, no email arrived and the outbox backlog stayed
the same. The wait ends when every confirmed order is final in the status projection and nothing
moved for a few seconds, when nothing moved for ``quiet_s`` (whatever is unfinished then is
stuck), or at ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from sqlalchemy import func, select

from bench._chaos_audit import MALFORMED_KEY, UNREADABLE
from ingest.codec import H_EVENT_TYPE, H_ORDER_ID, header
from ingest.dlq import DeadLetter, read_dead_letters, replay
from ingest.outbox import outbox
from ingest.producer import EventProducer
from ingest.reader import partitions_of
from pizzashop.core.database import Database
from services.mailer import SmtpSink
from services.status import StatusQueries

logger = logging.getLogger(__name__)

_ALL_FINAL_QUIET_S = 5.0


@dataclass(frozen=True, slots=True)
class Settled:
    seconds: float
    unfinished: int
    how: str  # "all final", "quiet" (nothing moved for quiet_s) or "timeout"


async def settle(
    *,
    bootstrap: str,
    topics: Sequence[str],
    db_url: str,
    confirmed: Sequence[str],
    sink: SmtpSink,
    timeout_s: float,
    quiet_s: float,
    every_s: float = 2.0,
) -> Settled:
    began = time.monotonic()
    partitions = await partitions_of(bootstrap, topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        async with Database(db_url) as db:
            queries = StatusQueries(db)
            last: tuple[int, int, int] | None = None
            last_move = time.monotonic()
            while True:
                ends = await consumer.end_offsets(partitions)
                async with db.engine.connect() as conn:
                    backlog = await conn.execute(
                        select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
                    )
                    pending = int(backlog.scalar_one())
                now_state = (sum(ends.values()), len(sink.messages), pending)
                now = time.monotonic()
                if now_state != last:
                    last, last_move = now_state, now
                unfinished = len(await queries.unfinished(confirmed))
                still = now - last_move
                how = None
                if unfinished == 0 and still >= _ALL_FINAL_QUIET_S:
                    how = "all final"
                elif still >= quiet_s:
                    how = "quiet"
                elif now - began >= timeout_s:
                    how = "timeout"
                if how is not None:
                    return Settled(round(now - began, 1), unfinished, how)
                logger.info("settling: %d unfinished, still for %.0fs", unfinished, still)
                await asyncio.sleep(every_s)
    finally:
        await consumer.stop()


def deserves_replay(letter: DeadLetter) -> bool:
    """Everything but the injected malformed records, which no replay can mend."""
    return not (letter.key == MALFORMED_KEY and letter.error_class in UNREADABLE)


@dataclass(slots=True)
class Replayed:
    records: int  # distinct original records sent back (one copy per letter)
    letters: set[tuple[str, int]]  # (dlq topic, dlq offset) of every letter they stood for
    copies: Counter[tuple[str, str, str]]  # (topic, order id, event type) -> copies sent
    why: Counter[str]  # "group/error class" of every letter replayed


async def replay_dead_letters(bootstrap: str, dlq_topics: Sequence[str]) -> Replayed:
    """``pizzashop dlq replay`` for every letter that deserves it, one copy per letter.

    A record several groups dead-lettered has one letter per group; each letter's copy is meant
    for its own group (the others drop it), so every letter is replayed.
    """
    letters = [x for x in await read_dead_letters(bootstrap, dlq_topics) if deserves_replay(x)]
    done = Replayed(records=0, letters=set(), copies=Counter(), why=Counter())
    originals: set[tuple[str, int, int]] = set()
    async with EventProducer(bootstrap, client_id="chaos-replay") as producer:
        for letter in letters:
            await replay(producer, letter)
            done.letters.add((letter.dlq_topic, letter.dlq_offset))
            done.why[f"{letter.consumer_group}/{letter.error_class}"] += 1
            order_id = header(letter.original_headers, H_ORDER_ID) or "?"
            event_type = header(letter.original_headers, H_EVENT_TYPE) or "?"
            done.copies[letter.original_topic, order_id, event_type] += 1
            originals.add(
                (letter.original_topic, letter.original_partition, letter.original_offset)
            )
    done.records = len(originals)
    return done

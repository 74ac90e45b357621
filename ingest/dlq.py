"""The dead-letter topics: records a consumer could not handle, kept with all a replay needs.

A dead letter is the original key, value and headers, plus ``dlq.*`` headers naming where it came
from (topic, partition, offset, consumer group), why it failed (error class and message), how
often it was tried and when. ``replay`` sends the original bytes back to the original topic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from ingest.codec import Headers, header
from ingest.producer import EventProducer
from ingest.reader import read_topics

H_TOPIC = "dlq.original.topic"
H_PARTITION = "dlq.original.partition"
H_OFFSET = "dlq.original.offset"
H_GROUP = "dlq.consumer.group"
H_ERROR_CLASS = "dlq.error.class"
H_ERROR_MESSAGE = "dlq.error.message"
H_FAILED_AT = "dlq.failed.at"
H_ATTEMPTS = "dlq.attempts"
DLQ_HEADERS = (
    H_TOPIC,
    H_PARTITION,
    H_OFFSET,
    H_GROUP,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_FAILED_AT,
    H_ATTEMPTS,
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    dlq_topic: str
    dlq_offset: int
    original_topic: str
    original_partition: int
    original_offset: int
    consumer_group: str
    error_class: str
    error_message: str
    failed_at: str
    attempts: int
    key: bytes | None
    value: bytes | None
    original_headers: Headers

    def as_json(self) -> str:
        data = asdict(self)
        data["key"] = _text(self.key)
        data["value"] = _text(self.value)
        data["original_headers"] = {k: _text(v) for k, v in self.original_headers}
        return json.dumps(data)


def _text(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", errors="replace") if raw is not None else None


def dead_letter_headers(
    original: Headers,
    *,
    topic: str,
    partition: int,
    offset: int,
    group: str,
    error: BaseException,
    attempts: int,
) -> Headers:
    kept = [(k, v) for k, v in original if not k.startswith("dlq.")]
    message = str(error) or repr(error)
    return [
        *kept,
        (H_TOPIC, topic.encode()),
        (H_PARTITION, str(partition).encode()),
        (H_OFFSET, str(offset).encode()),
        (H_GROUP, group.encode()),
        (H_ERROR_CLASS, type(error).__qualname__.encode()),
        (H_ERROR_MESSAGE, message[:2000].encode()),
        (H_FAILED_AT, datetime.now(UTC).isoformat().encode()),
        (H_ATTEMPTS, str(attempts).encode()),
    ]


async def read_dead_letters(bootstrap: str, dlq_topics: Sequence[str]) -> list[DeadLetter]:
    """Everything currently in the given dead-letter topics, oldest first."""
    return [
        _to_letter(r.topic, r.offset, r.key, r.value, list(r.headers))
        for r in await read_topics(bootstrap, dlq_topics)
    ]


async def replay(producer: EventProducer, letter: DeadLetter) -> None:
    """Send a dead letter's original record, byte for byte, back to its original topic.

    Consumers that already handled it drop it again by event id; the one that failed takes it
    anew (after its fix was deployed, one hopes).
    """
    await producer.send_raw(
        letter.original_topic, letter.value, key=letter.key, headers=letter.original_headers
    )


def _to_letter(
    dlq_topic: str, offset: int, key: bytes | None, value: bytes | None, headers: Headers
) -> DeadLetter:
    def get(name: str, default: str = "") -> str:
        return header(headers, name) or default

    return DeadLetter(
        dlq_topic=dlq_topic,
        dlq_offset=offset,
        original_topic=get(H_TOPIC),
        original_partition=int(get(H_PARTITION, "-1")),
        original_offset=int(get(H_OFFSET, "-1")),
        consumer_group=get(H_GROUP),
        error_class=get(H_ERROR_CLASS),
        error_message=get(H_ERROR_MESSAGE),
        failed_at=get(H_FAILED_AT),
        attempts=int(get(H_ATTEMPTS, "0")),
        key=key,
        value=value,
        original_headers=[(k, v) for k, v in headers if not k.startswith("dlq.")],
    )

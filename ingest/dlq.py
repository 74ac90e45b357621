"""The dead-letter topics: records a consumer could not handle, kept with all a replay needs.

A dead letter is the original key, value and headers, plus ``dlq.*`` headers naming where it came
from (topic, partition, offset, consumer group), why it failed (a machine-readable reason, the
error class and its message, e-mail addresses masked), how often it was tried and when.
``replay`` sends the original bytes back to the original topic.

``dlq.reason`` is one of ``REASONS``:

* ``undecodable``: the bytes are not a known event (``DecodeError``);
* ``contract``: a known event that breaks its schema (``ValidationFailed`` while decoding);
* ``handler-permanent``: the handler failed in a way retrying cannot help;
* ``retries-exhausted``: a retriable failure that outlived the retry budget.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

from ingest.codec import H_EVENT_ID, Headers, header
from ingest.producer import EventProducer
from ingest.reader import read_topics
from pizzashop.core.errors import ConfigError, DecodeError, PizzashopError, ValidationFailed
from pizzashop.core.pii import mask_emails

H_TOPIC = "dlq.original.topic"
H_PARTITION = "dlq.original.partition"
H_OFFSET = "dlq.original.offset"
H_GROUP = "dlq.consumer.group"
H_ERROR_CLASS = "dlq.error.class"
H_ERROR_MESSAGE = "dlq.error.message"
H_FAILED_AT = "dlq.failed.at"
H_ATTEMPTS = "dlq.attempts"
H_REASON = "dlq.reason"
Reason = Literal["undecodable", "contract", "handler-permanent", "retries-exhausted"]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)
#: On a replayed record: the one consumer group that should handle it again. Every other group
#: has handled the original already and passes the copy over.
H_REPLAY_GROUP = "replay-for-group"
DLQ_HEADERS = (
    H_TOPIC,
    H_PARTITION,
    H_OFFSET,
    H_GROUP,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_FAILED_AT,
    H_ATTEMPTS,
    H_REASON,
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
    reason: str = ""  # one of REASONS; empty on letters written before the header existed

    def as_json(self) -> str:
        data = asdict(self)
        data["key"] = _text(self.key)
        data["value"] = _text(self.value)
        data["original_headers"] = {k: _text(v) for k, v in self.original_headers}
        return json.dumps(data)


@dataclass(frozen=True, slots=True)
class LetterFilter:
    """Which dead letters to replay: every given criterion must hold."""

    group: str | None = None
    topic: str | None = None
    error_class: str | None = None
    event_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(cls, *, since: str | None, until: str | None, **exact: str | None) -> LetterFilter:
        """From command-line text; a time that is not ISO 8601 is a ``ConfigError``."""
        return cls(since=_when(since), until=_when(until), **exact)

    def matches(self, letter: DeadLetter) -> bool:
        failed_at = _when(letter.failed_at) if letter.failed_at else None
        return (
            (self.group is None or letter.consumer_group == self.group)
            and (self.topic is None or letter.original_topic == self.topic)
            and (self.error_class is None or letter.error_class == self.error_class)
            and (
                self.event_id is None
                or header(letter.original_headers, H_EVENT_ID) == self.event_id
            )
            and (self.since is None or (failed_at is not None and failed_at >= self.since))
            and (self.until is None or (failed_at is not None and failed_at < self.until))
        )


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-12-02T10:00:00+00:00)"
        ) from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _text(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", errors="replace") if raw is not None else None


def reason_for(error: BaseException) -> Reason:
    """Why a record that failed with ``error`` is dead-lettered, judged by the error alone. The
    runtime knows better (whether decoding or the handler failed) and says so itself."""
    if isinstance(error, DecodeError):
        return "undecodable"
    if isinstance(error, ValidationFailed):
        return "contract"
    retriable = error.retriable if isinstance(error, PizzashopError) else True
    return "retries-exhausted" if retriable else "handler-permanent"


def dead_letter_headers(
    original: Headers,
    *,
    topic: str,
    partition: int,
    offset: int,
    group: str,
    error: BaseException,
    attempts: int,
    reason: Reason | None = None,
) -> Headers:
    """The dead letter's headers: the original ones (earlier ``dlq.*`` dropped) and where, why,
    how often and when. ``reason`` defaults to ``reason_for(error)``. E-mail addresses in the
    error message are masked: the message is read by people, the value keeps the order."""
    kept = [(k, v) for k, v in original if not k.startswith("dlq.") and k != H_REPLAY_GROUP]
    message = mask_emails(str(error) or repr(error))
    return [
        *kept,
        (H_TOPIC, topic.encode()),
        (H_PARTITION, str(partition).encode()),
        (H_OFFSET, str(offset).encode()),
        (H_GROUP, group.encode()),
        (H_REASON, (reason or reason_for(error)).encode()),
        (H_ERROR_CLASS, type(error).__qualname__.encode()),
        (H_ERROR_MESSAGE, message[:2000].encode()),
        (H_FAILED_AT, datetime.now(UTC).isoformat().encode()),
        (H_ATTEMPTS, str(attempts).encode()),
    ]


async def read_dead_letters(
    bootstrap: str,
    dlq_topics: Sequence[str],
    *,
    client_options: Mapping[str, Any] | None = None,
) -> list[DeadLetter]:
    """Everything the given dead-letter topics hold, oldest first: committed letters only.

    A worker writes its dead letters in the batch's transaction; if it dies before the commit,
    the batch runs again and writes them again. Read uncommitted, the aborted copies would be
    listed (and replayed) beside the committed ones."""
    records = await read_topics(
        bootstrap, dlq_topics, isolation_level="read_committed", client_options=client_options
    )
    return [_to_letter(r.topic, r.offset, r.key, r.value, list(r.headers)) for r in records]


async def replay(producer: EventProducer, letter: DeadLetter) -> None:
    """Send a dead letter's original record, byte for byte, back to its original topic.

    The copy names the group that dead-lettered it (``replay-for-group``): only that group
    handles it, once (a dead-lettered event was never marked handled); every other group passes
    it over, and a second replay of the same letter is dropped by the group's dedupe.
    """
    headers = [(k, v) for k, v in letter.original_headers if k != H_REPLAY_GROUP]
    if letter.consumer_group:
        headers.append((H_REPLAY_GROUP, letter.consumer_group.encode()))
    await producer.send_raw(letter.original_topic, letter.value, key=letter.key, headers=headers)


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
        reason=get(H_REASON),
    )

"""Events to Kafka records and back.

Value: the event's JSON. Key: the order id. Headers: ``event-type``, ``schema-version``,
``event-id``, ``order-id`` and a W3C ``traceparent``, so a consumer can route, trace and
dead-letter a record without parsing its body.

Writers are strict, readers are tolerant. The event models keep ``extra="forbid"``, so an event
built in our code with a field the contract lacks is refused before it reaches the wire.
``decode`` validates the same models with ``extra="ignore"``: a record of the served schema
version that carries fields this reader does not know (a newer writer added optional ones,
which the compatibility rule allows) is read and the unknown fields are dropped, at the top
level and in every nested part (items, payment, address, assessments).

A record without a ``schema-version`` header is read as version 1, and only strictly: it is
refused when the event type is served at another version, and an unknown field in its body
fails it rather than being dropped, since without the header nothing says the writer followed
the version-1 contract that makes dropping safe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pydantic import ValidationError

from ingest.events import EVENT_TYPES, Event
from pizzashop.errors import DecodeError, ValidationFailed

Headers = list[tuple[str, bytes]]

H_EVENT_TYPE = "event-type"
H_SCHEMA_VERSION = "schema-version"
H_EVENT_ID = "event-id"
H_ORDER_ID = "order-id"
H_TRACEPARENT = "traceparent"


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    key: bytes
    value: bytes
    headers: Headers


def new_traceparent() -> str:
    """A fresh W3C trace context: version 00, random trace and span ids, sampled."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def child_traceparent(parent: str | None) -> str:
    """Same trace as ``parent``, new span id; a fresh trace when there is no valid parent."""
    parts = parent.split("-") if parent else []
    if len(parts) == 4 and len(parts[1]) == 32:
        return f"00-{parts[1]}-{os.urandom(8).hex()}-{parts[3]}"
    return new_traceparent()


def encode(event: Event, traceparent: str | None = None) -> EncodedRecord:
    headers: Headers = [
        (H_EVENT_TYPE, event.event_type.encode()),
        (H_SCHEMA_VERSION, str(event.schema_version).encode()),
        (H_EVENT_ID, event.event_id.encode()),
        (H_ORDER_ID, event.order_id.encode()),
        (H_TRACEPARENT, (traceparent or new_traceparent()).encode()),
    ]
    return EncodedRecord(
        key=event.order_id.encode(), value=event.model_dump_json().encode(), headers=headers
    )


def header(headers: Headers | tuple[tuple[str, bytes], ...] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode("utf-8", errors="replace") if value is not None else None
    return None


def decode(value: bytes | None, headers: Headers | tuple[tuple[str, bytes], ...] | None) -> Event:
    """Parse a record into its event class, or raise a non-retriable error saying why.

    Unknown fields are dropped when the record names the served schema version; see the module
    docstring for records without a version header.
    """
    event_type = header(headers, H_EVENT_TYPE)
    if event_type is None:
        raise DecodeError(f"missing header {H_EVENT_TYPE!r}")
    cls = EVENT_TYPES.get(event_type)
    if cls is None:
        raise DecodeError(f"unknown event type {event_type!r}")
    version = header(headers, H_SCHEMA_VERSION)
    if version is None and cls.schema_version != 1:
        raise DecodeError(
            f"{event_type} record has no {H_SCHEMA_VERSION!r} header, read as version 1, "
            f"which is not served (known: {cls.schema_version})"
        )
    if version is not None and version != str(cls.schema_version):
        raise DecodeError(
            f"{event_type} schema version {version} is not served (known: {cls.schema_version})"
        )
    if not value:
        raise DecodeError(f"{event_type} record has an empty value")
    try:
        # One model, two doors: the class keeps extra="forbid" for code that builds events,
        # and this validation-time override makes the reader tolerant. pydantic-core applies
        # it to every nested model of the call, so no parallel "reader" classes need keeping
        # in step, and the committed JSON Schemas (the writer's contract) stay as they are.
        return cls.model_validate_json(value, extra="ignore" if version is not None else None)
    except ValidationError as exc:
        if any(err["type"] == "json_invalid" for err in exc.errors()):
            raise DecodeError(
                f"{event_type} value is not valid JSON: {exc.errors()[0]['msg']}"
            ) from exc
        raise ValidationFailed(f"{event_type} breaks the contract: {_summary(exc)}") from exc


def _summary(exc: ValidationError) -> str:
    parts = [
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
    ]
    return "; ".join(parts[:5])

"""Events to Kafka records and back.

Value: the event's JSON. Key: the order id. Headers: ``event-type``, ``schema-version``,
``event-id``, ``order-id`` and a W3C ``traceparent``, so a consumer can route, trace and
dead-letter a record without parsing its body. The ``traceparent`` is what OpenTelemetry's
propagator writes for the producing span (``ingest.tracing``): the one the caller passes, else
the current span's; a record produced outside any span starts a trace of its own.

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

Two value formats, told apart by the first byte (JSON never starts with byte 0):

- plain JSON, what ``encode`` writes;
- registry-framed, the Confluent wire format: magic byte ``0``, the schema id as 4 bytes
  big-endian, then the JSON. A ``Serializer`` (``ingest.registry.RegistrySerializer``) writes
  these. ``decode`` reads both, so a topic migrates record by record.

A framed record is read against the schema its id names: the schema comes from a process-wide
cache keyed by id (``remember_schema``), filled by whoever registered or fetched it, and on a
miss from the ``SchemaSource`` installed with ``install_schema_source`` (the composition root
installs a registry client; tests may install their own). The cache is module-level on purpose:
a schema id means the same schema to every reader of one registry, so one cache serves every
consumer in the process, and ``decode`` keeps its signature (no client threaded through the
runtime, the DLQ replayer and the tests). An id the source does not know, no source installed,
or a body that breaks the registered schema, is a ``DecodeError``/``ValidationFailed`` naming
the schema id and the reason (not retriable: the runtime dead-letters it); a registry that
cannot be reached is a ``TransientError`` (retried). The fetch on a miss is a blocking HTTP
call, made once per id per process; warm the cache at start (``RegistrySerializer.warm``) so it
stays off the hot path.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jsonschema
from pydantic import ValidationError

from ingest.events import EVENT_TYPES, Event
from ingest.tracing import TRACEPARENT, current_traceparent, new_traceparent
from ingest.tracing import child_traceparent as child_traceparent  # for callers of a header
from pizzashop.core.errors import DecodeError, ValidationFailed

Headers = list[tuple[str, bytes]]

H_EVENT_TYPE = "event-type"
H_SCHEMA_VERSION = "schema-version"
H_EVENT_ID = "event-id"
H_ORDER_ID = "order-id"
H_TRACEPARENT = TRACEPARENT


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    key: bytes
    value: bytes
    headers: Headers


def encode(event: Event, traceparent: str | None = None) -> EncodedRecord:
    """The event as plain JSON with the routing headers (no registry involved).

    ``traceparent`` names the span that produced the record; unset, the current span does."""
    headers: Headers = [
        (H_EVENT_TYPE, event.event_type.encode()),
        (H_SCHEMA_VERSION, str(event.schema_version).encode()),
        (H_EVENT_ID, event.event_id.encode()),
        (H_ORDER_ID, event.order_id.encode()),
        (H_TRACEPARENT, (traceparent or current_traceparent() or new_traceparent()).encode()),
    ]
    return EncodedRecord(
        key=event.order_id.encode(), value=event.model_dump_json().encode(), headers=headers
    )


# -- the serializer seam ----------------------------------------------------------------------
class Serializer(Protocol):
    """Turns an event bound for ``topic`` into a record. The composition root picks one and
    passes it to whatever writes records (the consumer runtime, the outbox)."""

    def encode(self, topic: str, event: Event, traceparent: str | None = None) -> EncodedRecord:
        """Called once per record, synchronously, on the event loop: keep it cheap."""
        ...


class PlainJson:
    """The default ``Serializer``: ``encode`` as it always was, the topic unused."""

    def encode(self, topic: str, event: Event, traceparent: str | None = None) -> EncodedRecord:
        return encode(event, traceparent)


PLAIN_JSON: Serializer = PlainJson()

MAGIC_BYTE = 0
_FRAME_HEADER = 5  # magic byte + 4-byte schema id


def frame(schema_id: int, payload: bytes) -> bytes:
    """The Confluent wire format: magic byte 0, schema id (4 bytes, big-endian), payload."""
    return bytes([MAGIC_BYTE]) + schema_id.to_bytes(4, "big") + payload


def unframe(value: bytes) -> tuple[int | None, bytes]:
    """``(schema_id, payload)`` of a framed value, ``(None, value)`` of a plain one."""
    if value[:1] != bytes([MAGIC_BYTE]):
        return None, value
    if len(value) < _FRAME_HEADER:
        raise DecodeError(f"framed record of {len(value)} bytes is shorter than its header")
    return int.from_bytes(value[1:_FRAME_HEADER], "big"), value[_FRAME_HEADER:]


# -- schemas by id: the process-wide cache --------------------------------------------------------
class SchemaSource(Protocol):
    """Where ``decode`` fetches a schema it has not seen (a registry client)."""

    def schema_by_id(self, schema_id: int) -> dict[str, Any] | None:
        """The JSON Schema registered under ``schema_id``; None when the registry has no such
        id. Raises a TransientError when the registry cannot be asked now."""
        ...


@dataclass(frozen=True, slots=True)
class _Known:
    event_type: str | None
    validator: Any  # a jsonschema validator, compiled once per id


_known: dict[int, _Known] = {}
_source: SchemaSource | None = None
_lock = threading.Lock()


def install_schema_source(source: SchemaSource | None) -> None:
    """Use ``source`` for schema ids the cache misses (None: misses are unknown ids)."""
    global _source
    _source = source


def remember_schema(schema_id: int, schema: Mapping[str, Any]) -> None:
    """Cache the schema registered under ``schema_id`` (ids never change meaning)."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    event_type = schema.get("x-event-type") or schema.get("title")
    known = _Known(str(event_type) if event_type else None, cls(dict(schema)))
    with _lock:
        _known[schema_id] = known


def forget_schemas() -> None:
    """Empty the cache (tests)."""
    with _lock:
        _known.clear()


def _schema(schema_id: int) -> _Known:
    known = _known.get(schema_id)
    if known is not None:
        return known
    source = _source
    if source is None:
        raise DecodeError(f"schema id {schema_id} is unknown: no schema registry is configured")
    schema = source.schema_by_id(schema_id)
    if schema is None:
        raise DecodeError(f"schema id {schema_id} is unknown to the schema registry")
    remember_schema(schema_id, schema)
    return _known[schema_id]


def _check_registered(schema_id: int, event_type: str, payload: bytes) -> None:
    known = _schema(schema_id)
    if known.event_type is not None and known.event_type != event_type:
        raise DecodeError(
            f"schema id {schema_id} is the schema of {known.event_type}, "
            f"but the record says it is {event_type}"
        )
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise DecodeError(
            f"{event_type} value (schema id {schema_id}) is not valid JSON: {exc}"
        ) from exc
    error = jsonschema.exceptions.best_match(known.validator.iter_errors(body))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "<root>"
        raise ValidationFailed(
            f"{event_type} breaks its registered schema id {schema_id}: {where}: {error.message}"
        )


def header(headers: Headers | tuple[tuple[str, bytes], ...] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode("utf-8", errors="replace") if value is not None else None
    return None


def decode(
    value: bytes | None,
    headers: Headers | tuple[tuple[str, bytes], ...] | None,
    *,
    event_types: Mapping[str, type[Event]] = EVENT_TYPES,
) -> Event:
    """Parse a record into its event class, or raise a non-retriable error saying why.

    Unknown fields are dropped when the record names the served schema version; see the module
    docstring for records without a version header. A framed record is first checked against
    the schema its id names (see the module docstring). ``event_types`` is the reader's view
    of the contract (another release's models, in a rollout test).
    """
    event_type = header(headers, H_EVENT_TYPE)
    if event_type is None:
        raise DecodeError(f"missing header {H_EVENT_TYPE!r}")
    cls = event_types.get(event_type)
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
    schema_id, value = unframe(value)
    if schema_id is not None:
        _check_registered(schema_id, event_type, value)
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

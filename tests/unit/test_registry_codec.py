"""Registry framing without a registry: the frame, the decode cache, the serializer seam."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ingest.codec import (
    PLAIN_JSON,
    decode,
    encode,
    forget_schemas,
    frame,
    install_schema_source,
    remember_schema,
    unframe,
)
from ingest.events import OrderRejected
from ingest.registry import RegistrySerializer, subject_name
from ingest.registry.client import RegistryClient
from ingest.schemas import current_schema
from pizzashop.core.errors import DecodeError, ValidationFailed


class FakeRegistry(RegistryClient):
    """The client's surface the serializer uses, in memory (compatibility is not judged here:
    the integration tests do that on the real registry)."""

    def __init__(self) -> None:
        self.schemas: dict[int, dict[str, Any]] = {}
        self.subjects_seen: dict[str, str] = {}

    def set_compatibility(self, subject: str, level: str) -> None:
        self.subjects_seen[subject] = level

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        for schema_id, known in self.schemas.items():
            if known == schema:
                return schema_id
        self.schemas[len(self.schemas) + 1] = schema
        return len(self.schemas)

    def schema_by_id(self, schema_id: int) -> dict[str, Any] | None:
        return self.schemas.get(schema_id)


@pytest.fixture(autouse=True)
def clean_cache() -> Iterator[None]:
    forget_schemas()
    yield
    install_schema_source(None)
    forget_schemas()


def test_frame_round_trip_and_plain_values() -> None:
    assert unframe(frame(258, b"{}")) == (258, b"{}")
    assert frame(1, b"x")[:5] == b"\x00\x00\x00\x00\x01"
    assert unframe(b'{"a": 1}') == (None, b'{"a": 1}')
    with pytest.raises(DecodeError, match="shorter than its header"):
        unframe(b"\x00\x01")


def test_plain_json_serializer_is_encode() -> None:
    event = OrderRejected(order_id="o-1", reason="burnt")
    record = PLAIN_JSON.encode("any-topic", event, "00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    assert record.value == encode(event).value
    assert decode(record.value, record.headers) == event


def test_serializer_frames_caches_ids_and_decode_reads_both() -> None:
    registry = FakeRegistry()
    serializer = RegistrySerializer(registry)
    event = OrderRejected(order_id="o-1", reason="burnt")
    first = serializer.encode("t.order-events", event)
    second = serializer.encode("t.order-events", event)
    schema_id, payload = unframe(first.value)
    assert schema_id == 1 and json.loads(payload)["reason"] == "burnt"
    assert second.value == first.value and serializer.framed == 2
    assert registry.subjects_seen == {
        subject_name("t.order-events", "OrderRejected"): "BACKWARD_TRANSITIVE"
    }
    assert decode(first.value, first.headers) == event
    assert decode(encode(event).value, first.headers) == event  # plain, same topic: migrating


def test_decode_fetches_unknown_ids_from_the_installed_source() -> None:
    registry = FakeRegistry()
    schema_id = registry.register("s", current_schema(OrderRejected))
    event = OrderRejected(order_id="o-1", reason="burnt")
    value = frame(schema_id, encode(event).value)
    headers = encode(event).headers
    with pytest.raises(DecodeError, match=f"schema id {schema_id} is unknown: no schema registry"):
        decode(value, headers)
    install_schema_source(registry)
    assert decode(value, headers) == event
    with pytest.raises(DecodeError, match="schema id 99 is unknown to the schema registry"):
        decode(frame(99, encode(event).value), headers)


def test_a_record_that_breaks_its_registered_schema_names_the_id_and_reason() -> None:
    remember_schema(7, current_schema(OrderRejected))
    headers = encode(OrderRejected(order_id="o-1", reason="x")).headers
    with pytest.raises(ValidationFailed, match=r"registered schema id 7: reason: 5 is not of type"):
        decode(frame(7, b'{"order_id": "o-1", "reason": 5}'), headers)
    with pytest.raises(DecodeError, match=r"\(schema id 7\) is not valid JSON"):
        decode(frame(7, b"{nope"), headers)


def test_a_schema_id_of_another_event_type_is_refused() -> None:
    from tests.support.orders import make_order

    remember_schema(3, current_schema(type(make_order())))
    record = encode(OrderRejected(order_id="o-1", reason="x"))
    with pytest.raises(DecodeError, match="schema id 3 is the schema of OrderPlaced"):
        decode(frame(3, record.value), record.headers)

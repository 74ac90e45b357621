"""The event contract may only grow compatibly within a schema version.

Both directions are checked on real records: a reader of the committed schema reads what a newer
writer (with added optional fields) writes, and a newer reader reads what the current writer
writes.
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, create_model

from ingest.codec import decode, encode
from ingest.events import EVENT_TYPES, Event, OrderRejected, PaymentCaptured
from ingest.schemas import current_schema, schema_path
from ingest.schemas.compat import breaking_changes
from tests.support.orders import make_order


@pytest.mark.parametrize("cls", list(EVENT_TYPES.values()), ids=list(EVENT_TYPES))
def test_current_model_reads_what_the_committed_schema_allowed(cls: type[Event]) -> None:
    path = schema_path(cls)
    assert path.exists(), f"{path.name} is not committed: run `pizzashop schemas export`"
    committed = json.loads(path.read_text())
    assert breaking_changes(committed, current_schema(cls)) == []


def test_checker_flags_removed_retyped_and_newly_required_fields() -> None:
    old = current_schema(EVENT_TYPES["OrderPlaced"])
    new = copy.deepcopy(old)
    del new["properties"]["channel"]
    new["properties"]["total"] = {"type": "integer"}
    new["properties"]["loyalty_id"] = {"type": "string"}
    new["required"].append("loyalty_id")
    problems = breaking_changes(old, new)
    assert any(p.startswith("channel: removed") for p in problems)
    assert any(p.startswith("total: ") for p in problems)
    assert any(p.startswith("loyalty_id: now required") for p in problems)


def test_checker_accepts_a_new_optional_field() -> None:
    old = current_schema(EVENT_TYPES["OrderRejected"])
    new = copy.deepcopy(old)
    new["properties"]["note"] = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
    assert breaking_changes(old, new) == []


def test_checker_flags_tightened_constraints() -> None:
    old = current_schema(EVENT_TYPES["OrderRejected"])
    new = copy.deepcopy(old)
    new["properties"]["reason"]["maxLength"] = 10
    assert breaking_changes(old, new) != []


# -- both directions, on real records ---------------------------------------------------------
def _reader_view(schema: Any) -> Any:
    """``schema`` as a tolerant reader applies it: unknown properties allowed at every level."""
    if isinstance(schema, dict):
        return {k: _reader_view(v) for k, v in schema.items() if k != "additionalProperties"}
    if isinstance(schema, list):
        return [_reader_view(v) for v in schema]
    return schema


def _samples() -> list[Event]:
    return [
        make_order(),
        OrderRejected(order_id="o-1", reason="out of dough"),
        PaymentCaptured(order_id="o-1", amount=Decimal("12.50"), card_fingerprint="fp-1"),
    ]


class _Note(BaseModel):
    """A nested part only the new writer knows."""

    text: str


def _newer(cls: type[Event]) -> type[Event]:
    """``cls`` as the next release may write it: two added optional fields, one of them nested."""
    newer: type[Event] = create_model(
        cls.__name__,
        __base__=cls,
        loyalty_tier=(str | None, None),
        note=(_Note | None, None),
    )
    assert newer.event_type == cls.event_type and newer.schema_version == cls.schema_version
    return newer


@pytest.mark.parametrize("event", _samples(), ids=lambda e: e.event_type)
def test_old_reader_accepts_a_record_from_a_newer_writer(event: Event) -> None:
    cls = type(event)
    written = {**event.model_dump(), "loyalty_tier": "gold", "note": {"text": "ring twice"}}
    record = encode(_newer(cls).model_validate(written))
    assert b"loyalty_tier" in record.value and b"ring twice" in record.value
    # The deployed reader is the committed schema (the test above holds the model to it) ...
    committed = json.loads(schema_path(cls).read_text())
    jsonschema.validate(json.loads(record.value), _reader_view(committed))
    # ... and the decoder reads the record, dropping what it does not know.
    assert decode(record.value, record.headers) == event


@pytest.mark.parametrize("event", _samples(), ids=lambda e: e.event_type)
def test_new_reader_accepts_a_record_from_the_old_writer(
    event: Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = type(event)
    newer = _newer(cls)
    assert breaking_changes(current_schema(cls), current_schema(newer)) == []
    monkeypatch.setitem(EVENT_TYPES, cls.event_type, newer)
    record = encode(event)
    decoded = decode(record.value, record.headers)
    assert type(decoded) is newer
    assert decoded.model_dump(exclude={"loyalty_tier", "note"}) == event.model_dump()
    assert decoded.loyalty_tier is None and decoded.note is None  # type: ignore[attr-defined]


def test_the_baseline_only_moves_forward(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``pizzashop schemas export`` refuses a model that breaks its committed schema and
    writes nothing; a compatible change (an optional field) goes through."""
    import ingest.schemas as schemas
    from ingest.events import OrderRejected
    from pizzashop.core.errors import ValidationFailed

    class Retyped(OrderRejected):
        event_type = "OrderRejected"
        reason: int  # type: ignore[assignment]

    class Extended(OrderRejected):
        event_type = "OrderRejected"
        note: str | None = None

    monkeypatch.setattr(schemas, "SCHEMA_DIR", tmp_path)
    for cls in EVENT_TYPES.values():
        path = schemas.schema_path(cls)
        path.write_text(json.dumps(schemas.current_schema(cls)))
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    monkeypatch.setitem(EVENT_TYPES, "OrderRejected", Retyped)
    with pytest.raises(ValidationFailed, match=r"OrderRejected\.v1\.json: .*reason"):
        schemas.export()
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before
    monkeypatch.setitem(EVENT_TYPES, "OrderRejected", Extended)
    schemas.export()
    assert "note" in json.loads((tmp_path / "OrderRejected.v1.json").read_text())["properties"]

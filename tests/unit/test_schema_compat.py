"""The event contract may only grow compatibly within a schema version."""

from __future__ import annotations

import copy
import json

import pytest

from ingest.events import EVENT_TYPES, Event
from ingest.schemas import current_schema, schema_path
from ingest.schemas.compat import breaking_changes


@pytest.mark.parametrize("cls", list(EVENT_TYPES.values()), ids=list(EVENT_TYPES))
def test_current_model_reads_what_the_committed_schema_allowed(cls: type[Event]) -> None:
    path = schema_path(cls)
    assert path.exists(), f"{path.name} is not committed: run `python -m ingest.schemas`"
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

"""The committed JSON Schemas of every event, one file per event type and version.

``pizzashop schemas export`` rewrites them from the pydantic models, but only forward: a model
that breaks its committed schema (``compat.breaking_changes``) is refused, so the baseline moves
only through compatible changes; a breaking change is a new ``schema_version`` (a new file). The
compatibility test compares the models with these files, and the integration tests load them
into a real registry and ask it too, so a breaking change fails CI before it ships.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ingest.events import EVENT_TYPES, Event
from pizzashop.core.errors import ValidationFailed

SCHEMA_DIR = Path(__file__).parent


def schema_path(cls: type[Event]) -> Path:
    return SCHEMA_DIR / f"{cls.event_type}.v{cls.schema_version}.json"


def current_schema(cls: type[Event]) -> dict[str, Any]:
    schema = cls.model_json_schema(mode="serialization")
    schema["x-event-type"] = cls.event_type
    schema["x-schema-version"] = cls.schema_version
    return schema


def export() -> list[Path]:
    """Write every event's schema; refuse (writing nothing) if any breaks its committed one."""
    from ingest.schemas.compat import breaking_changes

    problems = [
        f"{schema_path(cls).name}: {problem} (a breaking change needs a new schema_version)"
        for cls in EVENT_TYPES.values()
        if schema_path(cls).exists()
        for problem in breaking_changes(committed_schema(cls), current_schema(cls))
    ]
    if problems:
        raise ValidationFailed(*problems)
    written = []
    for cls in EVENT_TYPES.values():
        path = schema_path(cls)
        path.write_text(json.dumps(current_schema(cls), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


def committed_schema(cls: type[Event]) -> dict[str, Any]:
    """The schema committed for ``cls``'s type and version (the baseline)."""
    loaded: dict[str, Any] = json.loads(schema_path(cls).read_text())
    return loaded

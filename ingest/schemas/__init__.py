"""The committed JSON Schemas of every event, one file per event type and version.

``pizzashop schemas export`` rewrites them from the pydantic models; the compatibility test
compares the models with these files, so a breaking change fails before it ships.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ingest.events import EVENT_TYPES, Event

SCHEMA_DIR = Path(__file__).parent


def schema_path(cls: type[Event]) -> Path:
    return SCHEMA_DIR / f"{cls.event_type}.v{cls.schema_version}.json"


def current_schema(cls: type[Event]) -> dict[str, Any]:
    schema = cls.model_json_schema(mode="serialization")
    schema["x-event-type"] = cls.event_type
    schema["x-schema-version"] = cls.schema_version
    return schema


def export() -> list[Path]:
    written = []
    for cls in EVENT_TYPES.values():
        path = schema_path(cls)
        path.write_text(json.dumps(current_schema(cls), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written

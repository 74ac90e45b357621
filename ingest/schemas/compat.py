"""Backward compatibility between a committed event schema and the current model.

Backward compatible means: the current model still reads every record written under the
committed schema. With ``extra="forbid"`` that rules out removing or renaming a field, making a
field required that was optional or new, and changing a field's type or its constraints in a
way that could reject old values. Adding optional fields is fine.
"""

from __future__ import annotations

from typing import Any

# Keys that decide which values a field accepts; descriptions, titles and defaults do not.
_SHAPE_KEYS = (
    "type",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "enum",
    "const",
    "format",
    "items",
    "prefixItems",
    "pattern",
)
# Bounds may loosen (a lower bound fall, an upper bound rise) but never tighten.
_LOWER_BOUNDS = ("minLength", "minimum", "exclusiveMinimum", "minItems")
_UPPER_BOUNDS = ("maxLength", "maximum", "exclusiveMaximum", "maxItems")


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    problems = _compare_object("", old, new)
    old_defs, new_defs = old.get("$defs", {}), new.get("$defs", {})
    for name, old_def in old_defs.items():
        if name not in new_defs:
            problems.append(f"$defs.{name}: removed")
            continue
        problems += _compare_object(f"{name}.", old_def, new_defs[name])
    return problems


def _compare_object(where: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for field, old_field in old_props.items():
        if field not in new_props:
            problems.append(f"{where}{field}: removed (old records carry it)")
            continue
        new_field = new_props[field]
        for key in _SHAPE_KEYS:
            if old_field.get(key) != new_field.get(key):
                problems.append(
                    f"{where}{field}: {key} changed from {old_field.get(key)!r} "
                    f"to {new_field.get(key)!r}"
                )
        for key in (*_LOWER_BOUNDS, *_UPPER_BOUNDS):
            before, after = old_field.get(key), new_field.get(key)
            if after is None or after == before:
                continue
            lower = key in _LOWER_BOUNDS
            if before is None or (after > before if lower else after < before):
                problems.append(f"{where}{field}: {key} tightened from {before!r} to {after!r}")
    newly_required = set(new.get("required", [])) - set(old.get("required", []))
    for field in sorted(newly_required):
        problems.append(f"{where}{field}: now required (old records may lack it)")
    return problems

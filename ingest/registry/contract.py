"""The shop's subjects in a registry: register them, and check the current models against them.

``check`` asks the registry, for every subject the shop publishes to and every version
registered there, whether the current model's schema may follow it under the subject's level;
it also reports a subject whose level is not the one configured (a check under ``NONE`` proves
nothing). ``register`` sets the level and registers the current schemas; the registry refuses
an incompatible one, so the registered history only moves forward compatibly.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest.events import Event
from ingest.registry.client import IncompatibleSchema, RegistryClient
from ingest.registry.serializer import subject_name
from ingest.schemas import current_schema
from ingest.schemas.publications import published_pairs
from ingest.topics import Topics


@dataclass(frozen=True, slots=True)
class SubjectReport:
    subject: str
    versions: tuple[int, ...]
    problems: tuple[str, ...]


def shop_subjects(topics: Topics) -> list[tuple[str, type[Event]]]:
    """``(subject, event class)`` of every subject the shop publishes to."""
    return [(subject_name(topic, cls.event_type), cls) for topic, cls in published_pairs(topics)]


def check(
    client: RegistryClient, topics: Topics, *, compatibility: str = "BACKWARD_TRANSITIVE"
) -> list[SubjectReport]:
    """One report per subject; any ``problems`` mean the current models must not ship."""
    reports = []
    for subject, cls in shop_subjects(topics):
        schema = current_schema(cls)
        versions = client.versions(subject)
        problems: list[str] = []
        level = client.compatibility(subject)
        if versions and level != compatibility:
            problems.append(
                f"compatibility level is {level or 'the global default'}, not {compatibility}"
            )
        for version in versions:
            problems += [
                f"version {version}: {reason}"
                for reason in client.incompatibilities(subject, schema, version)
            ]
        reports.append(SubjectReport(subject, tuple(versions), tuple(problems)))
    return reports


def register(
    client: RegistryClient, topics: Topics, *, compatibility: str = "BACKWARD_TRANSITIVE"
) -> dict[str, int | str]:
    """Set the level and register every current schema: subject → its id, or the reason the
    registry refused it."""
    out: dict[str, int | str] = {}
    for subject, cls in shop_subjects(topics):
        client.set_compatibility(subject, compatibility)
        try:
            out[subject] = client.register(subject, current_schema(cls))
        except IncompatibleSchema as exc:
            out[subject] = str(exc)
    return out

"""CI's compatibility gate on a real registry: the committed schemas (the baseline) are
registered, then the registry is asked whether the current models may follow them. A model that
breaks its committed schema fails here, whatever the unit-level checker thinks."""

from __future__ import annotations

import uuid

from ingest.registry import RegistryClient, check, shop_subjects
from ingest.schemas import committed_schema
from ingest.topics import Topics


def test_the_current_models_may_follow_the_committed_baseline(schema_registry_url: str) -> None:
    topics = Topics(f"baseline-{uuid.uuid4().hex[:8]}.")
    client = RegistryClient(schema_registry_url)
    try:
        for subject, cls in shop_subjects(topics):
            client.set_compatibility(subject, "BACKWARD_TRANSITIVE")
            client.register(subject, committed_schema(cls))
        reports = check(client, topics)
    finally:
        client.close()
    assert reports and len(reports) == len(shop_subjects(topics))
    broken = {r.subject: r.problems for r in reports if r.problems}
    assert broken == {}, f"the models break the committed baseline: {broken}"

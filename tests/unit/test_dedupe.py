"""The processed-events store: what one consumer marked, it sees again; other consumers do not."""

from __future__ import annotations

from ingest.dedupe import ProcessedEvents
from pizzashop.core.database import Database


async def test_marked_events_are_seen_by_their_consumer_only(db: Database) -> None:
    processed = ProcessedEvents(db)
    ids = [f"evt-{i:04d}" for i in range(1_200)]  # past one IN list's chunk
    assert await processed.seen("enricher", ids) == set()
    await processed.mark("enricher", ids[:700])
    await processed.mark("enricher", ids[650:710])  # marking again is a no-op
    assert await processed.seen("enricher", ids) == set(ids[:710])
    assert await processed.seen("enricher", ["evt-0003", "evt-0003", "nope"]) == {"evt-0003"}
    assert await processed.seen("kitchen", ids) == set()
    await processed.mark("kitchen", ["evt-0001"])
    assert await processed.seen("kitchen", ids[:5]) == {"evt-0001"}
    assert await processed.seen("enricher", []) == set()
    await processed.mark("enricher", [])

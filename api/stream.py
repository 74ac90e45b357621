"""Enriched orders as they happen, for the dashboard: server-sent events over ``fetch``.

``ScoreFeed`` reads the score projection incrementally: each ``poll()`` returns the orders
stored since the previous one, each once. The projection stores orders out of ``enriched_at``
order when its partitions run at different speeds, so a poll looks back ``overlap_s`` and drops
the orders it has already returned.

``score_events`` is the body of ``GET /scores/stream`` (``text/event-stream``): first the most
recent orders (oldest first), then every new one as an ``event: score`` with the whole
``OrderEnriched`` as its data, and every ``stats_every_s`` an ``event: stats`` (orders scored,
flagged, degraded, dead letters, consumer lag per group). Browsers' ``EventSource`` cannot send
the ``X-API-Key`` header, so the dashboard reads the stream with ``fetch``: the key travels in a
header as for every other request, never in a URL (URLs end up in logs and history).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ingest.events import OrderEnriched
from services.scores import ScoreQueries

__all__ = ["ScoreFeed", "score_events", "sse"]


class ScoreFeed:
    """The orders the score projection has stored since the last ``poll()``, oldest first."""

    def __init__(self, scores: ScoreQueries, *, overlap_s: float = 30.0, batch: int = 500) -> None:
        self._scores = scores
        self._overlap = timedelta(seconds=overlap_s)
        self._batch = batch
        self._cursor: datetime | None = None
        self._seen: dict[str, datetime] = {}

    async def poll(self) -> list[OrderEnriched]:
        since = None if self._cursor is None else self._cursor - self._overlap
        rows = await self._scores.recent(limit=self._batch, since=since)
        fresh = [e for e in reversed(rows) if e.order_id not in self._seen]
        for enriched in fresh:
            self._seen[enriched.order_id] = enriched.occurred_at
            if self._cursor is None or enriched.occurred_at > self._cursor:
                self._cursor = enriched.occurred_at
        if self._cursor is not None:
            horizon = self._cursor - 2 * self._overlap
            self._seen = {k: v for k, v in self._seen.items() if v >= horizon}
        return fresh

    async def skip_to_recent(self, limit: int) -> list[OrderEnriched]:
        """The last ``limit`` orders, oldest first; later polls return only newer ones."""
        recent = list(reversed(await self._scores.recent(limit=limit)))
        for enriched in recent:
            self._seen[enriched.order_id] = enriched.occurred_at
            if self._cursor is None or enriched.occurred_at > self._cursor:
                self._cursor = enriched.occurred_at
        if self._cursor is None:
            # Nothing scored yet: anything from now on (less the overlap) is new.
            self._cursor = datetime.now(UTC)
        return recent


def sse(event: str, data: Any) -> bytes:
    """One server-sent event; JSON data on one line, so no ``data:`` splitting is needed."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def score_events(
    scores: ScoreQueries,
    stats: Callable[[], Awaitable[dict[str, Any]]],
    disconnected: Callable[[], Awaitable[bool]],
    *,
    initial: int = 50,
    poll_s: float = 0.5,
    stats_every_s: float = 2.0,
) -> AsyncIterator[bytes]:
    feed = ScoreFeed(scores)
    for enriched in await feed.skip_to_recent(initial):
        yield sse("score", enriched.model_dump(mode="json"))
    yield sse("stats", await stats())
    loop = asyncio.get_running_loop()
    next_stats = loop.time() + stats_every_s
    while not await disconnected():
        for enriched in await feed.poll():
            yield sse("score", enriched.model_dump(mode="json"))
        if loop.time() >= next_stats:
            yield sse("stats", await stats())
            next_stats = loop.time() + stats_every_s
        await asyncio.sleep(poll_s)

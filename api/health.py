"""Health that tells the truth: the rules behind ``/health``, ``/health/live``, ``/health/ready``.

* **live**: the process is up and its event loop answers; failing only when a task that should
  run until shutdown has crashed (a restart is the cure).
* **ready**: the dependencies are usable: the database answers within ``db_timeout_s``, the
  outbox relay has not been failing for longer than ``relay_failing_max_s``, and the oldest
  unsent outbox row is younger than ``outbox_max_age_s`` (orders are confirmed but not moving).
* **overall** (``/health``): both; each failing rule adds one reason in plain words.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict
from sqlalchemy import text

from ingest.outbox import Backlog, RelayState
from pizzashop.core.database import Database
from pizzashop.core.settings import HealthSettings


class RelayProbe(Protocol):
    """What health needs of the outbox relay (``OutboxRelay`` fits)."""

    @property
    def state(self) -> RelayState: ...

    async def backlog(self) -> Backlog: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    reasons: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.reasons

    def __add__(self, other: Verdict) -> Verdict:
        return Verdict(self.reasons + other.reasons, {**self.details, **other.details})


class HealthOut(BaseModel):
    """The body of every health answer, 200 or 503."""

    model_config = ConfigDict(extra="allow")

    status: str
    reasons: list[str]


class HealthCheck:
    """Evaluates the health rules. ``crashed`` names tasks that ended with an error."""

    def __init__(
        self,
        *,
        db: Database,
        relay: RelayProbe | None,
        crashed: Callable[[], Iterable[str]],
        settings: HealthSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._relay = relay
        self._crashed = crashed
        self._settings = settings or HealthSettings()
        self._clock = clock

    async def live(self) -> Verdict:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0)  # one trip round the loop: how long other work holds it
        lag_ms = round((loop.time() - started) * 1000, 1)
        crashed = sorted(self._crashed())
        reasons = tuple(f"task {name} crashed" for name in crashed)
        return Verdict(reasons, {"crashed_tasks": crashed, "loop_lag_ms": lag_ms})

    async def ready(self) -> Verdict:
        cfg = self._settings
        reasons: list[str] = []
        details: dict[str, Any] = {}
        backlog: Backlog | None = None
        try:
            async with asyncio.timeout(cfg.db_timeout_s):
                if self._relay is not None:
                    backlog = await self._relay.backlog()
                else:
                    async with self._db.engine.connect() as conn:
                        await conn.execute(text("SELECT 1"))
        except Exception as exc:
            reasons.append(f"database unreachable: {type(exc).__name__}: {exc}")
        details["database"] = "ok" if not reasons else "unreachable"
        if backlog is not None:
            details["outbox_pending"] = backlog.pending
            details["outbox_oldest_age_s"] = (
                None if backlog.oldest_age_s is None else round(backlog.oldest_age_s, 1)
            )
            if backlog.oldest_age_s is not None and backlog.oldest_age_s > cfg.outbox_max_age_s:
                reasons.append(
                    f"oldest unsent outbox row is {backlog.oldest_age_s:.0f}s old "
                    f"(limit {cfg.outbox_max_age_s:.0f}s)"
                )
        if self._relay is not None:
            state = self._relay.state
            now = self._clock()
            failing_for = None if state.failing_since is None else now - state.failing_since
            details["relay"] = {
                "running": state.running,
                "has_lease": state.has_lease,
                "published": state.published,
                "consecutive_failures": state.consecutive_failures,
                "failing_for_s": None if failing_for is None else round(failing_for, 1),
                "last_success_age_s": (
                    None if state.last_success_at is None else round(now - state.last_success_at, 1)
                ),
                "last_error": state.last_error,
            }
            if failing_for is not None and failing_for > cfg.relay_failing_max_s:
                reasons.append(
                    f"outbox relay failing for {failing_for:.0f}s "
                    f"(limit {cfg.relay_failing_max_s:.0f}s): {state.last_error}"
                )
        return Verdict(tuple(reasons), details)

    async def overall(self) -> Verdict:
        return await self.live() + await self.ready()


def body(verdict: Verdict) -> dict[str, Any]:
    return {
        "status": "ok" if verdict.ok else "failing",
        "reasons": list(verdict.reasons),
        **verdict.details,
    }

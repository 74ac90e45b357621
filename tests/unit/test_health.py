"""The health rules, and the three health routes through ASGI."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from types import SimpleNamespace

import httpx
import pytest

from api.app import create_app
from api.health import HealthCheck
from ingest.outbox import Backlog, RelayState
from pizzashop.core.database import Database
from pizzashop.core.settings import HealthSettings
from services.scores import ScoreQueries

LIMITS = HealthSettings(relay_failing_max_s=30, outbox_max_age_s=120, db_timeout_s=1)
NOW = 10_000.0
HEALTHY = RelayState(
    running=True,
    has_lease=True,
    published=7,
    failures=0,
    consecutive_failures=0,
    last_success_at=NOW - 1,
    failing_since=None,
    last_error=None,
)


class FakeRelay:
    def __init__(self) -> None:
        self.state = HEALTHY
        self.backlog_value = Backlog(0, None)
        self.db_down = False

    async def backlog(self) -> Backlog:
        if self.db_down:
            raise ConnectionError("database went away")
        return self.backlog_value


class Tasks:
    def __init__(self) -> None:
        self.crashed: list[str] = []

    def __call__(self) -> list[str]:
        return self.crashed


@pytest.fixture
def parts(db: Database) -> tuple[HealthCheck, FakeRelay, Tasks]:
    relay, tasks = FakeRelay(), Tasks()
    check = HealthCheck(db=db, relay=relay, crashed=tasks, settings=LIMITS, clock=lambda: NOW)
    return check, relay, tasks


async def test_all_well_is_ok_with_details(parts: tuple[HealthCheck, FakeRelay, Tasks]) -> None:
    check, relay, _ = parts
    relay.backlog_value = Backlog(3, 2.0)
    verdict = await check.overall()
    assert verdict.ok and verdict.reasons == ()
    assert verdict.details["outbox_pending"] == 3
    assert verdict.details["relay"]["published"] == 7
    assert verdict.details["crashed_tasks"] == []


async def test_a_crashed_task_fails_live_and_overall(
    parts: tuple[HealthCheck, FakeRelay, Tasks],
) -> None:
    check, _, tasks = parts
    tasks.crashed = ["outbox-relay"]
    assert (await check.live()).reasons == ("task outbox-relay crashed",)
    assert (await check.ready()).ok
    assert not (await check.overall()).ok


async def test_the_relay_may_fail_briefly_but_not_for_long(
    parts: tuple[HealthCheck, FakeRelay, Tasks],
) -> None:
    check, relay, _ = parts
    failing = replace(HEALTHY, consecutive_failures=4, last_error="BrokerUnavailable: away")
    relay.state = replace(failing, failing_since=NOW - 10)
    assert (await check.ready()).ok
    relay.state = replace(failing, failing_since=NOW - 31)
    reasons = (await check.ready()).reasons
    assert len(reasons) == 1 and "relay failing for 31s" in reasons[0]
    assert "BrokerUnavailable" in reasons[0]
    assert (await check.live()).ok  # a restart would not help: not a liveness failure


async def test_an_old_backlog_is_unready(parts: tuple[HealthCheck, FakeRelay, Tasks]) -> None:
    check, relay, _ = parts
    relay.backlog_value = Backlog(40, 119.0)
    assert (await check.ready()).ok
    relay.backlog_value = Backlog(40, 121.0)
    assert (await check.ready()).reasons == ("oldest unsent outbox row is 121s old (limit 120s)",)


async def test_an_unreachable_database_is_unready(
    parts: tuple[HealthCheck, FakeRelay, Tasks],
) -> None:
    check, relay, _ = parts
    relay.db_down = True
    verdict = await check.ready()
    assert verdict.details["database"] == "unreachable"
    assert verdict.reasons == ("database unreachable: ConnectionError: database went away",)


async def test_without_a_relay_the_database_is_still_probed(db: Database) -> None:
    check = HealthCheck(db=db, relay=None, crashed=list, settings=LIMITS)
    assert (await check.overall()).ok
    never_started = Database("sqlite+aiosqlite:///unused.db")
    check = HealthCheck(db=never_started, relay=None, crashed=list, settings=LIMITS)
    assert (await check.ready()).details["database"] == "unreachable"


@pytest.fixture
async def http(
    parts: tuple[HealthCheck, FakeRelay, Tasks], db: Database
) -> AsyncIterator[httpx.AsyncClient]:
    _, relay, tasks = parts
    # Only what the health routes read of a Shop.
    shop = SimpleNamespace(
        db=db,
        relay=relay,
        scores=ScoreQueries(db),
        crashed=tasks,
        settings=SimpleNamespace(health=LIMITS),
    )
    app = create_app(shop)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop"
    ) as client:
        yield client


async def test_routes_answer_503_with_reasons_and_200_after(
    http: httpx.AsyncClient, parts: tuple[HealthCheck, FakeRelay, Tasks]
) -> None:
    _, relay, tasks = parts
    for path in ("/health", "/health/live", "/health/ready"):
        response = await http.get(path)
        assert response.status_code == 200, path
        assert response.json()["status"] == "ok"

    relay.state = replace(HEALTHY, failing_since=time.time() - 600, last_error="OperationalError")
    response = await http.get("/health")
    assert response.status_code == 503
    assert any("outbox relay failing" in r for r in response.json()["reasons"])
    assert (await http.get("/health/ready")).status_code == 503
    assert (await http.get("/health/live")).status_code == 200

    tasks.crashed = ["consumer-kitchen"]
    live = await http.get("/health/live")
    assert live.status_code == 503 and live.json()["reasons"] == ["task consumer-kitchen crashed"]

    relay.state, tasks.crashed = HEALTHY, []
    assert (await http.get("/health")).status_code == 200


async def test_health_routes_are_documented(http: httpx.AsyncClient) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    for path in ("/health", "/health/live", "/health/ready"):
        operation = paths[path]["get"]
        assert {"200", "503"} <= set(operation["responses"])
        assert operation["description"]

"""The shop as real processes: one API process, worker processes a supervisor keeps alive.

Every process is ``pizzashop run`` configured through the environment only, exactly as an
operator would deploy it. The API process serves HTTP and relays the outbox (``--workers
status``). Each worker role runs in ``replicas`` processes, so every consumer group has at
least two members and a kill always leaves one working while the group rebalances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pizzashop.core.errors import PizzashopError
from pizzashop.core.settings import Settings

logger = logging.getLogger(__name__)

ENRICH_FLOWS = ("enricher", "scores")


def roles(*, enricher: bool) -> dict[str, str]:
    """Role name -> the flows its processes run: every registered flow but the enrichment ones
    in "core" (timers such as the oven included), those in "enrich"."""
    try:
        from pizzashop.app.shop import registered_flows

        names = list(registered_flows())
    except ImportError:  # before flows were declared: a fixed list of workers
        from pizzashop.app.shop import WORKERS  # type: ignore[attr-defined, unused-ignore]

        names = list(WORKERS)
    core = ",".join(n for n in names if n not in ENRICH_FLOWS)
    return {"core": core, "enrich": ",".join(ENRICH_FLOWS)} if enricher else {"core": core}


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``Settings()`` in a child equal ``settings`` where it matters."""
    env = {
        "PIZZASHOP_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "PIZZASHOP_TOPIC_PREFIX": settings.topic_prefix,
        "PIZZASHOP_GROUP_PREFIX": settings.group_prefix,
        "PIZZASHOP_HOME": str(settings.home.resolve()),
        "PIZZASHOP_CACHE_DIR": str(settings.cache_dir.resolve()),
        "PIZZASHOP_REGISTRY_DIR": str(settings.resolved_registry_dir.resolve()),
        "PIZZASHOP_API_HOST": settings.api_host,
        "PIZZASHOP_API_PORT": str(settings.api_port),
        "PIZZASHOP_COOK_SECONDS": str(settings.cook_seconds),
        "PIZZASHOP_ORDERS_PARTITIONS": str(settings.orders_partitions),
        "PIZZASHOP_EVENTS_PARTITIONS": str(settings.events_partitions),
        "PIZZASHOP_TOPIC_REPLICATION_FACTOR": str(settings.topic_replication_factor),
        "PIZZASHOP_SMTP__HOST": settings.smtp.host,
        "PIZZASHOP_SMTP__PORT": str(settings.smtp.port),
    }
    if settings.database_url:
        env["PIZZASHOP_DATABASE_URL"] = settings.database_url
    api = getattr(settings, "api", None)  # API settings (rate limits) came later than the rest
    if api is not None:
        env["PIZZASHOP_API__RATE_LIMIT_PER_ADDRESS"] = api.rate_limit_per_address
    for name, value in settings.consumer.model_dump().items():
        if value is not None and name != "instance_id":  # instance ids are per process
            env[f"PIZZASHOP_CONSUMER__{name.upper()}"] = str(value)
    return env


@dataclass(slots=True)
class Member:
    """One running ``pizzashop run`` process."""

    role: str
    slot: int
    process: asyncio.subprocess.Process
    started_at: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.slot}"


class ShopProcesses:
    """Starts, kills and replaces the shop's processes; ``stop()`` ends them all with SIGTERM."""

    def __init__(
        self, settings: Settings, logs: Path, *, roles: dict[str, str], replicas: int = 2
    ) -> None:
        self._settings = settings
        self._logs = logs
        self._env = {**os.environ, **settings_env(settings)}
        self._flows = {"api": "status", **roles}
        self._wanted = [(role, slot) for role in roles for slot in range(replicas)]
        self.workers: dict[tuple[str, int], Member] = {}
        self.api: Member | None = None
        self.starts = 0
        self.unexpected_exits: list[str] = []
        self._all: list[Member] = []  # every process ever started, so stop() misses none

    @property
    def api_url(self) -> str:
        return f"http://{self._settings.api_host}:{self._settings.api_port}"

    @property
    def flows(self) -> dict[str, str]:
        return dict(self._flows)

    async def _spawn(self, role: str, slot: int) -> Member:
        argv = ["run", "--verbose", "--workers", self._flows[role]]
        if role != "api":
            argv.append("--no-api")
        log = self._logs / f"{role}-{slot}.log"
        # A stable id per slot, as a pod ordinal: the replacement of a killed process fences
        # its predecessor's open transactions at once.
        env = {**self._env, "PIZZASHOP_CONSUMER__INSTANCE_ID": f"{role}-{slot}"}
        with log.open("ab") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pizzashop.app.cli", *argv,
                env=env, stdout=sink, stderr=sink, stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        self.starts += 1
        member = Member(role=role, slot=slot, process=process)
        self._all.append(member)
        logger.info("started %s (pid %d): %s", member.name, process.pid, self._flows[role])
        return member

    async def start(self, *, ready_timeout_s: float = 120.0) -> None:
        self.api = await self._spawn("api", 0)
        for role, slot in self._wanted:
            self.workers[role, slot] = await self._spawn(role, slot)
        await self._wait_api(ready_timeout_s)

    async def _wait_api(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=self.api_url, timeout=2) as client:
            while time.monotonic() < deadline:
                assert self.api is not None
                if self.api.process.returncode is not None:
                    raise PizzashopError(f"the API process exited; see {self._logs}/api.log")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/health")).status_code == 200:
                        return
                await asyncio.sleep(0.5)
        raise PizzashopError(f"the API did not answer within {timeout_s:.0f}s")

    def live_workers(self) -> list[Member]:
        return [m for m in self.workers.values() if m.process.returncode is None]

    def last_change(self) -> float:
        """When a worker last started (monotonic): a group rebalances for a while after it."""
        return max((m.started_at for m in self.workers.values()), default=0.0)

    async def kill_and_replace(self, member: Member) -> Member:
        """SIGKILL ``member``, wait until it is gone, start a fresh one in its slot."""
        with contextlib.suppress(ProcessLookupError):
            member.process.send_signal(signal.SIGKILL)
        await member.process.wait()
        fresh = await self._spawn(member.role, member.slot)
        self.workers[member.role, member.slot] = fresh
        return fresh

    async def supervise(self) -> None:
        """Restart a process that exits on its own (a supervisor would); note that it did.

        A worker that starts while Kafka is down exits at once (it cannot create its topics):
        it is simply started again a second later, until the broker is back.
        """
        while True:
            await asyncio.sleep(1.0)
            for (role, slot), member in list(self.workers.items()):
                if self._exited_by_itself(member):
                    self.workers[role, slot] = await self._spawn(role, slot)
            if self.api is not None and self._exited_by_itself(self.api):
                self.api = await self._spawn("api", 0)

    def _exited_by_itself(self, member: Member) -> bool:
        code = member.process.returncode
        if code is None or code == -signal.SIGKILL:
            return False
        self.unexpected_exits.append(f"{member.name} exit {code}")
        logger.warning("%s exited with %s; restarting it", member.name, code)
        return True

    async def stop(self, *, deadline_s: float = 30.0) -> None:
        """SIGTERM to every process (workers first, then the API), SIGKILL past the deadline."""
        groups = [
            [m for m in self._all if m.role != "api"],
            [m for m in self._all if m.role == "api"],
        ]
        for members in groups:
            for member in members:
                if member.process.returncode is None:
                    member.process.send_signal(signal.SIGTERM)
            for member in members:
                try:
                    await asyncio.wait_for(member.process.wait(), deadline_s)
                except TimeoutError:
                    logger.warning(
                        "%s ignored SIGTERM for %.0fs; killing it", member.name, deadline_s
                    )
                    member.process.kill()
                    await member.process.wait()

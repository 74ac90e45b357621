"""The chaos run's own Kafka, which it may stop cleanly, SIGKILL and restart on the same ports.

Uses ``LocalKafka``'s node control (``terminate``/``kill``/``restart``, ``node_count``, a
``nodes`` argument) when the installed version has it. Otherwise, for one node only, it does the
same by hand: SIGTERM or SIGKILL the JVM, then a new ``LocalKafka`` on the same data directory
and the same two ports, so every client's bootstrap address stays valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
from pathlib import Path
from typing import Any

from ingest.broker import LocalKafka
from pizzashop.core.errors import ConfigError
from pizzashop.core.lifecycle import Resource
from pizzashop.core.settings import Settings

logger = logging.getLogger(__name__)


def _has_node_control() -> bool:
    return all(hasattr(LocalKafka, name) for name in ("terminate", "kill", "restart")) and (
        "nodes" in inspect.signature(LocalKafka.__init__).parameters
    )


class ChaosBroker(Resource):
    """``async with ChaosBroker(settings, data_dir, nodes=1) as broker: broker.bootstrap``."""

    def __init__(self, settings: Settings, data_dir: Path, *, nodes: int = 1) -> None:
        self._settings = settings
        self._data_dir = data_dir
        self._nodes = nodes
        self.native = _has_node_control()
        if nodes != 1 and not self.native:
            raise ConfigError(
                f"{nodes} nodes need LocalKafka(nodes=...) with terminate/kill/restart; "
                "this ingest/broker/local.py has a single node only"
            )
        self._kafka: Any = None
        self._ports = (0, 0)

    @property
    def bootstrap(self) -> str:
        return str(self._kafka.bootstrap)

    @property
    def node_count(self) -> int:
        return int(getattr(self._kafka, "node_count", 1))

    def _new(self, port: int = 0, controller_port: int = 0) -> Any:
        options: dict[str, Any] = {
            "cache_dir": self._settings.cache_dir,
            "data_dir": self._data_dir,
            "version": self._settings.broker.kafka_version,
            "heap": self._settings.broker.heap,
            "start_timeout_s": self._settings.broker.start_timeout_s,
        }
        if self.native:
            options["nodes"] = self._nodes
        else:
            options |= {"port": port, "controller_port": controller_port}
        return LocalKafka(**options)

    async def _start(self) -> None:
        self._kafka = self._new()
        await self._kafka.start()
        if not self.native:
            self._ports = (self._kafka.port, self._kafka.controller_port)

    async def _stop(self) -> None:
        if self._kafka is not None:
            await self._kafka.stop()

    async def down(self, *, kill: bool, node: int = 0) -> None:
        """Take one node down: a clean stop (SIGTERM, shutdown hook) or a SIGKILL of its JVM."""
        if self.native:
            await (self._kafka.kill(node) if kill else self._kafka.terminate(node))
            return
        if kill:
            pid = self._kafka.pid
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            # Let asyncio reap the child, so stop() below finds it gone and only tidies up.
            await asyncio.sleep(1.0)
        with contextlib.suppress(ProcessLookupError):
            await self._kafka.stop()

    async def up(self, node: int = 0) -> None:
        """Start the node again on the same ports and data."""
        if self.native:
            await self._kafka.restart(node)
            return
        self._kafka = self._new(*self._ports)
        await self._kafka.start()

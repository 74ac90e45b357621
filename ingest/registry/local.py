"""``LocalRegistry``: Apicurio Registry as a child JVM of this process, data in memory.

Lifecycle: ``start()`` builds the runner jar (once, with Maven, into the cache folder), starts
the JVM on a loopback port and returns only when the Confluent-compatible API answers a real
request. ``stop()`` sends SIGTERM and escalates to SIGKILL after a deadline; it may be called
twice. An instance runs once: a stopped one refuses to start again. Everything registered lives
in the JVM's memory and is gone after ``stop()``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import subprocess
import time
from pathlib import Path
from types import TracebackType

from ingest.broker._config import free_port, port_is_free, port_taken_message
from ingest.registry._build import build, ensure_java, is_built
from ingest.registry._process import check_heap, log_tail, registry_command, url_of, wait_ready
from pizzashop.core.errors import ConfigError

logger = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 20.0


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"


class LocalRegistry:
    """Apicurio Registry on ``127.0.0.1:port`` (0: a free port at start); its log goes to
    ``log_dir/registry.log``, its jars are built under ``cache_dir``. ``async with`` starts
    and stops it; ``url`` is the Confluent-compatible base URL clients take."""

    def __init__(
        self,
        *,
        cache_dir: Path,
        log_dir: Path,
        port: int = 0,
        heap: str = "256m",
        start_timeout_s: float = 120.0,
    ) -> None:
        check_heap(heap)
        if start_timeout_s <= 0:
            raise ConfigError(f"start_timeout_s must be positive, got {start_timeout_s}")
        self.cache_dir = Path(cache_dir)
        self.log_file = Path(log_dir) / "registry.log"
        self.heap = heap
        self.start_timeout_s = start_timeout_s
        self._wanted_port = port
        self._port = 0
        self._process: asyncio.subprocess.Process | None = None
        self._state = _State.NEW

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/apis/ccompat/v7``; only meaningful while running."""
        if self._state is not _State.RUNNING:
            raise RuntimeError(f"LocalRegistry is {self._state.value}, not running")
        return url_of(self._port)

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def start(self) -> str:
        """Build if needed, start, wait until it answers; return ``url``.

        Raises ConfigError (no Java/Maven, a failed build, the fixed port taken),
        BrokerUnavailable (the JVM died or did not answer within ``start_timeout_s``),
        RuntimeError when this instance was started before.
        """
        if self._state is not _State.NEW:
            raise RuntimeError(f"LocalRegistry is {self._state.value}; create a new one to restart")
        self._state = _State.STARTING
        began = time.monotonic()
        try:
            java = ensure_java(maven=not is_built(self.cache_dir))
            jar = await asyncio.to_thread(build, self.cache_dir)
            if self._wanted_port and not port_is_free(self._wanted_port):
                raise ConfigError(
                    "cannot start the schema registry: "
                    + port_taken_message(self._wanted_port, "HTTP port")
                )
            self._port = self._wanted_port or free_port()
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            argv = registry_command(java=java, jar=jar, port=self._port, heap=self.heap)
            with self.log_file.open("ab") as out:
                self._process = await asyncio.create_subprocess_exec(
                    *argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
            await wait_ready(
                url_of(self._port),
                timeout_s=self.start_timeout_s,
                alive=lambda: self.pid is not None,
                log_tail=lambda: log_tail(self.log_file),
            )
        except BaseException:
            await self._terminate()
            self._state = _State.STOPPED
            raise
        self._state = _State.RUNNING
        logger.info(
            "schema registry ready at %s in %.1fs", url_of(self._port), time.monotonic() - began
        )
        return url_of(self._port)

    async def stop(self) -> None:
        """SIGTERM, SIGKILL after 20 s. Safe to call twice."""
        if self._state is _State.STOPPED:
            return
        self._state = _State.STOPPED
        await self._terminate()

    async def _terminate(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), _STOP_TIMEOUT_S)
        except TimeoutError:
            logger.warning("schema registry ignored SIGTERM for %.0fs; killing it", _STOP_TIMEOUT_S)
            process.kill()
            await process.wait()

    async def __aenter__(self) -> LocalRegistry:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

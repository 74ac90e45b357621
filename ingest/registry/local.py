"""``LocalRegistry``: Apicurio Registry as a child JVM of this process, data in memory.

Lifecycle: ``start()`` builds the runner jar (once, with Maven, into the cache folder), starts
the JVM on a loopback port and returns only when the Confluent-compatible API answers a real
request. ``stop()`` sends SIGTERM and escalates to SIGKILL after a deadline; it may be called
twice. An instance runs once: a stopped one refuses to start again. Everything registered lives
in the JVM's memory and is gone after ``stop()``.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path

from ingest.broker._config import port_taken_message
from ingest.registry._build import build, ensure_java, is_built
from ingest.registry._process import check_heap, log_tail, registry_command, url_of, wait_ready
from pizzashop.core.errors import ConfigError
from pizzashop.core.lifecycle import Resource
from pizzashop.core.net import free_port, port_is_free

logger = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 20.0


class LocalRegistry(Resource):
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

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/apis/ccompat/v7``; only meaningful while running."""
        self._check_running()
        return url_of(self._port)

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def _start(self) -> None:
        """``start()``: build if needed, start, wait until it answers (then ``url`` holds).

        Raises ConfigError (no Java/Maven, a failed build, the fixed port taken),
        BrokerUnavailable (the JVM died or did not answer within ``start_timeout_s``);
        ``start()`` raises RuntimeError when this instance was started before.
        """
        began = time.monotonic()
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
        logger.info(
            "schema registry ready at %s in %.1fs", url_of(self._port), time.monotonic() - began
        )

    async def _stop(self) -> None:
        """SIGTERM, SIGKILL after 20 s."""
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

"""``LocalKafka``: a single-node Apache Kafka (KRaft) as a child JVM of this process.

Lifecycle: ``start()`` resolves the jars (once per version), formats the data dir (once), starts
the JVM and returns only after a metadata request lists the broker. ``stop()`` sends SIGTERM so
Kafka's shutdown hook flushes and closes its logs, escalating to SIGKILL after a deadline.
Like aiokafka's clients, an instance runs once: a stopped one refuses to start again; make a new
``LocalKafka`` on the same ``data_dir`` to restart with the same data.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import subprocess
import time
from pathlib import Path
from types import TracebackType

from ingest.broker._config import (
    Layout,
    broker_command,
    check_heap,
    format_command,
    free_port,
)
from ingest.broker._readiness import wait_ready
from ingest.broker._tools import check_version, ensure_tools, jars_resolved, resolve_jars
from pizzashop.errors import BrokerUnavailable, ConfigError

logger = logging.getLogger(__name__)

_FORMAT_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 30.0
# A port picked free can be taken before the JVM binds it; only then is a retry worth it.
_BIND_ATTEMPTS = 3


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"


class LocalKafka:
    """One Kafka node on 127.0.0.1, data in ``data_dir``, jars cached under ``cache_dir``.

    ``port``/``controller_port`` 0 picks free ports at start. ``async with`` starts and stops it.
    """

    def __init__(
        self,
        *,
        cache_dir: Path,
        data_dir: Path,
        version: str = "4.2.0",
        heap: str = "512m",
        port: int = 0,
        controller_port: int = 0,
        start_timeout_s: float = 90.0,
    ) -> None:
        check_version(version)
        check_heap(heap)
        if start_timeout_s <= 0:
            raise ConfigError(f"start_timeout_s must be positive, got {start_timeout_s}")
        if port and port == controller_port:
            raise ConfigError(f"port and controller_port must differ, both are {port}")
        self.cache_dir = Path(cache_dir)
        self.layout = Layout.of(Path(data_dir))
        self.version = version
        self.heap = heap
        self._wanted_port = port
        self._wanted_controller_port = controller_port
        self.start_timeout_s = start_timeout_s
        self._state = _State.NEW
        self._process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.controller_port = 0

    @property
    def data_dir(self) -> Path:
        return self.layout.data_dir

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>``; only meaningful once started."""
        if self._state is not _State.RUNNING:
            raise RuntimeError(f"LocalKafka is {self._state.value}, not running")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def server_log(self) -> Path:
        return self.layout.server_log

    async def start(self) -> str:
        """Start the broker and return its bootstrap address once it serves metadata.

        Raises ConfigError (no Java/Maven, bad version), BrokerUnavailable (the JVM died or was
        not ready within ``start_timeout_s``), RuntimeError if this instance was started before.
        """
        if self._state is not _State.NEW:
            raise RuntimeError(f"LocalKafka is {self._state.value}; create a new one to restart")
        self._state = _State.STARTING
        began = time.monotonic()
        try:
            java = ensure_tools(maven=not jars_resolved(self.cache_dir, self.version))
            lib = await asyncio.to_thread(resolve_jars, self.cache_dir, self.version)
            await self._start_jvm(java, lib)
        except BaseException:
            await self._terminate()
            self._state = _State.STOPPED
            raise
        self._state = _State.RUNNING
        logger.info(
            "Kafka %s ready at 127.0.0.1:%d in %.1fs (pid %s, data %s)",
            self.version,
            self.port,
            time.monotonic() - began,
            self.pid,
            self.data_dir,
        )
        return self.bootstrap

    async def _start_jvm(self, java: str, lib: Path) -> None:
        auto_ports = not (self._wanted_port and self._wanted_controller_port)
        for attempt in range(1, _BIND_ATTEMPTS + 1):
            self.port = self._wanted_port or free_port()
            self.controller_port = self._wanted_controller_port or free_port()
            if self.port == self.controller_port:  # two free_port() calls may agree
                continue
            self.layout.prepare(port=self.port, controller_port=self.controller_port)
            if not self.layout.formatted:
                await self._format(java, lib)
            await self._spawn(java, lib)
            try:
                await wait_ready(
                    f"127.0.0.1:{self.port}",
                    timeout_s=self.start_timeout_s,
                    alive=lambda: self._process is not None and self._process.returncode is None,
                    log_tail=self.layout.log_tail,
                )
            except BrokerUnavailable:
                await self._terminate()
                tail = self.layout.log_tail()
                if auto_ports and attempt < _BIND_ATTEMPTS and "Address already in use" in tail:
                    logger.warning("a picked port was taken before Kafka bound it; retrying")
                    continue
                raise
            return
        raise BrokerUnavailable(f"no free loopback ports for Kafka after {_BIND_ATTEMPTS} tries")

    async def _format(self, java: str, lib: Path) -> None:
        argv = format_command(java=java, lib=lib, layout=self.layout)
        logger.info("formatting Kafka storage in %s", self.layout.log_dir)
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), _FORMAT_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise BrokerUnavailable(
                f"formatting Kafka storage took over {_FORMAT_TIMEOUT_S:.0f}s"
            ) from None
        text = output.decode("utf-8", errors="replace").strip()
        if process.returncode != 0:
            raise ConfigError(
                f"formatting Kafka storage in {self.layout.log_dir} failed "
                f"(exit {process.returncode}):\n{text}"
            )
        logger.debug("StorageTool: %s", text)

    async def _spawn(self, java: str, lib: Path) -> None:
        argv = broker_command(java=java, lib=lib, layout=self.layout, heap=self.heap)
        logger.debug("starting Kafka: %s", argv)
        # The JVM's own stdout/stderr (crashes, log4j status) go to a file the parent closes at
        # once; the child keeps its copy of the descriptor.
        with self.layout.jvm_out.open("ab") as out:
            self._process = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    async def stop(self) -> None:
        """SIGTERM, wait for Kafka's clean shutdown, SIGKILL after 30 s. Safe to call twice."""
        if self._state is _State.STOPPED:
            return
        self._state = _State.STOPPED
        await self._terminate()

    async def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        began = time.monotonic()
        process.terminate()
        try:
            code = await asyncio.wait_for(process.wait(), _STOP_TIMEOUT_S)
        except TimeoutError:
            logger.warning(
                "Kafka (pid %d) ignored SIGTERM for %.0fs; killing it", process.pid, _STOP_TIMEOUT_S
            )
            process.kill()
            code = await process.wait()
        # 143 (128 + SIGTERM) is the JVM's normal exit after its shutdown hooks ran.
        logger.info(
            "Kafka (pid %d) stopped in %.1fs, exit code %d",
            process.pid,
            time.monotonic() - began,
            code,
        )

    async def __aenter__(self) -> LocalKafka:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<LocalKafka {self.version} {self._state.value} port={self.port} {self.data_dir}>"

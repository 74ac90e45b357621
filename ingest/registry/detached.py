"""A detached local registry for the command line: it outlives the command that started it.

Like the broker's (``ingest.broker.detached``, whose launcher it uses): the JVM runs in its own
session, and ``<data_dir>/registry.json`` records its pid and port. The port is chosen on the
first start and kept, so clients configured with the URL find it again after a restart. Data
is in memory: a restart starts empty (``pizzashop schemas register`` loads the models again).
Every pid read from the file is checked against ``/proc/<pid>/cmdline`` before it is trusted.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ingest.broker._config import port_taken_message
from ingest.broker._readiness import run_sync
from ingest.broker.detached import _spawn
from ingest.registry._build import build, ensure_java, is_built
from ingest.registry._process import (
    answers,
    check_heap,
    is_our_registry,
    log_tail,
    registry_command,
    url_of,
    wait_ready,
)
from pizzashop.core.errors import ConfigError
from pizzashop.core.net import free_port, port_is_free

logger = logging.getLogger(__name__)

STATE_FILE = "registry.json"
LOG_FILE = "registry.log"


@dataclass(frozen=True, slots=True)
class RegistryState:
    """A detached registry as recorded in ``<data_dir>/registry.json``."""

    pid: int
    port: int
    started_at: float

    @property
    def url(self) -> str:
        return url_of(self.port)

    def to_json(self) -> str:
        return json.dumps(
            {"pid": self.pid, "port": self.port, "started_at": self.started_at, "url": self.url},
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> RegistryState:
        data = json.loads(text)
        return cls(int(data["pid"]), int(data["port"]), float(data["started_at"]))


def _read(data_dir: Path) -> RegistryState | None:
    try:
        return RegistryState.from_json((data_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        logger.warning("ignoring unreadable %s", data_dir / STATE_FILE)
        return None


def _write(data_dir: Path, state: RegistryState) -> None:
    tmp = data_dir / (STATE_FILE + ".tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, data_dir / STATE_FILE)  # readers never see half a file


def start_detached(
    *,
    cache_dir: Path,
    data_dir: Path,
    port: int = 0,
    heap: str = "256m",
    start_timeout_s: float = 120.0,
) -> RegistryState:
    """Start the registry of ``data_dir`` unless it runs; block until it answers a request.

    Port 0 means the saved one, or a free one on a first start. Raises ConfigError (no Java or
    Maven, a failed build, the saved port held by another process), BrokerUnavailable (it did
    not answer in time).
    """
    check_heap(heap)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    saved = _read(data_dir)
    if saved is not None and is_our_registry(saved.pid) and (not port or port == saved.port):
        run_sync(lambda: _wait(saved, data_dir, start_timeout_s))
        return saved
    port = port or (saved.port if saved is not None else free_port())
    if not port_is_free(port):
        raise ConfigError(
            f"cannot start the schema registry on its saved port: "
            f"{port_taken_message(port, 'HTTP port')}. Stop that process, or delete "
            f"{data_dir / STATE_FILE} to pick a new port"
        )
    java = ensure_java(maven=not is_built(cache_dir))
    jar = build(Path(cache_dir))
    began = time.monotonic()
    pid = _spawn(registry_command(java=java, jar=jar, port=port, heap=heap), data_dir / LOG_FILE)
    state = RegistryState(pid=pid, port=port, started_at=time.time())
    _write(data_dir, state)
    try:
        run_sync(lambda: _wait(state, data_dir, start_timeout_s))
    except BaseException:
        _stop(state, timeout_s=10.0)
        raise
    logger.info(
        "detached schema registry ready at %s in %.1fs", state.url, time.monotonic() - began
    )
    return state


async def _wait(state: RegistryState, data_dir: Path, timeout_s: float) -> None:
    await wait_ready(
        state.url,
        timeout_s=timeout_s,
        alive=lambda: is_our_registry(state.pid),
        log_tail=lambda: log_tail(data_dir / LOG_FILE),
    )


def _stop(state: RegistryState, *, timeout_s: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not is_our_registry(state.pid):
            return
        try:
            os.kill(state.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        # A CLI command waiting for another session's process: no pidfd on older kernels.
        while is_our_registry(state.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if sig is signal.SIGTERM and is_our_registry(state.pid):
            logger.warning("schema registry ignored SIGTERM for %.0fs; killing it", timeout_s)


def stop_detached(data_dir: Path, *, timeout_s: float = 20.0) -> bool:
    """Stop the registry of ``data_dir``: True if it ran and has stopped, False if it did not
    run. The port stays saved for the next start."""
    state = _read(Path(data_dir))
    if state is None or not is_our_registry(state.pid):
        return False
    _stop(state, timeout_s=timeout_s)
    return True


def status(data_dir: Path, *, timeout_s: float = 5.0) -> RegistryState | None:
    """The detached registry of ``data_dir`` if its JVM runs and answers a request, else None."""
    state = _read(Path(data_dir))
    if state is None or not is_our_registry(state.pid):
        return None
    return state if run_sync(lambda: answers(state.url, timeout_s)) else None

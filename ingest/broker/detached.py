"""A detached broker for the command line: it outlives the process that started it.

``start_detached`` launches the JVM in its own session through ``sh`` (which exits at once), so
the broker is nobody's child here: no zombie and no reaping duty for a short-lived CLI. What
later calls need is written to ``<data_dir>/broker.json``; it is kept after a stop so that a
restart reuses the same ports (when still free) and clients' settings keep working.

Every pid read from that file is checked against ``/proc/<pid>/cmdline`` before it is trusted or
signalled: after a reboot the number may belong to someone else.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ingest.broker._config import (
    Layout,
    broker_command,
    check_heap,
    format_command,
    free_port,
    port_is_free,
)
from ingest.broker._readiness import lists_broker, run_sync, wait_ready
from ingest.broker._tools import (
    check_version,
    ensure_tools,
    file_lock,
    jars_resolved,
    resolve_jars,
)
from pizzashop.errors import BrokerUnavailable, ConfigError

logger = logging.getLogger(__name__)

_FORMAT_TIMEOUT_S = 120.0
# `sh` backgrounds the JVM and prints its pid; the JVM's output goes to the file in $1.
_LAUNCHER = 'out=$1; shift; "$@" </dev/null >>"$out" 2>&1 & echo $!'


@dataclass(frozen=True, slots=True)
class BrokerState:
    """A detached broker as recorded in ``<data_dir>/broker.json``."""

    pid: int
    bootstrap: str
    port: int
    controller_port: int
    version: str
    data_dir: Path
    started_at: float

    def to_json(self) -> str:
        data = asdict(self)
        data["data_dir"] = str(self.data_dir)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> BrokerState:
        data: dict[str, Any] = json.loads(text)
        return cls(
            pid=int(data["pid"]),
            bootstrap=str(data["bootstrap"]),
            port=int(data["port"]),
            controller_port=int(data["controller_port"]),
            version=str(data["version"]),
            data_dir=Path(data["data_dir"]),
            started_at=float(data["started_at"]),
        )


def _read_state(layout: Layout) -> BrokerState | None:
    try:
        return BrokerState.from_json(layout.state_file.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        logger.warning("ignoring unreadable %s", layout.state_file)
        return None


def _write_state(layout: Layout, state: BrokerState) -> None:
    tmp = layout.state_file.with_suffix(".json.tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, layout.state_file)  # readers never see half a file


def _is_our_broker(pid: int, layout: Layout) -> bool:
    """Is ``pid`` a live (not zombie) Kafka JVM serving this data dir?"""
    proc = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        # A zombie's cmdline is empty, so it fails this test too.
        return b"kafka.Kafka" in args and str(layout.properties).encode() in args
    try:  # no /proc (macOS): the best check left is that the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, layout: Layout, timeout_s: float) -> bool:
    """Wait for ``pid`` to exit. A pidfd wakes us at the exit itself, with no polling loop."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(int(timeout_s * 1000)))
        finally:
            os.close(fd)
    deadline = time.monotonic() + timeout_s  # fallback where pidfd_open is missing
    while _is_our_broker(pid, layout):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _choose_port(wanted: int, saved: int | None, taken: int) -> int:
    if wanted:
        return wanted
    if saved and saved != taken and port_is_free(saved):
        return saved
    while True:
        port = free_port()
        if port != taken:
            return port


def _format(java: str, lib: Path, layout: Layout) -> None:
    argv = format_command(java=java, lib=lib, layout=layout)
    logger.info("formatting Kafka storage in %s", layout.log_dir)
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_FORMAT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerUnavailable(
            f"formatting Kafka storage took over {_FORMAT_TIMEOUT_S:.0f}s"
        ) from exc
    if done.returncode != 0:
        raise ConfigError(
            f"formatting Kafka storage in {layout.log_dir} failed (exit {done.returncode}):\n"
            f"{(done.stdout + done.stderr).strip()}"
        )


def _spawn(argv: list[str], out: Path) -> int:
    launcher = subprocess.run(
        ["sh", "-c", _LAUNCHER, "sh", str(out), *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        start_new_session=True,
    )
    return int(launcher.stdout.strip())


def start_detached(
    *,
    cache_dir: Path,
    data_dir: Path,
    version: str = "4.2.0",
    heap: str = "512m",
    port: int = 0,
    controller_port: int = 0,
    start_timeout_s: float = 90.0,
) -> BrokerState:
    """Start a broker that outlives this process, or return the one already serving ``data_dir``.

    Blocks until a metadata request lists the broker. Ports 0 reuse those in broker.json when
    free, else pick new ones. Raises like ``LocalKafka.start``.
    """
    check_version(version)
    check_heap(heap)
    layout = Layout.of(Path(data_dir))
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    # One starter per data dir: a second concurrent call waits, then finds the broker running.
    with file_lock(layout.data_dir / ".start.lock"):
        saved = _read_state(layout)
        if saved is not None and _is_our_broker(saved.pid, layout):
            if saved.version != version:
                logger.warning(
                    "Kafka %s already runs on %s; not starting %s",
                    saved.version,
                    layout.data_dir,
                    version,
                )
            pid = saved.pid
            run_sync(
                lambda: wait_ready(
                    saved.bootstrap,
                    timeout_s=start_timeout_s,
                    alive=lambda: _is_our_broker(pid, layout),
                    log_tail=layout.log_tail,
                )
            )
            return saved
        return _launch(
            layout,
            cache_dir=Path(cache_dir),
            version=version,
            heap=heap,
            port=_choose_port(port, saved.port if saved else None, controller_port),
            controller_port=controller_port,
            saved=saved,
            start_timeout_s=start_timeout_s,
        )


def _launch(
    layout: Layout,
    *,
    cache_dir: Path,
    version: str,
    heap: str,
    port: int,
    controller_port: int,
    saved: BrokerState | None,
    start_timeout_s: float,
) -> BrokerState:
    began = time.monotonic()
    java = ensure_tools(maven=not jars_resolved(cache_dir, version))
    lib = resolve_jars(cache_dir, version)
    controller_port = _choose_port(controller_port, saved.controller_port if saved else None, port)
    layout.prepare(port=port, controller_port=controller_port)
    if not layout.formatted:
        _format(java, lib, layout)
    pid = _spawn(broker_command(java=java, lib=lib, layout=layout, heap=heap), layout.jvm_out)
    state = BrokerState(
        pid=pid,
        bootstrap=f"127.0.0.1:{port}",
        port=port,
        controller_port=controller_port,
        version=version,
        data_dir=layout.data_dir,
        started_at=time.time(),
    )
    _write_state(layout, state)
    try:
        run_sync(
            lambda: wait_ready(
                state.bootstrap,
                timeout_s=start_timeout_s,
                alive=lambda: _is_our_broker(pid, layout),
                log_tail=layout.log_tail,
            )
        )
    except BaseException:
        _signal_and_wait(pid, layout, timeout_s=10.0)
        raise
    logger.info(
        "detached Kafka %s ready at %s in %.1fs (pid %d, data %s)",
        version,
        state.bootstrap,
        time.monotonic() - began,
        pid,
        layout.data_dir,
    )
    return state


def _signal_and_wait(pid: int, layout: Layout, *, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_gone(pid, layout, timeout_s):
        logger.warning("Kafka (pid %d) ignored SIGTERM for %.0fs; killing it", pid, timeout_s)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _wait_gone(pid, layout, 10.0)


def stop_detached(data_dir: Path, *, timeout_s: float = 30.0) -> bool:
    """Stop the detached broker of ``data_dir``: SIGTERM, then SIGKILL after ``timeout_s``.

    True if a broker was running and has stopped; False if none was running.
    """
    layout = Layout.of(Path(data_dir))
    state = _read_state(layout)
    if state is None or not _is_our_broker(state.pid, layout):
        return False
    began = time.monotonic()
    _signal_and_wait(state.pid, layout, timeout_s=timeout_s)
    logger.info("detached Kafka (pid %d) stopped in %.1fs", state.pid, time.monotonic() - began)
    return True


def status(data_dir: Path, *, timeout_s: float = 5.0) -> BrokerState | None:
    """The running detached broker of ``data_dir``, or None: its pid must be alive and a
    metadata request must list it within ``timeout_s``."""
    layout = Layout.of(Path(data_dir))
    state = _read_state(layout)
    if state is None or not _is_our_broker(state.pid, layout):
        return None
    if not run_sync(lambda: lists_broker(state.bootstrap, timeout_s=timeout_s)):
        return None
    return state

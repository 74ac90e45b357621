"""A detached local cluster for the command line: it outlives the process that started it.

``start_detached`` launches each node's JVM in its own session through ``sh`` (which exits at
once), so no node is anybody's child here: no zombie and no reaping duty for a short-lived CLI.
What later calls need is written to ``<data_dir>/broker.json`` and kept after a stop.

Ports are chosen once, when the data dir is first started, and every later start reuses them:
running clients resolved the bootstrap when they started and must find the brokers where they
were. A saved port that another process now holds is an error naming that process, never a
reason to move. (Kafka binds with SO_REUSEADDR, so the TIME_WAIT connections a stopped broker
leaves behind do not count as holding a port.)

Every pid read from that file is checked against ``/proc/<pid>/cmdline`` before it is trusted or
signalled: after a reboot the number may belong to someone else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.broker._config import (
    NODE_ID,
    ClusterLayout,
    Layout,
    NodeAddress,
    bootstrap_of,
    broker_command,
    check_heap,
    check_nodes,
    format_command,
    port_taken_message,
)
from ingest.broker._readiness import lists_broker, run_sync, wait_all, wait_ready
from ingest.broker._tools import (
    check_version,
    ensure_tools,
    file_lock,
    jars_resolved,
    resolve_jars,
)
from pizzashop.core.errors import BrokerUnavailable, ConfigError
from pizzashop.core.net import free_port, port_is_free

logger = logging.getLogger(__name__)

_FORMAT_TIMEOUT_S = 120.0
# `sh` backgrounds the JVM and prints its pid; the JVM's output goes to the file in $1.
_LAUNCHER = 'out=$1; shift; "$@" </dev/null >>"$out" 2>&1 & echo $!'


@dataclass(frozen=True, slots=True)
class NodeState:
    """One node of a detached cluster: its Kafka ``node.id``, JVM pid and ports."""

    node_id: int
    pid: int
    port: int
    controller_port: int

    @property
    def address(self) -> NodeAddress:
        return NodeAddress(self.node_id, self.port, self.controller_port)


@dataclass(frozen=True, slots=True)
class BrokerState:
    """A detached cluster as recorded in ``<data_dir>/broker.json``."""

    version: str
    data_dir: Path
    started_at: float
    nodes: tuple[NodeState, ...]

    @property
    def bootstrap(self) -> str:
        """Every node's ``127.0.0.1:<port>``, comma-separated."""
        return bootstrap_of([node.address for node in self.nodes])

    @property
    def node_count(self) -> int:
        return len(self.nodes)

    @property
    def pid(self) -> int:
        """The first node's pid."""
        return self.nodes[0].pid

    @property
    def port(self) -> int:
        return self.nodes[0].port

    @property
    def controller_port(self) -> int:
        return self.nodes[0].controller_port

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "data_dir": str(self.data_dir),
                "started_at": self.started_at,
                "bootstrap": self.bootstrap,  # for people and scripts; derived from nodes
                "nodes": [
                    {
                        "node_id": n.node_id,
                        "pid": n.pid,
                        "port": n.port,
                        "controller_port": n.controller_port,
                    }
                    for n in self.nodes
                ],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> BrokerState:
        data: dict[str, Any] = json.loads(text)
        if "nodes" in data:
            nodes = tuple(
                NodeState(
                    node_id=int(n["node_id"]),
                    pid=int(n["pid"]),
                    port=int(n["port"]),
                    controller_port=int(n["controller_port"]),
                )
                for n in data["nodes"]
            )
        else:  # a single node's file from before clusters: keep its ports
            nodes = (
                NodeState(
                    node_id=NODE_ID,
                    pid=int(data["pid"]),
                    port=int(data["port"]),
                    controller_port=int(data["controller_port"]),
                ),
            )
        if not nodes:
            raise ValueError("no nodes")
        return cls(
            version=str(data["version"]),
            data_dir=Path(data["data_dir"]),
            started_at=float(data["started_at"]),
            nodes=nodes,
        )


def _read_state(layout: ClusterLayout) -> BrokerState | None:
    try:
        return BrokerState.from_json(layout.state_file.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        logger.warning("ignoring unreadable %s", layout.state_file)
        return None


def _write_state(layout: ClusterLayout, state: BrokerState) -> None:
    tmp = layout.state_file.with_suffix(".json.tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, layout.state_file)  # readers never see half a file


def _is_our_broker(pid: int, layout: Layout) -> bool:
    """Is ``pid`` a live (not zombie) Kafka JVM serving this node's data dir?"""
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
            return bool(poller.poll(max(int(timeout_s * 1000), 0)))
        finally:
            os.close(fd)
    deadline = time.monotonic() + timeout_s  # fallback where pidfd_open is missing
    while _is_our_broker(pid, layout):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _new_addresses(count: int, port: int, controller_port: int) -> list[NodeAddress]:
    taken = {port, controller_port} - {0}
    ports: list[int] = []
    while len(ports) < 2 * count:
        candidate = free_port()
        if candidate not in taken:
            taken.add(candidate)
            ports.append(candidate)
    if port:
        ports[0] = port
    if controller_port:
        ports[1] = controller_port
    return [NodeAddress(NODE_ID + i, ports[2 * i], ports[2 * i + 1]) for i in range(count)]


def _format(java: str, lib: Path, layout: Layout, cluster_id: str) -> None:
    argv = format_command(java=java, lib=lib, layout=layout, cluster_id=cluster_id)
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
    nodes: int | None = None,
    port: int = 0,
    controller_port: int = 0,
    start_timeout_s: float = 90.0,
) -> BrokerState:
    """Start the cluster of ``data_dir`` so that it outlives this process; nodes already running
    are kept, the others start again on their saved ports. Blocks until every node serves.

    ``nodes`` None means the count the data dir already has (1 for a new one). Ports 0 mean the
    saved ones, or new free ones on a first start; ``port``/``controller_port`` are for a single
    node. Raises ConfigError for a saved port held by another process (naming it) or a node
    count other than the data dir's, else like ``LocalKafka.start``.
    """
    check_version(version)
    check_heap(heap)
    layout = ClusterLayout.of(Path(data_dir))
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    # One starter per data dir: a second concurrent call waits, then finds the cluster running.
    with file_lock(layout.data_dir / ".start.lock"):
        saved = _read_state(layout)
        count = nodes or (saved.node_count if saved else None) or layout.formatted_nodes() or 1
        check_nodes(count)
        if saved is not None and saved.node_count != count:
            raise ConfigError(
                f"{layout.data_dir} holds a {saved.node_count}-node Kafka cluster, not {count} "
                f"nodes; start it with {saved.node_count} node(s), or stop it and delete the folder"
            )
        layout.check_nodes(count)
        if count > 1 and (port or controller_port):
            raise ConfigError("fixed ports are for a single node; a cluster picks its own")
        if saved is not None:
            addresses = [node.address for node in saved.nodes]
            if port or controller_port:
                first = addresses[0]
                addresses[0] = NodeAddress(
                    first.node_id, port or first.port, controller_port or first.controller_port
                )
        else:
            addresses = _new_addresses(count, port, controller_port)
        running = {
            node.node_id: node.pid
            for node in (saved.nodes if saved is not None else ())
            if _is_our_broker(node.pid, layout.node(node.node_id, count))
            and node.address in addresses
        }
        if saved is not None and running and saved.version != version:
            logger.warning(
                "Kafka %s already runs on %s; not starting %s",
                saved.version,
                layout.data_dir,
                version,
            )
            version = saved.version
        return _launch(
            layout,
            cache_dir=Path(cache_dir),
            version=version,
            heap=heap,
            addresses=addresses,
            running=running,
            started_at=saved.started_at if saved is not None and running else time.time(),
            start_timeout_s=start_timeout_s,
        )


#: How long a saved port may stay held before a node's start gives up: a JVM killed a moment
#: ago is still exiting (its memory unmapped before its sockets are closed, its cmdline already
#: empty so it no longer looks like our broker), and holds its listener until it is gone.
_PORT_RELEASE_S = 15.0


def _port_frees(port: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while not port_is_free(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def _launch(
    layout: ClusterLayout,
    *,
    cache_dir: Path,
    version: str,
    heap: str,
    addresses: list[NodeAddress],
    running: dict[int, int],
    started_at: float,
    start_timeout_s: float,
) -> BrokerState:
    began = time.monotonic()
    count = len(addresses)
    missing = [address for address in addresses if address.node_id not in running]
    for address in missing:
        for port, what in (
            (address.port, "client port"),
            (address.controller_port, "controller port"),
        ):
            if not _port_frees(port, _PORT_RELEASE_S):
                raise ConfigError(
                    f"cannot start Kafka node {address.node_id} on its saved ports: "
                    f"{port_taken_message(port, what)}. Stop that process, or run "
                    f"`pizzashop broker stop` and delete {layout.state_file} to pick new ports "
                    "(running clients then need the new bootstrap)"
                )
    pids = dict(running)
    if missing:
        java = ensure_tools(maven=not jars_resolved(cache_dir, version))
        lib = resolve_jars(cache_dir, version)
        cluster_id = layout.cluster_id()
        for address in missing:
            node_layout = layout.node(address.node_id, count)
            node_layout.prepare(address, addresses)
            if not node_layout.formatted:
                _format(java, lib, node_layout, cluster_id)
        for address in missing:
            node_layout = layout.node(address.node_id, count)
            argv = broker_command(java=java, lib=lib, layout=node_layout, heap=heap)
            pids[address.node_id] = _spawn(argv, node_layout.jvm_out)
    state = BrokerState(
        version=version,
        data_dir=layout.data_dir,
        started_at=started_at,
        nodes=tuple(
            NodeState(a.node_id, pids[a.node_id], a.port, a.controller_port) for a in addresses
        ),
    )
    _write_state(layout, state)
    try:
        run_sync(lambda: _wait_nodes(layout, state, start_timeout_s))
    except BaseException:
        started = [node for node in state.nodes if node.node_id not in running]
        _stop_nodes(layout, state, started, timeout_s=10.0)
        for node in started:
            node_layout = layout.node(node.node_id, count)
            if node_layout.bind_failed():
                raise ConfigError(
                    f"Kafka node {node.node_id} could not bind port {node.port} or "
                    f"{node.controller_port}:\n{node_layout.log_tail(lines=10)}"
                ) from None
        raise
    if missing:
        logger.info(
            "detached Kafka %s: node(s) %s ready at %s in %.1fs (data %s)",
            version,
            ",".join(str(a.node_id) for a in missing),
            state.bootstrap,
            time.monotonic() - began,
            layout.data_dir,
        )
    return state


async def _wait_nodes(layout: ClusterLayout, state: BrokerState, timeout_s: float) -> None:
    def waiter(node: NodeState) -> Any:
        node_layout = layout.node(node.node_id, state.node_count)
        return wait_ready(
            node.address.bootstrap,
            node_id=node.node_id,
            timeout_s=timeout_s,
            alive=lambda: _is_our_broker(node.pid, node_layout),
            log_tail=node_layout.log_tail,
        )

    await wait_all(waiter(node) for node in state.nodes)


def _stop_nodes(
    layout: ClusterLayout, state: BrokerState, nodes: list[NodeState], *, timeout_s: float
) -> None:
    """SIGTERM them all at once (one by one, the last would lose its controller quorum and wait
    for it), then wait; SIGKILL whichever outlives ``timeout_s``."""
    signalled = []
    for node in nodes:
        node_layout = layout.node(node.node_id, state.node_count)
        if not _is_our_broker(node.pid, node_layout):
            continue
        try:
            os.kill(node.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        signalled.append((node, node_layout))
    deadline = time.monotonic() + timeout_s
    for node, node_layout in signalled:
        if _wait_gone(node.pid, node_layout, deadline - time.monotonic()):
            continue
        logger.warning(
            "Kafka node %d (pid %d) ignored SIGTERM for %.0fs; killing it",
            node.node_id,
            node.pid,
            timeout_s,
        )
        try:
            os.kill(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        _wait_gone(node.pid, node_layout, 10.0)


def stop_detached(data_dir: Path, *, timeout_s: float = 30.0) -> bool:
    """Stop every running node of ``data_dir``: SIGTERM, then SIGKILL after ``timeout_s``.

    True if a node was running and all have stopped; False if none was running. The saved
    ports stay in broker.json for the next start.
    """
    layout = ClusterLayout.of(Path(data_dir))
    state = _read_state(layout)
    if state is None:
        return False
    alive = [
        node
        for node in state.nodes
        if _is_our_broker(node.pid, layout.node(node.node_id, state.node_count))
    ]
    if not alive:
        return False
    began = time.monotonic()
    _stop_nodes(layout, state, alive, timeout_s=timeout_s)
    logger.info(
        "detached Kafka node(s) %s stopped in %.1fs",
        ",".join(str(n.node_id) for n in alive),
        time.monotonic() - began,
    )
    return True


def nodes_up(data_dir: Path, *, timeout_s: float = 5.0) -> dict[int, bool]:
    """Each saved node's id → whether its JVM runs and a metadata request to it lists it.
    Empty when ``data_dir`` never ran a detached cluster."""
    layout = ClusterLayout.of(Path(data_dir))
    state = _read_state(layout)
    if state is None:
        return {}
    return run_sync(lambda: _probe(layout, state, timeout_s))


async def _probe(layout: ClusterLayout, state: BrokerState, timeout_s: float) -> dict[int, bool]:
    async def one(node: NodeState) -> bool:
        if not _is_our_broker(node.pid, layout.node(node.node_id, state.node_count)):
            return False
        return await lists_broker(node.address.bootstrap, timeout_s, node_id=node.node_id)

    results = await asyncio.gather(*(one(node) for node in state.nodes))
    return {node.node_id: up for node, up in zip(state.nodes, results, strict=True)}


def status(data_dir: Path, *, timeout_s: float = 5.0) -> BrokerState | None:
    """The detached cluster of ``data_dir`` if at least one node runs and serves metadata
    within ``timeout_s`` (clients can use its bootstrap), else None. ``nodes_up`` tells which."""
    layout = ClusterLayout.of(Path(data_dir))
    state = _read_state(layout)
    if state is None:
        return None
    if not any(run_sync(lambda: _probe(layout, state, timeout_s)).values()):
        return None
    return state

"""``LocalKafka``: a local Apache Kafka (KRaft) of 1, 3 or 5 nodes as child JVMs of this process.

Lifecycle: ``start()`` resolves the jars (once per version), formats each node's data dir (once),
starts the JVMs and returns only after every node serves metadata. ``stop()`` sends SIGTERM so
Kafka's shutdown hooks flush and close the logs, escalating to SIGKILL after a deadline. Like
aiokafka's clients, an instance runs once: a stopped one refuses to start again; make a new
``LocalKafka`` on the same ``data_dir`` to start over with the same data.

Fault injection, while the instance runs (``node`` is an index, 0 .. ``node_count`` - 1; its
Kafka ``node.id`` is ``node_ids[node]``)::

    await kafka.terminate(node=0)   # SIGTERM: Kafka's clean shutdown; returns once it exited
    await kafka.kill(node=0)        # SIGKILL: a crash; returns once it exited
    await kafka.restart(node=0)     # start it again, same ports and data; returns once it serves

The ports of every node are chosen once, at ``start()``, and kept until ``stop()``: clients built
before a fault reconnect to the same ``bootstrap`` by themselves.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.broker._config import (
    NODE_ID,
    SASL_MECHANISM,
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
from ingest.broker._readiness import wait_all, wait_ready
from ingest.broker._tools import check_version, ensure_tools, jars_resolved, resolve_jars
from pizzashop.core.errors import BrokerUnavailable, ConfigError
from pizzashop.core.lifecycle import Resource
from pizzashop.core.net import free_port, port_is_free

logger = logging.getLogger(__name__)

_FORMAT_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 30.0
# A port picked free can be taken before the JVM binds it; only then is a retry worth it.
_BIND_ATTEMPTS = 3


@dataclass(slots=True)
class _Node:
    address: NodeAddress
    layout: Layout
    process: asyncio.subprocess.Process | None = None
    # Serialises terminate/kill/restart of one node (a chaos test may overlap them).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


class LocalKafka(Resource):
    """``nodes`` Kafka nodes on 127.0.0.1, data in ``data_dir``, jars cached under ``cache_dir``.

    ``port``/``controller_port`` (single node only) 0 picks free ports at start. ``heap`` is
    per node: on two cores, three nodes run well with ``heap="320m"``. ``async with`` starts and
    stops it.
    """

    def __init__(
        self,
        *,
        cache_dir: Path,
        data_dir: Path,
        version: str = "4.2.0",
        heap: str = "512m",
        nodes: int = 1,
        port: int = 0,
        controller_port: int = 0,
        start_timeout_s: float = 90.0,
        sasl_users: Mapping[str, str] | None = None,
    ) -> None:
        check_version(version)
        check_heap(heap)
        check_nodes(nodes)
        if start_timeout_s <= 0:
            raise ConfigError(f"start_timeout_s must be positive, got {start_timeout_s}")
        if port and port == controller_port:
            raise ConfigError(f"port and controller_port must differ, both are {port}")
        if nodes > 1 and (port or controller_port):
            raise ConfigError("fixed ports are for a single node; a cluster picks its own")
        self.cache_dir = Path(cache_dir)
        self.cluster_layout = ClusterLayout.of(Path(data_dir))
        self.version = version
        self.heap = heap
        self._node_count = nodes
        self._wanted_port = port
        self._wanted_controller_port = controller_port
        self.start_timeout_s = start_timeout_s
        self._nodes: list[_Node] = []
        self._java = ""
        self._lib = Path()
        # Off by default: a PLAINTEXT listener, as always.
        self.sasl_users = dict(sasl_users or {})

    # -- what callers read ------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.cluster_layout.data_dir

    @property
    def node_count(self) -> int:
        return self._node_count

    @property
    def node_ids(self) -> tuple[int, ...]:
        """Kafka's ``node.id`` of each node index: ``(1,)`` or ``(1, 2, 3)``."""
        return tuple(range(NODE_ID, NODE_ID + self._node_count))

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>`` of every node, comma-separated; only meaningful once started.
        Stays the same while nodes are terminated, killed and restarted."""
        self._check_running()
        return bootstrap_of([node.address for node in self._nodes])

    @property
    def client_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments a client needs here: none on PLAINTEXT; with
        ``sasl_users``, SASL_PLAINTEXT/PLAIN as the first user (the brokers' own)."""
        if not self.sasl_users:
            return {}
        user, password = next(iter(self.sasl_users.items()))
        return {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": SASL_MECHANISM,
            "sasl_plain_username": user,
            "sasl_plain_password": password,
        }

    def node_bootstrap(self, node: int) -> str:
        """``127.0.0.1:<port>`` of one node."""
        return self._node(node).address.bootstrap

    def running(self, node: int) -> bool:
        """Is the JVM of ``node`` alive (started and not terminated or killed)?"""
        return self._node(node).alive

    @property
    def port(self) -> int:
        """The first node's client port (0 before start)."""
        return self._nodes[0].address.port if self._nodes else 0

    @property
    def controller_port(self) -> int:
        return self._nodes[0].address.controller_port if self._nodes else 0

    @property
    def pid(self) -> int | None:
        """The first node's JVM pid, None when it does not run."""
        return self.node_pid(0) if self._nodes else None

    def node_pid(self, node: int) -> int | None:
        process = self._node(node).process
        return process.pid if process is not None and process.returncode is None else None

    @property
    def server_log(self) -> Path:
        """The first node's Kafka log."""
        return self.server_log_of(0)

    def server_log_of(self, node: int) -> Path:
        if not 0 <= node < self._node_count:
            raise IndexError(f"node index {node} out of range 0..{self._node_count - 1}")
        return self.cluster_layout.node(self.node_ids[node], self._node_count).server_log

    # -- lifecycle --------------------------------------------------------------------------
    async def _start(self) -> None:
        """``start()``: start every node and return once each serves metadata (``bootstrap``
        says where).

        Raises ConfigError (no Java/Maven, bad version, a data dir of another node count, a
        fixed port held by another process), BrokerUnavailable (a JVM died or was not ready
        within ``start_timeout_s``); ``start()`` raises RuntimeError if this instance was
        started before. ``stop()`` SIGTERMs every node and waits (see ``_stop``).
        """
        began = time.monotonic()
        self.cluster_layout.check_nodes(self._node_count)
        self._java = ensure_tools(maven=not jars_resolved(self.cache_dir, self.version))
        self._lib = await asyncio.to_thread(resolve_jars, self.cache_dir, self.version)
        await self._start_cluster()
        logger.info(
            "Kafka %s (%d node(s)) ready at %s in %.1fs (data %s)",
            self.version,
            self._node_count,
            bootstrap_of([node.address for node in self._nodes]),
            time.monotonic() - began,
            self.data_dir,
        )

    def _addresses(self) -> list[NodeAddress]:
        if self._node_count == 1 and self._wanted_port and self._wanted_controller_port:
            return [NodeAddress(NODE_ID, self._wanted_port, self._wanted_controller_port)]
        taken: set[int] = {self._wanted_port, self._wanted_controller_port} - {0}
        ports: list[int] = []
        while len(ports) < 2 * self._node_count:
            port = free_port()
            if port not in taken:  # two free_port() calls may agree
                taken.add(port)
                ports.append(port)
        if self._wanted_port:
            ports[0] = self._wanted_port
        if self._wanted_controller_port:
            ports[1] = self._wanted_controller_port
        return [
            NodeAddress(node_id, ports[2 * i], ports[2 * i + 1])
            for i, node_id in enumerate(self.node_ids)
        ]

    def _check_fixed_ports(self) -> None:
        for port, what in (
            (self._wanted_port, "client port"),
            (self._wanted_controller_port, "controller port"),
        ):
            if port and not port_is_free(port):
                raise ConfigError(f"cannot start Kafka: {port_taken_message(port, what)}")

    async def _start_cluster(self) -> None:
        self._check_fixed_ports()
        auto_ports = not (self._wanted_port and self._wanted_controller_port)
        cluster_id = self.cluster_layout.cluster_id()
        for attempt in range(1, _BIND_ATTEMPTS + 1):
            addresses = self._addresses()
            self._nodes = [
                _Node(address, self.cluster_layout.node(address.node_id, self._node_count))
                for address in addresses
            ]
            for node in self._nodes:
                node.layout.prepare(node.address, addresses, self.sasl_users)
            await wait_all(
                self._format(node.layout, cluster_id)
                for node in self._nodes
                if not node.layout.formatted
            )
            for node in self._nodes:
                await self._spawn(node)
            try:
                await wait_all(self._wait_ready(node) for node in self._nodes)
            except BrokerUnavailable:
                await self._stop_all()
                failed = [node for node in self._nodes if node.layout.bind_failed()]
                if failed and auto_ports and attempt < _BIND_ATTEMPTS:
                    logger.warning("a picked port was taken before Kafka bound it; retrying")
                    continue
                if failed:
                    raise self._bind_error(failed[0]) from None
                raise
            return
        raise BrokerUnavailable(f"no free loopback ports for Kafka after {_BIND_ATTEMPTS} tries")

    def _bind_error(self, node: _Node) -> ConfigError:
        address = node.address
        held = [
            port_taken_message(port, what)
            for port, what in (
                (address.port, "client port"),
                (address.controller_port, "controller port"),
            )
            if not port_is_free(port)
        ]
        detail = "; ".join(held) or f"port {address.port} or {address.controller_port} was taken"
        return ConfigError(
            f"Kafka node {address.node_id} could not bind its ports: {detail}\n"
            f"{node.layout.log_tail(lines=10)}"
        )

    async def _wait_ready(self, node: _Node) -> None:
        await wait_ready(
            node.address.bootstrap,
            node_id=node.address.node_id,
            timeout_s=self.start_timeout_s,
            alive=lambda: node.alive,
            log_tail=node.layout.log_tail,
            client_options=self.client_options,
        )

    async def _format(self, layout: Layout, cluster_id: str) -> None:
        argv = format_command(java=self._java, lib=self._lib, layout=layout, cluster_id=cluster_id)
        logger.info("formatting Kafka storage in %s", layout.log_dir)
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
                f"formatting Kafka storage in {layout.log_dir} failed "
                f"(exit {process.returncode}):\n{text}"
            )
        logger.debug("StorageTool: %s", text)

    async def _spawn(self, node: _Node) -> None:
        argv = broker_command(java=self._java, lib=self._lib, layout=node.layout, heap=self.heap)
        logger.debug("starting Kafka node %d: %s", node.address.node_id, argv)
        # The JVM's own stdout/stderr (crashes, log4j status) go to a file the parent closes at
        # once; the child keeps its copy of the descriptor.
        with node.layout.jvm_out.open("ab") as out:
            node.process = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    # -- fault injection --------------------------------------------------------------------
    async def terminate(self, node: int = 0) -> None:
        """Stop one node cleanly (SIGTERM, Kafka's controlled shutdown) and wait for its exit;
        SIGKILL if it takes over 30 s. Its ports and data stay for ``restart``. No-op when
        the node is already down."""
        target = self._running_node(node)
        async with target.lock:
            await _terminate(target)

    async def kill(self, node: int = 0) -> None:
        """Crash one node (SIGKILL: no flush, no controlled shutdown) and wait for its exit.
        No-op when the node is already down."""
        target = self._running_node(node)
        async with target.lock:
            process = target.process
            if process is None or process.returncode is not None:
                return
            process.kill()
            await process.wait()
            logger.info("Kafka node %d (pid %d) killed", target.address.node_id, process.pid)

    async def restart(self, node: int = 0) -> None:
        """Start one node again on the same ports and data dir, stopping it cleanly first if it
        still runs; return once it serves metadata (it may still be catching up replicas).

        Raises ConfigError if one of its ports is now held by another process (naming it),
        BrokerUnavailable if it dies or is not ready within ``start_timeout_s``.
        """
        target = self._running_node(node)
        async with target.lock:
            await _terminate(target)
            began = time.monotonic()
            address = target.address
            for port, what in (
                (address.port, "client port"),
                (address.controller_port, "controller port"),
            ):
                if not port_is_free(port):
                    raise ConfigError(
                        f"cannot restart Kafka node {address.node_id}: "
                        f"{port_taken_message(port, what)}"
                    )
            # Rewritten although nothing changed: the file is the record of this start.
            target.layout.prepare(address, [n.address for n in self._nodes], self.sasl_users)
            await self._spawn(target)
            try:
                await self._wait_ready(target)
            except BrokerUnavailable:
                await _terminate(target)
                if target.layout.bind_failed():
                    raise self._bind_error(target) from None
                raise
            logger.info(
                "Kafka node %d restarted at %s in %.1fs (pid %s)",
                address.node_id,
                address.bootstrap,
                time.monotonic() - began,
                target.process.pid if target.process else None,
            )

    def _node(self, node: int) -> _Node:
        if not self._nodes:
            raise RuntimeError(f"LocalKafka is {self.state.value}, not running")
        if not 0 <= node < len(self._nodes):
            raise IndexError(f"node index {node} out of range 0..{len(self._nodes) - 1}")
        return self._nodes[node]

    def _running_node(self, node: int) -> _Node:
        self._check_running()
        return self._node(node)

    # -- stop -------------------------------------------------------------------------------
    async def _stop(self) -> None:
        """SIGTERM every node at once, wait for Kafka's clean shutdown, SIGKILL after 30 s."""
        await self._stop_all()

    async def _stop_all(self) -> None:
        # All at once: stopping one by one would leave the last nodes without a controller
        # quorum, and their controlled shutdown would wait for one until the deadline.
        await asyncio.gather(*(_terminate(node) for node in self._nodes))

    def __repr__(self) -> str:
        ports = ",".join(str(node.address.port) for node in self._nodes) or "-"
        return (
            f"<LocalKafka {self.version} {self.state.value} nodes={self._node_count} "
            f"ports={ports} {self.data_dir}>"
        )


async def _terminate(node: _Node) -> None:
    process = node.process
    if process is None or process.returncode is not None:
        return
    began = time.monotonic()
    process.terminate()
    try:
        code = await asyncio.wait_for(process.wait(), _STOP_TIMEOUT_S)
    except TimeoutError:
        logger.warning(
            "Kafka node %d (pid %d) ignored SIGTERM for %.0fs; killing it",
            node.address.node_id,
            process.pid,
            _STOP_TIMEOUT_S,
        )
        process.kill()
        code = await process.wait()
    # 143 (128 + SIGTERM) is the JVM's normal exit after its shutdown hooks ran.
    logger.info(
        "Kafka node %d (pid %d) stopped in %.1fs, exit code %d",
        node.address.node_id,
        process.pid,
        time.monotonic() - began,
        code,
    )

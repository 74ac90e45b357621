"""What the broker JVMs are told: ``server.properties``, JVM options, the data-dir layout.

Pure functions plus small file writes, so unit tests can check the content without a JVM.
A cluster of N local nodes (N = 1, 3 or 5) lives in one data dir; each node is broker and
controller at once, node ids 1..N, the controllers a static voter set. Layout::

    <data_dir>/cluster.id           the cluster id, drawn once so restarts reuse it
    <data_dir>/broker.json          a detached cluster's pids, ports and version (kept after stop)
    <node_dir>/server.properties    rewritten on every start of the node
    <node_dir>/log4j2.properties    copied from the package, read by the JVM
    <node_dir>/kraft/               log.dirs: topic partitions and the metadata log
    <node_dir>/logs/server.log      the node's log; logs/jvm.out its raw stdout/stderr

``<node_dir>`` is ``<data_dir>`` itself for a single node (the layout from before clusters) and
``<data_dir>/node-<id>`` in a cluster. A data dir keeps the node count it was formatted with.

Replication follows the node count: ``replication_factor_for(N)`` = min(3, N) for the internal
topics and the default of new ones, and ``min_insync_replicas(rf)`` = 1 for rf 1, else 2, so a
three-node cluster survives one node down with ``acks=all`` and never acknowledges a write
held by one replica only.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pizzashop.core.errors import ConfigError

NODE_ID = 1  # the id of a single node, and of the first node of a cluster
NODE_COUNTS = (1, 3, 5)
_HEAP = re.compile(r"^\d+[kKmMgG]?$")
# Kafka's Uuid reserves these two; randomUuid() redraws them (and any id starting with "-",
# which its command-line tools would take for an option).
_RESERVED_IDS = frozenset({"AAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAQ"})


def new_cluster_id() -> str:
    """A cluster id in the form of Kafka's ``Uuid.randomUuid()``: URL-safe base64, no padding."""
    while True:
        candidate = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
        if not candidate.startswith("-") and candidate not in _RESERVED_IDS:
            return candidate


def check_heap(heap: str) -> None:
    if not _HEAP.match(heap):
        raise ConfigError(f"broker heap must look like 512m or 1g, got {heap!r}")


def check_nodes(nodes: int) -> None:
    if nodes not in NODE_COUNTS:
        # Two or four voters tolerate no more failures than one or three, at a higher price.
        raise ConfigError(f"a local Kafka cluster has 1, 3 or 5 nodes, got {nodes}")


def replication_factor_for(nodes: int) -> int:
    """Replicas of internal topics and of topics created without a replication factor."""
    return min(3, nodes)


def min_insync_replicas(replication_factor: int) -> int:
    """1 for an unreplicated topic, else 2: an ``acks=all`` write then always sits on two
    replicas, and with three replicas one may be down without stopping writes."""
    return 1 if replication_factor < 2 else 2


_TCP_TIME_WAIT = "06"


def port_holder(port: int) -> str:
    """Who holds ``port``, for error messages: ``pid 123 (cmdline)`` when /proc tells, else a
    vaguer phrase. Best effort, never raises."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, state, inode = fields[1], fields[3], fields[9]
            if int(local.rpartition(":")[2], 16) == port and state != _TCP_TIME_WAIT:
                inodes.add(inode)
    if not inodes:
        return "an unknown socket"
    wanted = {f"socket:[{inode}]" for inode in inodes if inode != "0"}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in wanted:
                return f"pid {proc.name} ({_cmdline(proc)})"
    return "a socket of a process this user cannot see"


def _cmdline(proc: Path) -> str:
    try:
        args = (proc / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return "?"
    text = " ".join(arg.decode("utf-8", errors="replace") for arg in args)
    return text if len(text) <= 120 else text[:117] + "..."


def port_taken_message(port: int, what: str) -> str:
    return f"port {port} ({what}) is held by {port_holder(port)}"


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """One node's id and loopback ports; a cluster's ports never change once chosen."""

    node_id: int
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def bootstrap_of(nodes: Sequence[NodeAddress]) -> str:
    return ",".join(node.bootstrap for node in nodes)


def server_properties(
    *,
    log_dir: Path,
    node: NodeAddress,
    cluster: Sequence[NodeAddress] = (),
    sasl_users: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """One KRaft node that is broker and controller, loopback only. ``cluster`` lists every
    node (this one included); empty means a single-node cluster of ``node``. ``sasl_users``
    (user name → password) turns the client listener into SASL_PLAINTEXT (see
    ``sasl_properties``); unset, it is PLAINTEXT as always."""
    members = tuple(cluster) or (node,)
    if node not in members:
        raise ConfigError(f"node {node.node_id} is not one of the cluster's nodes")
    rf = replication_factor_for(len(members))
    isr = min_insync_replicas(rf)
    return {
        **_listeners(node, sasl_users),
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        # Static voters rather than controller.quorum.bootstrap.servers: they need no
        # --standalone/--initial-controllers at format time, every node is formatted alike,
        # and restarted nodes find their peers on the same fixed ports.
        "controller.quorum.voters": ",".join(
            f"{m.node_id}@127.0.0.1:{m.controller_port}" for m in members
        ),
        "log.dirs": str(log_dir.resolve()),
        # The defaults assume three brokers; on one node idempotent producers, transactions,
        # consumer groups and share groups would wait forever for replicas that never come.
        # On three, the transaction log needs 2 in sync so a commit marker survives a crash;
        # transaction.max.timeout.ms keeps its 15 min default for transactional producers.
        "offsets.topic.replication.factor": str(rf),
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": str(isr),
        "share.coordinator.state.topic.replication.factor": str(rf),
        "share.coordinator.state.topic.min.isr": str(isr),
        "default.replication.factor": str(rf),
        "min.insync.replicas": str(isr),
        # Never elect a replica that missed acknowledged writes, even if that means waiting.
        "unclean.leader.election.enable": "false",
        # A restarted node cannot register again until the controller drops its old session,
        # even after a clean stop (DUPLICATE_BROKER_REGISTRATION), and a killed node's
        # partitions move only then: 5 s instead of 9 s, with heartbeats every second so a busy
        # two-core machine still leaves four of them per session.
        "broker.session.timeout.ms": "5000",
        "broker.heartbeat.interval.ms": "1000",
        # Fewer internal partitions: each costs files and start-up time, and a local cluster
        # gains nothing from 50 of them.
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.num.partitions": "3",
        "share.coordinator.state.topic.num.partitions": "3",
        # A worker killed mid-transaction leaves it open until transaction_timeout_ms; the broker
        # looks for such expired transactions every 10 s by default, holding read_committed
        # readers of those partitions up to that much longer. Look every second.
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
        # Tests join groups constantly; the 3 s default delay would be paid on every first join.
        "group.initial.rebalance.delay.ms": "0",
        # The default reserves 128 MiB of heap for compaction; Kafka insists on more than 1 MiB.
        "log.cleaner.dedupe.buffer.size": str(2 * 1024 * 1024),
        # Topics are created on purpose with their partition count; typos must fail loudly.
        "auto.create.topics.enable": "false",
        "num.partitions": "6",
    }


def _listeners(node: NodeAddress, sasl_users: Mapping[str, str] | None) -> dict[str, str]:
    client = "SASL_PLAINTEXT" if sasl_users else "PLAINTEXT"
    props = {
        "listeners": (
            f"{client}://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
        ),
        "advertised.listeners": f"{client}://127.0.0.1:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": client,
        "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{client}:{client}",
    }
    if sasl_users:
        props |= sasl_properties(sasl_users)
    return props


SASL_MECHANISM = "PLAIN"
_JAAS_SAFE = re.compile(r'^[^"\\;\s]+$')


def sasl_properties(users: Mapping[str, str]) -> dict[str, str]:
    """SASL/PLAIN on the client listener, its users from a JAAS ``user_<name>="<password>"``
    list. The first user is also the brokers' own (inter-broker traffic shares the listener).
    No authorizer is set: any authenticated user may do anything, as on the PLAINTEXT broker;
    what this gives tests is a broker that refuses clients without the right credentials. The
    controller listener stays PLAINTEXT (loopback, brokers only)."""
    for name, password in users.items():
        if not (_JAAS_SAFE.match(name) and _JAAS_SAFE.match(password)):
            raise ConfigError(
                f"SASL user {name!r}: names and passwords may not hold quotes, backslashes, "
                "semicolons or spaces (they go into a JAAS line)"
            )
    broker, broker_password = next(iter(users.items()))
    entries = " ".join(f'user_{name}="{password}"' for name, password in users.items())
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{broker}" password="{broker_password}" {entries};'
    )
    return {
        "sasl.enabled.mechanisms": SASL_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SASL_MECHANISM,
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas,
    }


def _escape(value: str) -> str:
    # Kafka reads the file with Properties.load(InputStream): ISO-8859-1 with backslash escapes.
    out = []
    for char in value:
        if char == "\\":
            out.append("\\\\")
        elif ord(char) < 0x20 or ord(char) > 0x7E:
            out.extend(f"\\u{unit:04x}" for unit in _utf16_units(char))
        else:
            out.append(char)
    return "".join(out)


def _utf16_units(char: str) -> list[int]:
    data = char.encode("utf-16-be")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def render_properties(props: dict[str, str]) -> str:
    lines = ["# Written by ingest.broker on every start; edits are overwritten."]
    lines.extend(f"{key}={_escape(value)}" for key, value in props.items())
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class ClusterLayout:
    """The files of a whole local cluster (see the module docstring)."""

    data_dir: Path

    @classmethod
    def of(cls, data_dir: Path) -> ClusterLayout:
        return cls(data_dir.resolve())

    @property
    def cluster_id_file(self) -> Path:
        return self.data_dir / "cluster.id"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "broker.json"

    def node(self, node_id: int, nodes: int) -> Layout:
        """The files of node ``node_id`` in a cluster of ``nodes``."""
        node_dir = self.data_dir if nodes == 1 else self.data_dir / f"node-{node_id}"
        return Layout(node_dir)

    def formatted_nodes(self) -> int | None:
        """The node count this data dir was formatted for, or None if never formatted."""
        if Layout(self.data_dir).formatted:
            return 1
        count = sum(1 for path in self.data_dir.glob("node-*") if Layout(path).formatted)
        return count or None

    def check_nodes(self, nodes: int) -> None:
        """Refuse to run N nodes on a data dir formatted for another count: the voters differ
        and the replicas of its topics would never all come back."""
        check_nodes(nodes)
        formatted = self.formatted_nodes()
        if formatted is not None and formatted != nodes:
            raise ConfigError(
                f"{self.data_dir} holds a {formatted}-node Kafka cluster, not {nodes} nodes; "
                f"start it with {formatted} node(s), or stop it and delete the folder"
            )

    def cluster_id(self) -> str:
        """The persisted cluster id, drawn on first use: a new id on an old dir fails the start."""
        try:
            existing = self.cluster_id_file.read_text().strip()
        except FileNotFoundError:
            existing = ""
        if existing:
            return existing
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = new_cluster_id()
        self.cluster_id_file.write_text(cluster_id + "\n")
        return cluster_id


@dataclass(frozen=True, slots=True)
class Layout:
    """Where one node keeps its files (see the module docstring)."""

    data_dir: Path

    @classmethod
    def of(cls, data_dir: Path) -> Layout:
        return cls(data_dir.resolve())

    @property
    def properties(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log4j_config(self) -> Path:
        return self.data_dir / "log4j2.properties"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "kraft"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    @property
    def server_log(self) -> Path:
        return self.logs / "server.log"

    @property
    def jvm_out(self) -> Path:
        return self.logs / "jvm.out"

    @property
    def formatted(self) -> bool:
        return (self.log_dir / "meta.properties").is_file()

    def prepare(
        self,
        node: NodeAddress,
        cluster: Sequence[NodeAddress] = (),
        sasl_users: Mapping[str, str] | None = None,
    ) -> None:
        """Create the folders and write this start's configuration files."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        config = resources.files(__package__).joinpath("log4j2.properties").read_text("utf-8")
        self.log4j_config.write_text(config, "utf-8")
        props = server_properties(
            log_dir=self.log_dir, node=node, cluster=cluster, sasl_users=sasl_users
        )
        self.properties.write_text(render_properties(props), "latin-1")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the JVM's raw output and of the server log, for error messages."""
        parts = []
        for path in (self.jvm_out, self.server_log):
            try:
                text = path.read_text("utf-8", errors="replace")
            except FileNotFoundError:
                continue
            tail = text.strip().splitlines()[-lines:]
            if tail:
                parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts) or "(the broker wrote no log)"

    def bind_failed(self) -> bool:
        """Did the last start fail because a port was taken? (Kafka's SocketServer says so.)"""
        return "Address already in use" in self.log_tail(lines=60)


def jvm_options(*, heap: str, layout: Layout, short_lived: bool = False) -> list[str]:
    """JVM flags. The serial collector starts faster than G1 on two cores and a 512 MiB heap
    needs nothing better; a short-lived tool also skips the C2 compiler."""
    options = [
        f"-Xmx{heap}",
        f"-Xms{heap}",
        "-XX:+UseSerialGC",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={layout.logs}",
        f"-Dlog4j2.configurationFile={layout.log4j_config}",
    ]
    if short_lived:
        options.append("-XX:TieredStopAtLevel=1")
    return options


def format_command(*, java: str, lib: Path, layout: Layout, cluster_id: str) -> list[str]:
    """StorageTool ends with System.exit, so it gets its own JVM before the broker's."""
    return [
        java,
        *jvm_options(heap="256m", layout=layout, short_lived=True),
        "-cp",
        f"{lib}/*",
        "kafka.tools.StorageTool",
        "format",
        "--cluster-id",
        cluster_id,
        "--config",
        str(layout.properties),
        # Static voters in the config, so no --standalone; a formatted dir is left alone.
        "--ignore-formatted",
    ]


def broker_command(*, java: str, lib: Path, layout: Layout, heap: str) -> list[str]:
    return [
        java,
        *jvm_options(heap=heap, layout=layout),
        "-cp",
        f"{lib}/*",
        "kafka.Kafka",
        str(layout.properties),
    ]

"""What the broker JVM is told: ``server.properties``, JVM options, the data-dir layout.

Pure functions plus small file writes, so unit tests can check the content without a JVM.
Layout of a data dir::

    <data_dir>/cluster.id           the cluster id, drawn once so restarts reuse it
    <data_dir>/server.properties    rewritten on every start (ports may change)
    <data_dir>/log4j2.properties    copied from the package, read by the JVM
    <data_dir>/kraft/               log.dirs: topic partitions and the metadata log
    <data_dir>/logs/server.log      the broker's log; logs/jvm.out its raw stdout/stderr
    <data_dir>/broker.json          a detached broker's pid, ports and version
"""

from __future__ import annotations

import base64
import re
import secrets
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pizzashop.errors import ConfigError

NODE_ID = 1
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


def free_port() -> int:
    """A loopback port nobody listens on right now (the broker binds it a second later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def server_properties(*, log_dir: Path, port: int, controller_port: int) -> dict[str, str]:
    """The broker's configuration: one KRaft node that is its own controller, loopback only."""
    return {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        # Static voters rather than controller.quorum.bootstrap.servers: the controller port is
        # chosen at each start, and a static voter set is not persisted in the metadata log.
        "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir.resolve()),
        # The defaults assume three brokers; on one node idempotent producers, transactions,
        # consumer groups and share groups would wait forever for replicas that never come.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # Fewer internal partitions: each costs files and start-up time, and one node gains
        # nothing from 50 of them.
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.num.partitions": "3",
        "share.coordinator.state.topic.num.partitions": "3",
        # Tests join groups constantly; the 3 s default delay would be paid on every first join.
        "group.initial.rebalance.delay.ms": "0",
        # The default reserves 128 MiB of heap for compaction; Kafka insists on more than 1 MiB.
        "log.cleaner.dedupe.buffer.size": str(2 * 1024 * 1024),
        # Topics are created on purpose with their partition count; typos must fail loudly.
        "auto.create.topics.enable": "false",
        "num.partitions": "6",
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
class Layout:
    """Where one broker keeps its files (see the module docstring)."""

    data_dir: Path

    @classmethod
    def of(cls, data_dir: Path) -> Layout:
        return cls(data_dir.resolve())

    @property
    def cluster_id_file(self) -> Path:
        return self.data_dir / "cluster.id"

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
    def state_file(self) -> Path:
        return self.data_dir / "broker.json"

    @property
    def formatted(self) -> bool:
        return (self.log_dir / "meta.properties").is_file()

    def cluster_id(self) -> str:
        """The persisted cluster id, drawn on first use: a new id on an old dir fails the start."""
        try:
            existing = self.cluster_id_file.read_text().strip()
        except FileNotFoundError:
            existing = ""
        if existing:
            return existing
        cluster_id = new_cluster_id()
        self.cluster_id_file.write_text(cluster_id + "\n")
        return cluster_id

    def prepare(self, *, port: int, controller_port: int) -> None:
        """Create the folders and write this start's configuration files."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        config = resources.files(__package__).joinpath("log4j2.properties").read_text("utf-8")
        self.log4j_config.write_text(config, "utf-8")
        props = server_properties(log_dir=self.log_dir, port=port, controller_port=controller_port)
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


def format_command(*, java: str, lib: Path, layout: Layout) -> list[str]:
    """StorageTool ends with System.exit, so it gets its own JVM before the broker's."""
    return [
        java,
        *jvm_options(heap="256m", layout=layout, short_lived=True),
        "-cp",
        f"{lib}/*",
        "kafka.tools.StorageTool",
        "format",
        "--cluster-id",
        layout.cluster_id(),
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

"""The local broker's configuration and tool checks: no JVM, no broker."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import socket
from pathlib import Path

import pytest

from ingest.broker import (
    BrokerState,
    LocalKafka,
    NodeAddress,
    NodeState,
    ensure_tools,
    min_insync_replicas,
    new_cluster_id,
    render_properties,
    replication_factor_for,
    resolve_jars,
    server_properties,
)
from ingest.broker._config import ClusterLayout, Layout, port_holder
from ingest.topics import Topics
from pizzashop.core.errors import ConfigError
from pizzashop.core.net import free_port, port_is_free

ONE = NodeAddress(1, 19092, 19093)
THREE = (NodeAddress(1, 19092, 19093), NodeAddress(2, 19094, 19095), NodeAddress(3, 19096, 19097))


def _parse(text: str) -> dict[str, str]:
    props = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            props[key] = value
    return props


@pytest.fixture
def bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with neither java nor mvn on it (and no JAVA_HOME to fall back on)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    return bin_dir


def _fake_tool(bin_dir: Path, name: str) -> None:
    tool = bin_dir / name
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)


def test_missing_java_and_maven_are_named_with_the_install_command(bare_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ensure_tools()
    message = str(info.value)
    assert "Java 17+ (the `java` command)" in message
    assert "Maven (the `mvn` command)" in message
    assert "apt-get install openjdk-17-jre-headless maven" in message


def test_only_the_missing_tool_is_named(bare_path: Path) -> None:
    _fake_tool(bare_path, "mvn")
    with pytest.raises(ConfigError, match="needs Java 17\\+ \\(the `java` command\\), not found"):
        ensure_tools()


def test_maven_is_not_required_once_jars_are_cached(bare_path: Path) -> None:
    _fake_tool(bare_path, "java")
    assert ensure_tools(maven=False) == str(bare_path / "java")


async def test_start_without_java_raises_config_error(bare_path: Path, tmp_path: Path) -> None:
    kafka = LocalKafka(cache_dir=tmp_path / "cache", data_dir=tmp_path / "data")
    with pytest.raises(ConfigError, match="`java` command"):
        await kafka.start()
    # A failed start leaves nothing running and the instance closed.
    assert kafka.pid is None
    with pytest.raises(RuntimeError, match="create a new one"):
        await kafka.start()


def test_server_properties_for_one_node(tmp_path: Path) -> None:
    props = _parse(render_properties(server_properties(log_dir=tmp_path / "kraft", node=ONE)))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str((tmp_path / "kraft").resolve())
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
        "default.replication.factor",
        "min.insync.replicas",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"
    assert props["num.partitions"] == "6"
    assert int(props["offsets.topic.num.partitions"]) <= 5
    # Kafka refuses 1 MiB or less per cleaner thread, and the 128 MiB default wastes the heap.
    assert 1024 * 1024 < int(props["log.cleaner.dedupe.buffer.size"]) <= 16 * 1024 * 1024
    assert "controller.quorum.bootstrap.servers" not in props
    # Transactional producers keep Kafka's 15 min ceiling for their transaction timeout.
    assert "transaction.max.timeout.ms" not in props


def test_server_properties_for_node_two_of_three(tmp_path: Path) -> None:
    props = _parse(
        render_properties(server_properties(log_dir=tmp_path, node=THREE[1], cluster=THREE))
    )
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    )
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19094,CONTROLLER://127.0.0.1:19095"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19094"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "share.coordinator.state.topic.replication.factor",
        "default.replication.factor",
    ):
        assert props[key] == "3", key
    for key in (
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.min.isr",
        "min.insync.replicas",
    ):
        assert props[key] == "2", key
    assert props["unclean.leader.election.enable"] == "false"
    assert int(props["broker.heartbeat.interval.ms"]) < int(props["broker.session.timeout.ms"])


def test_a_node_outside_its_cluster_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="node 1 is not one"):
        server_properties(log_dir=tmp_path, node=ONE, cluster=THREE[1:])


@pytest.mark.parametrize(("nodes", "rf", "isr"), [(1, 1, 1), (3, 3, 2), (5, 3, 2)])
def test_replication_follows_the_node_count(nodes: int, rf: int, isr: int) -> None:
    assert replication_factor_for(nodes) == rf
    assert min_insync_replicas(rf) == isr


def test_min_insync_replicas_never_exceeds_two_nor_the_replicas() -> None:
    assert [min_insync_replicas(rf) for rf in (1, 2, 3, 4, 5)] == [1, 2, 2, 2, 2]


def test_shop_topic_specs_leave_min_insync_replicas_to_ensure_topics() -> None:
    # ensure_topics derives it from the replication factor it picks; a hard-coded "1" would
    # let acks=all writes sit on one replica of three.
    for spec in Topics("x.").specs():
        assert "min.insync.replicas" not in spec.configs, spec.name


def test_cluster_layout_gives_each_node_its_own_dir(tmp_path: Path) -> None:
    cluster = ClusterLayout.of(tmp_path)
    assert cluster.node(1, 1).data_dir == tmp_path.resolve()  # the layout from before clusters
    assert cluster.node(2, 3).data_dir == tmp_path.resolve() / "node-2"
    assert cluster.node(2, 3).log_dir == tmp_path.resolve() / "node-2" / "kraft"
    assert cluster.cluster_id_file == tmp_path.resolve() / "cluster.id"
    assert cluster.formatted_nodes() is None


def test_a_data_dir_keeps_its_node_count(tmp_path: Path) -> None:
    cluster = ClusterLayout.of(tmp_path)
    for node_id in (1, 2, 3):
        log_dir = cluster.node(node_id, 3).log_dir
        log_dir.mkdir(parents=True)
        (log_dir / "meta.properties").write_text(f"node.id={node_id}\n")
    assert cluster.formatted_nodes() == 3
    cluster.check_nodes(3)
    with pytest.raises(ConfigError, match="holds a 3-node Kafka cluster, not 1 nodes"):
        cluster.check_nodes(1)
    with pytest.raises(ConfigError, match="1, 3 or 5 nodes"):
        cluster.check_nodes(2)


def test_properties_escape_what_java_properties_would_misread() -> None:
    text = render_properties({"log.dirs": "/data/pizzä\\x"})
    assert "log.dirs=/data/pizz\\u00e4\\\\x" in text
    text.encode("ascii")  # Kafka reads the file as ISO-8859-1: keep it plain ASCII


def test_prepare_writes_config_and_log4j(tmp_path: Path) -> None:
    layout = Layout.of(tmp_path / "data")
    layout.prepare(NodeAddress(1, 1234, 1235))
    props = _parse(layout.properties.read_text("latin-1"))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:1234,CONTROLLER://127.0.0.1:1235"
    assert "${sys:kafka.logs.dir}/server.log" in layout.log4j_config.read_text()
    assert layout.logs.is_dir()
    assert not layout.formatted


def test_cluster_id_has_kafkas_uuid_form() -> None:
    ids = {new_cluster_id() for _ in range(500)}
    assert len(ids) == 500
    for cluster_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id), cluster_id
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_cluster_id_is_persisted_in_the_data_dir(tmp_path: Path) -> None:
    layout = ClusterLayout.of(tmp_path)
    first = layout.cluster_id()
    assert ClusterLayout.of(tmp_path).cluster_id() == first
    assert layout.cluster_id_file.read_text().strip() == first


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"version": "3.9.0"}, "4.x"),
        ({"version": "4.2"}, "look like 4.2.0"),
        ({"heap": "half"}, "heap"),
        ({"port": 9092, "controller_port": 9092}, "differ"),
        ({"nodes": 2}, "1, 3 or 5 nodes"),
        ({"nodes": 3, "port": 9092}, "fixed ports are for a single node"),
    ],
)
def test_bad_arguments_are_config_errors(
    tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        LocalKafka(cache_dir=tmp_path, data_dir=tmp_path, **kwargs)  # type: ignore[arg-type]


async def test_stopped_instance_refuses_to_start(tmp_path: Path) -> None:
    kafka = LocalKafka(cache_dir=tmp_path, data_dir=tmp_path)
    await kafka.stop()
    await kafka.stop()  # idempotent
    with pytest.raises(RuntimeError, match="stopped"):
        await kafka.start()


def test_broker_state_round_trips_and_is_frozen(tmp_path: Path) -> None:
    state = BrokerState(
        version="4.2.0",
        data_dir=tmp_path,
        started_at=1.5,
        nodes=tuple(
            NodeState(a.node_id, 100 + a.node_id, a.port, a.controller_port) for a in THREE
        ),
    )
    assert BrokerState.from_json(state.to_json()) == state
    assert state.bootstrap == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert (state.pid, state.port, state.controller_port) == (101, 19092, 19093)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.version = "4.1.0"  # type: ignore[misc]


def test_a_single_node_state_file_from_before_clusters_keeps_its_ports(tmp_path: Path) -> None:
    old = {
        "pid": os.getpid(),
        "bootstrap": "127.0.0.1:9092",
        "port": 9092,
        "controller_port": 9093,
        "version": "4.2.0",
        "data_dir": str(tmp_path),
        "started_at": 1.5,
    }
    state = BrokerState.from_json(json.dumps(old))
    assert state.nodes == (NodeState(1, os.getpid(), 9092, 9093),)
    assert state.bootstrap == "127.0.0.1:9092"


def _time_wait_port() -> int:
    """A port whose only trace is a connection in TIME_WAIT, as a stopped broker leaves its
    port when it closed its clients' connections first."""
    with socket.socket() as listener:
        # As the JVM's server sockets: TIME_WAIT entries inherit the flag, and only then does a
        # SO_REUSEADDR bind pass over them.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port: int = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the server side closes first: TIME_WAIT lands on 127.0.0.1:port
        client.recv(1)
        client.close()
    return port


def test_a_port_in_time_wait_is_free_for_kafka() -> None:
    port = _time_wait_port()
    # A plain bind() fails here, which made a restarted broker move to a new port.
    with socket.socket() as plain, pytest.raises(OSError, match="in use"):
        plain.bind(("127.0.0.1", port))
    assert port_is_free(port)


def test_server_ports_are_chosen_below_the_ephemeral_range() -> None:
    # A client's outgoing connection takes its source port from the ephemeral range; a killed
    # node's port chosen there can be taken by one and the node cannot start on it again.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert all(10_000 <= port < low for port in ports)
    assert len(set(ports)) > 40  # random, so processes starting servers at once rarely collide


def test_a_listening_port_is_taken_and_its_holder_named() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_is_free(port)
        assert port_holder(port).startswith(f"pid {os.getpid()} (")


_FAKE_MVN = """#!/bin/sh
# Stands in for Maven: counts its runs, then "resolves" one jar unless told to fail.
PATH=/usr/bin:/bin
echo run >> "$CALLS"
[ -n "$FAIL" ] && { echo "[ERROR] Could not find artifact"; exit 1; }
for arg in "$@"; do
  case "$arg" in
    -Dkafka.version=*) version="${arg#-Dkafka.version=}" ;;
    -DoutputDirectory=*) out="${arg#-DoutputDirectory=}" ;;
  esac
done
mkdir -p "$out" && touch "$out/kafka_2.13-$version.jar"
"""


def test_jars_resolve_once_and_a_failed_resolve_is_redone(
    bare_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_tool(bare_path, "java")
    (bare_path / "mvn").write_text(_FAKE_MVN)
    (bare_path / "mvn").chmod(0o755)
    calls = tmp_path / "calls"
    monkeypatch.setenv("CALLS", str(calls))
    cache = tmp_path / "cache"

    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(ConfigError, match="Could not find artifact"):
        resolve_jars(cache, "4.2.0")
    monkeypatch.delenv("FAIL")
    lib = resolve_jars(cache, "4.2.0")
    assert lib == cache.resolve() / "kafka-4.2.0" / "lib"
    assert (lib / "kafka_2.13-4.2.0.jar").is_file()
    assert resolve_jars(cache, "4.2.0") == lib
    assert calls.read_text().count("run") == 2  # the failure, the success; then the marker

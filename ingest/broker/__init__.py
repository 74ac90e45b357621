"""A local Apache Kafka for development and tests, run from jars that Maven resolves.

``LocalKafka`` is an async resource owned by the current process (tests, the app's composition
root), with per-node fault injection (``terminate``/``kill``/``restart``);
``start_detached``/``status``/``nodes_up``/``stop_detached`` manage a cluster that outlives the
CLI command that started it. Both run 1, 3 or 5 nodes that keep their ports across restarts.
Both need Java 17+ and, for the first resolve of a version, Maven.
"""

from ingest.broker._config import (
    NodeAddress,
    min_insync_replicas,
    new_cluster_id,
    render_properties,
    replication_factor_for,
    server_properties,
)
from ingest.broker._tools import ensure_tools, resolve_jars
from ingest.broker.detached import (
    BrokerState,
    NodeState,
    nodes_up,
    start_detached,
    status,
    stop_detached,
)
from ingest.broker.local import LocalKafka

__all__ = [
    "BrokerState",
    "LocalKafka",
    "NodeAddress",
    "NodeState",
    "ensure_tools",
    "min_insync_replicas",
    "new_cluster_id",
    "nodes_up",
    "render_properties",
    "replication_factor_for",
    "resolve_jars",
    "server_properties",
    "start_detached",
    "status",
    "stop_detached",
]

"""A local Apache Kafka for development and tests, run from jars that Maven resolves.

``LocalKafka`` is an async resource owned by the current process (tests, the app's composition
root); ``start_detached``/``status``/``stop_detached`` manage a broker that outlives the CLI
command that started it. Both need Java 17+ and, for the first resolve of a version, Maven.
"""

from ingest.broker._config import new_cluster_id, render_properties, server_properties
from ingest.broker._tools import ensure_tools, resolve_jars
from ingest.broker.detached import BrokerState, start_detached, status, stop_detached
from ingest.broker.local import LocalKafka

__all__ = [
    "BrokerState",
    "LocalKafka",
    "ensure_tools",
    "new_cluster_id",
    "render_properties",
    "resolve_jars",
    "server_properties",
    "start_detached",
    "status",
    "stop_detached",
]

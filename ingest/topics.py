"""The topics of the shop, with explicit partition counts and configs.

``orders`` carries ``OrderPlaced``; ``order-events`` carries every later fact of an order's life
(payment, kitchen, receipts, refunds). Both are keyed by order id. Each consumed topic has a
``.dlq`` twin. ``chargebacks`` is the card processor's feed of disputed charges (the fraud
labels, days after the orders). Creating the topics twice is harmless.

Replication: every topic gets at least the cluster's own ``default.replication.factor`` (3 on
a three-node local cluster, 1 on a single node), or more when asked, and ``min.insync.replicas``
follows the replication factor (1 unreplicated, else 2), so ``acks=all`` writes survive one
replica down on three.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import InvalidReplicationFactorError, TopicAlreadyExistsError

from ingest.broker import min_insync_replicas
from pizzashop.core.errors import BrokerUnavailable, ConfigError

logger = logging.getLogger(__name__)

ORDERS = "orders"
ORDER_EVENTS = "order-events"
ENRICHED = "orders.enriched"
CHARGEBACKS = "chargebacks"
DLQ_SUFFIX = ".dlq"

SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names, under an optional prefix so tests and tenants never share topics."""

    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def orders(self) -> str:
        return self.name(ORDERS)

    @property
    def order_events(self) -> str:
        return self.name(ORDER_EVENTS)

    @property
    def enriched(self) -> str:
        return self.name(ENRICHED)

    @property
    def chargebacks(self) -> str:
        return self.name(CHARGEBACKS)

    @staticmethod
    def dlq(topic: str) -> str:
        return topic + DLQ_SUFFIX

    def specs(self, orders_partitions: int = 6, events_partitions: int = 6) -> list[TopicSpec]:
        # min.insync.replicas is set by ensure_topics from the replication factor it picks.
        durable = {"retention.ms": str(SEVEN_DAYS_MS), "cleanup.policy": "delete"}
        main = [
            TopicSpec(self.orders, orders_partitions, durable),
            TopicSpec(self.order_events, events_partitions, durable),
            TopicSpec(self.enriched, orders_partitions, durable),
            TopicSpec(self.chargebacks, events_partitions, durable),
        ]
        # Dead letters wait for a human: keep them four weeks, one partition keeps them in order.
        dlq_cfg = {"retention.ms": str(4 * SEVEN_DAYS_MS), "cleanup.policy": "delete"}
        return main + [TopicSpec(self.dlq(spec.name), 1, dlq_cfg) for spec in main]

    def dlq_topics(self) -> list[str]:
        return [
            self.dlq(t) for t in (self.orders, self.order_events, self.enriched, self.chargebacks)
        ]


async def cluster_replication_factor(admin: AIOKafkaAdminClient) -> int:
    """The cluster's ``default.replication.factor``, read from one of its brokers."""
    cluster = await admin.describe_cluster()
    brokers = sorted(broker["node_id"] for broker in cluster["brokers"])
    if not brokers:
        raise ConfigError("the Kafka cluster lists no brokers")
    name = "default.replication.factor"
    [response] = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.BROKER, str(brokers[0]), {name: None})]
    )
    for resource in response.resources:
        for entry in resource[4]:
            if entry[0] == name and entry[1] is not None:
                return int(entry[1])
    return 1  # Kafka's own default when a broker does not say


async def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec],
    *,
    replication_factor: int | None = None,
    client_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; returns the names it created.

    The replication factor is the cluster's ``default.replication.factor`` (3 on a three-node
    local cluster, which sets it from its node count; 1 on a single node) or
    ``replication_factor`` if that is larger (``PIZZASHOP_TOPIC_REPLICATION_FACTOR`` for an
    external cluster whose default is lower). A cluster's default is a floor, never undercut:
    it states how much the cluster's operator wants each topic copied. ``min.insync.replicas``
    follows the chosen factor unless a spec sets it. ``client_options``: security
    (``ingest.security.client_options``).
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="pizzashop-admin", **(client_options or {})
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if not missing:
            return []
        floor = await cluster_replication_factor(admin)
        factor = max(floor, replication_factor or 0)
        if replication_factor is not None and replication_factor < floor:
            logger.info(
                "creating topics with the cluster's replication factor %d, not %d",
                floor,
                replication_factor,
            )
        isr = {"min.insync.replicas": str(min_insync_replicas(factor))}
        new = [
            NewTopic(
                name=spec.name,
                num_partitions=spec.partitions,
                replication_factor=factor,
                topic_configs={**isr, **spec.configs},
            )
            for spec in missing
        ]
        response = await admin.create_topics(new)
        for topic, code, *rest in response.topic_errors:
            # Another process may have created one between our listing and our request: fine.
            if code not in (0, TopicAlreadyExistsError.errno):
                message = rest[0] if rest else ""
                if code == InvalidReplicationFactorError.errno:
                    # Fewer brokers up than replicas wanted: a node of the cluster is down.
                    raise BrokerUnavailable(
                        f"cannot create topic {topic} with {factor} replicas now: {message}"
                    )
                raise ConfigError(f"cannot create topic {topic}: error {code} {message}")
        logger.info(
            "created topics %s (replication factor %d, min.insync.replicas %s)",
            [spec.name for spec in missing],
            factor,
            isr["min.insync.replicas"],
        )
        return [spec.name for spec in missing]
    finally:
        await admin.close()

"""The topics of the shop, with explicit partition counts and configs.

``orders`` carries ``OrderPlaced``; ``order-events`` carries every later fact of an order's life
(payment, kitchen, receipts, refunds). Both are keyed by order id. Each consumed topic has a
``.dlq`` twin. Creating the topics twice is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pizzashop.errors import ConfigError

logger = logging.getLogger(__name__)

ORDERS = "orders"
ORDER_EVENTS = "order-events"
ENRICHED = "orders.enriched"
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

    @staticmethod
    def dlq(topic: str) -> str:
        return topic + DLQ_SUFFIX

    def specs(self, orders_partitions: int = 6, events_partitions: int = 6) -> list[TopicSpec]:
        durable = {
            "retention.ms": str(SEVEN_DAYS_MS),
            "min.insync.replicas": "1",
            "cleanup.policy": "delete",
        }
        main = [
            TopicSpec(self.orders, orders_partitions, durable),
            TopicSpec(self.order_events, events_partitions, durable),
            TopicSpec(self.enriched, orders_partitions, durable),
        ]
        # Dead letters wait for a human: keep them four weeks, one partition keeps them in order.
        dlq_cfg = {"retention.ms": str(4 * SEVEN_DAYS_MS), "cleanup.policy": "delete"}
        return main + [TopicSpec(self.dlq(spec.name), 1, dlq_cfg) for spec in main]

    def dlq_topics(self) -> list[str]:
        return [self.dlq(t) for t in (self.orders, self.order_events, self.enriched)]


async def ensure_topics(
    bootstrap: str, specs: Iterable[TopicSpec], *, replication_factor: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; returns the names it created.

    ``replication_factor`` 1 suits the local single-node broker; an external cluster should
    say 3 (``PIZZASHOP_TOPIC_REPLICATION_FACTOR``).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="pizzashop-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if not missing:
            return []
        new = [
            NewTopic(
                name=spec.name,
                num_partitions=spec.partitions,
                replication_factor=replication_factor,
                topic_configs=spec.configs,
            )
            for spec in missing
        ]
        response = await admin.create_topics(new)
        for topic, code, *rest in response.topic_errors:
            # Another process may have created one between our listing and our request: fine.
            if code not in (0, TopicAlreadyExistsError.errno):
                message = rest[0] if rest else ""
                raise ConfigError(f"cannot create topic {topic}: error {code} {message}")
        logger.info("created topics %s", [spec.name for spec in missing])
        return [spec.name for spec in missing]
    finally:
        await admin.close()

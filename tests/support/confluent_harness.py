"""The Kafka harness over the confluent-kafka transport, for the runtime's behaviour cases.

``ConfluentFlowHarness`` is ``KafkaFlowHarness`` (``ingest.testing``: it creates the topics,
sends with a plain producer, reads ``read_committed`` and the group's offsets) with the runtime
over a ``ConfluentTransport`` instead of a ``KafkaTransport``. ``KafkaFlowHarness`` builds its
transport in ``__init__``, and an aiokafka consumer built but never started warns when it is
collected, so this one sets up the same state itself rather than build one to throw away.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ingest.confluent_transport import ConfluentTransport
from ingest.consumer import Handler
from ingest.dedupe import ProcessedEvents
from ingest.testing import FAST_SETTINGS, Harness, KafkaFlowHarness
from ingest.topics import DLQ_SUFFIX, TopicSpec
from ingest.transport import Partition, Record
from pizzashop.core.settings import ConsumerSettings
from tests.support.harnesses import KafkaHarnesses


class ConfluentFlowHarness(KafkaFlowHarness):
    """The runtime over a ``ConfluentTransport`` on the broker at ``bootstrap``."""

    def __init__(
        self,
        handler: Handler,
        *,
        bootstrap: str,
        topics: Sequence[str],
        outputs: Sequence[str],
        group_id: str,
        settings: ConsumerSettings = FAST_SETTINGS,
        processed: ProcessedEvents | None = None,
        partitions: int = 3,
        session_timeout_ms: int = 6000,
        name: str = "test",
    ) -> None:
        client_id = f"{group_id}-{uuid.uuid4().hex[:6]}"
        self.transport = ConfluentTransport(  # type: ignore[assignment]
            bootstrap=bootstrap,
            group_id=group_id,
            client_id=client_id,
            transactional_id=client_id,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=session_timeout_ms // 6,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            transaction_timeout_ms=settings.transaction_timeout_ms,
        )
        Harness.__init__(
            self,
            handler,
            self.transport,
            topics=topics,
            outputs=outputs,
            settings=settings,
            processed=processed,
            group_id=group_id,
            name=name,
        )
        # KafkaFlowHarness.__init__'s state, past its transport.
        self.bootstrap = bootstrap
        self.partitions = partitions
        self._specs = [TopicSpec(t, partitions) for t in [*self.topics, *self.outputs]] + [
            TopicSpec(t + DLQ_SUFFIX, 1) for t in self.topics
        ]
        self._opened = False
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._committed_reader: AIOKafkaConsumer | None = None
        self._watermarks: AIOKafkaConsumer | None = None
        self._parts: list[TopicPartition] = []
        self._records: dict[str, list[Record]] = {spec.name: [] for spec in self._specs}
        self._offsets: dict[Partition, int] = {}
        self._stable = False


class ConfluentHarnesses(KafkaHarnesses):
    """``ConfluentFlowHarness`` on the session's broker, topics and a group of this test's own."""

    def __call__(
        self,
        handler: Handler,
        *,
        settings: ConsumerSettings = FAST_SETTINGS,
        processed: ProcessedEvents | None = None,
    ) -> ConfluentFlowHarness:
        return ConfluentFlowHarness(
            handler,
            bootstrap=self.bootstrap,
            topics=[self.source],
            outputs=[self.sink],
            group_id=self.group_id,
            settings=settings,
            processed=processed,
        )

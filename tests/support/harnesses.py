"""Harness factories: the ``harness_factory`` fixture of each tier, so one set of runtime
behaviour cases (``tests.support.runtime_cases``) runs on the in-memory transport in
``tests/unit`` and on a real Kafka in ``tests/integration``.

A factory belongs to one test. Every harness it makes reads the test's input topic
(``source``), writes to its output topic (``sink``) and joins its consumer group, on one
broker: a second harness continues where the first committed, as a restarted worker does.
"""

from __future__ import annotations

import uuid
from typing import Protocol

from ingest.consumer import Handler
from ingest.dedupe import ProcessedEvents
from ingest.memory import MemoryBroker
from ingest.testing import FAST_SETTINGS, FlowHarness, Harness, KafkaFlowHarness
from pizzashop.core.settings import ConsumerSettings


class HarnessFactory(Protocol):
    #: The input topic of this test.
    source: str
    #: The topic this test's handlers write to.
    sink: str
    #: ``Harness.latency_s`` of the harnesses it makes.
    latency_s: float

    def __call__(
        self,
        handler: Handler,
        *,
        settings: ConsumerSettings = FAST_SETTINGS,
        processed: ProcessedEvents | None = None,
    ) -> Harness: ...


class MemoryHarnesses:
    """``FlowHarness`` on one ``MemoryBroker`` per test."""

    source = "orders"
    sink = "order-events"
    latency_s = FlowHarness.latency_s

    def __init__(self) -> None:
        self.broker = MemoryBroker()

    def __call__(
        self,
        handler: Handler,
        *,
        settings: ConsumerSettings = FAST_SETTINGS,
        processed: ProcessedEvents | None = None,
    ) -> FlowHarness:
        return FlowHarness(
            handler,
            topics=[self.source],
            outputs=[self.sink],
            settings=settings,
            processed=processed,
            broker=self.broker,
        )


class KafkaHarnesses:
    """``KafkaFlowHarness`` on the session's broker, with topics and a group of this test's own."""

    harness_class: type[KafkaFlowHarness] = KafkaFlowHarness

    def __init__(self, bootstrap: str) -> None:
        run = uuid.uuid4().hex[:8]
        self.bootstrap = bootstrap
        self.source = f"rt-{run}.orders"
        self.sink = f"rt-{run}.order-events"
        self.group_id = f"rt-{run}"
        self.latency_s = KafkaFlowHarness.latency_s

    def __call__(
        self,
        handler: Handler,
        *,
        settings: ConsumerSettings = FAST_SETTINGS,
        processed: ProcessedEvents | None = None,
    ) -> KafkaFlowHarness:
        return self.harness_class(
            handler,
            bootstrap=self.bootstrap,
            topics=[self.source],
            outputs=[self.sink],
            group_id=self.group_id,
            settings=settings,
            processed=processed,
        )

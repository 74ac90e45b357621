"""The consumer runtime's behaviour cases (``tests.support.runtime_cases``) on a real Kafka: the
same cases the unit tier runs on the in-memory transport, here through ``KafkaFlowHarness``
(``harness_factory`` of ``tests/integration/conftest.py``: topics and a group of each test's
own). Waiting polls the topics and the group's offsets, bounded by the harness's timeout."""

from __future__ import annotations

from tests.support.runtime_cases import RuntimeCases, RuntimeHoldsCases


class TestRuntimeOnKafka(RuntimeCases):
    pass


class TestRuntimeHoldsOnKafka(RuntimeHoldsCases):
    pass

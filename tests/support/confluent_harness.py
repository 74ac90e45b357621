"""The Kafka harness over the confluent-kafka transport, for the runtime's behaviour cases.

``ConfluentFlowHarness`` is ``KafkaFlowHarness`` (``ingest.testing``: it creates the topics,
sends with a plain producer, reads ``read_committed`` and the group's offsets) with the runtime
over a ``ConfluentTransport`` instead of a ``KafkaTransport``.
"""

from __future__ import annotations

from ingest.confluent_transport import ConfluentTransport
from ingest.testing import KafkaFlowHarness
from tests.support.harnesses import KafkaHarnesses


class ConfluentFlowHarness(KafkaFlowHarness):
    """The runtime over a ``ConfluentTransport`` on the broker at ``bootstrap``."""

    transport_class = ConfluentTransport


class ConfluentHarnesses(KafkaHarnesses):
    """``ConfluentFlowHarness`` on the session's broker, topics and a group of this test's own."""

    harness_class = ConfluentFlowHarness

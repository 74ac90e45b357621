"""How the producers name aiokafka's errors: by its ``retriable`` flag, broken clients apart."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownProducerId,
)

from ingest.producer import translate
from pizzashop.core.errors import BrokerUnavailable, ProducerReset, PublishRejected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RequestTimedOutError(), BrokerUnavailable),
        (NotLeaderForPartitionError(), BrokerUnavailable),
        (KafkaConnectionError(), BrokerUnavailable),
        (KafkaTimeoutError(), BrokerUnavailable),  # aiokafka says not retriable; it is
        (OutOfOrderSequenceNumber(), ProducerReset),
        (UnknownProducerId(), ProducerReset),
        (ProducerFenced(), ProducerReset),
        (InvalidProducerEpoch(), ProducerReset),
        (RecordTooLargeError(), PublishRejected),
        (TopicAuthorizationFailedError(), PublishRejected),
    ],
)
def test_errors_are_named_by_what_retrying_can_do(
    error: KafkaError, expected: type[Exception]
) -> None:
    translated = translate(error, "publish to orders failed")
    assert type(translated) is expected
    assert translated.retriable is (expected is not PublishRejected)
    assert type(error).__name__ in str(translated)


def test_any_error_of_a_dead_client_means_a_new_client() -> None:
    translated = translate(
        KafkaError("Unexpected error during batch delivery"), "x", client_dead=True
    )
    assert isinstance(translated, ProducerReset) and translated.retriable

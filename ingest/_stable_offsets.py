"""Committed offsets that no open transaction is about to change (KIP-447 ``require_stable``).

aiokafka fetches a new partition's committed offset with OffsetFetch v3, which answers with
the last *completed* commit even while a transaction that commits a later offset is between its
``EndTxn`` and the markers reaching the group coordinator. A member that takes over a partition
in that window starts from the older offset and publishes, in its own transaction, what the
previous owner's transaction already published: the chaos run counted 136 such repeats
(``RefundNoticeSent`` twice, 1.5 s apart, around rebalances).

OffsetFetch v7 with ``require_stable`` makes the coordinator answer ``UNSTABLE_OFFSET_COMMIT``
until that transaction is complete; ``stable_committed`` retries until it is, so the offsets it
returns include every transaction that committed them. aiokafka has no such request, so it is
declared here with aiokafka's own protocol types and sent over its coordinator connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import ConnectionGroup
from aiokafka.errors import KafkaError
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

from pizzashop.core.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

_NONE = 0
_COORDINATOR_LOAD_IN_PROGRESS = 14
_COORDINATOR_NOT_AVAILABLE = 15
_NOT_COORDINATOR = 16
_UNKNOWN_TOPIC_OR_PARTITION = 3
_UNSTABLE_OFFSET_COMMIT = 88
_RETRY = {
    _COORDINATOR_LOAD_IN_PROGRESS,
    _COORDINATOR_NOT_AVAILABLE,
    _NOT_COORDINATOR,
    _UNSTABLE_OFFSET_COMMIT,
}


class _OffsetFetchResponseV7(Response):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class _OffsetFetchRequestV7(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = _OffsetFetchResponseV7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class _StableOffsetFetch(Request[_OffsetFetchRequestV7]):  # type: ignore[misc]
    API_KEY = 9

    def __init__(self, group_id: str, partitions: dict[str, list[int]]) -> None:
        self._group_id = group_id
        self._partitions = partitions

    def build(self, request_struct_class: type[_OffsetFetchRequestV7]) -> _OffsetFetchRequestV7:
        topics: list[tuple[str, list[int], dict[int, bytes]]] = [
            (topic, parts, {}) for topic, parts in sorted(self._partitions.items())
        ]
        return request_struct_class(self._group_id, topics, True, {})


async def stable_committed(
    consumer: AIOKafkaConsumer,
    group_id: str,
    partitions: Iterable[TopicPartition],
    *,
    timeout_s: float,
    retry_s: float = 0.1,
) -> dict[TopicPartition, int]:
    """The committed offset of each of ``partitions`` that has one, once no transaction is
    pending on it. Raises ``BrokerUnavailable`` if they are not stable within ``timeout_s``
    (a killed producer's transaction is aborted after its ``transaction_timeout_ms``)."""
    wanted: dict[str, list[int]] = defaultdict(list)
    for tp in partitions:
        wanted[tp.topic].append(tp.partition)
    if not wanted:
        return {}
    # aiokafka keeps its client and group coordinator private; they are the connection the
    # consumer already has to the coordinator, so no second client is opened for this.
    client: Any = consumer._client
    coordinator: Any = consumer._coordinator
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            await asyncio.wait_for(coordinator.ensure_coordinator_known(), timeout_s)
            node = coordinator.coordinator_id
            if node is not None:
                response = await client.send(
                    node,
                    _StableOffsetFetch(group_id, dict(wanted)),
                    group=ConnectionGroup.COORDINATION,
                )
                offsets, error = _parse(response)
                if error == _NONE:
                    return offsets
                last = f"error code {error}"
                if error == _NOT_COORDINATOR:
                    coordinator.coordinator_dead()
                elif error not in _RETRY:
                    raise BrokerUnavailable(f"OffsetFetch for {group_id} failed: {last}")
        except (KafkaError, TimeoutError) as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            raise BrokerUnavailable(
                f"committed offsets of {group_id} not stable within {timeout_s:.0f}s: {last}"
            )
        await asyncio.sleep(retry_s)


def _parse(response: Any) -> tuple[dict[TopicPartition, int], int]:
    """The offsets in an OffsetFetch v7 answer, and its first error code (0 for none)."""
    if response.error_code != _NONE:
        return {}, response.error_code
    offsets: dict[TopicPartition, int] = {}
    for topic, parts, _tags in response.topics:
        for partition, offset, _epoch, _metadata, error, _ptags in parts:
            if error == _UNKNOWN_TOPIC_OR_PARTITION:
                continue  # deleted under us: nothing to resume from
            if error != _NONE:
                return {}, error
            if offset >= 0:
                offsets[TopicPartition(topic, partition)] = offset
    return offsets, _NONE

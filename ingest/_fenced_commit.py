"""Transactional offset commits fenced by the consumer group's generation (KIP-447).

aiokafka commits a transaction's offsets with TxnOffsetCommit v0, which names the group but not
the member: the coordinator takes it from anyone. A member whose session expired (a broker
restart, a stalled process) keeps working on its batch while the group hands its partitions to
another member; when it then commits, its transaction goes through, and the partitions' new
owner, which started from the older offset, publishes the same outputs a second time (the
default chaos run counted a whole batch of 500 ``ReceiptSent`` twice).

TxnOffsetCommit v3 carries the member id and the generation of the member's assignment; the
coordinator refuses it (``ILLEGAL_GENERATION``, ``UNKNOWN_MEMBER_ID``) once the group has moved
on, and the transaction is aborted with its records. ``fence_offsets_by_generation`` puts that
request in place of aiokafka's for one producer. The generation is the one the partitions were
assigned in (``Membership``), not the consumer's current one: aiokafka resets that to -1 when it
learns it was dropped, and the coordinator takes a transactional commit without a generation
from anyone (for producers older than KIP-447), which let a dropped member's batch through.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import CoordinationType
from aiokafka.errors import CommitFailedError
from aiokafka.producer.sender import TxnOffsetCommitHandler
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

_ILLEGAL_GENERATION = 22
_UNKNOWN_MEMBER_ID = 25
_FENCED_INSTANCE_ID = 82
_FENCED = {_ILLEGAL_GENERATION, _UNKNOWN_MEMBER_ID, _FENCED_INSTANCE_ID}


class _TxnOffsetCommitResponseV3(Response):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 28
    API_VERSION = 3
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
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _TxnOffsetCommitRequestV3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 3
    RESPONSE_TYPE = _TxnOffsetCommitResponseV3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),
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
                        ("committed_metadata", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _TxnOffsetCommit(Request[_TxnOffsetCommitRequestV3]):  # type: ignore[misc]
    API_KEY = 28

    def __init__(self, fields: tuple[Any, ...]) -> None:
        self._fields = fields

    def build(self, request_struct_class: type[_TxnOffsetCommitRequestV3]) -> Any:
        return request_struct_class(*self._fields)


class _V0Errors(NamedTuple):
    """A v3 answer in the shape aiokafka's v0 handling reads (``errors``)."""

    errors: list[tuple[str, list[tuple[int, int]]]]


@dataclass(slots=True)
class Membership:
    """The member id and generation of the consumer's latest assignment."""

    generation: int = -1
    member_id: str = ""

    def joined(self, consumer: AIOKafkaConsumer) -> None:
        """Called once partitions are assigned: the generation they belong to."""
        coordinator: Any = consumer._coordinator
        self.generation, self.member_id = coordinator.generation, coordinator.member_id


class _FencedHandler(TxnOffsetCommitHandler):  # type: ignore[misc]
    def __init__(self, sender: Any, offsets: Any, group_id: str, membership: Membership) -> None:
        super().__init__(sender, offsets, group_id)
        self._membership = membership

    def create_request(self) -> _TxnOffsetCommit:
        txn = self._sender._txn_manager
        by_topic: dict[str, list[tuple[int, int, int, str, dict[int, bytes]]]] = (
            collections.defaultdict(list)
        )
        for tp, meta in sorted(self._offsets.items()):
            by_topic[tp.topic].append((tp.partition, meta.offset, -1, meta.metadata, {}))
        topics: list[tuple[str, list[Any], dict[int, bytes]]] = [
            (topic, parts, {}) for topic, parts in by_topic.items()
        ]
        return _TxnOffsetCommit(
            (
                txn.transactional_id,
                self._group_id,
                txn.producer_id,
                txn.producer_epoch,
                self._membership.generation,
                self._membership.member_id,
                None,
                topics,
                {},
            )
        )

    def handle_response(self, resp: Any) -> float | None:
        for topic, partitions, _tags in resp.topics:
            for partition, error, _ptags in partitions:
                if error in _FENCED:
                    # The group moved on without this member: its transaction must not commit.
                    txn = self._sender._txn_manager
                    txn.error_transaction(
                        CommitFailedError(
                            f"{topic}[{partition}] belongs to a newer generation of "
                            f"{self._group_id} (error code {error}): transaction aborted"
                        )
                    )
                    # The caller hears of it from send_offsets_to_transaction; nothing awaits
                    # the transaction's own waiter, which would log it as never retrieved.
                    txn._transaction_waiter.add_done_callback(_retrieved)
                    return None
        errors = [
            (topic, [(partition, error) for partition, error, _ in partitions])
            for topic, partitions, _ in resp.topics
        ]
        result: float | None = super().handle_response(_V0Errors(errors))
        return result


def _retrieved(future: Any) -> None:
    future.exception()


def fence_offsets_by_generation(producer: AIOKafkaProducer, membership: Membership) -> None:
    """Make ``producer``'s ``send_offsets_to_transaction`` carry the member id and generation of
    ``membership``, so a commit from a member the group has dropped fails and aborts."""
    sender: Any = producer._sender

    async def commit(offsets: Any, group_id: str) -> None:
        if not offsets:
            return
        node_id = await sender._find_coordinator(CoordinationType.GROUP, group_id)
        await _FencedHandler(sender, offsets, group_id, membership).do(node_id)

    # aiokafka's sender calls this method by name for every transactional offset commit.
    sender._do_txn_offset_commit = commit

"""Read whole topics, from the beginning up to their end offsets at the time of the call.

For inspection (dead letters, the demo's accounting), not for processing: no consumer group,
nothing committed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord


async def partitions_of(
    bootstrap: str, topics: Sequence[str], *, client_options: Mapping[str, Any] | None = None
) -> list[TopicPartition]:
    """The partitions of those ``topics`` that exist (a consumer only knows subscribed ones)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="pizzashop-reader", **(client_options or {})
    )
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return [
        TopicPartition(t["topic"], p["partition"])
        for t in described
        if t["error_code"] == 0
        for p in sorted(t["partitions"], key=lambda p: p["partition"])
    ]


async def read_topics(
    bootstrap: str,
    topics: Sequence[str],
    *,
    isolation_level: str = "read_uncommitted",
    client_options: Mapping[str, Any] | None = None,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record now in ``topics``, partition by partition, oldest first.

    ``isolation_level="read_committed"`` reads what a transactional consumer would: records of
    aborted transactions are skipped, and the end is each partition's last stable offset.
    ``client_options``: security (``ingest.security.client_options``).
    """
    partitions = await partitions_of(bootstrap, topics, client_options=client_options)
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        isolation_level=isolation_level,
        **(client_options or {}),
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if end[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, fetched in batch.items():
                records += [r for r in fetched if r.offset < end[tp]]
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return records

"""The ceiling on aiokafka: getmany, transform, send, offsets in one transaction per fetch."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).parent))
from _common import arguments, report, transform


async def main() -> None:
    args = arguments()
    consumer = AIOKafkaConsumer(
        args.source,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=1000,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, transactional_id=f"{args.group}.tx", linger_ms=5
    )
    await consumer.start()
    await producer.start()
    done, began = 0, 0.0
    try:
        while done < args.count:
            fetched = await consumer.getmany(timeout_ms=100, max_records=1000)
            if not fetched:
                continue
            began = began or time.perf_counter()
            async with producer.transaction():
                offsets: dict[TopicPartition, int] = {}
                for tp, records in fetched.items():
                    for r in records:
                        out = transform(r.value)
                        if out is not None:
                            await producer.send(args.sink, out, key=r.key)
                    offsets[tp] = records[-1].offset + 1
                    done += len(records)
                await producer.send_offsets_to_transaction(offsets, args.group)
        report(done, time.perf_counter() - began)
    finally:
        await producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""The ceiling on confluent-kafka: batched consume, transform, produce, offsets in one
transaction per batch (send_offsets_to_transaction), read_committed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).parent))
from _common import arguments, report, transform


def main() -> None:
    args = arguments()
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "transactional.id": f"{args.group}.tx",
            "linger.ms": 5,
        }
    )
    producer.init_transactions()
    consumer.subscribe([args.source])
    done, began = 0, 0.0
    while done < args.count:
        messages = consumer.consume(1000, 0.1)
        if not messages:
            continue
        began = began or time.perf_counter()
        producer.begin_transaction()
        offsets: dict[tuple[str, int], int] = {}
        for m in messages:
            if m.error():
                continue
            out = transform(m.value())
            if out is not None:
                producer.produce(args.sink, out, m.key())
                producer.poll(0)
            offsets[(m.topic(), m.partition())] = m.offset() + 1  # type: ignore[index,operator]
            done += 1
        producer.send_offsets_to_transaction(
            [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
            consumer.consumer_group_metadata(),
        )
        producer.commit_transaction()
    report(done, time.perf_counter() - began)
    consumer.close()


if __name__ == "__main__":
    main()

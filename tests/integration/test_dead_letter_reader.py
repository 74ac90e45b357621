"""What ``read_dead_letters`` lists (and ``pizzashop dlq replay`` sends back): committed letters.

A worker writes its dead letters inside its batch's transaction. If it dies before the commit,
the batch runs again and dead-letters the same record again; the first copy is aborted and must
not be listed or replayed beside the second.
"""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaProducer

from ingest.dlq import dead_letter_headers, read_dead_letters
from ingest.topics import TopicSpec, ensure_topics
from pizzashop.core.errors import DecodeError


async def test_letters_of_an_aborted_transaction_are_not_listed(kafka_bootstrap: str) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}.orders.dlq"
    await ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1)])

    def letter(offset: int) -> tuple[bytes, list[tuple[str, bytes]]]:
        headers = dead_letter_headers(
            [("event-type", b"OrderPlaced")],
            topic="orders",
            partition=0,
            offset=offset,
            group="kitchen",
            error=DecodeError("not JSON"),
            attempts=1,
        )
        return b"{not json", headers

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"dlq-reader-{uuid.uuid4().hex}"
    )
    await producer.start()
    try:
        for offset, commit in ((7, False), (7, True), (8, True)):
            value, headers = letter(offset)
            await producer.begin_transaction()
            await producer.send_and_wait(topic, value, key=b"k", headers=headers)
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
    finally:
        await producer.stop()

    letters = await read_dead_letters(kafka_bootstrap, [topic])
    assert [letter.original_offset for letter in letters] == [7, 8]
    assert all(letter.error_class == "DecodeError" for letter in letters)

"""Schema evolution on the real broker and a real schema registry (Apicurio).

The rollout: an optional field is added to ``OrderRejected`` while old and new producers and
old and new consumers run at once on one topic; a breaking change is refused by the registry
and never reaches the topic; a framed record with an unknown id or one that breaks its
registered schema fails as a permanent error naming the schema id.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import Field
from typer.testing import CliRunner

from ingest.codec import (
    PLAIN_JSON,
    Serializer,
    decode,
    forget_schemas,
    frame,
    install_schema_source,
)
from ingest.events import EVENT_TYPES, Event, OrderRejected
from ingest.registry import (
    IncompatibleSchema,
    RegistryClient,
    RegistrySerializer,
    check,
    register,
    subject_name,
)
from ingest.schemas import current_schema
from ingest.topics import Topics, TopicSpec, ensure_topics
from pizzashop.app.cli import app
from pizzashop.core.errors import DecodeError, ValidationFailed


class OrderRejectedNext(OrderRejected):
    """The next release's ``OrderRejected``: one optional field more."""

    event_type: ClassVar[str] = "OrderRejected"

    station: str | None = Field(default=None, description="the kitchen station that refused it")


class OrderRejectedRetyped(OrderRejected):
    """A breaking change: the required ``reason`` becomes a number."""

    event_type: ClassVar[str] = "OrderRejected"

    reason: int  # type: ignore[assignment]


class OrderRejectedRenamed(Event):
    """A breaking change: the required ``reason`` renamed ``why``."""

    event_type: ClassVar[str] = "OrderRejected"

    why: str = Field(min_length=1, max_length=200)


NEW_TYPES: dict[str, type[Event]] = {**EVENT_TYPES, "OrderRejected": OrderRejectedNext}


@pytest.fixture
def client(schema_registry_url: str) -> Iterator[RegistryClient]:
    with RegistryClient(schema_registry_url) as registry:
        install_schema_source(registry)
        yield registry
        install_schema_source(None)
        forget_schemas()


@pytest.fixture
async def topic(kafka_bootstrap: str) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}.order-events"
    await ensure_topics(kafka_bootstrap, [TopicSpec(name, 3)])
    return name


async def _produce(bootstrap: str, topic: str, serializer: Serializer, events: list[Event]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for event in events:
            record = serializer.encode(topic, event)
            await producer.send_and_wait(
                topic, record.value, key=record.key, headers=record.headers
            )
    finally:
        await producer.stop()


async def _consume(
    bootstrap: str, topic: str, types: dict[str, type[Event]], count: int
) -> list[Event]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    read: list[Event] = []
    try:
        async with asyncio.timeout(60):
            while len(read) < count:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for r in records:
                        # decode is synchronous; a cache miss fetches from the registry.
                        read.append(
                            await asyncio.to_thread(
                                decode, r.value, list(r.headers), event_types=types
                            )
                        )
    finally:
        await consumer.stop()
    return read


def _rejected(count: int, cls: type[OrderRejected], **extra: Any) -> list[Event]:
    return [
        cls(order_id=f"o-{uuid.uuid4().hex[:8]}", reason="burnt", **extra) for _ in range(count)
    ]


async def test_side_by_side_rollout_of_an_optional_field(
    kafka_bootstrap: str, topic: str, client: RegistryClient
) -> None:
    old_writer = RegistrySerializer(client)
    new_writer = RegistrySerializer(client)
    plain = _rejected(5, OrderRejected)  # written before the migration: plain JSON
    old = _rejected(20, OrderRejected)
    new = _rejected(20, OrderRejectedNext, station="oven-2")
    total = len(plain) + len(old) + len(new)

    await _produce(kafka_bootstrap, topic, PLAIN_JSON, plain)
    # The old writers registered their schema before the new ones were deployed: registered the
    # other way round, the older schema narrows the newer and is refused, as it should be.
    await _produce(kafka_bootstrap, topic, old_writer, old[:1])
    async with asyncio.TaskGroup() as group:  # a failure stops (and closes) the readers too
        old_reader = group.create_task(_consume(kafka_bootstrap, topic, EVENT_TYPES, total))
        new_reader = group.create_task(_consume(kafka_bootstrap, topic, NEW_TYPES, total))
        group.create_task(_produce(kafka_bootstrap, topic, old_writer, old[1:]))
        group.create_task(_produce(kafka_bootstrap, topic, new_writer, new))
    old_read, new_read = old_reader.result(), new_reader.result()

    subject = subject_name(topic, "OrderRejected")
    assert client.versions(subject) == [1, 2]
    assert client.compatibility(subject) == "BACKWARD_TRANSITIVE"
    assert old_writer.framed == 20 and new_writer.framed == 20
    # Old consumers read every record, new ones too: the added field is dropped by the old
    # reader, and is None for the new reader on records written without it.
    assert {e.event_id for e in old_read} == {e.event_id for e in plain + old + new}
    assert all(type(e) is OrderRejected for e in old_read)
    by_id = {e.event_id: e for e in new_read}
    assert set(by_id) == {e.event_id for e in plain + old + new}
    assert all(type(e) is OrderRejectedNext for e in new_read)
    assert {by_id[e.event_id].station for e in new} == {"oven-2"}  # type: ignore[attr-defined]
    assert {by_id[e.event_id].station for e in old + plain} == {None}  # type: ignore[attr-defined]


@pytest.mark.parametrize("breaking", [OrderRejectedRetyped, OrderRejectedRenamed])
async def test_a_breaking_change_is_refused_and_never_reaches_the_topic(
    kafka_bootstrap: str, topic: str, client: RegistryClient, breaking: type[Event]
) -> None:
    await _produce(kafka_bootstrap, topic, RegistrySerializer(client), _rejected(1, OrderRejected))
    event = (
        breaking(order_id="o-1", reason=7)
        if breaking is OrderRejectedRetyped
        else breaking(order_id="o-1", why="burnt")  # type: ignore[call-arg]
    )
    with pytest.raises(IncompatibleSchema, match=subject_name(topic, "OrderRejected")):
        await _produce(kafka_bootstrap, topic, RegistrySerializer(client), [event])
    subject = subject_name(topic, "OrderRejected")
    assert client.versions(subject) == [1]
    assert len(await _consume(kafka_bootstrap, topic, EVENT_TYPES, 1)) == 1
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(list(consumer.assignment()) or _partitions(topic))
    finally:
        await consumer.stop()
    assert sum(ends.values()) == 1


def _partitions(topic: str) -> list[Any]:
    from aiokafka import TopicPartition

    return [TopicPartition(topic, p) for p in range(3)]


def test_registry_judges_optional_and_breaking_changes(client: RegistryClient) -> None:
    subject = f"s-{uuid.uuid4().hex[:8]}-OrderRejected"
    client.set_compatibility(subject, "BACKWARD_TRANSITIVE")
    client.register(subject, current_schema(OrderRejected))
    assert client.incompatibilities(subject, current_schema(OrderRejectedNext), 1) == []
    retyped = client.incompatibilities(subject, current_schema(OrderRejectedRetyped), 1)
    assert retyped and "SUBSCHEMA_TYPE_CHANGED" in retyped[0]
    renamed = client.incompatibilities(subject, current_schema(OrderRejectedRenamed), 1)
    assert renamed and "REQUIRED_PROPERTIES" in renamed[0]
    # Why not FULL_TRANSITIVE: against the closed (extra="forbid") schema, the optional field
    # is not forward compatible, so FULL would refuse the one change the contract allows.
    client.set_compatibility(subject, "FULL_TRANSITIVE")
    assert client.incompatibilities(subject, current_schema(OrderRejectedNext), 1) != []


def test_unknown_ids_and_records_that_break_their_schema_are_permanent_errors(
    client: RegistryClient,
) -> None:
    subject = f"s-{uuid.uuid4().hex[:8]}-OrderRejected"
    schema_id = client.register(subject, current_schema(OrderRejected))
    headers = [("event-type", b"OrderRejected"), ("schema-version", b"1")]
    with pytest.raises(DecodeError, match="schema id 987654 is unknown"):
        decode(frame(987654, b'{"order_id": "o-1", "reason": "x"}'), headers)
    with pytest.raises(ValidationFailed, match=f"registered schema id {schema_id}: .*reason"):
        decode(frame(schema_id, b'{"order_id": "o-1", "reason": 5}'), headers)
    assert not DecodeError.retriable and not ValidationFailed.retriable


def test_schemas_check_and_register_commands(
    client: RegistryClient, schema_registry_url: str
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}."
    env = {"PIZZASHOP_SCHEMA_REGISTRY__URL": schema_registry_url, "PIZZASHOP_TOPIC_PREFIX": prefix}
    runner = CliRunner()
    registered = runner.invoke(app, ["schemas", "register"], env=env)
    assert registered.exit_code == 0, registered.output
    assert runner.invoke(app, ["schemas", "check"], env=env).exit_code == 0
    topics = Topics(prefix)
    assert not any(r.problems for r in check(client, topics))
    # A history the current model cannot follow: a subject whose registered version said
    # `reason` is a number. The check names the subject and the registry's reason.
    other = Topics(f"t-{uuid.uuid4().hex[:8]}.")
    subject = subject_name(other.order_events, "OrderRejected")
    client.register(subject, current_schema(OrderRejectedRetyped))
    client.set_compatibility(subject, "BACKWARD_TRANSITIVE")
    failed = runner.invoke(
        app, ["schemas", "check"], env={**env, "PIZZASHOP_TOPIC_PREFIX": other.prefix}
    )
    assert failed.exit_code == 1
    assert f"FAIL {subject}" in failed.output and "SUBSCHEMA_TYPE_CHANGED" in failed.output
    refused = register(client, other)
    outcome = refused[subject]
    assert isinstance(outcome, str) and "refused" in outcome

"""The shop's event contract as an AsyncAPI 3 document, generated from the code.

Channels are the topics (``ingest.topics``, base names: a deployment may prefix them all with
``PIZZASHOP_TOPIC_PREFIX``), with their partitions and configs, and each topic's ``.dlq`` twin.
Messages are the events (``ingest.events``): the payload is the event's JSON Schema with every
field described, the key is the order id, the headers are ``ingest.codec``'s. Operations say
who sends (``ingest.schemas.publications``) and who receives: each registered flow, from its
topics and its handler's ``event_types``. The flows are passed in (``pizzashop.app.shop.
registered_flows()``), so this module imports nothing above ``ingest``.

``pizzashop schemas export`` writes it to ``ingest/schemas/asyncapi.json``; the API serves that
file at ``/asyncapi.json``; ``tests/unit/test_asyncapi.py`` fails when it is out of date.
"""

from __future__ import annotations

import dis
import importlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeGuard

from ingest.codec import H_EVENT_ID, H_EVENT_TYPE, H_ORDER_ID, H_SCHEMA_VERSION, H_TRACEPARENT
from ingest.consumer import Handler
from ingest.events import EVENT_TYPES, Event
from ingest.flows import Flow
from ingest.schemas import current_schema
from ingest.schemas.publications import PUBLICATIONS, topic_events
from ingest.topics import DLQ_SUFFIX, Topics

ASYNCAPI_PATH = Path(__file__).parent / "asyncapi.json"
_KAFKA_BINDING = "0.5.0"
_DLQ_HEADERS = {
    "dlq.original.topic": "topic the record was read from",
    "dlq.original.partition": "its partition",
    "dlq.original.offset": "its offset",
    "dlq.consumer.group": "the consumer group that gave up on it",
    "dlq.reason": "why, for machines: undecodable, contract, handler-permanent, retries-exhausted",
    "replay-for-group": "on a replayed copy: the one consumer group that handles it again",
    "dlq.error.class": "the error's class (pizzashop.core.errors)",
    "dlq.error.message": "what was wrong (for a framed record: the schema id and the reason)",
    "dlq.failed.at": "when it was dead-lettered (ISO 8601, UTC)",
    "dlq.attempts": "how many times it was tried",
}


def handler_class(spec: Flow) -> type[Handler] | None:
    """The handler class a flow's factory returns, found without building it: a name the
    factory uses that is a Handler subclass, in its module or imported inside it."""
    build = inspect.unwrap(spec.build)
    code = build.__code__
    for name in code.co_names:
        found = build.__globals__.get(name)
        if _is_handler(found):
            return found
    module: str | None = None
    for ins in dis.get_instructions(code):
        if ins.opname == "IMPORT_NAME":
            module = str(ins.argval)
        elif ins.opname == "IMPORT_FROM" and module is not None:
            found = getattr(importlib.import_module(module), str(ins.argval), None)
            if _is_handler(found):
                return found
    return None


def _is_handler(obj: object) -> TypeGuard[type[Handler]]:
    return isinstance(obj, type) and issubclass(obj, Handler) and obj is not Handler


def _headers(event_type: str | None) -> dict[str, Any]:
    kind: dict[str, Any] = {"type": "string", "description": "the event's type; routes the record"}
    if event_type is not None:
        kind["const"] = event_type
    return {
        "type": "object",
        "required": [H_EVENT_TYPE],
        "properties": {
            H_EVENT_TYPE: kind,
            H_SCHEMA_VERSION: {
                "type": "string",
                "description": "the event's schema version; absent means 1, read strictly",
            },
            H_EVENT_ID: {"type": "string", "description": "the event's event_id"},
            H_ORDER_ID: {"type": "string", "description": "the event's order_id"},
            H_TRACEPARENT: {"type": "string", "description": "W3C trace context"},
        },
    }


def _payload(cls: type[Event], schemas: dict[str, Any]) -> dict[str, Any]:
    """The event's schema into ``schemas``, its ``$defs`` beside it, refs rewritten."""
    schema = current_schema(cls)
    for name, part in schema.pop("$defs", {}).items():
        part = _rewrite(part)
        if name in schemas and schemas[name] != part:
            raise ValueError(f"two events define {name} differently")
        schemas[name] = part
    schemas[cls.event_type] = _rewrite(schema)
    return {"$ref": f"#/components/schemas/{cls.event_type}"}


def _rewrite(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" else _rewrite(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


def document(flows: Mapping[str, Flow]) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the topics, events, publishers and ``flows``."""
    specs = {spec.name: spec for spec in Topics().specs()}
    carried = topic_events()
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for cls in EVENT_TYPES.values():
        messages[cls.event_type] = {
            "name": cls.event_type,
            "title": cls.event_type,
            "summary": (inspect.getdoc(cls) or cls.event_type).splitlines()[0],
            "contentType": "application/json",
            "headers": _headers(cls.event_type),
            "payload": _payload(cls, schemas),
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": "the order id"},
                    "schemaIdLocation": "payload",
                    "schemaIdPayloadEncoding": "confluent",
                    "bindingVersion": _KAFKA_BINDING,
                }
            },
        }
    messages["DeadLetter"] = {
        "name": "DeadLetter",
        "title": "DeadLetter",
        "summary": "A record a consumer gave up on: original key, value and headers, plus why.",
        "headers": {
            "type": "object",
            "properties": {
                k: {"type": "string", "description": v} for k, v in _DLQ_HEADERS.items()
            },
        },
        "payload": {"description": "the original record's value, byte for byte"},
    }
    channels: dict[str, Any] = {}
    for topic, events in carried.items():
        spec = specs[topic]
        channels[topic] = {
            "address": topic,
            "description": f"Carries {', '.join(c.event_type for c in events)}; keyed by order id.",
            "messages": {
                c.event_type: {"$ref": f"#/components/messages/{c.event_type}"} for c in events
            },
            "bindings": {"kafka": _topic_binding(topic, spec.partitions, spec.configs)},
        }
        dlq = specs[topic + DLQ_SUFFIX]
        channels[topic + DLQ_SUFFIX] = {
            "address": topic + DLQ_SUFFIX,
            "description": f"Dead letters of {topic}, kept for replay (`pizzashop dlq replay`).",
            "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
            "bindings": {"kafka": _topic_binding(dlq.name, dlq.partitions, dlq.configs)},
        }
    operations: dict[str, Any] = {}
    for pub in PUBLICATIONS:
        operations[f"{pub.service}.send.{pub.topic}"] = {
            "action": "send",
            "title": f"{pub.service} publishes",
            "description": pub.how,
            "channel": {"$ref": f"#/channels/{_escape(pub.topic)}"},
            "messages": [
                {"$ref": f"#/channels/{_escape(pub.topic)}/messages/{c.event_type}"}
                for c in pub.events
            ],
        }
    for name, declared in sorted(flows.items()):
        handler = handler_class(declared)
        wanted = handler.event_types if handler is not None else ()
        for topic in declared.topics:
            read = [c for c in wanted if c in carried.get(topic, ())]
            if not read:
                continue
            operations[f"{name}.receive.{topic}"] = {
                "action": "receive",
                "title": f"{name} consumes",
                "description": f"flow {name}, consumer group <group prefix>.{name}"
                + (f", handler {handler.__name__}" if handler is not None else ""),
                "channel": {"$ref": f"#/channels/{_escape(topic)}"},
                "messages": [
                    {"$ref": f"#/channels/{_escape(topic)}/messages/{c.event_type}"} for c in read
                ],
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Pizzashop events",
            "version": "1",
            "description": (
                "Every event of the pizza shop on Kafka. Values are JSON; with a schema registry "
                "configured they are framed in the Confluent wire format (magic byte 0, 4-byte "
                "schema id, JSON), each schema under the subject <topic>-<EventType>, "
                "BACKWARD_TRANSITIVE. Readers must ignore fields they do not know. Topic names "
                "may carry a deployment prefix (PIZZASHOP_TOPIC_PREFIX)."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "the local broker of `pizzashop broker start` (its port may vary)",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


def _topic_binding(topic: str, partitions: int, configs: Mapping[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if "retention.ms" in configs:
        config["retention.ms"] = int(configs["retention.ms"])
    if "cleanup.policy" in configs:
        config["cleanup.policy"] = configs["cleanup.policy"].split(",")
    return {
        "topic": topic,
        "partitions": partitions,
        "topicConfiguration": config,
        "bindingVersion": _KAFKA_BINDING,
    }


def _escape(topic: str) -> str:
    # JSON Pointer: "~" and "/" are escaped; topic names have neither, but stay safe.
    return topic.replace("~", "~0").replace("/", "~1")


def render(flows: Mapping[str, Flow]) -> str:
    return json.dumps(document(flows), indent=2) + "\n"


def write(flows: Mapping[str, Flow]) -> Path:
    ASYNCAPI_PATH.write_text(render(flows))
    return ASYNCAPI_PATH

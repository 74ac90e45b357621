"""The AsyncAPI document: committed, up to date, complete, and served."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
from fastapi import FastAPI

from api.asyncapi import router
from ingest.events import EVENT_TYPES
from ingest.schemas.asyncapi import ASYNCAPI_PATH, document, handler_class, render
from ingest.schemas.publications import PUBLICATIONS, topic_events
from ingest.topics import Topics
from pizzashop.app.shop import registered_flows


def test_committed_document_is_up_to_date() -> None:
    assert ASYNCAPI_PATH.read_text() == render(registered_flows()), (
        "run `pizzashop schemas export` and commit ingest/schemas/asyncapi.json"
    )


def test_every_topic_event_and_field_is_described() -> None:
    doc = document(registered_flows())
    topics = Topics()
    assert set(doc["channels"]) == {s.name for s in topics.specs()}
    assert set(EVENT_TYPES) <= set(doc["components"]["messages"])
    undescribed = [
        f"{name}.{field}"
        for name, schema in doc["components"]["schemas"].items()
        for field, prop in schema.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert undescribed == []
    refs = _refs(doc)
    assert refs and all(_resolve(doc, ref) is not None for ref in refs)


def test_every_event_is_published_and_consumed_where_it_travels() -> None:
    published = {cls for pub in PUBLICATIONS for cls in pub.events}
    assert published == set(EVENT_TYPES.values())
    carried = topic_events()
    for name, flow in registered_flows().items():
        handler = handler_class(flow)
        assert handler is not None, f"flow {name}: handler class not found"
        reachable = {c for t in flow.topics for c in carried.get(t, ())}
        assert set(handler.event_types) <= reachable, name


def test_schemas_validate_real_events() -> None:
    from tests.support.orders import make_order

    doc = document(registered_flows())
    schema = {**doc["components"]["schemas"]["OrderPlaced"], "components": doc["components"]}
    order = json.loads(make_order().model_dump_json())
    jsonschema.Draft202012Validator(schema).validate(order)


async def test_served_at_asyncapi_json() -> None:
    app = FastAPI()
    app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/asyncapi.json")
    assert response.status_code == 200
    assert response.json()["asyncapi"] == "3.0.0"
    assert "OrderPlaced" in response.json()["components"]["messages"]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = (
            node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
        )
    return node

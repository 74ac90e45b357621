"""The event contract and its wire format."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from ingest.codec import child_traceparent, decode, encode, header
from ingest.events import (
    EVENT_TYPES,
    Address,
    AnomalyAssessment,
    FeatureContribution,
    FraudAssessment,
    OrderEnriched,
    OrderItem,
    OrderPlaced,
    OrderRejected,
    ScoreLineage,
    UpsellAssessment,
    UpsellSuggestion,
    derived_event_id,
)
from pizzashop.core.errors import DecodeError, ValidationFailed
from tests.support.orders import make_order


def test_total_must_match_items() -> None:
    order = make_order(skus=[("pepperoni_m", "12.50", 2)])
    data = order.model_dump()
    data["total"] = Decimal("1.00")
    with pytest.raises(ValidationError, match="does not match"):
        OrderPlaced.model_validate(data)


def test_full_card_numbers_have_no_place_in_the_contract() -> None:
    data = make_order().model_dump()
    data["payment"] = {"kind": "card", "card_number": "4242424242424242", "last4": "4242"}
    with pytest.raises(ValidationError, match="card_number"):
        OrderPlaced.model_validate(data)


def test_naive_timestamps_are_refused_and_aware_ones_become_utc() -> None:
    data = make_order().model_dump()
    data["placed_at"] = datetime(2026, 1, 1, 12, 0)
    with pytest.raises(ValidationError, match="timezone"):
        OrderPlaced.model_validate(data)
    data["placed_at"] = "2026-01-01T12:00:00+02:00"
    assert OrderPlaced.model_validate(data).placed_at.isoformat() == "2026-01-01T10:00:00+00:00"


def test_events_are_frozen() -> None:
    order = make_order()
    with pytest.raises(ValidationError):
        order.total = Decimal(0)  # type: ignore[misc]


def test_derived_ids_are_stable_per_cause_and_type() -> None:
    cause = make_order().event_id
    assert derived_event_id(cause, "OrderAccepted") == derived_event_id(cause, "OrderAccepted")
    assert derived_event_id(cause, "OrderAccepted") != derived_event_id(cause, "OrderReady")


def test_round_trip_keeps_event_key_and_headers() -> None:
    order = make_order()
    record = encode(order)
    assert record.key == order.order_id.encode()
    assert header(record.headers, "event-type") == "OrderPlaced"
    assert header(record.headers, "schema-version") == "1"
    assert header(record.headers, "event-id") == order.event_id
    assert header(record.headers, "order-id") == order.order_id
    trace = header(record.headers, "traceparent")
    assert trace is not None and len(trace.split("-")) == 4
    assert decode(record.value, record.headers) == order


def test_child_traceparent_keeps_the_trace() -> None:
    parent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    child = child_traceparent(parent)
    assert child.split("-")[1] == "a" * 32 and child.split("-")[2] != "b" * 16


@pytest.mark.parametrize(
    ("value", "drop", "override", "error", "match"),
    [
        (b"{oops", None, None, DecodeError, "not valid JSON"),
        (None, None, None, DecodeError, "empty value"),
        (b"{}", "event-type", None, DecodeError, "missing header"),
        (b"{}", None, ("event-type", b"PizzaTeleported"), DecodeError, "unknown event type"),
        (b"{}", None, ("schema-version", b"9"), DecodeError, "schema version 9"),
        (b'{"order_id": "x"}', None, None, ValidationFailed, "breaks the contract"),
    ],
)
def test_decode_says_why_a_record_is_refused(
    value: bytes | None,
    drop: str | None,
    override: tuple[str, bytes] | None,
    error: type[Exception],
    match: str,
) -> None:
    headers = [h for h in encode(make_order()).headers if h[0] != drop]
    if override is not None:
        headers = [h for h in headers if h[0] != override[0]] + [override]
    with pytest.raises(error, match=match):
        decode(value, headers)


def test_errors_say_whether_retrying_helps() -> None:
    from pizzashop.core.errors import BrokerUnavailable, ConfigError, DependencyPending

    assert BrokerUnavailable.retriable and DependencyPending.retriable
    assert not DecodeError.retriable and not ValidationFailed.retriable
    assert issubclass(ConfigError, ValueError) and issubclass(ValidationFailed, ValueError)


def test_rejection_needs_a_reason() -> None:
    with pytest.raises(ValidationError):
        OrderRejected(order_id="o", reason="")


# -- tolerant reader, strict writer ---------------------------------------------------------
def _enriched() -> OrderEnriched:
    lineage = ScoreLineage(
        model="fraud",
        version=3,
        feature_schema_version=1,
        backend="torch",
        latency_ms=1.5,
        top_features=(FeatureContribution(name="amount", contribution=0.4),),
    )
    return OrderEnriched(
        order_id="o-1",
        source_event_id="e-1",
        customer_id="c-1",
        fraud=FraudAssessment(probability=0.1, lineage=lineage),
        anomaly=AnomalyAssessment(error=0.2, percentile=50, lineage=lineage),
        upsell=UpsellAssessment(
            suggestions=(UpsellSuggestion(sku="cola", name="Cola", reason="complement", score=1),)
        ),
    )


def _with_unknown_fields(value: bytes, *paths: tuple[str | int, ...]) -> bytes:
    """``value`` with a field no reader knows added at the top and inside each of ``paths``."""
    data: dict[str, Any] = json.loads(value)
    data["added_later"] = "top"
    for path in paths:
        node: Any = data
        for step in path:
            node = node[step]
        node["added_later"] = ".".join(map(str, path))
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("event", "paths"),
    [
        (
            make_order().model_copy(
                update={"delivery_address": Address(street="1 Main", city="X", postcode="1")}
            ),
            [("items", 0), ("payment",), ("delivery_address",)],
        ),
        (
            _enriched(),
            [
                ("fraud",),
                ("fraud", "lineage"),
                ("fraud", "lineage", "top_features", 0),
                ("anomaly",),
                ("anomaly", "lineage"),
                ("upsell",),
                ("upsell", "suggestions", 0),
            ],
        ),
    ],
    ids=["OrderPlaced", "OrderEnriched"],
)
def test_decode_drops_unknown_fields_at_every_level(
    event: OrderPlaced | OrderEnriched, paths: list[tuple[str | int, ...]]
) -> None:
    record = encode(event)
    value = _with_unknown_fields(record.value, *paths)
    assert value.count(b"added_later") == len(paths) + 1
    decoded = decode(value, record.headers)
    assert decoded == event
    assert b"added_later" not in decoded.model_dump_json().encode()


def test_tolerance_does_not_loosen_the_known_fields() -> None:
    record = encode(make_order())
    data = json.loads(_with_unknown_fields(record.value, ("items", 0)))
    data["total"] = "1.00"
    with pytest.raises(ValidationFailed, match="does not match"):
        decode(json.dumps(data).encode(), record.headers)


def test_events_built_in_code_still_refuse_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="note"):
        OrderRejected(order_id="o", reason="r", note="x")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="spice"):
        OrderItem(sku="a", name="a", size="M", quantity=1, unit_price=Decimal(1), spice=3)  # type: ignore[call-arg]
    data = make_order().model_dump()
    data["payment"]["wallet"] = "x"
    with pytest.raises(ValidationError, match="wallet"):
        OrderPlaced.model_validate(data)
    with pytest.raises(ValidationError, match="note"):
        OrderRejected.model_validate_json(b'{"order_id": "o", "reason": "r", "note": "x"}')


def _without_version(headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [h for h in headers if h[0] != "schema-version"]


def test_a_record_without_version_header_is_read_as_version_1_if_its_body_validates() -> None:
    order = make_order()
    record = encode(order)
    assert decode(record.value, _without_version(record.headers)) == order
    # Without the header nothing vouches for the writer, so an unknown field fails the record.
    with pytest.raises(ValidationFailed, match="added_later"):
        decode(_with_unknown_fields(record.value), _without_version(record.headers))


def test_a_record_without_version_header_is_refused_for_a_type_past_version_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class OrderRejectedV2(OrderRejected):
        event_type = "OrderRejected"
        schema_version = 2

    monkeypatch.setitem(EVENT_TYPES, "OrderRejected", OrderRejectedV2)
    record = encode(OrderRejectedV2(order_id="o", reason="r"))
    assert header(record.headers, "schema-version") == "2"
    assert decode(record.value, record.headers).schema_version == 2
    with pytest.raises(DecodeError, match="read as version 1"):
        decode(record.value, _without_version(record.headers))


@pytest.mark.parametrize(
    ("overrides", "unknown"),
    [
        ({"loyalty_id": "l-1"}, "loyalty_id"),
        (
            {"items": [{"sku": "four_cheese_l", "quantity": 1, "unit_price": "1", "spice": 3}]},
            "spice",
        ),
        ({"payment": {"kind": "cash", "wallet": "x"}}, "wallet"),
    ],
    ids=["top-level", "item", "payment"],
)
async def test_api_bodies_with_unknown_fields_are_still_422(
    tmp_path: Path, overrides: dict[str, Any], unknown: str
) -> None:
    # Imported here so a broken shop fails this test, not the whole event-contract module.
    from api.app import create_app
    from pizzashop.app.shop import Shop, Wiring
    from pizzashop.core.settings import Settings
    from tests.support.net import dead_port
    from tests.support.orders import body

    settings = Settings(kafka_bootstrap=f"127.0.0.1:{dead_port()}", home=tmp_path)
    wiring = Wiring(api=True, workers=(), create_topics=False)
    async with Shop(settings, settings.kafka_bootstrap or "", wiring) as shop:
        transport = httpx.ASGITransport(app=create_app(shop))
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as http:
            response = await http.post("/orders", json=body(**overrides))
        assert response.status_code == 422
        assert unknown in response.text and "Extra inputs are not permitted" in response.text
        assert await shop.relay.pending_count() == 0

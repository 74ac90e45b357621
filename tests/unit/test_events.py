"""The event contract and its wire format."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from ingest.codec import child_traceparent, decode, encode, header
from ingest.events import OrderPlaced, OrderRejected, derived_event_id
from pizzashop.errors import DecodeError, ValidationFailed
from tests.unit.conftest import make_order


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
    from pizzashop.errors import BrokerUnavailable, ConfigError, DependencyPending

    assert BrokerUnavailable.retriable and DependencyPending.retriable
    assert not DecodeError.retriable and not ValidationFailed.retriable
    assert issubclass(ConfigError, ValueError) and issubclass(ValidationFailed, ValueError)


def test_rejection_needs_a_reason() -> None:
    with pytest.raises(ValidationError):
        OrderRejected(order_id="o", reason="")

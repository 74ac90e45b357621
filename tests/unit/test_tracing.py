"""Trace context across records (``ingest.tracing``) and the composition root's exporter choice.

The spans go to an in-memory exporter through a provider of the test's own (``tracer`` is
patched), so nothing here depends on, or changes, the process's global tracer provider.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ingest import tracing
from ingest.codec import H_TRACEPARENT, encode, header
from ingest.consumer import Delivery
from ingest.events import OrderReady
from pizzashop.app.tracing import setup_tracing
from pizzashop.core.settings import TracingSettings


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", lambda: provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


def ids(traceparent: str | None) -> tuple[int, int]:
    """(trace id, span id) of a ``traceparent`` value."""
    assert traceparent is not None
    _, trace_id, span_id, _ = traceparent.split("-")
    return int(trace_id, 16), int(span_id, 16)


def delivery(offset: int, traceparent: str | None) -> Delivery:
    event = OrderReady(order_id=f"ord-{offset}")
    return Delivery("orders", 0, offset, event, encode(event, traceparent).headers, 0)


def parent_of(span: ReadableSpan) -> tuple[int, int]:
    assert span.parent is not None
    return span.parent.trace_id, span.parent.span_id


def test_a_handled_record_gets_a_consumer_span_whose_child_the_output_is(
    spans: InMemorySpanExporter,
) -> None:
    cause = tracing.new_traceparent()
    d = delivery(7, cause)
    with tracing.handling("kitchen", "g.kitchen", [d]):
        output = d.emit("order-events", OrderReady(order_id=d.event.order_id))
        # One delivery: its span is the current one, so what the handler traces nests in it.
        current = trace.get_current_span().get_span_context()
    [span] = spans.get_finished_spans()
    assert span.name == "kitchen process" and span.kind is SpanKind.CONSUMER
    assert parent_of(span) == ids(cause)
    assert (span.context.trace_id, span.context.span_id) == ids(output.traceparent)
    assert current.span_id == span.context.span_id
    assert span.attributes is not None
    assert span.attributes["messaging.kafka.offset"] == 7
    assert span.attributes["messaging.consumer.group.name"] == "g.kitchen"


def test_a_batch_from_many_traces_keeps_each_chain(spans: InMemorySpanExporter) -> None:
    first, second = tracing.new_traceparent(), tracing.new_traceparent()
    a, b = delivery(1, first), delivery(2, second)
    with tracing.handling("enricher", "g.enricher", [a, b]):
        out_b = b.emit("orders.enriched", OrderReady(order_id=b.event.order_id))
        out_a = a.emit("orders.enriched", OrderReady(order_id=a.event.order_id))
    by_offset = {
        (s.attributes or {})["messaging.kafka.offset"]: s for s in spans.get_finished_spans()
    }
    assert parent_of(by_offset[1]) == ids(first)
    assert parent_of(by_offset[2]) == ids(second)
    assert ids(out_a.traceparent) == (by_offset[1].context.trace_id, by_offset[1].context.span_id)
    assert ids(out_b.traceparent) == (by_offset[2].context.trace_id, by_offset[2].context.span_id)
    assert (by_offset[1].attributes or {})["messaging.batch.message_count"] == 2


def test_a_failed_handler_call_ends_its_spans_in_error(spans: InMemorySpanExporter) -> None:
    d = delivery(3, tracing.new_traceparent())
    with pytest.raises(RuntimeError), tracing.handling("payment", "g.payment", [d]):
        raise RuntimeError("card machine on fire")
    [span] = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


def test_outside_the_runtime_an_output_continues_its_cause() -> None:
    cause = tracing.new_traceparent()
    d = delivery(4, cause)
    assert d.emit("order-events", OrderReady(order_id="ord-4")).traceparent == cause


def test_a_record_names_the_current_span_else_starts_a_trace(
    spans: InMemorySpanExporter,
) -> None:
    tool = tracing.tracer()
    assert tool is not None
    with tool.start_as_current_span("POST /orders") as api:
        record = encode(OrderReady(order_id="ord-5"))
    context = api.get_span_context()
    assert ids(header(record.headers, H_TRACEPARENT)) == (context.trace_id, context.span_id)
    alone = ids(header(encode(OrderReady(order_id="ord-6")).headers, H_TRACEPARENT))
    assert alone[0] != context.trace_id and alone[0] != 0


@pytest.mark.parametrize("flags", ["01", "00"])
def test_with_nothing_to_export_an_output_still_gets_a_span_of_its_own(
    monkeypatch: pytest.MonkeyPatch, flags: str
) -> None:
    monkeypatch.setattr(tracing, "tracer", lambda: None)
    cause = tracing.new_traceparent()[:-2] + flags
    traced, untraced = delivery(1, cause), delivery(2, None)
    with tracing.handling("kitchen", "g.kitchen", [traced, untraced]):
        child = traced.emit("order-events", OrderReady(order_id="ord-1")).traceparent
        fresh = untraced.emit("order-events", OrderReady(order_id="ord-2")).traceparent
    # A new span in the cause's trace, the cause's sampling kept (as parent-based sampling).
    assert ids(child)[0] == ids(cause)[0] and ids(child)[1] != ids(cause)[1]
    assert child is not None and child.endswith(f"-{flags}")
    # No cause: a trace of its own, sampled.
    assert fresh is not None and fresh.endswith("-01") and ids(fresh)[0] not in (0, ids(cause)[0])


def test_a_child_traceparent_keeps_the_trace_and_draws_a_span() -> None:
    parent = tracing.new_traceparent()
    child = tracing.child_traceparent(parent)
    assert ids(child)[0] == ids(parent)[0] and ids(child)[1] != ids(parent)[1]
    assert ids(tracing.child_traceparent("garbage"))[0] != 0


def test_no_exporter_installs_nothing() -> None:
    assert setup_tracing(TracingSettings()) is None


def test_an_exporter_is_installed_once_with_the_service_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    installed: list[trace.TracerProvider] = []
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    monkeypatch.setattr(trace, "set_tracer_provider", installed.append)
    provider = setup_tracing(TracingSettings(exporter="console", service_name="shop-eu"))
    assert provider is not None and installed == [provider]
    assert provider.resource.attributes["service.name"] == "shop-eu"
    provider.shutdown()
    # A provider is there already (a test's, an operator's): it is kept.
    monkeypatch.setattr(trace, "get_tracer_provider", TracerProvider)
    assert setup_tracing(TracingSettings(exporter="otlp")) is None


T, S = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.mark.parametrize(
    "value",
    [
        f"00-{T}-{S}-01",
        f"00-{T}-{S}-00",
        f"  00-{T}-{S}-01\t",
        f"01-{T}-{S}-01-future",
        f"00-{T}-{S}-01-extra",
        f"ff-{T}-{S}-01",
        f"00-{'0' * 32}-{S}-01",
        f"00-{T}-{'0' * 16}-01",
        f"00-{T.upper()}-{S}-01",
        f"00-{T}-{S}-1",
        f"00-{T}-{S}-01" + "x" * 600,
        "garbage",
        "",
    ],
)
def test_a_cause_is_read_as_the_w3c_propagator_reads_it(value: str) -> None:
    headers = [("other", b"x"), (H_TRACEPARENT, value.encode()), (H_TRACEPARENT, b"ignored")]
    context = trace.get_current_span(
        TraceContextTextMapPropagator().extract({H_TRACEPARENT: value})
    ).get_span_context()
    expected = (context.trace_id, context.trace_flags) if context.is_valid else None
    assert tracing._cause(headers) == expected


@pytest.mark.parametrize("flags", [0, 1])
@pytest.mark.parametrize("trace_id", [1, int(T, 16), 2**128 - 1])
def test_a_traceparent_is_written_as_the_w3c_propagator_writes_it(
    trace_id: int, flags: int
) -> None:
    context = trace.SpanContext(trace_id, int(S, 16), False, trace.TraceFlags(flags))
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(
        carrier, context=trace.set_span_in_context(trace.NonRecordingSpan(context))
    )
    assert tracing._traceparent(trace_id, int(S, 16), flags) == carrier[H_TRACEPARENT]


def test_no_current_span_no_traceparent() -> None:
    assert tracing.current_traceparent() is None

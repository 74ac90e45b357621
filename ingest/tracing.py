"""Traces across Kafka: OpenTelemetry spans, their W3C trace context carried in record headers.

aiokafka has no maintained instrumentation that fits the runtime (it would have to wrap our
transactional commit and our per-partition batches), so propagation is by hand: the context is
injected and extracted with ``opentelemetry.propagate`` (the W3C TraceContext propagator unless
``OTEL_PROPAGATORS`` says otherwise) over the records' ``traceparent`` header. Only
``traceparent`` travels: the ``Serializer`` seam carries one string, and nothing here uses
``tracestate`` or baggage.

Who makes which span, so that one order is one trace:

- the API: the FastAPI instrumentation's server span of ``POST /orders``. The intake stores
  ``current_traceparent()`` with the outbox row, so the ``OrderPlaced`` record names that span
  as its parent (the relay publishes the row as it was written and adds no span of its own);
- the consumer runtime: ``handling()`` opens one CONSUMER span per delivery it hands to a
  handler, named ``"<flow> process"``, whose parent is the span the record's header names. An
  output a handler emits for that delivery (``Delivery.emit``) carries this span's context, so
  the next consumer's span is its child, and so on down the saga.

Why a span per delivery, not one per batch with links: a batch mixes many orders, and a span
per batch would put every order's next hop into the batch span's trace, breaking each order's
chain into pieces joined only by links. A span per delivery keeps each order one trace with a
true parent at every hop; its duration is the handler call that included it (the batch's), and
``messaging.batch.message_count`` says how many shared it. A failed batch's spans end in error
and the one-by-one retry opens new ones, so a trace shows each attempt.

Without a tracer provider installed (the ``none`` exporter, unit tests, tools that bypass the
composition root) nothing would export a span, so ``handling`` builds none: each delivery gets a
non-recording span with a fresh span id in its cause's trace (the cause's sampled flag, as
parent-based sampling would give; a new sampled trace when there is no cause), and an output
still travels in a new span of its cause's trace. An SDK span made only to be dropped cost about
a quarter of the kitchen's time in py-spy (sampling, attributes, its end). The OpenTelemetry
API's no-op tracer would instead hand back the parent's own span id.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from ingest.consumer import Delivery

TRACEPARENT = "traceparent"
INSTRUMENTATION = "pizzashop.ingest"

RecordHeaders = Sequence[tuple[str, bytes | None]]
_Key = tuple[str, int, int]  # topic, partition, offset

#: The processing span of each delivery being handled in this task, for ``Delivery.emit``.
_handling: contextvars.ContextVar[Mapping[_Key, trace.Span] | None] = contextvars.ContextVar(
    "pizzashop_handling", default=None
)
_ids = RandomIdGenerator()
_w3c = TraceContextTextMapPropagator()


class _HeaderGetter(Getter[RecordHeaders]):
    """Reads Kafka record headers (a list of ``(name, bytes)``) for a propagator."""

    def get(self, carrier: RecordHeaders, key: str) -> list[str] | None:
        values = [v.decode("utf-8", "replace") for k, v in carrier if k == key and v is not None]
        return values or None

    def keys(self, carrier: RecordHeaders) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _HeaderGetter()


def tracer() -> trace.Tracer | None:
    """The ingest layer's tracer from the installed provider; None when none is installed, so
    nothing would export a span (``handling`` then only draws ids)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        return None
    return provider.get_tracer(INSTRUMENTATION)


def extract(headers: RecordHeaders | None) -> Context:
    """The trace context a record's headers carry (an empty context when none)."""
    return propagate.extract(headers or [], getter=_GETTER)


def traceparent_of(span: trace.Span | None = None) -> str | None:
    """``span``'s (default: the current span's) context as a ``traceparent`` value; None when
    there is no valid span."""
    carrier: dict[str, str] = {}
    context = trace.set_span_in_context(span) if span is not None else None
    propagate.inject(carrier, context=context)
    return carrier.get(TRACEPARENT)


def current_traceparent() -> str | None:
    """The current span's ``traceparent``: what a record produced here should carry."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None  # what the propagators would find, without asking them
    return traceparent_of(None)


def new_traceparent() -> str:
    """A fresh trace for a record produced outside any span: random ids, sampled."""
    return _format(_ids.generate_trace_id())


def child_traceparent(parent: str | None) -> str:
    """A new span id in ``parent``'s trace (a fresh trace when ``parent`` is not valid), for a
    caller that holds only a header value and no span."""
    span = trace.get_current_span(_w3c.extract({TRACEPARENT: parent} if parent else {}))
    context = span.get_span_context()
    if not context.is_valid:
        return new_traceparent()
    return _format(context.trace_id, context.trace_flags)


def _format(trace_id: int, flags: int = trace.TraceFlags.SAMPLED) -> str:
    """A new span id in ``trace_id``."""
    return _traceparent(trace_id, _ids.generate_span_id(), flags)


def _traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """The ``traceparent`` value the W3C propagator writes for these ids (version 00)."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def traceparent_for(delivery: Delivery) -> str | None:
    """What an output caused by ``delivery`` carries: the context of the span handling it, or,
    outside the runtime (a handler called directly), the delivery's own trace context."""
    spans = _handling.get()
    span = spans.get(_key(delivery)) if spans else None
    if span is None:
        return delivery.traceparent
    if isinstance(span, _Unexported):
        return span.traceparent
    return traceparent_of(span)


@contextlib.contextmanager
def handling(flow: str, group_id: str, deliveries: Sequence[Delivery]) -> Iterator[None]:
    """A CONSUMER span per delivery around one handler call (see the module docstring).

    With one delivery its span is also the current span, so whatever the handler traces nests
    under it; a batch has no single current span (its deliveries belong to many traces).
    """
    tool = tracer()
    batch = len(deliveries)
    spans: dict[_Key, trace.Span] = {}
    for delivery in deliveries:
        if tool is None:
            spans[_key(delivery)] = _unexported(delivery.headers)
            continue
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": delivery.topic,
            "messaging.destination.partition.id": str(delivery.partition),
            "messaging.kafka.offset": delivery.offset,
            "messaging.consumer.group.name": group_id,
            "messaging.message.id": delivery.event.event_id,
            "pizzashop.event_type": delivery.event.event_type,
            "pizzashop.order_id": delivery.event.order_id,
        }
        if batch > 1:
            attributes["messaging.batch.message_count"] = batch
        spans[_key(delivery)] = tool.start_span(
            f"{flow} process",
            context=extract(delivery.headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
    token = _handling.set(spans)
    try:
        if batch == 1:
            [only] = spans.values()
            with trace.use_span(only, record_exception=False, set_status_on_exception=False):
                yield
        else:
            yield
    except BaseException as exc:
        for span in spans.values():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        _handling.reset(token)
        for span in spans.values():
            span.end()


class _Unexported(NonRecordingSpan):
    """A delivery's span when nothing would export it, its ``traceparent`` written once."""

    def __init__(self, context: SpanContext) -> None:
        super().__init__(context)
        self.traceparent = _traceparent(context.trace_id, context.span_id, context.trace_flags)


def _unexported(headers: RecordHeaders | None) -> _Unexported:
    """The span context an SDK span would have had (a new span id in the cause's trace, the
    cause's flags; else a new sampled trace), without the span. The record's ``traceparent`` is
    read here as the W3C propagator reads it, not through the global propagators: through them
    (a context built, baggage looked for) it was most of what tracing still cost the kitchen."""
    cause = _cause(headers)
    trace_id, flags = cause or (_ids.generate_trace_id(), trace.TraceFlags.SAMPLED)
    context = SpanContext(
        trace_id, _ids.generate_span_id(), is_remote=False, trace_flags=trace.TraceFlags(flags)
    )
    return _Unexported(context)


def _cause(headers: RecordHeaders | None) -> tuple[int, int] | None:
    """(trace id, flags) of the first ``traceparent`` header, by the W3C propagator's own
    checks; None when there is none or it is not valid."""
    value = next((v for k, v in headers or () if k == TRACEPARENT and v is not None), None)
    if value is None or len(value) > _W3C_MAX_LENGTH:
        return None
    match = _W3C_FORMAT.search(value.decode("utf-8", "replace"))
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if trace_id == "0" * 32 or span_id == "0" * 16 or version == "ff" or (version == "00" and rest):
        return None
    return int(trace_id, 16), int(flags, 16)


_W3C_FORMAT = TraceContextTextMapPropagator._TRACEPARENT_HEADER_FORMAT_RE
_W3C_MAX_LENGTH = TraceContextTextMapPropagator._TRACEPARENT_MAXIMUM_LENGTH


def _key(delivery: Delivery) -> _Key:
    return (delivery.topic, delivery.partition, delivery.offset)

"""Where spans go: the tracer provider the composition root installs, once per process.

The libraries only use the OpenTelemetry API (``ingest.tracing``, the FastAPI instrumentation);
which provider, exporter and ``service.name`` is decided here, from ``TracingSettings``:

- ``none``: nothing is installed. The API keeps only the caller's trace context
  (``api/trace_context.py``) and the consumer runtime draws span ids without building spans
  (``ingest.tracing``), so trace context still travels in every record's header;
- ``console``: each span printed as JSON on stdout when it ends (development);
- ``otlp``: spans batched to an OTLP/HTTP endpoint (a collector, Jaeger, Tempo...).

OpenTelemetry's global provider can be set once per process. When one is already installed
(an earlier ``Shop`` in the same process, a test's in-memory exporter, an operator's
``opentelemetry-instrument``), it is kept and these settings change nothing.
"""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from pizzashop.core.settings import TracingSettings

logger = logging.getLogger(__name__)


def setup_tracing(settings: TracingSettings) -> TracerProvider | None:
    """Install the provider ``settings`` ask for; the provider this call installed (the caller
    flushes it at shutdown), or None when it installed nothing."""
    if settings.exporter == "none":
        return None
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        logger.info(
            "a tracer provider is installed already; keeping it (exporter %s not set up)",
            settings.exporter,
        )
        return None
    exporter: SpanExporter
    if settings.exporter == "console":
        exporter = ConsoleSpanExporter(service_name=settings.service_name)
    else:
        # endpoint None: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else http://localhost:4318/v1/traces
        exporter = OTLPSpanExporter(endpoint=settings.endpoint)
    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    logger.info("traces: %s exporter, service %s", settings.exporter, settings.service_name)
    return provider

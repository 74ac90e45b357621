"""The caller's trace context when no tracer provider is installed.

With a provider installed, the FastAPI instrumentation makes a server span per request and
``current_traceparent()`` names it. Without one (the ``none`` exporter, the default) its spans
are no-ops that carry the caller's ``traceparent`` through, and all the instrumentation still
costs about a fifth of the order API's CPU in py-spy (attributes, wrapped ``send`` and
``receive``, duration metrics) for nothing exported. ``TraceContext`` does only what is left of
it: the request runs in the context its headers carry, so an order still joins its caller's
trace, exactly as the no-op spans made it.
"""

from __future__ import annotations

from opentelemetry import context, propagate
from starlette.types import ASGIApp, Receive, Scope, Send


class TraceContext:
    """Runs each HTTP request in the trace context of its headers (``traceparent`` unless
    ``OTEL_PROPAGATORS`` says otherwise); a request without one runs as it is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._fields = frozenset(f.encode() for f in propagate.get_global_textmap().fields)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not any(
            name in self._fields for name, _ in scope.get("headers", ())
        ):
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        token = context.attach(propagate.extract(carrier))
        try:
            await self.app(scope, receive, send)
        finally:
            context.detach(token)

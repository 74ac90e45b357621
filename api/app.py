"""The FastAPI app: place orders, read an order's status timeline and scores, health.

``create_app(shop)`` takes a started ``Shop`` (the composition root owns every client); the app
itself builds nothing. Keys, rate limits and the body-size limit are ``api.security``'s; every
status code a route can answer is in its ``responses``, so the OpenAPI document tells the truth
(``tests/unit/test_openapi.py`` holds it to that with schemathesis).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Protocol

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout

from api.asyncapi import router as asyncapi_router
from api.health import HealthCheck, HealthOut, Verdict
from api.health import body as health_body
from api.metrics import CONTENT_TYPE, RequestMetrics, ShopMetrics, flow_groups
from api.model_monitor import ModelMonitor
from api.schemas import (
    ErrorOut,
    ModelsOut,
    OrderConfirmed,
    OrderStatusOut,
    ProblemOut,
    TimelineEntryOut,
    ValidationProblemsOut,
)
from api.security import KEY_HEADER, BodySizeLimit, Guard
from api.stream import ScoreFeed, score_events
from api.trace_context import TraceContext
from ingest.codec import Serializer
from ingest.events import OrderEnriched
from ingest.outbox import OutboxRelay
from ingest.topics import Topics
from ingest.tracing import current_traceparent
from models.registry import Registry
from pizzashop.core.database import Database
from pizzashop.core.errors import Problem, ValidationFailed
from pizzashop.core.menu import Menu
from pizzashop.core.pii import masked
from pizzashop.core.settings import ApiSettings, EnricherSettings, MonitorSettings, Settings
from services.group_intake import GroupIntake
from services.intake import OrderIntake, OrderRequest, Placed
from services.labels import LabelQueries
from services.scores import ScoreQueries
from services.status import StatusQueries

logger = logging.getLogger(__name__)

DASHBOARD = (Path(__file__).parent / "dashboard.html").read_text()


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


UNAUTHORIZED = _error(f"no API key in `{KEY_HEADER}`, or one that is no key")
FORBIDDEN = _error("the API key lacks the scope this needs")
INVALID = {
    "model": ValidationProblemsOut,
    "description": "the request is not valid; `problems` lists every thing wrong",
}
INSPECT: dict[int | str, dict[str, Any]] = {401: UNAUTHORIZED, 403: FORBIDDEN, 422: INVALID}


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def _only_known_query(request: Request) -> None:
    """A query parameter the route does not declare is refused (422), as an unknown body field
    is: a typo (`?flaged=true`) should not be silently ignored."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None:
        return
    known = _query_names(dependant)
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        raise RequestValidationError(
            [
                {"type": "extra_forbidden", "loc": ("query", name), "msg": "unknown parameter"}
                for name in unknown
            ]
        )


class ShopServices(Protocol):
    """What the API needs of the shop; the composition root (``pizzashop.app.shop.Shop``)
    provides it, and the API never imports the layer above it."""

    settings: Settings
    db: Database
    menu: Menu
    topics: Topics
    serializer: Serializer
    intake: OrderIntake
    queries: StatusQueries
    scores: ScoreQueries
    relay: OutboxRelay

    def crashed(self) -> Iterable[str]: ...


class Placing(Protocol):
    async def place(self, request: OrderRequest, traceparent: str | None = None) -> Placed: ...


def _placing(shop: ShopServices, group_commit: bool) -> Placing:
    """What ``POST /orders`` places through: by default the shop's intake with its writes
    grouped (``services.group_intake``: concurrent orders share one commit, each confirmed
    only once it is in), else the shop's one-transaction-per-order intake. (Built here until
    the composition root builds its intake grouped.)"""
    if not group_commit or isinstance(shop.intake, GroupIntake):
        return shop.intake
    return GroupIntake(
        shop.db,
        shop.menu,
        shop.topics.orders,
        on_committed=shop.relay.wake,
        serializer=shop.serializer,
    )


def create_app(shop: ShopServices, *, group_commit: bool = True, lean: bool = True) -> FastAPI:
    """``group_commit=False`` places each order in a transaction of its own (as measured
    before group commit; ``bench/intake.py`` compares the two). ``lean=False`` serves
    ``POST /orders`` through FastAPI's generic request handling only (``_lean_route``: the
    same answers, the tests compare the two)."""
    # A stand-in shop (health tests) may bring settings without the `api` group: defaults then.
    api_settings: ApiSettings = getattr(shop.settings, "api", None) or ApiSettings()
    guard = Guard(api_settings)
    app = FastAPI(
        title="Pizzashop",
        version="0.1.0",
        description="Order intake and status for an event-driven pizza shop on Apache Kafka. "
        f"Inspecting orders and scores needs an API key with the `inspect` scope in "
        f"`{KEY_HEADER}`; placing orders needs one with `place` only when such keys are "
        "configured, and is rate limited per key and per client address.",
        dependencies=[Depends(_only_known_query)],
    )
    app.state.shop = shop
    app.state.guard = guard
    app.add_middleware(BodySizeLimit, max_bytes=api_settings.max_body_bytes)
    # A stand-in shop (health tests) has no broker: then no lag, only what it has.
    bootstrap = getattr(shop, "bootstrap", None)
    metrics = ShopMetrics(
        runtimes=lambda: getattr(shop, "runtimes", {}),
        relay=shop.relay,
        bootstrap=bootstrap,
        lag_groups=flow_groups(shop.settings) if bootstrap else None,
        client_options=getattr(shop, "client_options", None),
    )
    app.state.metrics = metrics
    # A stand-in shop (health tests) may have no registry: then no models.
    registry_dir = getattr(shop.settings, "resolved_registry_dir", None)
    monitor = ModelMonitor(
        Registry(registry_dir) if registry_dir is not None else None,
        shop.scores,
        getattr(shop, "labels", None) or LabelQueries(shop.db),
        getattr(shop.settings, "monitor", None) or MonitorSettings(),
        getattr(shop.settings, "enricher", None) or EnricherSettings(),
    )
    metrics.registry.register(monitor)
    # A stream's duration is how long someone watched, not a latency.
    app.add_middleware(RequestMetrics, metrics=metrics, skip=frozenset({"/scores/stream"}))
    # A server span per request from the installed tracer provider (the composition root
    # installs it before building the app); probes and scrapes make none. With none installed
    # the spans would be no-ops: only the caller's trace context is kept (api/trace_context.py).
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        app.add_middleware(TraceContext)
    else:
        FastAPIInstrumentor.instrument_app(
            app, excluded_urls="/health,/metrics", exclude_spans=["receive", "send"]
        )
    app.include_router(asyncapi_router)

    @app.exception_handler(ValidationFailed)
    async def _invalid_order(_request: Request, exc: ValidationFailed) -> JSONResponse:
        problems = [ProblemOut(loc=["body", *p.loc], msg=p.msg, type=p.type) for p in exc.problems]
        return _invalid(problems)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(SQLAlchemyTimeout)
    @app.exception_handler(OSError)
    async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # The database is away (an outage, a full pool): say so, and when to try again, rather
        # than a bare 500. Nothing was confirmed; a commit cut off mid-way may still have
        # stored the order, so a client that must not place it twice sends its own order_id.
        logger.warning(
            "%s %s: the database is unavailable: %r", request.method, request.url.path, exc
        )
        body = ErrorOut(
            detail="the order store is unavailable; nothing was confirmed: retry, with the "
            "same order_id to be sure it is placed once"
        )
        return JSONResponse(
            status_code=503, content=body.model_dump(), headers={"Retry-After": "1"}
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            ProblemOut(
                loc=[p if isinstance(p, int) else str(p) for p in err.get("loc", ())],
                msg=str(err.get("msg", "invalid")),
                type=str(err.get("type", "invalid")),
            )
            for err in exc.errors()
        ]
        return _invalid(problems)

    place_responses: dict[int | str, dict[str, Any]] = {
        400: _error("the body could not be read (not UTF-8, say)"),
        413: _error(f"the body is over {api_settings.max_body_bytes} bytes"),
        503: _error("the order store is unavailable (`Retry-After`); nothing was confirmed"),
        422: INVALID,
        429: {
            "model": ErrorOut,
            "description": "too many orders from this key or address; wait `Retry-After` s",
            "headers": {
                "Retry-After": {
                    "description": "seconds until an order would be accepted",
                    "schema": {"type": "integer"},
                }
            },
        },
    }
    if not guard.place_is_open:
        place_responses |= INSPECT
    # Built on the first order: a stand-in shop (health tests) has no intake at all.
    placing: list[Placing] = []

    async def place_order(request: OrderRequest) -> OrderConfirmed:
        """Validate against the menu, store durably, confirm. Never waits for the kitchen.
        A card number in any field is refused (422) before anything is stored."""
        return await _place(request)

    async def _place(request: OrderRequest) -> OrderConfirmed:
        # The order's record names this request's server span as its parent (a caller's
        # `traceparent` header is that span's parent: the instrumentation reads it).
        if not placing:
            placing.append(_placing(shop, group_commit))
        placed = await placing[0].place(request, current_traceparent())
        return OrderConfirmed(
            status="Confirmed", order_id=placed.order_id, duplicate=placed.duplicate
        )

    app.router.add_api_route(
        "/orders",
        place_order,
        methods=["POST"],
        status_code=202,
        response_model=OrderConfirmed,
        responses=place_responses,
        dependencies=[guard.depends("place")],
        # While no key has the `place` scope, a key is optional (it buys the per-key limit).
        openapi_extra={"security": [{}, {"ApiKey": []}]} if guard.place_is_open else None,
        route_class_override=_lean_route(guard, _place) if lean else APIRoute,
    )

    inspect = [guard.depends("inspect")]

    @app.get(
        "/orders/{order_id}",
        response_model=OrderStatusOut,
        responses={**INSPECT, 404: _error("no such order")},
        dependencies=inspect,
    )
    async def order_status(order_id: str) -> OrderStatusOut:
        """The order's status and timeline; e-mail addresses in it are masked."""
        view = await shop.queries.order(order_id)
        if view is None:
            raise HTTPException(status_code=404, detail=f"no order {order_id!r}")
        return OrderStatusOut(
            order_id=view.order_id,
            status=view.status,
            final=view.final,
            total=view.total,
            currency=view.currency,
            placed_at=view.placed_at,
            timeline=[
                TimelineEntryOut(
                    event_type=e.event_type,
                    event_id=e.event_id,
                    occurred_at=e.occurred_at,
                    detail=masked(e.detail),
                )
                for e in view.timeline
            ],
        )

    @app.get(
        "/orders/{order_id}/scores",
        response_model=OrderEnriched,
        responses={**INSPECT, 404: _error("no scores for this order (yet)")},
        dependencies=inspect,
    )
    async def order_scores(order_id: str) -> OrderEnriched:
        """The models' view of one order, with each score's model version and features."""
        enriched = await shop.scores.for_order(order_id)
        if enriched is None:
            raise HTTPException(status_code=404, detail=f"no scores for order {order_id!r} (yet)")
        return enriched

    @app.get(
        "/scores",
        response_model=list[OrderEnriched],
        responses=INSPECT,
        dependencies=inspect,
    )
    async def recent_scores(
        limit: int = Query(default=50, ge=1, le=1000), flagged: bool = False
    ) -> list[OrderEnriched]:
        """The most recently enriched orders, newest first."""
        return await shop.scores.recent(limit=limit, flagged_only=flagged)

    @app.get("/scores/summary", responses=INSPECT, dependencies=inspect)
    async def scores_summary() -> dict[str, Any]:
        summary = await shop.scores.summary()
        return {field: getattr(summary, field) for field in summary.__slots__}

    @app.get("/models", response_model=ModelsOut, responses=INSPECT, dependencies=inspect)
    async def models() -> ModelsOut:
        """Every model in the registry with its aliases (champion, challenger) and, per
        version: training metrics, drift of its latest scored orders against its training
        data (PSI per score and input, with the alert threshold), and for fraud its online
        precision and recall from chargebacks, as champion and in the shadow."""
        return await monitor.report()

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> str:
        return DASHBOARD

    # -- live: the dashboard's stream and Prometheus metrics -----------------------------------
    async def _live_stats() -> dict[str, Any]:
        await metrics.refresh()
        summary = await shop.scores.summary()
        lag: dict[str, int] = {}
        for part in metrics.lag:
            lag[part.group] = lag.get(part.group, 0) + part.lag
        return {
            "orders": summary.orders,
            "flagged": summary.flagged,
            "degraded": summary.degraded,
            "mean_fraud": summary.mean_fraud,
            "dead_letters": metrics.dead_lettered(),
            "lag": lag,
        }

    # Not in the OpenAPI document: an endless stream a generated client could not finish.
    @app.get("/scores/stream", dependencies=inspect, include_in_schema=False)
    async def scores_stream(request: Request) -> StreamingResponse:
        """Server-sent events: the latest enriched orders, then each new one (`score`), and the
        counters and consumer lag every 2 s (`stats`). Needs the `inspect` scope."""
        return StreamingResponse(
            score_events(shop.scores, _live_stats, request.is_disconnected),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    seen_scores = ScoreFeed(shop.scores)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {}}, "description": "metrics"}},
    )
    async def prometheus_metrics() -> Response:
        """The shop's metrics in the Prometheus text format (no key: they carry no order or
        customer data): consumer lag per group and partition from the broker, records handled,
        retried and dead-lettered, outbox backlog, API latency, score distributions."""
        await metrics.refresh()
        try:
            for enriched in await seen_scores.poll():
                metrics.observe_score(enriched)
        except Exception as exc:  # a stand-in shop without scores, a database away
            logger.warning("metrics: reading new scores failed: %r", exc)
        try:
            await monitor.report()  # the model gauges show the last report
        except Exception as exc:
            logger.warning("metrics: reading the models' drift and labels failed: %r", exc)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    checks = HealthCheck(
        db=shop.db, relay=shop.relay, crashed=shop.crashed, settings=shop.settings.health
    )
    health_responses: dict[int | str, dict[str, Any]] = {
        200: {"model": HealthOut, "description": "healthy; the body has the details"},
        503: {"model": HealthOut, "description": "unhealthy; `reasons` names each failing rule"},
        422: INVALID,
    }

    def _answer(verdict: Verdict) -> JSONResponse:
        return JSONResponse(status_code=200 if verdict.ok else 503, content=health_body(verdict))

    @app.get("/health", response_model=HealthOut, responses=health_responses)
    async def health() -> JSONResponse:
        """Everything at once: 503 with one reason per failing rule of `/health/live` and
        `/health/ready` (a crashed task, the database, the relay failing too long, the outbox
        backlog too old); 200 otherwise, with the outbox backlog and the relay's state."""
        return _answer(await checks.overall())

    @app.get("/health/live", response_model=HealthOut, responses=health_responses)
    async def health_live() -> JSONResponse:
        """Liveness: the process is up and its event loop answers (`loop_lag_ms`). 503 only
        when a task that should run until shutdown has crashed: restart the process."""
        return _answer(await checks.live())

    @app.get("/health/ready", response_model=HealthOut, responses=health_responses)
    async def health_ready() -> JSONResponse:
        """Readiness: the database answers, the outbox relay has not failed for longer than
        `PIZZASHOP_HEALTH__RELAY_FAILING_MAX_S`, and no unsent outbox row is older than
        `PIZZASHOP_HEALTH__OUTBOX_MAX_AGE_S`. 503 with the reasons otherwise: take the
        instance out of rotation, it will come back by itself."""
        return _answer(await checks.ready())

    return app


def _lean_route(
    guard: Guard, place: Callable[[OrderRequest], Awaitable[OrderConfirmed]]
) -> type[APIRoute]:
    """``POST /orders``'s route: FastAPI's, with a short way for the common request.

    FastAPI's handler parses the JSON, validates the dict in Python, solves the dependencies
    (the query check, the guard) and validates and serialises the answer again: a third of
    the API's time per order. The short way, for a request with a JSON content type and no
    query string, reads the body once (``OrderRequest.from_document``: JSON validated in one
    pass, the card-number walk skipped when the bytes show none), admits the
    caller with the guard and writes the answer's few bytes itself. Whenever validation fails
    it hands the request (its body kept) to FastAPI's own handler, so every refusal (422 with
    its problems, card numbers named but not echoed, 400, 401, 403, 429) is the very answer it
    was. The route, and so the OpenAPI document, is FastAPI's, unchanged."""

    class LeanPlaceRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            generic = super().get_route_handler()

            async def handler(request: Request) -> Response:
                if request.scope.get("query_string") or not _json_content(
                    request.headers.get("content-type")
                ):
                    return await generic(request)
                try:
                    order = OrderRequest.from_document(await request.body())
                except ValidationError:
                    return await generic(request)
                await guard.admit(request, "place")
                confirmed = await place(order)
                return Response(
                    _confirmed_json(confirmed), status_code=202, media_type="application/json"
                )

            return handler

    return LeanPlaceRoute


def _json_content(content_type: str | None) -> bool:
    """Whether FastAPI reads a body of ``content_type`` as JSON, for the common spellings (any
    other goes FastAPI's own way)."""
    if content_type is None:
        return False
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json"


def _confirmed_json(confirmed: OrderConfirmed) -> bytes:
    # As FastAPI's JSONResponse renders it (compact, not ASCII-escaped).
    return json.dumps(
        confirmed.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":")
    ).encode()


def _invalid(problems: list[ProblemOut]) -> JSONResponse:
    body = ValidationProblemsOut(
        # "items[0].sku: unknown item 'x'": the path without its "body"/"query" root
        detail="; ".join(str(Problem(tuple(p.loc[1:]), p.msg)) for p in problems),
        problems=problems,
    )
    return JSONResponse(status_code=422, content=body.model_dump(mode="json"))

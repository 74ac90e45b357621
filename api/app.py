"""The FastAPI app: place orders, read an order's status timeline.

``create_app(shop)`` takes a started ``Shop`` (the composition root owns every client); the app
itself builds nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from api.health import HealthCheck, HealthOut, Verdict
from api.health import body as health_body
from api.schemas import OrderConfirmed, OrderStatusOut, TimelineEntryOut
from ingest.events import OrderEnriched
from pizzashop.errors import ValidationFailed
from pizzashop.shop import Shop
from services.intake import OrderRequest

DASHBOARD = (Path(__file__).parent / "dashboard.html").read_text()


def create_app(shop: Shop) -> FastAPI:
    app = FastAPI(
        title="Pizzashop",
        version="0.1.0",
        description="Order intake and status for an event-driven pizza shop on Apache Kafka.",
    )
    app.state.shop = shop

    @app.exception_handler(ValidationFailed)
    async def _invalid_order(_request: Request, exc: ValidationFailed) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in err['loc'] if p != 'body')}: {err['msg']}"
            for err in exc.errors()
        ]
        return JSONResponse(
            status_code=422, content={"detail": "; ".join(problems), "errors": _plain(exc.errors())}
        )

    @app.post("/orders", status_code=202, response_model=OrderConfirmed)
    async def place_order(
        request: OrderRequest, traceparent: str | None = Header(default=None)
    ) -> OrderConfirmed:
        """Validate against the menu, store durably, confirm. Never waits for the kitchen."""
        placed = await shop.intake.place(request, traceparent)
        return OrderConfirmed(
            status="Confirmed", order_id=placed.order_id, duplicate=placed.duplicate
        )

    @app.get("/orders/{order_id}", response_model=OrderStatusOut)
    async def order_status(order_id: str) -> OrderStatusOut:
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
                    detail=e.detail,
                )
                for e in view.timeline
            ],
        )

    @app.get("/orders/{order_id}/scores", response_model=OrderEnriched)
    async def order_scores(order_id: str) -> OrderEnriched:
        """The models' view of one order, with each score's model version and features."""
        enriched = await shop.scores.for_order(order_id)
        if enriched is None:
            raise HTTPException(status_code=404, detail=f"no scores for order {order_id!r} (yet)")
        return enriched

    @app.get("/scores", response_model=list[OrderEnriched])
    async def recent_scores(
        limit: int = Query(default=50, ge=1, le=1000), flagged: bool = False
    ) -> list[OrderEnriched]:
        """The most recently enriched orders, newest first."""
        return await shop.scores.recent(limit=limit, flagged_only=flagged)

    @app.get("/scores/summary")
    async def scores_summary() -> dict[str, Any]:
        summary = await shop.scores.summary()
        return {field: getattr(summary, field) for field in summary.__slots__}

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> str:
        return DASHBOARD

    checks = HealthCheck(
        db=shop.db, relay=shop.relay, crashed=shop.crashed, settings=shop.settings.health
    )
    health_responses: dict[int | str, dict[str, Any]] = {
        200: {"model": HealthOut, "description": "healthy; the body has the details"},
        503: {"model": HealthOut, "description": "unhealthy; `reasons` names each failing rule"},
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


def _plain(errors: Any) -> list[dict[str, Any]]:
    # pydantic puts exception objects in "ctx"; JSON wants strings.
    return [
        {
            k: (str(v) if k == "ctx" else v)
            for k, v in err.items()
            if k in ("loc", "msg", "type", "ctx")
        }
        for err in errors
    ]

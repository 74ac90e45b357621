"""The score projection: every ``OrderEnriched`` and ``ScoreShadowed``, for people to inspect.

Read by ``GET /orders/{id}/scores``, ``GET /scores`` and the dashboard. One row per order
(first enrichment wins, as downstream consumers see it), with each score's lineage kept whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Column, DateTime, Float, Integer, String, Table, Text, func, select

from ingest.consumer import Delivery, Handler, Output
from ingest.events import OrderEnriched, OrderPlaced, ScoreShadowed
from ingest.flows import FlowContext, flow
from ingest.topics import ENRICHED
from pizzashop.core.database import Database, chunked, metadata
from services.status import orders

order_scores = Table(
    "order_scores",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("event_id", String(64), nullable=False),
    Column("customer_id", String(64), nullable=False),
    Column("enriched_at", DateTime(timezone=True), nullable=False, index=True),
    Column("fraud_probability", Float, nullable=True),
    Column("fraud_model", String(64), nullable=True),
    Column("anomaly_percentile", Float, nullable=True),
    Column("anomaly_model", String(64), nullable=True),
    Column("upsell_model", String(64), nullable=True),
    Column("degraded", Boolean, nullable=False),
    Column("flagged", Boolean, nullable=False, index=True),
    Column("body", Text, nullable=False),
)

shadow_scores = Table(
    "shadow_scores",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("order_id", String(64), nullable=False, index=True),
    Column("model", String(64), nullable=False),
    Column("champion_version", Integer, nullable=False),
    Column("challenger_version", Integer, nullable=False),
    Column("champion_score", Float, nullable=True),
    Column("challenger_score", Float, nullable=True),
    Column("difference", Float, nullable=True),
)


@dataclass(frozen=True, slots=True)
class ScoreWindow:
    """A model version's latest scores, newest first, and the orders they scored (the
    ``OrderPlaced`` bodies the status projection keeps; orders it has not seen are left out)."""

    scores: tuple[float, ...]
    order_bodies: tuple[str, ...]  # JSON

    def orders(self) -> list[OrderPlaced]:
        """The orders, parsed: some 60 ms per 1,000, so call it off the event loop."""
        return [OrderPlaced.model_validate_json(body) for body in self.order_bodies]


#: Models with one number per order in the projection: its column and its model tag's column.
_SCORE_COLUMNS = {
    "fraud": (order_scores.c.fraud_probability, order_scores.c.fraud_model),
    "anomaly": (order_scores.c.anomaly_percentile, order_scores.c.anomaly_model),
}
WINDOWED_MODELS = tuple(_SCORE_COLUMNS)
#: Every scoring model's tag column (``"<model>-v<version>"``).
_TAG_COLUMNS = {
    "fraud": order_scores.c.fraud_model,
    "anomaly": order_scores.c.anomaly_model,
    "upsell": order_scores.c.upsell_model,
}


@dataclass(frozen=True, slots=True)
class EnrichedWindow:
    """A model version's latest scored orders, newest first, as stored (JSON): the
    ``OrderEnriched`` bodies, for a model whose score has no column of its own (upsell's
    suggestions), and the ``OrderPlaced`` bodies the status projection has."""

    enriched_bodies: tuple[str, ...]
    order_bodies: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ScoreSummary:
    orders: int
    flagged: int
    degraded: int
    mean_fraud: float | None
    models: dict[str, int]  # model tag -> orders scored with it
    shadowed: int
    mean_abs_shadow_difference: float | None


def _tag(lineage: Any) -> str | None:
    return f"{lineage.model}-v{lineage.version}" if lineage is not None else None


def _row(event: OrderEnriched) -> dict[str, Any]:
    upsell = event.upsell
    return {
        "order_id": event.order_id,
        "event_id": event.event_id,
        "customer_id": event.customer_id,
        "enriched_at": event.occurred_at,
        "fraud_probability": event.fraud.probability,
        "fraud_model": _tag(event.fraud.lineage),
        "anomaly_percentile": event.anomaly.percentile,
        "anomaly_model": _tag(event.anomaly.lineage),
        "upsell_model": _tag(upsell.lineage) if upsell is not None else None,
        "degraded": event.fraud.degraded
        or event.anomaly.degraded
        or (upsell is not None and upsell.degraded),
        "flagged": event.flagged,
        "body": event.model_dump_json(),
    }


class ScoreProjection(Handler):
    event_types = (OrderEnriched, ScoreShadowed)

    def __init__(self, db: Database) -> None:
        self._db = db

    async def handle(self, batch: Sequence[Delivery]) -> list[Output]:
        enriched = [_row(d.event) for d in batch if isinstance(d.event, OrderEnriched)]
        shadowed = [
            d.event.model_dump(exclude={"occurred_at"})
            for d in batch
            if isinstance(d.event, ScoreShadowed)
        ]
        async with self._db.engine.begin() as conn:
            if enriched:
                await conn.execute(self._db.insert_ignore(order_scores), enriched)
            if shadowed:
                await conn.execute(self._db.insert_ignore(shadow_scores), shadowed)
        return []


class ScoreQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def for_order(self, order_id: str) -> OrderEnriched | None:
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(order_scores.c.body).where(order_scores.c.order_id == order_id)
                )
            ).first()
        return OrderEnriched.model_validate_json(row.body) if row is not None else None

    async def recent(
        self, *, limit: int = 50, flagged_only: bool = False, since: datetime | None = None
    ) -> list[OrderEnriched]:
        query = select(order_scores.c.body).order_by(order_scores.c.enriched_at.desc()).limit(limit)
        if flagged_only:
            query = query.where(order_scores.c.flagged.is_(True))
        if since is not None:
            query = query.where(order_scores.c.enriched_at >= since)
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(query)
            return [OrderEnriched.model_validate_json(r.body) for r in rows]

    async def count(self, order_ids: Sequence[str] | None = None) -> int:
        """Orders scored, all of them or those of ``order_ids``."""
        query = select(func.count()).select_from(order_scores)
        async with self._db.engine.connect() as conn:
            if order_ids is None:
                return int((await conn.execute(query)).scalar_one())
            total = 0
            for chunk in chunked(order_ids):
                scoped = query.where(order_scores.c.order_id.in_(chunk))
                total += int((await conn.execute(scoped)).scalar_one())
            return total

    async def window(self, model: str, version: int, limit: int) -> ScoreWindow:
        """The latest ``limit`` orders ``model`` version ``version`` scored (``WINDOWED_MODELS``):
        their scores (degraded ones left out) and their orders."""
        score, tag = _SCORE_COLUMNS[model]
        query = (
            select(score, orders.c.body)
            .select_from(
                order_scores.outerjoin(orders, orders.c.order_id == order_scores.c.order_id)
            )
            .where(tag == f"{model}-v{version}")
            .order_by(order_scores.c.enriched_at.desc())
            .limit(limit)
        )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return ScoreWindow(
            scores=tuple(float(r[0]) for r in rows if r[0] is not None),
            order_bodies=tuple(str(r[1]) for r in rows if r[1] is not None),
        )

    async def enriched_window(self, model: str, version: int, limit: int) -> EnrichedWindow:
        """The latest ``limit`` orders ``model`` version ``version`` scored, as stored."""
        query = (
            select(order_scores.c.body, orders.c.body)
            .select_from(
                order_scores.outerjoin(orders, orders.c.order_id == order_scores.c.order_id)
            )
            .where(_TAG_COLUMNS[model] == f"{model}-v{version}")
            .order_by(order_scores.c.enriched_at.desc())
            .limit(limit)
        )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return EnrichedWindow(
            enriched_bodies=tuple(str(r[0]) for r in rows),
            order_bodies=tuple(str(r[1]) for r in rows if r[1] is not None),
        )

    async def summary(self) -> ScoreSummary:
        async with self._db.engine.connect() as conn:
            head = (
                await conn.execute(
                    select(
                        func.count(),
                        func.sum(func.cast(order_scores.c.flagged, Integer)),
                        func.sum(func.cast(order_scores.c.degraded, Integer)),
                        func.avg(order_scores.c.fraud_probability),
                    ).select_from(order_scores)
                )
            ).one()
            models: dict[str, int] = {}
            for column in (
                order_scores.c.fraud_model,
                order_scores.c.anomaly_model,
                order_scores.c.upsell_model,
            ):
                rows = await conn.execute(
                    select(column, func.count()).where(column.is_not(None)).group_by(column)
                )
                models.update({tag: int(n) for tag, n in rows})
            shadow = (
                await conn.execute(
                    select(func.count(), func.avg(func.abs(shadow_scores.c.difference)))
                )
            ).one()
        return ScoreSummary(
            orders=int(head[0]),
            flagged=int(head[1] or 0),
            degraded=int(head[2] or 0),
            mean_fraud=float(head[3]) if head[3] is not None else None,
            models=models,
            shadowed=int(shadow[0]),
            mean_abs_shadow_difference=float(shadow[1]) if shadow[1] is not None else None,
        )


@flow("scores", topics=(ENRICHED,), dedupe=False)
def scores_flow(ctx: FlowContext) -> Handler:
    return ScoreProjection(ctx.db)

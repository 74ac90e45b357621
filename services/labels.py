"""Delayed labels: chargebacks, joined to the scores each fraud model version gave.

The ``labels`` flow keeps every ``ChargebackReported`` (one row per order, the first report
wins). ``LabelQueries.outcomes`` joins them to the score projection at query time, per fraud
model version:

* as **champion**, from ``order_scores``: the version that decided, and whether it held the
  order (``flagged``, the threshold applied then);
* as **shadow**, from ``shadow_scores``: the challenger's score against a threshold the caller
  gives per version (its own recorded hold threshold), deciding nothing.

A chargeback comes days after its order, so recent orders have no label *yet*, and counting them
as legitimate would understate recall and precision. Only *matured* orders count: those placed
at least ``label_delay`` before the latest chargeback seen. The feed's own clock is used, not the
wall clock, so a simulated stream replayed in minutes is judged as it would be over weeks.

A held order is cancelled and refunded and would never be charged back in a real shop; the
simulator reports every fraudulent order (a held one as confirmed by review), which is what
makes the precision of holds measurable here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import (
    Column,
    DateTime,
    String,
    Table,
    and_,
    case,
    func,
    select,
)
from sqlalchemy.sql.elements import ColumnElement

from ingest.consumer import Delivery, Handler, Output
from ingest.events import ChargebackReported
from ingest.flows import FlowContext, flow
from ingest.topics import CHARGEBACKS
from pizzashop.core.database import Database, metadata
from services.scores import order_scores, shadow_scores
from services.status import orders

chargebacks = Table(
    "chargebacks",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("event_id", String(64), nullable=False),
    Column("reported_at", DateTime(timezone=True), nullable=False, index=True),
    Column("reason", String(200), nullable=False),
)

FRAUD = "fraud"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one fraud version did on matured orders it scored (``role``: it decided, or it ran
    in the shadow). ``held``: at or above its threshold; ``caught``: held and charged back."""

    version: int
    role: Literal["champion", "shadow"]
    orders: int
    frauds: int
    held: int
    caught: int
    threshold: float | None = None

    @property
    def precision(self) -> float | None:
        return self.caught / self.held if self.held else None

    @property
    def recall(self) -> float | None:
        return self.caught / self.frauds if self.frauds else None


@dataclass(frozen=True, slots=True)
class Outcomes:
    labelled_through: datetime | None  # the latest chargeback's reported_at
    matured_before: datetime | None  # orders placed up to this count
    chargebacks: int
    versions: tuple[Outcome, ...]


def _utc(moment: datetime | None) -> datetime | None:
    # SQLite returns stored UTC datetimes without their offset; say what they are.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class LabelProjection(Handler):
    event_types = (ChargebackReported,)

    def __init__(self, db: Database) -> None:
        self._db = db

    async def handle(self, batch: Sequence[Delivery]) -> list[Output]:
        rows = [
            {
                "order_id": d.event.order_id,
                "event_id": d.event.event_id,
                "reported_at": d.event.reported_at,
                "reason": d.event.reason,
            }
            for d in batch
            if isinstance(d.event, ChargebackReported)
        ]
        if rows:
            async with self._db.engine.begin() as conn:
                await conn.execute(self._db.insert_ignore(chargebacks), rows)
        return []


def _count(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


class LabelQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def shadow_versions(self) -> list[int]:
        """Fraud versions that have run in the shadow."""
        query = (
            select(shadow_scores.c.challenger_version)
            .where(shadow_scores.c.model == FRAUD)
            .distinct()
        )
        async with self._db.engine.connect() as conn:
            return sorted(int(v) for (v,) in await conn.execute(query))

    async def outcomes(
        self, *, label_delay: timedelta, shadow_thresholds: Mapping[int, float]
    ) -> Outcomes:
        """Precision and recall of every fraud version on the matured orders it scored, as
        champion and, for the versions in ``shadow_thresholds``, in the shadow."""
        async with self._db.engine.connect() as conn:
            head = (
                await conn.execute(select(func.count(), func.max(chargebacks.c.reported_at)))
            ).one()
            through = _utc(head[1])
            if through is None:
                return Outcomes(None, None, 0, ())
            cutoff = through - label_delay
            charged = chargebacks.c.order_id.is_not(None)
            found: list[Outcome] = []
            champion = (
                select(
                    order_scores.c.fraud_model,
                    func.count(),
                    _count(charged),
                    _count(order_scores.c.flagged.is_(True)),
                    _count(and_(charged, order_scores.c.flagged.is_(True))),
                )
                .select_from(
                    order_scores.join(
                        orders, orders.c.order_id == order_scores.c.order_id
                    ).outerjoin(chargebacks, chargebacks.c.order_id == order_scores.c.order_id)
                )
                .where(order_scores.c.fraud_model.like(f"{FRAUD}-v%"))
                .where(orders.c.placed_at <= cutoff)
                .group_by(order_scores.c.fraud_model)
            )
            for tag, n, frauds, held, caught in await conn.execute(champion):
                version = int(str(tag).rsplit("-v", 1)[1])
                found.append(
                    Outcome(version, "champion", int(n), int(frauds), int(held), int(caught))
                )
            for version, threshold in sorted(shadow_thresholds.items()):
                held_by = shadow_scores.c.challenger_score >= threshold
                shadow = (
                    select(
                        func.count(), _count(charged), _count(held_by), _count(held_by & charged)
                    )
                    .select_from(
                        shadow_scores.join(
                            orders, orders.c.order_id == shadow_scores.c.order_id
                        ).outerjoin(chargebacks, chargebacks.c.order_id == shadow_scores.c.order_id)
                    )
                    .where(shadow_scores.c.model == FRAUD)
                    .where(shadow_scores.c.challenger_version == version)
                    .where(orders.c.placed_at <= cutoff)
                )
                n, frauds, held, caught = (await conn.execute(shadow)).one()
                if n:
                    found.append(
                        Outcome(
                            version,
                            "shadow",
                            int(n),
                            int(frauds),
                            int(held),
                            int(caught),
                            threshold,
                        )
                    )
        return Outcomes(through, cutoff, int(head[0]), tuple(found))


@flow("labels", topics=(CHARGEBACKS,), dedupe=False)
def labels_flow(ctx: FlowContext) -> Handler:
    # Inserts that ignore existing keys: a replayed chargeback changes nothing.
    return LabelProjection(ctx.db)


__all__ = ["LabelProjection", "LabelQueries", "Outcome", "Outcomes", "chargebacks"]

"""Delayed labels without a broker: the labels flow keeps one chargeback per order (in the real
runtime over the in-memory broker), and the join to the scores gives precision and recall per
fraud version, as champion and in the shadow, on matured orders only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from ingest.consumer import Delivery
from ingest.events import (
    AnomalyAssessment,
    ChargebackReported,
    Event,
    FraudAssessment,
    OrderEnriched,
    ScoreLineage,
    ScoreShadowed,
)
from ingest.flows import FLOWS
from ingest.testing import FlowHarness
from ingest.topics import CHARGEBACKS
from pizzashop.core.database import Database
from services.labels import LabelProjection, LabelQueries, chargebacks
from services.scores import ScoreProjection
from services.status import StatusProjection
from tests.support.orders import make_order

BASE = datetime(2025, 3, 1, tzinfo=UTC)


def _deliveries(events: list[Event]) -> list[Delivery]:
    return [Delivery("t", 0, i, e, [], 0) for i, e in enumerate(events)]


def scored(order_id: str, version: int, probability: float, flagged: bool) -> OrderEnriched:
    lineage = ScoreLineage(
        model="fraud", version=version, feature_schema_version=2, backend="torch", latency_ms=1.0
    )
    return OrderEnriched(
        order_id=order_id,
        source_event_id=f"src-{order_id}",
        customer_id="c-1",
        fraud=FraudAssessment(probability=probability, lineage=lineage),
        anomaly=AnomalyAssessment(percentile=50.0),
        flagged=flagged,
    )


def shadowed(order_id: str, model: str, challenger: int, score: float) -> ScoreShadowed:
    return ScoreShadowed(
        order_id=order_id,
        model=model,
        champion_version=1,
        challenger_version=challenger,
        champion_score=0.5,
        challenger_score=score,
        difference=score - 0.5,
    )


def reported(order_id: str, day: float) -> ChargebackReported:
    at = BASE + timedelta(days=day)
    return ChargebackReported(order_id=order_id, reported_at=at, reason="fraud_card_absent")


async def test_the_labels_flow_keeps_one_chargeback_per_order(db: Database) -> None:
    assert FLOWS["labels"].topics == (CHARGEBACKS,)
    first, again = reported("o-1", 3), reported("o-1", 4)  # reported twice: the first stays
    async with FlowHarness(LabelProjection(db), topics=["cb"]) as h:
        for event in (first, again, first, reported("o-2", 5)):
            await h.send("cb", event)
        await h.drained()
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(chargebacks).order_by(chargebacks.c.order_id))).all()
        assert (await conn.execute(select(func.count()).select_from(chargebacks))).scalar() == 2
    assert [(r.order_id, r.event_id) for r in rows] == [
        ("o-1", first.event_id),
        ("o-2", rows[1].event_id),
    ]


async def test_precision_and_recall_per_version_on_matured_orders(db: Database) -> None:
    queries = LabelQueries(db)
    nothing = await queries.outcomes(label_delay=timedelta(days=5), shadow_thresholds={})
    assert nothing.labelled_through is None and nothing.versions == ()

    # Ten orders, one a day. fraud-v1 decided orders 0-5, fraud-v2 orders 6-9.
    orders = [make_order(order_id=f"o-{i}") for i in range(10)]
    orders = [
        o.model_copy(update={"placed_at": BASE + timedelta(days=i)}) for i, o in enumerate(orders)
    ]
    held = {0, 1, 2, 6, 7}
    enriched = [
        scored(o.order_id, 1 if i < 6 else 2, 0.9 if i in held else 0.1, i in held)
        for i, o in enumerate(orders)
    ]
    # v3 ran in the shadow on orders 0-7, high on 0, 3 and 6; an anomaly challenger too.
    shadows: list[Event] = [
        shadowed(f"o-{i}", "fraud", 3, 0.9 if i in {0, 3, 6} else 0.1) for i in range(8)
    ]
    shadows.append(shadowed("o-1", "anomaly", 7, 0.99))
    # Frauds 0, 1, 3, 6 and 8; the latest report on day 12, so with a 5-day delay only
    # orders placed by day 7 count: order 8's chargeback is in, but its cohort is not yet.
    labels: list[Event] = [reported(f"o-{i}", i + 3) for i in (0, 1, 3, 6)]
    labels.append(reported("o-8", 12))
    await StatusProjection(db).handle(_deliveries(list(orders)))
    await ScoreProjection(db).handle(_deliveries([*enriched, *shadows]))
    await LabelProjection(db).handle(_deliveries(labels))

    got = await queries.outcomes(label_delay=timedelta(days=5), shadow_thresholds={3: 0.5})
    assert got.chargebacks == 5
    assert got.labelled_through == BASE + timedelta(days=12)
    assert got.matured_before == BASE + timedelta(days=7)
    by = {(o.version, o.role): o for o in got.versions}
    assert set(by) == {(1, "champion"), (2, "champion"), (3, "shadow")}
    v1, v2, v3 = by[(1, "champion")], by[(2, "champion")], by[(3, "shadow")]
    # v1: orders 0-5, frauds {0,1,3}, held {0,1,2}, caught {0,1}
    assert (v1.orders, v1.frauds, v1.held, v1.caught) == (6, 3, 3, 2)
    assert v1.precision == pytest.approx(2 / 3) and v1.recall == pytest.approx(2 / 3)
    # v2: matured orders 6 and 7 only; fraud {6}, held {6,7}
    assert (v2.orders, v2.frauds, v2.held, v2.caught) == (2, 1, 2, 1)
    assert v2.precision == pytest.approx(0.5) and v2.recall == pytest.approx(1.0)
    # v3 in the shadow at its own threshold: orders 0-7, frauds {0,1,3,6}, held {0,3,6}
    assert (v3.orders, v3.frauds, v3.held, v3.caught) == (8, 4, 3, 3)
    assert v3.precision == pytest.approx(1.0) and v3.recall == pytest.approx(0.75)
    assert v3.threshold == 0.5
    assert await queries.shadow_versions() == [3]

    # No delay: every order counts, order 8's chargeback now a miss of v2's.
    now = await queries.outcomes(label_delay=timedelta(0), shadow_thresholds={})
    v2_all = next(o for o in now.versions if o.version == 2)
    assert (v2_all.orders, v2_all.frauds, v2_all.held, v2_all.caught) == (4, 2, 2, 1)
    assert v2_all.recall == pytest.approx(0.5)
    assert all(o.role == "champion" for o in now.versions)

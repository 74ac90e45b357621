"""GET /models and the model gauges without a broker: registry aliases, drift of a version's
latest orders against its training reference (one input moved, its score did not; for upsell,
its best suggestion's score read from the stored events), and online precision and recall from
chargebacks, as champion and in the shadow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from ingest.consumer import Delivery
from ingest.events import (
    AnomalyAssessment,
    ChargebackReported,
    Event,
    FraudAssessment,
    OrderEnriched,
    ScoreLineage,
    ScoreShadowed,
    UpsellAssessment,
    UpsellSuggestion,
)
from models.drift import UPSELL_SCORE, ModelReference, order_inputs, reference_histogram
from models.registry import Registry
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.settings import Settings
from services.labels import LabelProjection
from services.scores import ScoreProjection
from services.status import StatusProjection
from tests.support.orders import make_order

KEY = "monitor-inspect-key-0123456789"
N = 60
FRAUDS = {0, 1, 2, 3, 10, 11}  # charged back
HELD = {0, 1, 2, 20}  # the champion (v1) flagged these
SHADOW_HIGH = {0, 1, 2, 3, 10, 30}  # v2's score above its threshold
UPSELL_V1 = set(range(10))  # scored by upsell v1 (no reference), the rest by v2
UPSELL_DEGRADED = {20, 21}  # v2 failed on these: inputs, but no score
UPSELL_SCORED = [i for i in range(N) if i not in UPSELL_V1 | UPSELL_DEGRADED]
TOP = np.linspace(0.05, 0.5, N)  # each order's best suggestion's score


def _deliveries(events: list[Event]) -> list[Delivery]:
    return [Delivery("t", 0, i, e, [], 0) for i, e in enumerate(events)]


def _publish(registry: Registry, name: str, reference: ModelReference, **params: Any) -> None:
    registry.publish(
        name,
        lambda _folder: params,
        training_data_hash="sha256:x",
        metrics={"val_auc": 0.9},
        reference=reference.to_json(),
    )


def _upsell(i: int) -> UpsellAssessment:
    lineage = ScoreLineage(
        model="upsell",
        version=1 if i in UPSELL_V1 else 2,
        feature_schema_version=1,
        backend="numpy",
        latency_ms=1.0,
    )
    if i in UPSELL_DEGRADED:
        return UpsellAssessment(degraded=True, reason="timeout", lineage=lineage)
    suggestions = tuple(
        UpsellSuggestion(sku=sku, name=sku, reason="complement", score=float(TOP[i]) * share)
        for sku, share in (("cola", 1.0), ("tiramisu", 0.5))  # best first
    )
    return UpsellAssessment(suggestions=suggestions, lineage=lineage)


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    probabilities = np.linspace(0.01, 0.99, N)
    registry = Registry(tmp_path / "registry")
    fraud_reference = ModelReference(
        scores={"probability": reference_histogram(probabilities)},
        inputs={
            # trained on tiny baskets: every order below costs far more (drift)
            "log_total": reference_histogram(np.log1p(np.full(500, 4.0))),
            "pay_card": reference_histogram(np.ones(500)),  # every order here pays by card
        },
    )
    _publish(registry, "fraud", fraud_reference, hold_threshold=0.5)
    _publish(registry, "fraud", fraud_reference, hold_threshold=0.5)
    _publish(registry, "anomaly", ModelReference())  # trained before references: no drift
    _publish(registry, "upsell", ModelReference())  # v1: before references, no drift
    one_to_five = [make_order(skus=(("pepperoni_m", "12.50", q),)) for q in range(1, 6)]
    units = order_inputs(one_to_five, ["log_units"])["log_units"]
    upsell_reference = ModelReference(
        scores={UPSELL_SCORE: reference_histogram(TOP[UPSELL_SCORED])},
        inputs={
            "n_lines": reference_histogram(np.ones(500)),  # one line, like every order below
            # trained on one to five units a basket: every order below has one (drift)
            "log_units": reference_histogram(np.repeat(units, 100)),
        },
    )
    _publish(registry, "upsell", upsell_reference)  # v2 serves
    registry.promote("fraud", 1)
    registry.shadow("fraud", 2)
    settings = Settings(
        kafka_bootstrap="127.0.0.1:9",
        home=tmp_path,
        registry_dir=tmp_path / "registry",
        api={"keys": [{"name": "ops", "secret": KEY, "scopes": ["inspect"]}]},
        monitor={"drift_min_orders": 20, "label_delay_s": 0, "refresh_s": 0},
    )
    async with Shop(settings, "127.0.0.1:9", Wiring(workers=(), create_topics=False)) as s:
        orders = [make_order(order_id=f"o-{i}") for i in range(N)]
        lineage = ScoreLineage(
            model="fraud", version=1, feature_schema_version=2, backend="torch", latency_ms=1.0
        )
        enriched: list[Event] = [
            OrderEnriched(
                order_id=o.order_id,
                source_event_id=o.event_id,
                customer_id=o.customer_id,
                fraud=FraudAssessment(probability=float(probabilities[i]), lineage=lineage),
                anomaly=AnomalyAssessment(percentile=50.0),
                upsell=_upsell(i),
                flagged=i in HELD,
            )
            for i, o in enumerate(orders)
        ]
        shadows: list[Event] = [
            ScoreShadowed(
                order_id=o.order_id,
                model="fraud",
                champion_version=1,
                challenger_version=2,
                champion_score=0.1,
                challenger_score=0.9 if i in SHADOW_HIGH else 0.1,
                difference=0.0,
            )
            for i, o in enumerate(orders)
        ]
        labels: list[Event] = [
            ChargebackReported(
                order_id=f"o-{i}",
                reported_at=orders[i].placed_at + timedelta(days=5),
                reason="fraud_card_absent",
            )
            for i in sorted(FRAUDS)
        ]
        await StatusProjection(s.db).handle(_deliveries(list(orders)))
        await ScoreProjection(s.db).handle(_deliveries([*enriched, *shadows]))
        await LabelProjection(s.db).handle(_deliveries(labels))
        yield s


async def test_models_show_aliases_drift_and_online_precision_recall(shop: Shop) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(shop)), base_url="http://shop"
    ) as http:
        assert (await http.get("/models")).status_code == 401
        response = await http.get("/models", headers={"X-API-Key": KEY})
        assert response.status_code == 200, response.text
        metrics = (await http.get("/metrics")).text
    report = response.json()
    assert report["psi_alert"] == 0.2 and report["chargebacks"] == len(FRAUDS)
    models = {m["name"]: m for m in report["models"]}
    fraud, anomaly = models["fraud"], models["anomaly"]
    assert (fraud["champion"], fraud["challenger"], fraud["serving"]) == (1, 2, 1)
    assert [v["version"] for v in fraud["versions"]] == [2, 1]
    v2, v1 = fraud["versions"]
    assert v1["aliases"] == ["champion"] and v2["aliases"] == ["challenger"]
    assert v1["metrics"] == {"val_auc": 0.9}

    drift = {(d["kind"], d["feature"]): d for d in v1["drift"]}
    assert set(drift) == {("score", "probability"), ("input", "log_total"), ("input", "pay_card")}
    assert drift[("score", "probability")]["psi"] < 0.01  # the very scores it was trained on
    assert drift[("input", "pay_card")]["psi"] < 0.01
    assert drift[("input", "log_total")]["psi"] > 0.2 and drift[("input", "log_total")]["alert"]
    assert all(d["orders"] == N for d in v1["drift"])
    assert v1["drift_alert"] is True
    assert v2["drift"] == [] and v2["drift_alert"] is False  # it decided nothing: no window
    assert anomaly["versions"][0]["drift"] == []

    upsell = models["upsell"]
    assert [v["version"] for v in upsell["versions"]] == [2, 1]
    u2, u1 = upsell["versions"]
    assert u1["drift"] == [] and u1["drift_alert"] is False  # scored 10 orders, no reference
    found = {(d["kind"], d["feature"]): d for d in u2["drift"]}
    assert set(found) == {("score", UPSELL_SCORE), ("input", "n_lines"), ("input", "log_units")}
    top = found[("score", UPSELL_SCORE)]
    # its best suggestions' scores (not the second's), without the degraded orders
    assert top["psi"] < 0.01 and top["orders"] == len(UPSELL_SCORED)
    assert found[("input", "n_lines")]["psi"] < 0.01
    assert found[("input", "log_units")]["psi"] > 0.2 and found[("input", "log_units")]["alert"]
    assert found[("input", "n_lines")]["orders"] == N - len(UPSELL_V1)  # degraded ones count
    assert u2["drift_alert"] is True

    online = {o["role"]: o for o in v1["online"]}
    champion = online["champion"]
    # held {0,1,2,20}, frauds {0,1,2,3,10,11}: 3 of 4 held were frauds, 3 of 6 frauds held
    assert (champion["held"], champion["caught"], champion["chargebacks"]) == (4, 3, 6)
    assert champion["precision"] == pytest.approx(0.75)
    assert champion["recall"] == pytest.approx(0.5)
    [shadow] = v2["online"]
    assert shadow["role"] == "shadow" and shadow["threshold"] == 0.5
    # high on {0,1,2,3,10,30}: 5 of 6 were frauds, 5 of 6 frauds caught
    assert shadow["precision"] == pytest.approx(5 / 6)
    assert shadow["recall"] == pytest.approx(5 / 6)

    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    psi = ("model", "fraud"), ("version", "1")
    assert got[("pizzashop_model_psi", (("feature", "log_total"), ("kind", "input"), *psi))] > 0.2
    assert got[("pizzashop_model_drift_alert", psi)] == 1.0
    upsell_psi = ("model", "upsell"), ("version", "2")
    upsell_top = ("feature", UPSELL_SCORE), ("kind", "score"), *upsell_psi
    assert got[("pizzashop_model_psi", upsell_top)] == pytest.approx(top["psi"])
    assert got[("pizzashop_model_drift_alert", upsell_psi)] == 1.0
    assert ("pizzashop_model_drift_alert", (("model", "upsell"), ("version", "1"))) not in got
    assert got[("pizzashop_model_psi_alert_threshold", ())] == 0.2
    role = ("role", "champion"), ("version", "1")
    assert got[("pizzashop_model_online_precision", (("model", "fraud"), *role))] == 0.75
    assert got[("pizzashop_model_online_recall", (("model", "fraud"), *role))] == 0.5
    shadow_role = ("model", "fraud"), ("role", "shadow"), ("version", "2")
    assert got[("pizzashop_model_online_precision", shadow_role)] == pytest.approx(5 / 6)
    assert got[("pizzashop_model_labelled_orders", shadow_role)] == N
    assert got[("pizzashop_model_alias_version", (("alias", "champion"), ("model", "fraud")))] == 1
    assert (
        got[("pizzashop_model_alias_version", (("alias", "challenger"), ("model", "fraud")))] == 2
    )

"""Model monitoring on the real broker: ``pizzashop simulate --held-out`` publishes orders from
a held-out world to a running shop (enricher with a champion and a shadow, score and status
projections) and their chargebacks on the chargebacks topic, days later in simulated time;
``GET /models`` and ``/metrics`` show drift against training (fraud's and upsell's) and online
precision and recall per version and role."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from api.app import create_app
from models._worlds import sample_config
from models.drift import UPSELL_INPUTS, UPSELL_SCORE
from models.registry import Registry
from models.simulator import chargebacks, simulate
from pizzashop.app.shop import Shop, Wiring
from pizzashop.app.simulate_command import publish_simulated
from pizzashop.core.settings import Settings
from services.scores import shadow_scores
from tests.support.shop import API_HEADERS, eventually

WORKERS = Wiring(api=False, workers=("enricher", "scores", "status", "labels"))
N_ORDERS = 300
SEED = 1  # a world with 25 frauds in its first 300 orders
DELAYS = (2.0, 10.0)
SHADOW_THRESHOLD = 0.02  # the challenger holds far more than the champion


def _challenger(registry: Registry) -> int:
    """The fraud champion again under a new number, with a much lower hold threshold."""
    latest = registry.load("fraud")

    def write(target: Path) -> dict[str, object]:
        for item in latest.path.iterdir():
            if item.name != "metadata.json":
                shutil.copy2(item, target / item.name)
        return {**latest.metadata.params, "hold_threshold": SHADOW_THRESHOLD}

    return registry.publish(
        "fraud",
        write,
        training_data_hash=latest.metadata.training_data_hash,
        metrics=latest.metadata.metrics,
        reference=latest.metadata.reference,
    ).version


async def test_models_report_drift_and_online_precision_recall(
    shop_settings: Settings, trained_registry: Path, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    shutil.copytree(trained_registry, root)
    registry = Registry(root)
    champion = registry.champion("fraud")
    assert champion is not None
    registry.promote("fraud", champion)
    challenger = _challenger(registry)
    registry.shadow("fraud", challenger)
    settings = shop_settings.model_copy(
        update={
            "registry_dir": root,
            "monitor": shop_settings.monitor.model_copy(
                update={"drift_min_orders": 50, "label_delay_s": 0.0, "refresh_s": 0.0}
            ),
        }
    )
    # what `pizzashop simulate --held-out` publishes (the same seed gives the same records)
    stream = simulate(N_ORDERS, seed=SEED, config=sample_config(SEED, held_out=True))
    reports = chargebacks(stream, seed=SEED, delay_days=DELAYS)
    assert reports, "the world should have some fraud in 300 orders"
    frauds = {c.order_id for c in reports}
    ids = [o.order_id for o in stream.orders]

    async with Shop(settings, settings.kafka_bootstrap or "", WORKERS) as shop:
        transport = httpx.ASGITransport(app=create_app(shop))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://shop", headers=API_HEADERS
        ) as http:
            sent = await publish_simulated(settings, N_ORDERS, SEED, True, True, DELAYS)
            assert sent == (N_ORDERS, len(reports))

            async def scored_and_placed() -> bool:
                placed = await shop.queries.counts(ids)
                return (
                    await shop.scores.count(ids) == N_ORDERS
                    and placed.get("OrderPlaced") == N_ORDERS
                )

            await eventually(scored_and_placed, timeout_s=120)

            async def labelled() -> bool:
                body = (await http.get("/models")).json()
                return bool(body["chargebacks"] == len(reports))

            await eventually(labelled, timeout_s=60)

            async def shadowed() -> bool:
                return (await shop.scores.summary()).shadowed >= N_ORDERS

            await eventually(shadowed, timeout_s=60)
            response = await http.get("/models")
            metrics = (await http.get("/metrics")).text
            enriched = await shop.scores.recent(limit=N_ORDERS)
            async with shop.db.engine.connect() as conn:
                challenger_scores = dict(
                    (
                        await conn.execute(
                            select(
                                shadow_scores.c.order_id, shadow_scores.c.challenger_score
                            ).where(shadow_scores.c.model == "fraud")
                        )
                    ).all()
                )
    assert response.status_code == 200, response.text
    report = response.json()
    fraud = next(m for m in report["models"] if m["name"] == "fraud")
    assert (fraud["champion"], fraud["challenger"], fraud["serving"]) == (
        champion,
        challenger,
        champion,
    )
    versions = {v["version"]: v for v in fraud["versions"]}
    serving, shadow = versions[champion], versions[challenger]
    assert serving["aliases"] == ["champion"] and shadow["aliases"] == ["challenger"]

    # drift of the champion's window, against its training reference
    drift = {(d["kind"], d["feature"]): d for d in serving["drift"]}
    assert ("score", "probability") in drift and ("input", "log_total") in drift
    assert all(d["orders"] == N_ORDERS and d["psi"] is not None for d in drift.values())
    assert serving["drift_alert"] == any(d["psi"] >= report["psi_alert"] for d in drift.values())
    print({k: round(d["psi"], 3) for k, d in drift.items()})

    # upsell's serving version: its best suggestion's score, read from the stored events
    upsell = next(m for m in report["models"] if m["name"] == "upsell")
    [upsell_serving] = [v for v in upsell["versions"] if v["version"] == upsell["serving"]]
    upsell_drift = {(d["kind"], d["feature"]): d for d in upsell_serving["drift"]}
    assert set(upsell_drift) == {("score", UPSELL_SCORE)} | {("input", n) for n in UPSELL_INPUTS}
    suggested = [e for e in enriched if e.upsell and not e.upsell.degraded and e.upsell.suggestions]
    assert upsell_drift[("score", UPSELL_SCORE)]["orders"] == len(suggested) >= 50
    assert all(d["psi"] is not None for d in upsell_drift.values())
    assert all(upsell_drift[("input", n)]["orders"] == N_ORDERS for n in UPSELL_INPUTS)
    print({k: round(d["psi"], 3) for k, d in upsell_drift.items()})

    # the champion judged by the decisions it made
    flagged = {e.order_id for e in enriched if e.flagged}
    [online] = serving["online"]
    assert online["role"] == "champion" and online["orders"] == N_ORDERS
    assert online["chargebacks"] == len(frauds)
    assert (online["held"], online["caught"]) == (len(flagged), len(flagged & frauds))
    assert online["recall"] == pytest.approx(len(flagged & frauds) / len(frauds))
    assert flagged, "the champion should hold some of this world's orders"
    assert online["precision"] == pytest.approx(len(flagged & frauds) / len(flagged))
    # the challenger at its own (lower) threshold, on the same orders
    [judged] = shadow["online"]
    high = {o for o, score in challenger_scores.items() if (score or 0) >= SHADOW_THRESHOLD}
    assert judged["role"] == "shadow" and judged["threshold"] == SHADOW_THRESHOLD
    assert (judged["orders"], judged["held"], judged["caught"]) == (
        N_ORDERS,
        len(high),
        len(high & frauds),
    )
    assert judged["held"] > online["held"]
    print({"champion": online, "shadow": judged})

    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    v = str(champion)
    log_total = ("feature", "log_total"), ("kind", "input"), ("model", "fraud"), ("version", v)
    assert np.isclose(got[("pizzashop_model_psi", log_total)], drift[("input", "log_total")]["psi"])
    top = (
        ("feature", UPSELL_SCORE),
        ("kind", "score"),
        ("model", "upsell"),
        ("version", str(upsell["serving"])),
    )
    assert np.isclose(
        got[("pizzashop_model_psi", top)], upsell_drift[("score", UPSELL_SCORE)]["psi"]
    )
    role = ("model", "fraud"), ("role", "champion"), ("version", v)
    assert got[("pizzashop_model_online_recall", role)] == pytest.approx(online["recall"])
    assert got[("pizzashop_model_online_precision", role)] == pytest.approx(online["precision"])
    assert got[("pizzashop_model_labelled_orders", role)] == N_ORDERS
    shadow_role = ("model", "fraud"), ("role", "shadow"), ("version", str(challenger))
    assert got[("pizzashop_model_online_precision", shadow_role)] == pytest.approx(
        judged["precision"]
    )

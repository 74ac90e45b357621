"""Model operations on a running enrichment worker, on the real broker: ``pizzashop models
promote``, ``rollback`` and ``shadow`` change the versions that score the next batch, in either
direction, with no restart, as read back from ``orders.enriched`` (``read_committed``)."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ingest.codec import decode
from ingest.events import OrderEnriched, OrderPlaced, ScoreShadowed
from ingest.reader import read_topics
from models.registry import Registry
from models.simulator import simulate
from pizzashop.app.cli import app
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.settings import Settings
from tests.support.shop import eventually

ENRICH = Wiring(api=False, workers=("enricher", "scores"))
MODELS = ("fraud", "anomaly", "upsell")
RELOAD_S = 0.2


@pytest.fixture
def registry(shop_settings: Settings, trained_registry: Path, tmp_path: Path) -> Registry:
    """The trained models at v1 and the same weights again as v2 of each (new numbers only)."""
    root = tmp_path / "registry"
    shutil.copytree(trained_registry, root)
    found = Registry(root)
    for name in MODELS:
        latest = found.load(name)

        def write(
            target: Path,
            source: Path = latest.path,
            params: Mapping[str, Any] = latest.metadata.params,
        ) -> dict[str, object]:
            for item in source.iterdir():
                if item.name != "metadata.json":
                    shutil.copy2(item, target / item.name)
            return dict(params)

        assert found.publish(name, write, training_data_hash="copy", metrics={}).version == 2
    return found


def models(registry: Registry, *args: str) -> str:
    """``pizzashop models ARGS`` on ``registry``, as an operator runs it."""
    result = CliRunner().invoke(app, ["models", *args, "--registry", str(registry.root)])
    assert result.exit_code == 0, result.stderr
    return result.stdout


async def run_phase(shop: Shop, seed: int, n: int = 15) -> list[str]:
    """Publish ``n`` orders once the worker's next look at the registry is due, and wait until
    all of them are scored; their order ids."""
    await asyncio.sleep(3 * RELOAD_S)  # the worker looks every RELOAD_S, between batches
    batch: Sequence[OrderPlaced] = simulate(n, seed=seed).orders
    await shop.producer.publish_many(shop.topics.orders, batch)
    ids = [o.order_id for o in batch]

    async def scored() -> bool:
        return await shop.scores.count(ids) == len(ids)

    await eventually(scored, timeout_s=60)
    return ids


async def test_promote_rollback_and_shadow_apply_to_a_running_worker(
    shop_settings: Settings, registry: Registry
) -> None:
    live = shop_settings.model_copy(
        update={
            "registry_dir": registry.root,
            "enricher": shop_settings.enricher.model_copy(update={"reload_every_s": RELOAD_S}),
        }
    )
    phases: dict[str, list[str]] = {}
    async with Shop(live, live.kafka_bootstrap or "", ENRICH) as shop:
        worker = shop.runtimes["enricher"]
        phases["latest"] = await run_phase(shop, seed=41)
        assert models(registry, "promote", "fraud", "1") == "fraud: champion v1, challenger none\n"
        models(registry, "promote", "anomaly", "1")
        phases["promoted"] = await run_phase(shop, seed=42)
        models(registry, "promote", "fraud", "2")  # and up again
        phases["up again"] = await run_phase(shop, seed=43)
        models(registry, "rollback", "fraud")
        phases["rolled back"] = await run_phase(shop, seed=44)
        for name in MODELS:
            models(registry, "shadow", name, "1")
        phases["shadowed"] = await run_phase(shop, seed=45)
        for name in MODELS:
            models(registry, "shadow", name, "--clear")
        phases["cleared"] = await run_phase(shop, seed=46)
        assert shop.runtimes["enricher"] is worker and not list(shop.crashed())  # no restart
        records = await read_topics(
            shop.bootstrap, [shop.topics.enriched], isolation_level="read_committed"
        )
    events = [decode(r.value, list(r.headers)) for r in records]
    enriched = {e.order_id: e for e in events if isinstance(e, OrderEnriched)}
    per_order = Counter(e.order_id for e in events if isinstance(e, OrderEnriched))
    assert set(per_order.values()) == {1} and len(per_order) == 6 * 15
    shadows = [e for e in events if isinstance(e, ScoreShadowed)]

    def versions(phase: str) -> set[tuple[int, int, int]]:
        """The (fraud, anomaly, upsell) versions that scored the phase's orders."""
        found = set()
        for order_id in phases[phase]:
            e = enriched[order_id]
            assert e.upsell is not None and not e.fraud.degraded
            fraud, anomaly, upsell = e.fraud.lineage, e.anomaly.lineage, e.upsell.lineage
            assert fraud is not None and anomaly is not None and upsell is not None
            found.add((fraud.version, anomaly.version, upsell.version))
        return found

    assert versions("latest") == {(2, 2, 2)}
    assert versions("promoted") == {(1, 1, 2)}
    assert versions("up again") == {(2, 1, 2)}
    assert versions("rolled back") == {(1, 1, 2)}
    assert versions("shadowed") == {(1, 1, 2)}  # the challengers decided nothing
    assert versions("cleared") == {(1, 1, 2)}

    # Upsell's lineage carries its suggestions' reasons as attributions.
    sample = enriched[phases["latest"][0]].upsell
    assert sample is not None and sample.lineage is not None
    assert [f.name.split(":")[0] for f in sample.lineage.top_features] == [
        s.reason for s in sample.suggestions
    ]

    # Every order of the shadowed phase, and only those, was shadowed once per model.
    shadowed = set(phases["shadowed"])
    assert {s.order_id for s in shadows} == shadowed
    assert Counter((s.order_id, s.model) for s in shadows) == {
        (order_id, name): 1 for order_id in shadowed for name in MODELS
    }
    by_model = {name: [s for s in shadows if s.model == name] for name in MODELS}
    assert {(s.champion_version, s.challenger_version) for s in by_model["fraud"]} == {(1, 1)}
    assert {(s.champion_version, s.challenger_version) for s in by_model["anomaly"]} == {(1, 1)}
    assert {(s.champion_version, s.challenger_version) for s in by_model["upsell"]} == {(2, 1)}
    # Same weights, same features: a challenger of the same weights agrees with the champion.
    for s in shadows:
        assert s.difference is not None and abs(s.difference) < 1e-6, s

"""Upsell as a pipeline scorer: published and loaded through the registry, the same
suggestions as the model called directly, with the customers' histories."""

from __future__ import annotations

from pathlib import Path

from enrichers.pipeline import ScoringPipeline
from models.feature_state import InMemoryFeatureState
from models.registry import Registry
from models.scorer import Scored
from models.simulator import simulate
from models.upsell import UpsellModel
from models.upsell.history import InMemoryBasketHistory
from models.upsell.model import UpsellScorer


async def test_upsell_scores_in_the_pipeline_as_the_model_does(
    trained: UpsellModel, tmp_path: Path
) -> None:
    registry = Registry(tmp_path)
    mv = registry.publish("upsell", UpsellScorer(trained).save, training_data_hash="t", metrics={})
    assert (
        mv.metadata.params["feature_schema_version"] == trained.metadata()["feature_schema_version"]
    )
    pipeline = ScoringPipeline(registry, InMemoryFeatureState(), history=InMemoryBasketHistory())
    await pipeline.start()
    assert pipeline.versions == {"upsell": 1}
    orders = list(simulate(300, seed=4).orders)
    scores = await pipeline.score_batch(orders)
    # The same orders replayed through a fresh history give the model's direct answer.
    histories = await InMemoryBasketHistory().before(orders)
    baskets = [[item.sku for item in o.items] for o in orders]
    expected = trained.suggest(baskets, histories, 3)
    assert any(histories), "some customers come back within the batch"
    got = [s["upsell"] for s in scores]
    assert all(isinstance(r, Scored) for r in got)
    assert [list(r.value["suggestions"]) for r in got if isinstance(r, Scored)] == expected
    lineage = got[0].lineage
    assert lineage is not None
    assert (lineage.model, lineage.version, lineage.backend) == ("upsell", 1, "numpy")
    assert lineage.top_features == ()
    await pipeline.stop()

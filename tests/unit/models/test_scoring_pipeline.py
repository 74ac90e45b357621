from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Mapping
from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from enrichers.pipeline import OrderScores, ScoringPipeline
from enrichers.worker import Enricher, to_enriched
from ingest.consumer import Delivery
from ingest.events import OrderEnriched, OrderFlagged, ScoreShadowed
from ingest.topics import Topics
from models.anomaly import AnomalyModel, AnomalyScorer
from models.feature_state import InMemoryFeatureState, features_for_stream
from models.features import FEATURE_SCHEMA_VERSION
from models.fraud import FraudModel, FraudScorer
from models.registry import ModelVersion, Registry
from models.scorer import Degraded, Result, Scored, Scorer, ScoringBatch
from models.simulator import SimulatedStream
from models.training import TrainReport
from pizzashop.core.menu import load_menu


def value(result: Result | None) -> Mapping[str, Any]:
    """A result's value, failing the test when it is not ``Scored``."""
    assert isinstance(result, Scored), result
    return result.value


def reason(result: Result | None) -> str:
    """Why a result is degraded, failing the test when it is not ``Degraded``."""
    assert isinstance(result, Degraded), result
    return result.reason


class ExplodingFraud(FraudModel):
    def core(self, x: np.ndarray) -> np.ndarray:
        raise RuntimeError("kaboom")


class SlowAnomaly(AnomalyModel):
    def core(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(0.5)
        return super().core(x)


@dataclass(frozen=True)
class _Suggestion:
    sku: str
    reason: str
    score: float


class FakeUpsell(Scorer[int, int]):
    name = "upsell"
    version = 0
    backend = "fake"
    feature_schema_version = 9

    @classmethod
    def load(cls, artifact: ModelVersion, *, prefer_onnx: bool = True) -> FakeUpsell:
        return cls()

    def save(self, target: Path) -> dict[str, object]:
        return {}

    def pre(self, batch: ScoringBatch) -> int:
        return len(batch)

    def core(self, inputs: int) -> int:
        return inputs

    def post(self, raw: int, batch: ScoringBatch) -> list[Result]:
        return [Scored({"suggestions": (_Suggestion("cola", "complement", 0.5),)})] * raw


def scorers(fraud: FraudModel, anomaly: AnomalyModel | None = None) -> list[Scorer[Any, Any]]:
    found: list[Scorer[Any, Any]] = [FraudScorer(fraud)]
    return found + ([AnomalyScorer(anomaly)] if anomaly is not None else [])


async def test_scores_with_lineage(stream: SimulatedStream) -> None:
    orders = stream.orders[:40]
    pipeline = ScoringPipeline.from_scorers(
        InMemoryFeatureState(),
        [*scorers(FraudModel.dummy(), AnomalyModel.dummy()), FakeUpsell()],
    )
    await pipeline.start()
    scores = await pipeline.score_batch(orders)
    assert [s.order_id for s in scores] == [o.order_id for o in orders]
    assert all(isinstance(r, Scored) for s in scores for r in s.results.values())
    x = features_for_stream(orders)
    # The same numbers as the models called directly on the same features.
    expected = FraudModel.dummy().predict(x)
    got = np.array([value(s["fraud"])["probability"] for s in scores])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    error, percentile = AnomalyModel.dummy().predict(x)
    anomaly = [s["anomaly"] for s in scores]
    np.testing.assert_allclose([value(a)["error"] for a in anomaly], error, rtol=1e-6)
    np.testing.assert_allclose([value(a)["percentile"] for a in anomaly], percentile)
    first = scores[0]
    fraud = first["fraud"]
    assert fraud.lineage is not None
    assert fraud.lineage.model == "fraud" and fraud.lineage.backend == "torch"
    assert fraud.lineage.feature_schema_version == FEATURE_SCHEMA_VERSION
    assert fraud.lineage.latency_ms > 0
    assert len(fraud.lineage.top_features) == 3
    upsell = first["upsell"]
    assert isinstance(upsell, Scored)
    assert value(upsell)["suggestions"][0].sku == "cola"
    assert upsell.lineage is not None
    assert upsell.lineage.feature_schema_version == 9
    with pytest.raises(FrozenInstanceError):
        first.results = {}  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        fraud.lineage = None  # type: ignore[misc]
    assert first.to_dict()["fraud"]["lineage"]["model"] == "fraud"
    enriched = to_enriched(orders[0], first, load_menu(), threshold=0.5)
    assert enriched.fraud.probability == value(fraud)["probability"]
    assert enriched.fraud.lineage == fraud.lineage
    assert enriched.upsell is not None and enriched.upsell.suggestions[0].name == "Cola"


async def test_a_failing_or_slow_model_degrades_only_its_score(stream: SimulatedStream) -> None:
    dummy_f, dummy_a = FraudModel.dummy(), AnomalyModel.dummy()
    fraud = ExplodingFraud(dummy_f.net, dummy_f.platt, prefer_onnx=False)
    anomaly = SlowAnomaly(dummy_a.net, dummy_a.training_errors, prefer_onnx=False)
    pipeline = ScoringPipeline.from_scorers(
        InMemoryFeatureState(), [*scorers(fraud, anomaly), FakeUpsell()], timeout_s=0.1
    )
    orders = stream.orders[:5]
    scores: list[OrderScores] = await pipeline.score_batch(orders)
    assert all(isinstance(s["fraud"], Degraded) for s in scores)
    assert all("kaboom" in reason(s["fraud"]) for s in scores)
    assert all(isinstance(s["anomaly"], Degraded) for s in scores)
    assert all("timeout" in reason(s["anomaly"]) for s in scores)
    assert all(isinstance(s["upsell"], Scored) for s in scores)
    # A degraded score names the version that was tried.
    assert scores[0]["fraud"].lineage is not None
    assert scores[0]["fraud"].lineage.model == "fraud"
    enriched = to_enriched(orders[0], scores[0], load_menu(), threshold=0.0)
    assert enriched.fraud.probability is None and enriched.fraud.degraded
    assert not enriched.flagged  # a missing score holds nothing
    await pipeline.stop()


async def test_event_loop_stays_free_while_models_run(stream: SimulatedStream) -> None:
    dummy_a = AnomalyModel.dummy()
    anomaly = SlowAnomaly(dummy_a.net, dummy_a.training_errors, prefer_onnx=False)
    pipeline = ScoringPipeline.from_scorers(
        InMemoryFeatureState(), scorers(FraudModel.dummy(), anomaly)
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await pipeline.score_batch(stream.orders[:5])
    task.cancel()
    assert ticks >= 10  # the 0.5 s forward pass ran off the loop


@pytest.mark.slow  # the session's training run
async def test_reload_picks_up_a_new_version(
    trained: tuple[Path, TrainReport], stream: SimulatedStream, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    shutil.copytree(trained[0], root)
    registry = Registry(root)
    pipeline = ScoringPipeline(registry, InMemoryFeatureState())
    await pipeline.start()
    before = pipeline.versions
    assert before["fraud"] >= 1
    assert not await pipeline.reload_if_newer()
    mv = registry.load("fraud")

    def write(folder: Path) -> dict[str, object]:
        for f in mv.path.iterdir():
            if f.name != "metadata.json":
                shutil.copy(f, folder / f.name)
        return dict(mv.metadata.params)

    registry.publish("fraud", write, training_data_hash="copy", metrics={})
    assert await pipeline.reload_if_newer()
    assert pipeline.versions["fraud"] == before["fraud"] + 1
    scores = await pipeline.score_batch(stream.orders[:3])
    lineage = scores[0]["fraud"].lineage
    assert lineage is not None
    assert lineage.version == before["fraud"] + 1
    assert lineage.backend == "onnx"


async def test_the_enricher_emits_one_enrichment_per_order_with_and_without_a_shadow(
    stream: SimulatedStream,
) -> None:
    orders = stream.orders[:6]
    deliveries = [
        Delivery("orders", 0, i, order, [], 0) for i, order in enumerate(reversed(orders))
    ]
    topics = Topics()

    def pipeline() -> ScoringPipeline:
        return ScoringPipeline.from_scorers(
            InMemoryFeatureState(), scorers(FraudModel.dummy(), AnomalyModel.dummy())
        )

    plain = Enricher(pipeline(), topics, load_menu(), fraud_threshold=0.0)
    outputs = await plain.handle(deliveries)
    enriched = [o.event for o in outputs if isinstance(o.event, OrderEnriched)]
    flags = [o.event for o in outputs if isinstance(o.event, OrderFlagged)]
    # Scored in placement order, whatever the delivery order; threshold 0 flags every order.
    assert [e.order_id for e in enriched] == [o.order_id for o in orders]
    assert [f.order_id for f in flags] == [o.order_id for o in orders]
    assert all(f.model == "fraud-v0" for f in flags)
    assert len(outputs) == 12
    shadowed = Enricher(pipeline(), topics, load_menu(), fraud_threshold=1.0, shadow=pipeline())
    outputs = await shadowed.handle(deliveries)
    shadows = [o.event for o in outputs if isinstance(o.event, ScoreShadowed)]
    assert len(outputs) == 18 and len(shadows) == 12  # fraud and anomaly each
    assert all(s.difference == 0.0 and s.challenger_version == 0 for s in shadows)
    for enricher in (plain, shadowed):
        await enricher.stop()

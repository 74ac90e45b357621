from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path

import numpy as np
import pytest

from enrichers.pipeline import OrderScores, ScoringPipeline
from models.anomaly import AnomalyModel
from models.feature_state import InMemoryFeatureState, features_for_stream
from models.features import FEATURE_SCHEMA_VERSION
from models.fraud import FraudModel
from models.registry import Registry
from models.simulator import SimulatedStream
from models.training import TrainReport


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


class FakeUpsell:
    def warm_up(self) -> None:
        pass

    def metadata(self) -> dict[str, int]:
        return {"feature_schema_version": 9}

    def suggest(self, baskets, histories, k):  # type: ignore[no-untyped-def]
        return [[_Suggestion("cola", "complement", 0.5)] for _ in baskets]


async def test_scores_with_lineage(stream: SimulatedStream) -> None:
    orders = stream.orders[:40]
    pipeline = ScoringPipeline.from_models(
        InMemoryFeatureState(), FraudModel.dummy(), AnomalyModel.dummy(), FakeUpsell()
    )
    await pipeline.start()
    scores = await pipeline.score_batch(orders)
    assert [s.order_id for s in scores] == [o.order_id for o in orders]
    expected = FraudModel.dummy().predict(features_for_stream(orders))
    got = np.array([s.fraud.probability for s in scores])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    first = scores[0]
    assert first.fraud.lineage is not None
    assert first.fraud.lineage.feature_schema_version == FEATURE_SCHEMA_VERSION
    assert first.fraud.lineage.latency_ms > 0
    assert len(first.fraud.lineage.top_features) == 3
    assert first.anomaly.percentile is not None
    assert first.upsell is not None
    assert first.upsell.suggestions[0].sku == "cola"
    assert first.upsell.lineage is not None
    assert first.upsell.lineage.feature_schema_version == 9
    with pytest.raises(FrozenInstanceError):
        first.fraud = first.fraud  # type: ignore[misc]
    assert first.to_dict()["fraud"]["lineage"]["model"] == "fraud"


async def test_a_failing_or_slow_model_degrades_only_its_score(stream: SimulatedStream) -> None:
    dummy_f, dummy_a = FraudModel.dummy(), AnomalyModel.dummy()
    fraud = ExplodingFraud(dummy_f.net, dummy_f.platt, prefer_onnx=False)
    anomaly = SlowAnomaly(dummy_a.net, dummy_a.training_errors, prefer_onnx=False)
    pipeline = ScoringPipeline.from_models(
        InMemoryFeatureState(), fraud, anomaly, FakeUpsell(), timeout_s=0.1
    )
    scores: list[OrderScores] = await pipeline.score_batch(stream.orders[:5])
    assert all(s.fraud.degraded and "kaboom" in str(s.fraud.reason) for s in scores)
    assert all(s.anomaly.degraded and "timeout" in str(s.anomaly.reason) for s in scores)
    assert all(s.upsell is not None and not s.upsell.degraded for s in scores)
    assert scores[0].fraud.probability is None


async def test_event_loop_stays_free_while_models_run(stream: SimulatedStream) -> None:
    dummy_a = AnomalyModel.dummy()
    anomaly = SlowAnomaly(dummy_a.net, dummy_a.training_errors, prefer_onnx=False)
    pipeline = ScoringPipeline.from_models(InMemoryFeatureState(), FraudModel.dummy(), anomaly)
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
    assert scores[0].fraud.lineage is not None
    assert scores[0].fraud.lineage.version == before["fraud"] + 1
    assert scores[0].fraud.lineage.backend == "onnx"

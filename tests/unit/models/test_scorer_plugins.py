"""Models as plug-ins: a new scorer through its one registration line, a hung model that
degrades only itself, and per-order degradation from ``post``."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from enrichers.pipeline import ScoringPipeline
from enrichers.worker import to_enriched
from models.feature_state import InMemoryFeatureState, features_for_stream
from models.features import FEATURE_NAMES
from models.fraud import FraudModel, FraudScorer
from models.registry import SCORERS, ModelVersion, Registry, scorer_class
from models.scorer import Degraded, Result, Scored, Scorer, ScoringBatch, TopFeatures
from models.simulator import SimulatedStream
from pizzashop.core.errors import ConfigError
from pizzashop.core.menu import load_menu


def value(result: Result | None) -> Mapping[str, Any]:
    """A result's value, failing the test when it is not ``Scored``."""
    assert isinstance(result, Scored), result
    return result.value


def reason(result: Result | None) -> str:
    """Why a result is degraded, failing the test when it is not ``Degraded``."""
    assert isinstance(result, Degraded), result
    return result.reason


class ToyScorer(Scorer[np.ndarray, np.ndarray]):
    """A deterministic dummy model: the basket size times a weight kept in its artifact."""

    name = "toy"

    def __init__(self, weight: float = 2.0, version: int = 0) -> None:
        self.weight = weight
        self._version = version
        self.warmed = False

    @property
    def version(self) -> int:
        return self._version

    @property
    def backend(self) -> str:
        return "numpy"

    @property
    def feature_schema_version(self) -> int:
        return 7

    @classmethod
    def load(cls, artifact: ModelVersion, *, prefer_onnx: bool = True) -> ToyScorer:
        weight = json.loads((artifact.path / "toy.json").read_text())["weight"]
        return cls(weight, artifact.version)

    def save(self, target: Path) -> dict[str, Any]:
        (target / "toy.json").write_text(json.dumps({"weight": self.weight}))
        return {"weight": self.weight}

    def warm_up(self) -> None:
        self.warmed = True

    def pre(self, batch: ScoringBatch) -> np.ndarray:
        return np.array([sum(item.quantity for item in o.items) for o in batch.orders], float)

    def core(self, inputs: np.ndarray) -> np.ndarray:
        return self.weight * inputs

    def explain(self, inputs: np.ndarray, raw: np.ndarray, k: int) -> list[TopFeatures]:
        return [(("items", float(v)),) for v in inputs]

    def post(self, raw: np.ndarray, batch: ScoringBatch) -> list[Result]:
        return [Scored({"size": float(v)}) for v in raw]


class HungScorer(ToyScorer):
    """A model whose forward pass blocks until ``release`` is set."""

    name = "hung"
    release = threading.Event()

    def core(self, inputs: np.ndarray) -> np.ndarray:
        self.release.wait(30)
        return inputs


def expected_sizes(stream: SimulatedStream, n: int, weight: float) -> list[float]:
    return [weight * sum(i.quantity for i in o.items) for o in stream.orders[:n]]


async def test_a_new_model_joins_through_its_one_registration(
    stream: SimulatedStream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(SCORERS, "toy", f"{__name__}:ToyScorer")  # the one registration
    registry = Registry(tmp_path)
    registry.publish("toy", ToyScorer(weight=3.0).save, training_data_hash="toy", metrics={})
    # Every registered model is served; fraud, anomaly and upsell have no artifacts here.
    pipeline = ScoringPipeline(registry, InMemoryFeatureState())
    await pipeline.start()
    assert pipeline.versions == {"toy": 1}
    assert all(isinstance(s, ToyScorer) and s.warmed for s in pipeline.scorers)
    orders = stream.orders[:20]
    scores = await pipeline.score_batch(orders)
    toy = [s["toy"] for s in scores]
    assert all(isinstance(r, Scored) for r in toy)
    assert [value(r)["size"] for r in toy] == expected_sizes(stream, 20, 3.0)
    lineage = toy[0].lineage
    assert lineage is not None
    assert (lineage.model, lineage.version, lineage.backend) == ("toy", 1, "numpy")
    assert lineage.feature_schema_version == 7 and lineage.latency_ms > 0
    assert [(f.name, f.contribution) for f in lineage.top_features] == [
        ("items", sum(i.quantity for i in orders[0].items))
    ]
    # The worker still publishes: the models it knows that are not deployed are degraded.
    enriched = to_enriched(orders[0], scores[0], load_menu(), threshold=0.5)
    assert enriched.fraud.degraded and enriched.fraud.reason == "no fraud model deployed"
    assert enriched.upsell is None
    # ... and the new model's scores reach the wire too, in ``others``, with their lineage.
    (toy_wire,) = enriched.others
    assert toy_wire.model == "toy" and not toy_wire.degraded
    assert toy_wire.values["size"] == value(toy[0])["size"]
    assert toy_wire.lineage is not None and toy_wire.lineage.version == 1
    # A new version of it is picked up like any other.
    registry.publish("toy", ToyScorer(weight=5.0).save, training_data_hash="toy", metrics={})
    assert await pipeline.reload_if_newer()
    scores = await pipeline.score_batch(stream.orders[20:25])
    assert scores[0]["toy"].lineage is not None and scores[0]["toy"].lineage.version == 2
    assert [value(s["toy"])["size"] for s in scores] == [
        5.0 * sum(i.quantity for i in o.items) for o in stream.orders[20:25]
    ]
    await pipeline.stop()


def test_a_registration_must_name_a_scorer(monkeypatch: pytest.MonkeyPatch) -> None:
    assert scorer_class("fraud") is FraudScorer
    with pytest.raises(ConfigError, match="no scorer registered"):
        scorer_class("nope")
    monkeypatch.setitem(SCORERS, "toy", f"{__name__}:HungScorer")  # named "hung"
    with pytest.raises(ConfigError, match="not a Scorer named 'toy'"):
        scorer_class("toy")


def test_a_hung_model_degrades_only_itself_and_leaves_the_default_executor_free(
    stream: SimulatedStream,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        # A default executor of one thread: if the hung model used it, to_thread would wait.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        hung, toy = HungScorer(), ToyScorer()
        pipeline = ScoringPipeline.from_scorers(
            InMemoryFeatureState(), [hung, toy], timeouts={"hung": 0.2}, threads=2
        )
        try:
            first = await pipeline.score_batch(stream.orders[:5])
            assert all(isinstance(s["hung"], Degraded) for s in first)
            assert "timeout after 0.2s" in reason(first[0]["hung"])
            assert [value(s["toy"])["size"] for s in first] == expected_sizes(stream, 5, 2.0)
            assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 1.0) == "free"
            # The next batch does not queue behind the hung one: degraded at once.
            started = time.perf_counter()
            second = await pipeline.score_batch(stream.orders[5:10])
            assert time.perf_counter() - started < 0.2
            assert "earlier batch still runs" in reason(second[0]["hung"])
            assert all(isinstance(s["toy"], Scored) for s in second)
            # Once it returns, the model scores again.
            HungScorer.release.set()
            await asyncio.sleep(0.05)
            third = await pipeline.score_batch(stream.orders[10:12])
            assert all(isinstance(s["hung"], Scored) for s in third)
        finally:
            HungScorer.release.set()
            await pipeline.stop()

    asyncio.run(main())


async def test_post_degrades_single_orders(stream: SimulatedStream) -> None:
    scorer = FraudScorer(FraudModel.dummy())
    orders = stream.orders[:3]
    batch = ScoringBatch(orders, features_for_stream(orders))
    results = scorer.post(np.array([0.0, np.nan, 2.0], dtype=np.float32), batch)
    assert isinstance(results[0], Scored) and value(results[0])["probability"] == 0.5
    assert isinstance(results[1], Degraded) and "nan" in results[1].reason
    assert isinstance(results[2], Scored)
    assert len(FEATURE_NAMES) == batch.features.shape[1]

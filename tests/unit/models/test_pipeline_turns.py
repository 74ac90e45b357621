"""Batches scored concurrently (the runtime hands the enricher each partition's batch as it
comes) take turns per model: none is degraded because another is in flight, and a model never
runs two batches at once. A hung model still degrades the next batch at once."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np

from enrichers.pipeline import ScoringPipeline
from models.feature_state import InMemoryFeatureState
from models.registry import ModelVersion
from models.scorer import Degraded, Result, Scored, Scorer, ScoringBatch
from models.simulator import SimulatedStream


class SlowScorer(Scorer[int, list[float]]):
    """Takes ``delay_s`` per batch and records how many batches ran at once."""

    name = "slow"
    version = 1
    backend = "numpy"
    feature_schema_version = 1

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    @classmethod
    def load(cls, artifact: ModelVersion, *, prefer_onnx: bool = True) -> SlowScorer:
        return cls(0.0)

    def save(self, target: Path) -> dict[str, object]:
        return {}

    def pre(self, batch: ScoringBatch) -> int:
        return len(batch)

    def core(self, inputs: int) -> list[float]:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.delay_s)
        with self._lock:
            self.running -= 1
        return [float(np.float64(i)) for i in range(inputs)]

    def post(self, raw: list[float], batch: ScoringBatch) -> list[Result]:
        return [Scored({"value": v}) for v in raw]


async def test_concurrent_batches_take_turns_and_none_is_degraded(
    stream: SimulatedStream,
) -> None:
    slow = SlowScorer(0.15)
    pipeline = ScoringPipeline.from_scorers(
        InMemoryFeatureState(), [slow], timeout_s=2.0, threads=3
    )
    await pipeline.start()
    try:
        batches = [stream.orders[i * 10 : (i + 1) * 10] for i in range(4)]
        began = time.perf_counter()
        scored = await asyncio.gather(*(pipeline.score_batch(b) for b in batches))
        elapsed = time.perf_counter() - began
        results = [s["slow"] for batch in scored for s in batch]
        assert all(isinstance(r, Scored) for r in results), [
            r.reason for r in results if isinstance(r, Degraded)
        ]
        assert slow.most == 1  # one batch at a time per model
        assert elapsed >= 4 * 0.15 * 0.9  # they queued, one after another
        # The lineage's latency is the model's own time, not the wait for its turn.
        latencies = [r.lineage.latency_ms for r in results if r.lineage is not None]
        assert max(latencies) < 0.15 * 1000 * 3
    finally:
        await pipeline.stop()


async def test_a_hung_model_still_degrades_the_next_batch_at_once(
    stream: SimulatedStream,
) -> None:
    slow = SlowScorer(1.0)
    pipeline = ScoringPipeline.from_scorers(
        InMemoryFeatureState(), [slow], timeout_s=0.2, threads=2
    )
    await pipeline.start()
    try:
        first, second = await asyncio.gather(
            pipeline.score_batch(stream.orders[:5]), pipeline.score_batch(stream.orders[5:10])
        )
        first_result, second_result = first[0]["slow"], second[0]["slow"]
        assert isinstance(first_result, Degraded) and isinstance(second_result, Degraded)
        assert first_result.reason == "timeout after 0.2s"
        assert "earlier batch still runs" in second_result.reason
        assert slow.most == 1
    finally:
        await pipeline.stop()

"""Latency of the scoring stack: ONNX vs eager torch per batch (each scorer's ``core``), and
the whole pipeline with all three models (no Kafka, in-memory state).

    PYTHONPATH=. python bench/score.py --registry .pizzashop/registry

Trains a small registry into a temp dir when ``--registry`` has no models.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from enrichers.pipeline import ScoringPipeline
from enrichers.worker import enriched_batch
from models.feature_state import InMemoryFeatureState, features_for_stream
from models.registry import Registry, scorer_class
from models.scorer import ScoringBatch
from models.simulator import simulate
from models.training import train
from models.upsell.history import InMemoryBasketHistory
from pizzashop.core.menu import load_menu


def _ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    root = args.registry
    if root is None or Registry(root).latest("fraud") is None:
        root = Path(tempfile.mkdtemp(prefix="bench-registry-"))
        train(root, n_orders=8000, seed=0, progress=False)
    registry = Registry(root)
    stream = simulate(3000, seed=99)
    x = features_for_stream(stream.orders)
    for name in ("fraud", "anomaly"):
        mv = registry.load(name)
        cls = scorer_class(name)
        onnx, eager = cls.load(mv), cls.load(mv, prefer_onnx=False)
        for n in (100, 1000):
            inputs = onnx.pre(ScoringBatch(stream.orders[:n], x[:n]))
            a = _ms(partial(onnx.core, inputs), args.repeat)
            b = _ms(partial(eager.core, inputs), args.repeat)
            print(f"{name:8s} batch={n:5d} onnx={a:7.3f} ms  torch={b:7.3f} ms")

    async def pipeline_run(n: int) -> tuple[float, float]:
        # As the enricher runs it: with basket histories (upsell reads them) and the mapping to
        # OrderEnriched, minus Kafka and the SQL state.
        pipe = ScoringPipeline(registry, InMemoryFeatureState(), history=InMemoryBasketHistory())
        await pipe.start()
        menu, times, cpu = load_menu(), [], []
        for start in range(0, 3000, n):
            batch = stream.orders[start : start + n]
            t0, c0 = time.perf_counter(), time.process_time()
            scores = await pipe.score_batch(batch)
            enriched_batch(batch, scores, menu, threshold=0.9)
            times.append(1000 * (time.perf_counter() - t0))
            cpu.append(1000 * (time.process_time() - c0))
        await pipe.stop()
        return statistics.median(times), statistics.median(cpu)

    for n in (100, 500, 1000):
        wall, cpu = asyncio.run(pipeline_run(n))
        print(
            f"pipeline batch={n:5d} end-to-end={wall:8.2f} ms ({1000 * n / wall:7.0f} orders/s; "
            f"CPU {cpu:8.2f} ms) features + histories + every deployed model + OrderEnriched"
        )


if __name__ == "__main__":
    main()

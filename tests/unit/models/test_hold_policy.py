"""The fraud hold policy: a threshold chosen at training for a target false-hold rate on the
validation period, recorded with the fraud version, applied by the enricher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from enrichers.pipeline import ScoringPipeline
from enrichers.worker import LEGACY_FRAUD_THRESHOLD, Enricher, hold_threshold
from ingest.consumer import Delivery
from ingest.events import OrderEnriched, OrderFlagged
from ingest.topics import Topics
from models.feature_state import InMemoryFeatureState
from models.fraud import FraudModel, FraudScorer, HoldPolicy, hold_rates
from models.fraud import hold_threshold as choose_threshold
from models.registry import Registry
from models.scorer import Scored
from models.simulator import SimulatedStream
from models.training import DEFAULT_TARGET_FALSE_HOLD_RATE, TrainReport, build_dataset
from pizzashop.core.menu import load_menu


@pytest.mark.parametrize("rate", [0.005, 0.01, 0.2])
def test_the_threshold_holds_at_most_the_target_share_of_legitimate_orders(rate: float) -> None:
    rng = np.random.default_rng(0)
    # Continuous scores, plus a block of ties that must not be split.
    legit = np.concatenate([rng.random(2000), np.full(50, 0.5)])
    threshold = choose_threshold(legit, rate)
    held = float((legit >= threshold).mean())
    assert held <= rate
    assert held >= rate - 51 / len(legit)  # short of the target by the tie block at most


def test_a_rate_outside_zero_and_one_is_refused() -> None:
    with pytest.raises(ValueError, match="false-hold rate"):
        choose_threshold(np.zeros(10), 0.0)


def test_training_records_a_threshold_that_meets_the_target_on_validation(
    trained: tuple[Path, TrainReport],
) -> None:
    root, _ = trained
    mv = Registry(root).load("fraud")
    params, metrics = mv.metadata.params, mv.metadata.metrics
    assert params["target_false_hold_rate"] == DEFAULT_TARGET_FALSE_HOLD_RATE
    assert 0.0 < params["hold_threshold"] < 1.0
    # Rebuild the validation period the version was trained on and score it as served (ONNX).
    data = build_dataset(
        int(params["sim_n_orders"]), int(params["sim_seed"]), int(params["sim_n_worlds"])
    )
    y = data.truth.is_fraud[data.val]
    p = FraudModel.load(mv).predict(data.features[data.val])
    rates = hold_rates(p, y, params["hold_threshold"])
    one_order = 1 / int((~y).sum())
    target = DEFAULT_TARGET_FALSE_HOLD_RATE
    assert target - one_order <= metrics["val_false_hold_rate"] <= target
    # ONNX and eager torch may differ in the last bits: one order's worth of tolerance.
    assert abs(rates["false_hold_rate"] - metrics["val_false_hold_rate"]) <= one_order + 1e-12
    assert abs(rates["recall"] - metrics["val_recall_at_hold"]) <= 1 / int(y.sum())
    assert metrics["val_recall_at_hold"] > rates["false_hold_rate"]  # better than chance


async def test_a_served_version_brings_its_recorded_threshold(
    trained: tuple[Path, TrainReport],
) -> None:
    root, _ = trained
    recorded = Registry(root).load("fraud").metadata.params["hold_threshold"]
    pipeline = ScoringPipeline(Registry(root), InMemoryFeatureState(), names=("fraud",))
    await pipeline.start()
    try:
        assert hold_threshold(pipeline) == recorded
        assert hold_threshold(pipeline, override=0.25) == 0.25
    finally:
        await pipeline.stop()


def _pipeline(model: FraudModel) -> ScoringPipeline:
    return ScoringPipeline.from_scorers(InMemoryFeatureState(), [FraudScorer(model)])


async def _handle(enricher: Enricher, stream: SimulatedStream) -> list[Any]:
    deliveries = [Delivery("orders", 0, i, o, [], 0) for i, o in enumerate(stream.orders[:40])]
    try:
        return [o.event for o in await enricher.handle(deliveries)]
    finally:
        await enricher.stop()


async def test_the_enricher_applies_the_models_threshold_unless_overridden(
    stream: SimulatedStream,
) -> None:
    probe = _pipeline(FraudModel.dummy())
    scores = await probe.score_batch(stream.orders[:40])
    await probe.stop()
    probability = {}
    for order, s in zip(stream.orders[:40], scores, strict=True):
        result = s["fraud"]
        assert isinstance(result, Scored)
        probability[order.order_id] = result.value["probability"]
    threshold = float(np.median(list(probability.values())))
    expected = {k for k, p in probability.items() if p >= threshold}
    assert 0 < len(expected) < len(probability)  # the test can tell a threshold from another

    model = FraudModel.dummy()
    model.hold = HoldPolicy(threshold, 0.005)
    events = await _handle(Enricher(_pipeline(model), Topics(), load_menu()), stream)
    flags = [e for e in events if isinstance(e, OrderFlagged)]
    assert {f.order_id for f in flags} == expected
    assert all(f.threshold == threshold for f in flags)
    assert {e.order_id for e in events if isinstance(e, OrderEnriched) and e.flagged} == expected

    # The setting overrides the model's threshold.
    model = FraudModel.dummy()
    model.hold = HoldPolicy(threshold, 0.005)
    enricher = Enricher(_pipeline(model), Topics(), load_menu(), fraud_threshold=0.0)
    flags = [e for e in await _handle(enricher, stream) if isinstance(e, OrderFlagged)]
    assert len(flags) == 40 and all(f.threshold == 0.0 for f in flags)


async def test_a_version_without_a_policy_gets_the_legacy_threshold(
    stream: SimulatedStream,
) -> None:
    pipeline = _pipeline(FraudModel.dummy())
    assert hold_threshold(pipeline) == LEGACY_FRAUD_THRESHOLD
    enricher = Enricher(pipeline, Topics(), load_menu(), fraud_threshold=None)
    events = await _handle(enricher, stream)
    assert all(e.threshold == LEGACY_FRAUD_THRESHOLD for e in events if isinstance(e, OrderFlagged))
    assert sum(isinstance(e, OrderEnriched) for e in events) == 40

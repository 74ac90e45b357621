from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.anomaly import AnomalyModel
from models.feature_state import features_for_stream
from models.features import FEATURE_NAMES, N_FEATURES
from models.fraud import FraudModel
from models.registry import Registry
from models.simulator import SimulatedStream
from models.training import TrainReport

pytestmark = pytest.mark.slow  # trains models


@pytest.fixture(scope="module")
def features(stream: SimulatedStream) -> np.ndarray:
    return features_for_stream(stream.orders)


def test_dummy_models_are_deterministic(features: np.ndarray) -> None:
    a, b = FraudModel.dummy(), FraudModel.dummy()
    np.testing.assert_array_equal(a.predict(features[:50]), b.predict(features[:50]))
    s1, p1 = AnomalyModel.dummy().predict(features[:50])
    s2, _p2 = AnomalyModel.dummy().predict(features[:50])
    np.testing.assert_array_equal(s1, s2)
    assert ((p1 >= 0) & (p1 <= 100)).all()


def test_onnx_matches_torch(trained: tuple[Path, TrainReport], features: np.ndarray) -> None:
    registry = Registry(trained[0])
    rng = np.random.default_rng(0)
    batch = np.concatenate([features[:500], rng.normal(0, 3, (50, N_FEATURES))]).astype(np.float32)
    fraud = FraudModel.load(registry.load("fraud"))
    anomaly = AnomalyModel.load(registry.load("anomaly"))
    assert fraud.backend == "onnx"
    assert anomaly.backend == "onnx"
    x = fraud.pre(batch)
    np.testing.assert_allclose(fraud.core(x), fraud.runner.torch(x)[0], atol=1e-4, rtol=1e-4)
    onnx_score, onnx_per = anomaly.core(x)
    torch_score, torch_per = anomaly.runner.torch(x)
    np.testing.assert_allclose(onnx_score, torch_score, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(onnx_per, torch_per, atol=1e-4, rtol=1e-4)
    for n in (1, 3):  # the batch axis really is dynamic
        assert fraud.core(x[:n]).shape == (n,)


def test_eager_fallback_when_onnx_is_missing(
    trained: tuple[Path, TrainReport], features: np.ndarray
) -> None:
    mv = Registry(trained[0]).load("fraud")
    eager = FraudModel.load(mv, prefer_onnx=False)
    assert eager.backend == "torch"
    np.testing.assert_allclose(
        eager.predict(features[:100]), FraudModel.load(mv).predict(features[:100]), atol=1e-5
    )


def test_fraud_attributions_are_occlusion_effects(features: np.ndarray) -> None:
    model = FraudModel.dummy()
    x = model.pre(features[:20])
    logits = model.core(x)
    attr = model.explain(x, logits, k=4)
    assert attr.index.shape == (20, 4)
    j = int(attr.index[0, 0])
    occluded = x[:1].copy()
    occluded[0, j] = model.net.mean.numpy()[j]
    assert attr.value[0, 0] == pytest.approx(float(logits[0] - model.core(occluded)[0]), abs=1e-5)
    assert np.all(np.abs(attr.value[:, 0]) >= np.abs(attr.value[:, -1]))
    assert attr.row(0)[0][0] == FEATURE_NAMES[j]


def test_trained_models_separate_the_classes(
    trained: tuple[Path, TrainReport], stream: SimulatedStream, features: np.ndarray
) -> None:
    registry = Registry(trained[0])
    fraud = FraudModel.load(registry.load("fraud"))
    p = fraud.predict(features)
    truth = stream.truth
    assert p[truth.scenario > 0].mean() > 5 * p[truth.scenario == 0].mean()
    assert 0 < p.mean() < 0.2  # calibrated-ish: near the fraud base rate, not 0.5
    anomaly = AnomalyModel.load(registry.load("anomaly"))
    _score, pct = anomaly.predict(features)
    assert np.median(pct[truth.is_anomaly]) > 95
    assert np.median(pct[~truth.is_anomaly]) < 80
    # attributions of an absurd-quantity order point at quantity or units
    i = int(np.flatnonzero(truth.anomaly_kind == 1)[0])
    _, per_feature = anomaly.core(anomaly.pre(features[i : i + 1]))
    names = [name for name, _ in anomaly.explain(per_feature, 3).row(0)]
    assert {"max_qty", "log_units", "log_total"} & set(names)

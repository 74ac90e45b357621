"""Drift without a broker: the PSI formula and its smoothing, fixed reference bins, readings
over a window, references recorded at training (upsell's as its serving path scores), and the
simulator's chargebacks."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from models.drift import (
    DRIFT_INPUTS,
    UPSELL_INPUTS,
    UPSELL_SCORE,
    Histogram,
    ModelReference,
    build_reference,
    order_inputs,
    psi,
    readings,
    reference_histogram,
)
from models.features import FEATURE_NAMES, OrderFrame, basket_features
from models.registry import Registry
from models.simulator import chargebacks, simulate


def test_psi_by_hand() -> None:
    # Two bins, 50/50 expected, 80/20 observed: (0.3 ln 1.6) + (-0.3 ln 0.4).
    reference = Histogram(edges=(0.5,), fractions=(0.5, 0.5), n=100)
    observed = np.array([0.0] * 80 + [1.0] * 20)
    expected = 0.3 * math.log(0.8 / 0.5) + (-0.3) * math.log(0.2 / 0.5)
    assert psi(reference, observed, epsilon=0.0) == pytest.approx(expected, rel=1e-12)
    # the other way round is the same: PSI is symmetric in the two shares
    assert psi(reference, 1.0 - observed, epsilon=0.0) == pytest.approx(expected, rel=1e-12)


def test_same_distribution_is_near_zero_and_a_shift_alerts() -> None:
    rng = np.random.default_rng(0)
    reference = reference_histogram(rng.normal(size=50_000))
    assert len(reference.fractions) == 10
    assert reference.fractions == pytest.approx([0.1] * 10, abs=1e-3)
    assert psi(reference, rng.normal(size=5000)) < 0.02
    # half a standard deviation is the textbook "act now" move
    assert psi(reference, rng.normal(loc=0.5, size=5000)) > 0.2


def test_an_empty_bin_is_smoothed_not_infinite() -> None:
    reference = Histogram(edges=(0.5,), fractions=(1.0, 0.0), n=10)
    value = psi(reference, np.array([1.0] * 10))
    assert math.isfinite(value) and value > 5  # very large, but a number a gauge can carry
    with pytest.raises(ValueError, match="no finite values"):
        psi(reference, np.array([np.nan]))


def test_binary_feature_gets_two_bins_and_values_beyond_the_edges_still_count() -> None:
    reference = reference_histogram(np.array([0.0] * 70 + [1.0] * 30))
    assert reference.edges == (0.0, 1.0)
    assert reference.fractions == pytest.approx((0.7, 0.3, 0.0))
    counts = reference.counts(np.array([-5.0, 0.0, 0.5, 1.0, 7.0, np.nan]))
    assert counts.tolist() == [2, 2, 1]  # nan dropped, outside values in the open end bins
    # a constant in training: anything else on the wire is drift, never hidden in one bin
    constant = reference_histogram(np.full(100, 3.0))
    assert psi(constant, np.full(100, 3.0)) < 1e-6
    assert psi(constant, np.full(100, 5.0)) > 1.0


def test_readings_wait_for_enough_orders_and_flag_alerts() -> None:
    rng = np.random.default_rng(1)
    reference = ModelReference(
        scores={"probability": reference_histogram(rng.uniform(size=10_000))},
        inputs={"log_total": reference_histogram(rng.normal(size=10_000))},
    )
    few = readings("fraud", 3, reference, {"probability": rng.uniform(size=50)}, {}, min_n=100)
    assert [(r.kind, r.feature, r.psi, r.n, r.alert) for r in few] == [
        ("score", "probability", None, 50, False),
        ("input", "log_total", None, 0, False),
    ]
    shifted = readings(
        "fraud",
        3,
        reference,
        {"probability": rng.uniform(size=2000)},
        {"log_total": rng.normal(loc=1.0, size=2000)},
        min_n=100,
        alert_at=0.2,
    )
    by_kind = {r.kind: r for r in shifted}
    assert by_kind["score"].psi is not None and by_kind["score"].psi < 0.2
    assert not by_kind["score"].alert
    assert by_kind["input"].psi is not None and by_kind["input"].psi > 0.2
    assert by_kind["input"].alert


def test_reference_keeps_only_watched_inputs_the_model_reads_and_round_trips(
    tmp_path: Path,
) -> None:
    stream = simulate(600, seed=4)
    x = basket_features(OrderFrame.from_orders(stream.orders))
    names = FEATURE_NAMES[: x.shape[1]]
    reference = build_reference(
        {"probability": np.linspace(0, 1, len(x))}, x, names, reads=("log_total", "pay_card")
    )
    assert set(reference.inputs) == {"log_total", "pay_card"}
    everything = build_reference({"percentile": np.linspace(0, 100, len(x))}, x, names)
    assert set(everything.inputs) == set(DRIFT_INPUTS)

    registry = Registry(tmp_path)
    published = registry.publish(
        "fraud",
        lambda folder: {},
        training_data_hash="sha256:x",
        metrics={},
        reference=reference.to_json(),
    )
    loaded = registry.load("fraud", published.version).metadata.reference
    assert ModelReference.from_json(loaded) == reference
    # a version from before references: none, and no error
    assert ModelReference.from_json({}).empty


def test_serving_inputs_match_the_training_columns() -> None:
    # The drift monitor rebuilds inputs from OrderPlaced; training read the same columns.
    stream = simulate(300, seed=5)
    x = basket_features(OrderFrame.from_orders(stream.orders))
    served = order_inputs(stream.orders, ["log_total", "hour_sin", "cust_orders_10m"])
    assert set(served) == {"log_total", "hour_sin"}  # history features are not rebuilt
    assert np.allclose(served["log_total"], x[:, FEATURE_NAMES.index("log_total")])
    # an unchanged world has no drift against its own reference
    reference = build_reference({}, x, FEATURE_NAMES[: x.shape[1]])
    assert psi(reference.inputs["log_total"], served["log_total"]) < 1e-6


def test_simulated_chargebacks_follow_the_frauds_days_later() -> None:
    stream = simulate(3000, seed=2)
    reports = chargebacks(stream, seed=1, delay_days=(2.0, 9.0))
    frauds = {stream.orders[i].order_id for i in np.flatnonzero(stream.truth.is_fraud)}
    assert frauds and {c.order_id for c in reports} == frauds
    placed = {o.order_id: o.placed_at for o in stream.orders}
    for c in reports:
        delay = c.reported_at - placed[c.order_id]
        assert timedelta(days=2) <= delay <= timedelta(days=9)
        assert c.reason.startswith("fraud_")
    assert [c.reported_at for c in reports] == sorted(c.reported_at for c in reports)
    assert (
        chargebacks(stream, seed=1, delay_days=(2.0, 9.0))[0].reported_at == reports[0].reported_at
    )


def test_training_records_each_versions_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.fraud import FraudModel
    from models.training import build_dataset, train
    from models.upsell import HashEmbedder
    from models.upsell.history import InMemoryBasketHistory
    from models.upsell.model import UpsellScorer

    # the upsell ranker on hashed words: MiniLM would only make the test slower
    monkeypatch.setattr("models.upsell.training.MiniLMEmbedder", lambda: HashEmbedder(64))
    data = build_dataset(2000, seed=1)
    report = train(
        tmp_path, n_orders=2000, seed=1, progress=False, fraud_epochs=1, anomaly_epochs=1, data=data
    )
    assert "upsell" in report.versions, report.skipped
    registry = Registry(tmp_path)
    fraud_version = registry.load("fraud")
    fraud = ModelReference.from_json(fraud_version.metadata.reference)
    anomaly = ModelReference.from_json(registry.load("anomaly").metadata.reference)
    reads = FraudModel.load(fraud_version, prefer_onnx=False).net.columns
    assert set(fraud.scores) == {"probability"} and set(anomaly.scores) == {"percentile"}
    assert set(fraud.inputs) == {n for n in DRIFT_INPUTS if n in reads} != set()
    assert set(anomaly.inputs) == set(DRIFT_INPUTS)  # the autoencoder reads every feature
    assert sum(fraud.scores["probability"].fractions) == pytest.approx(1.0)
    assert fraud.scores["probability"].n == anomaly.scores["percentile"].n > 0

    # upsell: its best suggestion's score on world 0's validation orders, and the basket inputs
    upsell_version = registry.load("upsell")
    upsell = ModelReference.from_json(upsell_version.metadata.reference)
    assert set(upsell.scores) == {UPSELL_SCORE} and set(upsell.inputs) == set(UPSELL_INPUTS)
    start, val_start, test_start = data.bounds(0)
    assert upsell.inputs["n_lines"].n == test_start - val_start
    # ... as the enricher would have scored them: histories recorded batch by batch
    scorer = UpsellScorer.load(upsell_version)
    history, histories = InMemoryBasketHistory(), []
    orders = data.stream.orders[: test_start - start]
    for at in range(0, len(orders), 250):
        histories += asyncio.run(history.before(orders[at : at + 250]))
    baskets = [[i.sku for i in o.items] for o in orders[val_start - start :]]
    served = scorer.model.suggest(baskets, histories[val_start - start :], scorer.k)
    top = np.array([row[0].score for row in served if row])
    assert upsell.scores[UPSELL_SCORE].n == len(top) > 0
    assert psi(upsell.scores[UPSELL_SCORE], top) < 1e-6
    # without the customers' histories the scores differ: the reference did use them
    alone = scorer.model.suggest(baskets)
    assert psi(upsell.scores[UPSELL_SCORE], np.array([r[0].score for r in alone if r])) > 0.01

"""Training: simulate a labelled stream, build features through the serving code path, fit
fraud and anomaly (and upsell, when ``models.upsell`` exists), publish to the registry.

The stream is split by time: the first 60% trains, the next 15% validates (early stopping and
calibration), the last 25% is held out for ``models.evaluation.evaluate`` and never read here.
The same ``(n_orders, seed)`` always yields the same stream, so evaluation can rebuild it.

The fraud hold threshold is chosen on the validation period too: the lowest that holds at most
``target_false_hold_rate`` of its legitimate orders. It is published with the fraud version
(params ``hold_threshold``, ``target_false_hold_rate``; metrics ``val_false_hold_rate``,
``val_recall_at_hold`` and ``val_recall_<scenario>``), and the enricher applies it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.anomaly import AnomalyModel, train_anomaly
from models.catalog import load_catalog
from models.feature_state import features_for_stream
from models.features import FEATURE_SCHEMA_VERSION
from models.fraud import FraudModel, choose_hold_policy, hold_rates, train_fraud
from models.registry import ModelVersion, Registry
from models.simulator import SCENARIOS, SimulatedStream, simulate

logger = logging.getLogger(__name__)
TRAIN_END = 0.60
VAL_END = 0.75
DEFAULT_ORDERS = 60_000
DEFAULT_TARGET_FALSE_HOLD_RATE = 0.005  # of legitimate orders; EnricherSettings has the same


@dataclass(frozen=True, slots=True)
class Dataset:
    stream: SimulatedStream
    features: np.ndarray  # float32 [n, N_FEATURES], computed over the whole stream in order
    train: slice
    val: slice
    test: slice

    @property
    def truth(self):  # type: ignore[no-untyped-def]
        return self.stream.truth


def build_dataset(n_orders: int = DEFAULT_ORDERS, seed: int = 0) -> Dataset:
    stream = simulate(n_orders, seed)
    features = features_for_stream(stream.orders)
    a, b = int(n_orders * TRAIN_END), int(n_orders * VAL_END)
    return Dataset(stream, features, slice(0, a), slice(a, b), slice(b, n_orders))


def data_hash(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return "sha256:" + digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class TrainReport:
    versions: dict[str, str]  # model name → tag, e.g. {"fraud": "fraud-v3"}
    seconds: dict[str, float]
    skipped: dict[str, str] = field(default_factory=dict)  # model name → why


def train(
    registry_root: Path,
    n_orders: int = DEFAULT_ORDERS,
    seed: int = 0,
    progress: bool = True,
    *,
    fraud_epochs: int = 30,
    anomaly_epochs: int = 25,
    with_upsell: bool = True,
    target_false_hold_rate: float = DEFAULT_TARGET_FALSE_HOLD_RATE,
) -> TrainReport:
    """Train and publish every model; returns the new version tags and the seconds spent.
    ``target_false_hold_rate`` chooses the fraud hold threshold on the validation period."""
    with _torch_threads(1):
        return _train(
            Registry(registry_root),
            n_orders,
            seed,
            progress,
            fraud_epochs,
            anomaly_epochs,
            with_upsell,
            target_false_hold_rate,
        )


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Tiny MLPs train faster on one thread, and the 2-core box has other work to do."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(
    registry: Registry,
    n_orders: int,
    seed: int,
    progress: bool,
    fraud_epochs: int,
    anomaly_epochs: int,
    with_upsell: bool,
    target_false_hold_rate: float,
) -> TrainReport:
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    data = build_dataset(n_orders, seed)
    seconds["data"] = time.perf_counter() - t0
    x, truth = data.features, data.truth
    sim = {"sim_seed": seed, "sim_n_orders": n_orders, "train_end": TRAIN_END, "val_end": VAL_END}
    versions: dict[str, str] = {}

    t0 = time.perf_counter()
    y = truth.is_fraud
    fraud, fraud_metrics = train_fraud(
        x[data.train],
        y[data.train],
        x[data.val],
        y[data.val],
        seed=seed,
        epochs=fraud_epochs,
        progress=progress,
    )
    fraud_metrics |= _choose_hold(fraud, data, target_false_hold_rate)
    mv = _publish(
        registry,
        fraud,
        fraud_metrics,
        sim,
        data_hash(x[data.train], y[data.train], x[data.val], y[data.val]),
    )
    versions["fraud"] = mv.metadata.tag
    seconds["fraud"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    normal = normal_rows(data, data.train)
    anomaly, anomaly_metrics = train_anomaly(
        x[normal], seed=seed, epochs=anomaly_epochs, progress=progress
    )
    mv = _publish(registry, anomaly, anomaly_metrics, sim, data_hash(x[normal]))
    versions["anomaly"] = mv.metadata.tag
    seconds["anomaly"] = time.perf_counter() - t0

    skipped: dict[str, str] = {}
    t0 = time.perf_counter()
    if not with_upsell:
        skipped["upsell"] = "not requested"
        return TrainReport(versions, seconds, skipped)
    try:
        versions["upsell"] = _train_upsell(registry, data, seed)
        seconds["upsell"] = time.perf_counter() - t0
    except ImportError as exc:
        skipped["upsell"] = f"models.upsell not available: {exc}"
    except Exception as exc:  # upsell is optional: fraud and anomaly still ship
        logger.warning("upsell training failed", exc_info=True)
        skipped["upsell"] = f"{type(exc).__name__}: {exc}"
    logger.info("training done", extra={"versions": versions, "seconds": seconds})
    return TrainReport(versions, seconds, skipped)


def _choose_hold(
    fraud: FraudModel, data: Dataset, target_false_hold_rate: float
) -> dict[str, float]:
    """Set ``fraud.hold`` from the validation period; returns what it achieved there."""
    p = fraud.predict(data.features[data.val])
    y = data.truth.is_fraud[data.val]
    fraud.hold, metrics = choose_hold_policy(p, y, target_false_hold_rate)
    per_scenario = hold_rates(p, y, fraud.hold.threshold, data.truth.scenario[data.val], SCENARIOS)
    metrics |= {f"val_{k}": v for k, v in per_scenario.items() if k.startswith("recall_")}
    logger.info(
        "fraud hold threshold %.4f for a %.2f%% false-hold rate",
        fraud.hold.threshold,
        100 * target_false_hold_rate,
        extra=metrics,
    )
    return metrics


def normal_rows(data: Dataset, part: slice) -> np.ndarray:
    """Indices of ordinary, non-anomalous orders in ``part``: the autoencoder's diet."""
    idx = np.arange(len(data.features))[part]
    truth = data.truth
    return np.asarray(idx[(truth.scenario[idx] == 0) & ~truth.is_anomaly[idx]])


def _publish(
    registry: Registry,
    model: FraudModel | AnomalyModel,
    metrics: dict[str, float],
    sim: dict[str, Any],
    digest: str,
) -> ModelVersion:
    def write(folder: Path) -> dict[str, Any]:
        return {**model.save(folder), **sim}

    return registry.publish(
        model.name,
        write,
        training_data_hash=digest,
        metrics=metrics,
        feature_schema_version=FEATURE_SCHEMA_VERSION,
    )


def _train_upsell(registry: Registry, data: Dataset, seed: int) -> str:
    """Fit ``models.upsell`` on the training + validation baskets (never the held-out ones)."""
    from models.upsell import train_upsell

    baskets = data.stream.baskets()[: data.val.stop]
    model = train_upsell(
        [b.skus for b in baskets], [b.customer_id for b in baskets], load_catalog().menu, seed=seed
    )

    def write(folder: Path) -> dict[str, Any]:
        model.save(folder)
        return {**model.metadata(), "sim_seed": data.stream.seed, "sim_n_orders": len(data.stream)}

    mv = registry.publish(
        "upsell",
        write,
        training_data_hash=data_hash(np.array([len(b.skus) for b in baskets])),
        metrics={},
    )
    return mv.metadata.tag


__all__ = [
    "DEFAULT_ORDERS",
    "DEFAULT_TARGET_FALSE_HOLD_RATE",
    "Dataset",
    "TrainReport",
    "build_dataset",
    "data_hash",
    "normal_rows",
    "train",
]

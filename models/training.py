"""Training: simulate labelled streams from a family of worlds, build features through the
serving code path, fit fraud and anomaly (and upsell, when ``models.upsell`` exists), publish
to the registry.

A dataset is ``n_worlds`` streams: world 0 is the project's own simulator, the others are
drawn from the family (``models._worlds.sample_config``: other rates, basket sizes, timings,
hours, habits), so the fraud model cannot lean on one world's particular numbers. Each world
keeps its own feature state and is split by time: the first 60% trains, the next 15%
validates (early stopping and calibration), the last 25% is held out for
``models.evaluation.evaluate`` and never read here. The same ``(n_orders, seed, n_worlds)``
always yields the same dataset, so evaluation can rebuild it.

Each version's drift reference (``models.drift``) is taken on the validation period: the model
did not fit it, and its worlds are as old as a running shop's. A world's scores slide as its
customers build history, so a reference from the young training period would read steady,
in-distribution traffic as drift (fraud score PSI 0.24 against 0.03 on the last 2,000 of 10,000
orders of a new seed of world 0). Upsell's is world 0's validation period, the world it fits
(its counts include those baskets, as they would a shop's recent ones): its best suggestion's
score, each customer's history built as serving builds it. The fraud hold threshold is chosen
on the validation period too: the lowest that holds at most ``target_false_hold_rate`` of its
legitimate orders. It is published with the fraud version (params ``hold_threshold``,
``target_false_hold_rate``; metrics ``val_false_hold_rate``, ``val_recall_at_hold`` and
``val_recall_<scenario>``), and the enricher applies it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models._worlds import sample_config
from models.anomaly import AnomalyModel, train_anomaly
from models.catalog import load_catalog
from models.drift import UPSELL_INPUTS, UPSELL_SCORE, ModelReference, build_reference
from models.feature_state import features_for_stream
from models.features import FEATURE_NAMES, FEATURE_SCHEMA_VERSION
from models.fraud import FraudModel, choose_hold_policy, hold_rates, train_fraud
from models.registry import ModelVersion, Registry
from models.simulator import SCENARIOS, GroundTruth, SimulatedStream, SimulationConfig, simulate

if TYPE_CHECKING:
    from models.upsell import UpsellModel

logger = logging.getLogger(__name__)
TRAIN_END = 0.60
VAL_END = 0.75
DEFAULT_ORDERS = 100_000
# A world needs about 10,000 orders (25 days) for its customers to build the history that
# takeovers and relative spend are about; more orders buy more worlds, not longer ones.
ORDERS_PER_WORLD = 10_000
DEFAULT_WORLDS = DEFAULT_ORDERS // ORDERS_PER_WORLD
DEFAULT_TARGET_FALSE_HOLD_RATE = 0.005  # of legitimate orders; EnricherSettings has the same


@dataclass(frozen=True, slots=True)
class Dataset:
    """Several worlds' streams end to end; ``train``/``val``/``test`` index rows of every world
    (each world split by its own time)."""

    streams: tuple[SimulatedStream, ...]
    features: np.ndarray  # float32 [n, N_FEATURES], each world computed over its stream in order
    truth: GroundTruth  # the worlds' ground truth, concatenated like ``features``
    world: np.ndarray  # int16 [n], index into ``streams``
    train: np.ndarray  # int64 row indices
    val: np.ndarray
    test: np.ndarray

    @property
    def stream(self) -> SimulatedStream:
        """World 0, the project's own simulator (the upsell model trains on its baskets)."""
        return self.streams[0]

    def bounds(self, world: int) -> tuple[int, int, int]:
        """World ``world``'s rows as (first row, first validation row, first test row)."""
        rows = np.flatnonzero(self.world == world)
        n = len(rows)
        start = int(rows[0])
        return start, start + int(n * TRAIN_END), start + int(n * VAL_END)


def worlds_for(n_orders: int) -> int:
    return max(1, n_orders // ORDERS_PER_WORLD)


def world_configs(seed: int, n_worlds: int, *, held_out: bool = False) -> list[SimulationConfig]:
    """The worlds of a dataset: the project's own first (not for held-out sets), then draws."""
    first = [] if held_out else [SimulationConfig()]
    return first + [
        sample_config(seed * 1000 + k, held_out=held_out) for k in range(len(first), n_worlds)
    ]


def world_seed(seed: int, k: int, *, held_out: bool = False) -> int:
    """World 0 of a training set is ``simulate(n, seed)`` itself; the others and every held-out
    world get seeds of their own (so their customer and order ids never collide)."""
    if k == 0 and not held_out:
        return seed
    return (2_000_000 if held_out else 1_000_000) + seed * 1000 + k


def concat_truth(truths: list[GroundTruth]) -> GroundTruth:
    return GroundTruth(
        order_id=np.concatenate([t.order_id for t in truths]),
        fraud_prob=np.concatenate([t.fraud_prob for t in truths]),
        is_fraud=np.concatenate([t.is_fraud for t in truths]),
        scenario=np.concatenate([t.scenario for t in truths]),
        is_anomaly=np.concatenate([t.is_anomaly for t in truths]),
        anomaly_kind=np.concatenate([t.anomaly_kind for t in truths]),
    )


def build_dataset(
    n_orders: int = DEFAULT_ORDERS,
    seed: int = 0,
    n_worlds: int | None = None,
    *,
    held_out: bool = False,
) -> Dataset:
    """``n_orders`` split evenly over ``n_worlds`` worlds (default: one per ORDERS_PER_WORLD);
    ``held_out`` draws worlds from outside the training family's box (``models._worlds``) with
    seeds training never uses."""
    n_worlds = n_worlds or worlds_for(n_orders)
    per_world = max(1, n_orders // n_worlds)
    configs = world_configs(seed, n_worlds, held_out=held_out)
    streams = tuple(
        simulate(per_world, world_seed(seed, k, held_out=held_out), config)
        for k, config in enumerate(configs)
    )
    # one feature state per world: worlds share no customers, cards or devices
    features = np.concatenate([features_for_stream(s.orders) for s in streams])
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    offset = 0
    for s in streams:
        n = len(s)
        a, b = offset + int(n * TRAIN_END), offset + int(n * VAL_END)
        parts[0].append(np.arange(offset, a))
        parts[1].append(np.arange(a, b))
        parts[2].append(np.arange(b, offset + n))
        offset += n
    world = np.concatenate([np.full(len(s), k, dtype=np.int16) for k, s in enumerate(streams)])
    train, val, test = (np.concatenate(p) for p in parts)
    truth = concat_truth([s.truth for s in streams])
    return Dataset(streams, features, truth, world, train, val, test)


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
    n_worlds: int | None = None,
    data: Dataset | None = None,
) -> TrainReport:
    """Train and publish every model; returns the new version tags and the seconds spent.
    ``target_false_hold_rate`` chooses the fraud hold threshold on the validation period.
    ``data``, if given, must be ``build_dataset(n_orders, seed, n_worlds)`` (a caller that
    evaluates too builds it once); the registry records those three numbers."""
    n_worlds = n_worlds or worlds_for(n_orders)
    with torch_threads(1):
        return _train(
            Registry(registry_root),
            data or build_dataset(n_orders, seed, n_worlds),
            n_orders,
            seed,
            n_worlds,
            progress,
            fraud_epochs,
            anomaly_epochs,
            with_upsell,
            target_false_hold_rate,
        )


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Tiny MLPs train faster on one thread, and the 2-core box has other work to do."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(
    registry: Registry,
    data: Dataset,
    n_orders: int,
    seed: int,
    n_worlds: int,
    progress: bool,
    fraud_epochs: int,
    anomaly_epochs: int,
    with_upsell: bool,
    target_false_hold_rate: float,
) -> TrainReport:
    seconds: dict[str, float] = {}
    x, truth = data.features, data.truth
    sim = {
        "sim_seed": seed,
        "sim_n_orders": n_orders,
        "sim_n_worlds": n_worlds,
        "train_end": TRAIN_END,
        "val_end": VAL_END,
    }
    versions: dict[str, str] = {}

    t0 = time.perf_counter()
    y = truth.is_fraud
    # The fit's target is the simulator's true fraud probability, not the label drawn from it:
    # a takeover is one or two orders per session, and a coin flip per order left the model a
    # few dozen noisy examples of it. Early stopping, calibration and the hold threshold use
    # the drawn labels, as they would with chargebacks.
    fraud, fraud_metrics = train_fraud(
        x[data.train],
        truth.fraud_prob[data.train],
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
        data_hash(x[data.train], truth.fraud_prob[data.train], x[data.val], y[data.val]),
        # the inputs the fraud model reads, and its probability as the enricher publishes it
        build_reference(
            {"probability": fraud.predict(x[data.val])},
            x[data.val],
            FEATURE_NAMES,
            reads=fraud.net.columns,
        ),
    )
    versions["fraud"] = mv.metadata.tag
    seconds["fraud"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    normal = normal_rows(data, data.train)
    anomaly, anomaly_metrics = train_anomaly(
        x[normal], seed=seed, epochs=anomaly_epochs, progress=progress
    )
    # Its reference is every order (as served), not only the normal ones it fit.
    _, percentile = anomaly.predict(x[data.val])
    mv = _publish(
        registry,
        anomaly,
        anomaly_metrics,
        sim,
        data_hash(x[normal]),
        build_reference({"percentile": percentile}, x[data.val], FEATURE_NAMES),
    )
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


def normal_rows(data: Dataset, part: np.ndarray) -> np.ndarray:
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
    reference: ModelReference,
) -> ModelVersion:
    def write(folder: Path) -> dict[str, Any]:
        return {**model.save(folder), **sim}

    return registry.publish(
        model.name,
        write,
        training_data_hash=digest,
        metrics=metrics,
        feature_schema_version=FEATURE_SCHEMA_VERSION,
        reference=reference.to_json(),
    )


def _train_upsell(registry: Registry, data: Dataset, seed: int) -> str:
    """Fit ``models.upsell`` on the training + validation baskets (never the held-out ones)."""
    from models.upsell import train_upsell

    start, _, test_start = data.bounds(0)
    baskets = data.stream.baskets()[: test_start - start]
    model = train_upsell(
        [b.skus for b in baskets], [b.customer_id for b in baskets], load_catalog().menu, seed=seed
    )
    reference = _upsell_reference(model, data)

    def write(folder: Path) -> dict[str, Any]:
        model.save(folder)
        return {**model.metadata(), "sim_seed": data.stream.seed, "sim_n_orders": len(data.stream)}

    mv = registry.publish(
        "upsell",
        write,
        training_data_hash=data_hash(np.array([len(b.skus) for b in baskets])),
        metrics={},
        reference=reference.to_json(),
    )
    return mv.metadata.tag


def _upsell_reference(model: UpsellModel, data: Dataset) -> ModelReference:
    """World 0's validation orders (the world upsell trains on) scored as the enricher scores
    them: each basket's SKUs and its customer's latest orders before it (``UpsellScorer``,
    ``SqlBasketHistory``); the reference is the best suggestion's score and the basket inputs."""
    from models.upsell.history import histories_in_order

    start, val_start, test_start = data.bounds(0)
    orders = data.stream.orders[: test_start - start]
    histories = histories_in_order(orders)[val_start - start :]
    baskets = [[item.sku for item in o.items] for o in orders[val_start - start :]]
    top = [row[0].score for row in model.suggest(baskets, histories) if row]
    return build_reference(
        {UPSELL_SCORE: np.asarray(top, dtype=np.float64)},
        data.features[val_start:test_start],
        FEATURE_NAMES,
        reads=UPSELL_INPUTS,
    )


__all__ = [
    "DEFAULT_ORDERS",
    "DEFAULT_TARGET_FALSE_HOLD_RATE",
    "DEFAULT_WORLDS",
    "ORDERS_PER_WORLD",
    "Dataset",
    "TrainReport",
    "build_dataset",
    "concat_truth",
    "data_hash",
    "normal_rows",
    "torch_threads",
    "train",
    "world_configs",
    "worlds_for",
]

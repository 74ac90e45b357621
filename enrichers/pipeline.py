"""The batch scoring pipeline the enrichment worker calls; no Kafka in here.

    orders ──pre──▶ features (one vectorised batch, state read then updated, idempotent)
           ──core─▶ fraud | anomaly | upsell forward passes, concurrently, each in a worker
                    thread so the event loop (and the consumer's heartbeats) never blocks
           ──post─▶ OrderScores: frozen records, each score with its lineage

A model that raises or overruns ``timeout_s`` yields a *degraded* score carrying the reason;
the other scores of the batch still publish. A failure to read or write the feature state is
not a model failure: it raises ``TransientError`` so the runtime retries the batch, and since
the state is idempotent by order id the retry counts nothing twice.

Models come from the registry (``fraud``, ``anomaly``, optional ``upsell``) and are swapped as
one bundle by ``reload_if_newer()``, so a batch never mixes versions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ingest.events import OrderPlaced
from models.anomaly import AnomalyModel
from models.feature_state import FeatureBuilder, FeatureStateStore
from models.features import FEATURE_SCHEMA_VERSION
from models.fraud import FraudModel
from models.registry import Registry
from models.upsell.history import BasketHistory
from pizzashop.errors import TransientError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Lineage:
    model: str
    version: int
    feature_schema_version: int
    backend: str  # "onnx" or "torch" (or "numpy" for upsell)
    latency_ms: float  # wall time of this score's batch: features + pre/core/post
    top_features: tuple[tuple[str, float], ...] = ()

    @property
    def tag(self) -> str:
        return f"{self.model}-v{self.version}"


@dataclass(frozen=True, slots=True)
class FraudScore:
    probability: float | None  # calibrated P(fraud); None when degraded
    lineage: Lineage | None
    degraded: bool = False
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class AnomalyScore:
    error: float | None  # reconstruction error, standardised units
    percentile: float | None  # 0-100 among the training errors
    lineage: Lineage | None
    degraded: bool = False
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class UpsellItem:
    sku: str
    reason: str
    score: float


@dataclass(frozen=True, slots=True)
class UpsellScore:
    suggestions: tuple[UpsellItem, ...]
    lineage: Lineage | None
    degraded: bool = False
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class OrderScores:
    order_id: str
    fraud: FraudScore
    anomaly: AnomalyScore
    upsell: UpsellScore | None  # None when no upsell model is deployed

    def to_dict(self) -> dict[str, Any]:
        def lineage(item: Lineage | None) -> dict[str, Any] | None:
            if item is None:
                return None
            return {
                "model": item.model,
                "version": item.version,
                "feature_schema_version": item.feature_schema_version,
                "backend": item.backend,
                "latency_ms": round(item.latency_ms, 3),
                "top_features": [list(pair) for pair in item.top_features],
            }

        out: dict[str, Any] = {
            "order_id": self.order_id,
            "fraud": {
                "probability": self.fraud.probability,
                "degraded": self.fraud.degraded,
                "reason": self.fraud.reason,
                "lineage": lineage(self.fraud.lineage),
            },
            "anomaly": {
                "error": self.anomaly.error,
                "percentile": self.anomaly.percentile,
                "degraded": self.anomaly.degraded,
                "reason": self.anomaly.reason,
                "lineage": lineage(self.anomaly.lineage),
            },
            "upsell": None,
        }
        if self.upsell is not None:
            out["upsell"] = {
                "suggestions": [
                    {"sku": s.sku, "reason": s.reason, "score": round(s.score, 5)}
                    for s in self.upsell.suggestions
                ],
                "degraded": self.upsell.degraded,
                "reason": self.upsell.reason,
                "lineage": lineage(self.upsell.lineage),
            }
        return out


@dataclass(frozen=True, slots=True)
class ModelBundle:
    """The models one batch runs with; replaced as a whole on reload."""

    fraud: FraudModel | None
    anomaly: AnomalyModel | None
    upsell: Any | None = None  # models.upsell.UpsellModel, when deployed
    upsell_version: int = 0
    versions: dict[str, int] = field(default_factory=dict)

    def warm_up(self) -> None:
        for model in (self.fraud, self.anomaly, self.upsell):
            if model is not None:
                model.warm_up()


def load_bundle(
    registry: Registry, *, prefer_onnx: bool = True, upsell: bool = True
) -> ModelBundle:
    """The latest version of each model; a missing fraud/anomaly model is left out (its score
    will be degraded), a missing or unloadable upsell model is skipped."""
    versions: dict[str, int] = {}
    fraud = anomaly = upsell_model = None
    if (mv := registry.latest("fraud")) is not None:
        fraud = FraudModel.load(mv, prefer_onnx=prefer_onnx)
        versions["fraud"] = mv.version
    if (mv := registry.latest("anomaly")) is not None:
        anomaly = AnomalyModel.load(mv, prefer_onnx=prefer_onnx)
        versions["anomaly"] = mv.version
    if upsell and (mv := registry.latest("upsell")) is not None:
        try:
            from models.upsell import UpsellModel

            upsell_model = UpsellModel.load(mv.path)
            versions["upsell"] = mv.version
        except Exception:
            logger.warning("upsell model %s not loaded", mv.metadata.tag, exc_info=True)
    return ModelBundle(fraud, anomaly, upsell_model, versions.get("upsell", 0), versions)


def _ms(start: float) -> float:
    return 1000.0 * (time.perf_counter() - start)


class ScoringPipeline:
    """pre → core → post over a batch of orders. ``start()`` loads and warms up the models."""

    def __init__(
        self,
        registry: Registry | None,
        store: FeatureStateStore,
        *,
        timeout_s: float = 2.0,
        explain_k: int = 3,
        prefer_onnx: bool = True,
        with_upsell: bool = True,
        upsell_k: int = 3,
        bundle: ModelBundle | None = None,
        history: BasketHistory | None = None,
    ) -> None:
        self.registry = registry
        self.features = FeatureBuilder(store)
        self.timeout_s = timeout_s
        self.explain_k = explain_k
        self.prefer_onnx = prefer_onnx
        self.with_upsell = with_upsell
        self.upsell_k = upsell_k
        # Without a history, upsell sees only the basket (it was trained with histories).
        self.history = history
        self._bundle = bundle

    @classmethod
    def from_models(
        cls,
        store: FeatureStateStore,
        fraud: FraudModel | None,
        anomaly: AnomalyModel | None,
        upsell: Any | None = None,
        **kwargs: Any,
    ) -> ScoringPipeline:
        """A pipeline over given models (tests, notebooks): no registry, no reload."""
        versions = {m.name: m.version for m in (fraud, anomaly) if m is not None}
        return cls(None, store, bundle=ModelBundle(fraud, anomaly, upsell, 0, versions), **kwargs)

    @classmethod
    def challenger(
        cls, registry: Registry, store: FeatureStateStore, *, fraud_version: int, **kwargs: Any
    ) -> ScoringPipeline:
        """A shadow pipeline: one pinned fraud version, nothing else, never reloaded.

        Sharing the champion's feature store is safe: features are stored per order id, so the
        challenger reads exactly the features the champion computed.
        """
        fraud = FraudModel.load(
            registry.load("fraud", fraud_version), prefer_onnx=kwargs.get("prefer_onnx", True)
        )
        kwargs["with_upsell"] = False
        return cls.from_models(store, fraud, None, **kwargs)

    @property
    def versions(self) -> dict[str, int]:
        return dict(self._bundle.versions) if self._bundle else {}

    async def start(self) -> None:
        if self._bundle is None:
            if self.registry is None:
                raise ValueError("a pipeline needs a registry or a bundle")
            self._bundle = await asyncio.to_thread(
                load_bundle, self.registry, prefer_onnx=self.prefer_onnx, upsell=self.with_upsell
            )
        await asyncio.to_thread(self._bundle.warm_up)
        logger.info("scoring pipeline ready", extra={"versions": self._bundle.versions})

    async def reload_if_newer(self) -> bool:
        """Swap in newer registry versions, if any. True when something changed."""
        if self.registry is None:
            return False
        current = self.versions
        registry = self.registry
        newest = {
            name: mv.version
            for name in ("fraud", "anomaly", "upsell")
            if (mv := await asyncio.to_thread(registry.latest, name)) is not None
        }
        if not self.with_upsell:
            newest.pop("upsell", None)
        if all(current.get(name, 0) >= v for name, v in newest.items()):
            return False
        bundle = await asyncio.to_thread(
            load_bundle, registry, prefer_onnx=self.prefer_onnx, upsell=self.with_upsell
        )
        await asyncio.to_thread(bundle.warm_up)
        self._bundle = bundle
        logger.info("models reloaded", extra={"versions": bundle.versions, "was": current})
        return True

    async def score_batch(self, orders: Sequence[OrderPlaced]) -> list[OrderScores]:
        if not orders:
            return []
        if self._bundle is None:
            await self.start()
        bundle = self._bundle
        assert bundle is not None
        t0 = time.perf_counter()
        try:
            features = await self.features.transform(orders)
            histories = (
                await self.history.before(orders)
                if self.history is not None and bundle.upsell is not None
                else None
            )
        except Exception as exc:
            raise TransientError(f"feature state unavailable: {exc}") from exc
        feature_ms = _ms(t0)
        fraud, anomaly, upsell = await asyncio.gather(
            self._guard("fraud", bundle.fraud, self._run_fraud, bundle, features),
            self._guard("anomaly", bundle.anomaly, self._run_anomaly, bundle, features),
            self._guard("upsell", bundle.upsell, self._run_upsell, bundle, (orders, histories)),
        )
        n = len(orders)
        fraud_scores = (
            fraud if isinstance(fraud, list) else [FraudScore(None, None, True, fraud)] * n
        )
        anomaly_scores = (
            anomaly
            if isinstance(anomaly, list)
            else [AnomalyScore(None, None, None, True, anomaly)] * n
        )
        if bundle.upsell is None and upsell is None:
            upsell_scores: list[UpsellScore | None] = [None] * n
        elif isinstance(upsell, list):
            upsell_scores = list(upsell)
        else:
            upsell_scores = [UpsellScore((), None, True, upsell)] * n
        return [
            OrderScores(
                order_id=o.order_id,
                fraud=_add_latency(fraud_scores[i], feature_ms),
                anomaly=_add_latency(anomaly_scores[i], feature_ms),
                upsell=upsell_scores[i],
            )
            for i, o in enumerate(orders)
        ]

    async def _guard(
        self, name: str, model: Any, run: Any, bundle: ModelBundle, batch: Any
    ) -> list[Any] | str | None:
        """The scores, or the reason they are degraded (a string)."""
        if model is None:
            return None if name == "upsell" else f"no {name} model deployed"
        try:
            return await asyncio.wait_for(asyncio.to_thread(run, bundle, batch), self.timeout_s)
        except TimeoutError:
            logger.warning("%s scoring timed out after %.1fs", name, self.timeout_s)
            return f"timeout after {self.timeout_s}s"
        except Exception as exc:
            logger.warning("%s scoring failed", name, exc_info=True)
            return f"{type(exc).__name__}: {exc}"

    # -- core + post, run in a worker thread ------------------------------------------------
    def _run_fraud(self, bundle: ModelBundle, features: np.ndarray) -> list[FraudScore]:
        model = bundle.fraud
        assert model is not None
        t0 = time.perf_counter()
        x = model.pre(features)
        logits = model.core(x)
        prob = model.post(logits)
        attributions = model.explain(x, logits, self.explain_k) if self.explain_k else None
        batch_ms = _ms(t0)
        out = []
        for i in range(len(x)):
            lineage = Lineage(
                model.name,
                model.version,
                FEATURE_SCHEMA_VERSION,
                model.backend,
                batch_ms,
                attributions.row(i) if attributions else (),
            )
            out.append(FraudScore(float(prob[i]), lineage))
        return out

    def _run_anomaly(self, bundle: ModelBundle, features: np.ndarray) -> list[AnomalyScore]:
        model = bundle.anomaly
        assert model is not None
        t0 = time.perf_counter()
        x = model.pre(features)
        score, per_feature = model.core(x)
        percentile = model.post(score)
        attributions = model.explain(per_feature, self.explain_k) if self.explain_k else None
        batch_ms = _ms(t0)
        return [
            AnomalyScore(
                float(score[i]),
                float(percentile[i]),
                Lineage(
                    model.name,
                    model.version,
                    FEATURE_SCHEMA_VERSION,
                    model.backend,
                    batch_ms,
                    attributions.row(i) if attributions else (),
                ),
            )
            for i in range(len(x))
        ]

    def _run_upsell(
        self,
        bundle: ModelBundle,
        batch: tuple[Sequence[OrderPlaced], list[list[str]] | None],
    ) -> list[UpsellScore]:
        model = bundle.upsell
        assert model is not None
        orders, histories = batch
        t0 = time.perf_counter()
        suggestions = model.suggest(
            [[item.sku for item in o.items] for o in orders], histories, self.upsell_k
        )
        batch_ms = _ms(t0)
        schema = int(model.metadata().get("feature_schema_version", 0))
        lineage = Lineage("upsell", bundle.upsell_version, schema, "numpy", batch_ms)
        return [
            UpsellScore(tuple(UpsellItem(s.sku, s.reason, float(s.score)) for s in row), lineage)
            for row in suggestions
        ]


def _add_latency(score: Any, ms: float) -> Any:
    if score.lineage is None:
        return score
    return replace(score, lineage=replace(score.lineage, latency_ms=score.lineage.latency_ms + ms))


__all__ = [
    "AnomalyScore",
    "FraudScore",
    "Lineage",
    "ModelBundle",
    "OrderScores",
    "ScoringPipeline",
    "UpsellItem",
    "UpsellScore",
    "load_bundle",
]

"""The enrichment worker: batches of ``OrderPlaced`` → features → models → ``OrderEnriched``.

It consumes ``orders`` in its own consumer group with whole-fetch batches (inference is cheaper
per order in bulk), runs the scoring pipeline (features vectorised, forward passes in threads),
and publishes one ``OrderEnriched`` per order to ``orders.enriched``, keyed by order id, under
an id derived from the ``OrderPlaced`` id so that a re-run after a crash is dropped downstream.
An order whose fraud probability reaches the hold threshold also yields ``OrderFlagged`` on
``order-events``, which the kitchen and the saga act on. The threshold is the loaded fraud
version's recorded hold policy (chosen at training for a target false-hold rate), unless the
``enricher.fraud_threshold`` setting overrides it; it is read per batch, so a reloaded version
brings its own, and ``OrderFlagged.threshold`` carries the one applied.

Between batches (every ``reload_every_s``) the worker asks the registry which versions to serve:
``pizzashop models promote|rollback`` move the ``champion`` alias and the next batch is scored by
the version it names, in either direction, without a restart. ``pizzashop models shadow`` sets a
model's ``challenger``: from the next batch it scores the same prepared batch (same features,
same histories) beside the champion, and each of its scores goes out as ``ScoreShadowed`` on
``orders.enriched`` and decides nothing. What a shadow event compares, per model: fraud the
probability, anomaly the percentile (comparable across versions, unlike the raw error), upsell
the first suggestion's ranker score, any other model its first numeric output.

Upsell has no feature attributions: the reason of each suggestion is its explanation, so its
lineage on the wire carries them as ``top_features`` (``"<reason>:<sku>"``, the ranker score).

The core flows never wait for this worker: they consume ``orders`` in their own groups.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from enrichers.pipeline import OrderScores, ScoringPipeline
from ingest.consumer import Delivery, Handler, Output
from ingest.events import (
    OrderEnriched,
    OrderFlagged,
    OrderPlaced,
    ScoreLineage,
    ScoreShadowed,
    derived_event_id,
)
from ingest.topics import Topics
from models.scorer import Degraded, Result, Scored
from models.upsell.model import Suggestion
from pizzashop.core.menu import Menu

if TYPE_CHECKING:
    from models.fraud import HoldPolicy

logger = logging.getLogger(__name__)

#: The threshold for a fraud version published before hold policies were recorded.
LEGACY_FRAUD_THRESHOLD = 0.9


def _display_name(menu: Menu, sku: str) -> str:
    item = menu.get(sku)
    if item is None:
        return sku
    # A size upgrade only reads as one with the size in it.
    return f"{item.name} ({item.size})" if item.category == "pizza" else item.name


class _Wire:
    """One batch's results as ``OrderEnriched``, built from plain data: each order is one
    ``OrderEnriched.model_validate`` of nested dicts, which pydantic-core turns into the nested
    models in one call instead of a Python constructor call per part (about twenty per order).
    Validation still runs, so the contract holds as before, and a test holds the records
    byte-identical to the per-part construction. What repeats across a batch is computed once:
    display names, and the fields of the lineage the batch shares."""

    __slots__ = ("_lineages", "_menu", "_names", "_threshold")

    def __init__(self, menu: Menu, threshold: float) -> None:
        self._menu = menu
        self._threshold = threshold
        self._names: dict[str, str] = {}
        self._lineages: dict[int, tuple[ScoreLineage, dict[str, object]]] = {}

    def enriched(self, order: OrderPlaced, scores: OrderScores) -> OrderEnriched:
        results = scores.results
        fraud = _part("fraud", results.get("fraud"))
        probability = fraud.get("probability")
        upsell = results.get("upsell")
        return OrderEnriched.model_validate(
            {
                "event_id": derived_event_id(order.event_id, "OrderEnriched"),
                "order_id": order.order_id,
                "source_event_id": order.event_id,
                "customer_id": order.customer_id,
                "fraud": fraud,
                "anomaly": _part("anomaly", results.get("anomaly")),
                "upsell": None if upsell is None else self._upsell(upsell),
                # Read before validation, as the scorer gave it (a float in [0, 1] or None:
                # validation refuses anything else, and the whole order with it).
                "flagged": probability is not None and probability >= self._threshold,  # type: ignore[operator]
                "others": [
                    _other(name, result)
                    for name, result in results.items()
                    if name not in _OWN_FIELDS
                ],
            }
        )

    def _upsell(self, result: Result) -> dict[str, object]:
        if isinstance(result, Degraded):
            return _part("upsell", result)
        found: tuple[Suggestion, ...] = result.value["suggestions"]
        names = self._names
        suggestions: list[dict[str, object]] = []
        reasons: list[dict[str, object]] = []
        for s in found:
            name = names.get(s.sku)
            if name is None:
                name = names[s.sku] = _display_name(self._menu, s.sku)
            score = round(s.score, 6)
            suggestions.append({"sku": s.sku, "name": name, "reason": s.reason, "score": score})
            reasons.append({"name": f"{s.reason}:{s.sku}", "contribution": score})
        return {
            **result.value,
            "suggestions": suggestions,
            "lineage": self._with_reasons(result.lineage, reasons),
        }

    def _with_reasons(
        self, lineage: ScoreLineage | None, reasons: list[dict[str, object]]
    ) -> ScoreLineage | dict[str, object] | None:
        """Upsell's lineage with each suggestion's reason as an attribution, unless it has
        some; as data, which the order's one validation builds."""
        if lineage is None or lineage.top_features:
            return lineage
        cached = self._lineages.get(id(lineage))
        if cached is None or cached[0] is not lineage:
            cached = self._lineages[id(lineage)] = (lineage, dict(lineage.__dict__))
        return {**cached[1], "top_features": reasons}


def _part(name: str, result: Result | None) -> dict[str, object]:
    """Scorer ``name``'s result as the fields of its wire assessment: ``Scored.value`` holds
    them by name, ``Degraded`` becomes ``degraded`` and its reason, and a scorer not loaded is
    degraded as not deployed."""
    if result is None:
        return {"degraded": True, "reason": f"no {name} model deployed"}
    if isinstance(result, Degraded):
        return {"degraded": True, "reason": result.reason, "lineage": result.lineage}
    return {**result.value, "lineage": result.lineage}


def _other(name: str, result: Result) -> dict[str, object]:
    """A model without a field of its own, as a ``ModelAssessment``'s fields."""
    if isinstance(result, Degraded):
        return {"model": name, "degraded": True, "reason": result.reason, "lineage": result.lineage}
    return {"model": name, "values": dict(result.value), "lineage": result.lineage}


@runtime_checkable
class _HoldsOrders(Protocol):
    """A scorer with a recorded hold policy (``models.fraud.FraudScorer``)."""

    @property
    def hold(self) -> HoldPolicy | None: ...


def fraud_hold(pipeline: ScoringPipeline) -> HoldPolicy | None:
    """The hold policy recorded with the fraud version ``pipeline`` serves now, if any."""
    for scorer in pipeline.scorers:
        if scorer.name == "fraud" and isinstance(scorer, _HoldsOrders):
            return scorer.hold
    return None


def hold_threshold(pipeline: ScoringPipeline, override: float | None = None) -> float:
    """The threshold to apply: ``override`` (the ``enricher.fraud_threshold`` setting) when
    set, else the served fraud version's recorded one, else :data:`LEGACY_FRAUD_THRESHOLD`."""
    if override is not None:
        return override
    policy = fraud_hold(pipeline)
    return policy.threshold if policy is not None else LEGACY_FRAUD_THRESHOLD


def to_enriched(
    order: OrderPlaced, scores: OrderScores, menu: Menu, threshold: float
) -> OrderEnriched:
    """The one mapping from the pipeline's results to the wire. Fraud and anomaly are always
    there (degraded when no model is loaded), upsell only when a model is deployed."""
    return _Wire(menu, threshold).enriched(order, scores)


def enriched_batch(
    orders: Sequence[OrderPlaced], scores: Sequence[OrderScores], menu: Menu, threshold: float
) -> list[OrderEnriched]:
    """:func:`to_enriched` over a batch, computing what repeats across it once."""
    wire = _Wire(menu, threshold)
    return [wire.enriched(o, s) for o, s in zip(orders, scores, strict=True)]


#: The models ``OrderEnriched`` has a field of its own for; any other lands in ``others``.
_OWN_FIELDS = frozenset({"fraud", "anomaly", "upsell"})


def _headline(name: str, result: Result | None) -> float | None:
    """The one number a shadow event compares for model ``name`` (see the module docstring)."""
    if not isinstance(result, Scored):
        return None
    value = result.value
    if name == "fraud":
        return _number(value.get("probability"))
    if name == "anomaly":
        return _number(value.get("percentile"))
    if name == "upsell":
        found: Sequence[Suggestion] = value.get("suggestions", ())
        return float(found[0].score) if found else None
    return next((n for v in value.values() if (n := _number(v)) is not None), None)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _version(result: Result | None) -> int:
    """The version that gave (or was tried for) ``result``; 0 when no model was deployed."""
    return result.lineage.version if result is not None and result.lineage is not None else 0


def shadow_events(
    order: OrderPlaced, champion: OrderScores, challenger: OrderScores
) -> list[ScoreShadowed]:
    """One ``ScoreShadowed`` per model the challengers scored ``order`` with. Fraud's keeps the
    id it had when only fraud was shadowed; each other model's id names the model."""
    out: list[ScoreShadowed] = []
    for name, theirs in challenger.results.items():
        mine = champion.get(name)
        a, b = _headline(name, mine), _headline(name, theirs)
        cause = "ScoreShadowed" if name == "fraud" else f"ScoreShadowed:{name}"
        out.append(
            ScoreShadowed(
                event_id=derived_event_id(order.event_id, cause),
                order_id=order.order_id,
                model=name,
                champion_version=_version(mine),
                challenger_version=_version(theirs),
                champion_score=a,
                challenger_score=b,
                difference=(b - a) if a is not None and b is not None else None,
            )
        )
    return out


class Enricher(Handler):
    event_types = (OrderPlaced,)
    whole_batch = True

    def __init__(
        self,
        pipeline: ScoringPipeline,
        topics: Topics,
        menu: Menu,
        *,
        fraud_threshold: float | None = None,
        target_false_hold_rate: float | None = None,
        reload_every_s: float = 5.0,
        shadow: ScoringPipeline | None = None,
    ) -> None:
        """``fraud_threshold`` overrides the fraud version's recorded hold threshold;
        ``target_false_hold_rate`` is the rate the shop expects that threshold was chosen
        for (a version trained for another is served, with a warning). ``shadow`` is the
        challengers' pipeline (``ScoringPipeline.shadow``), reloaded with the champions."""
        self._pipeline = pipeline
        self._topics = topics
        self._menu = menu
        self._override = fraud_threshold
        self._target = target_false_hold_rate
        self._applied: tuple[int, float] | None = None  # (fraud version, threshold) last logged
        self._reload_every_s = reload_every_s
        self._next_reload = time.monotonic() + reload_every_s
        self._shadow = shadow
        self.enriched = 0
        self.flagged = 0

    async def start(self) -> None:
        """Load and warm up the models before the first record arrives."""
        await self._pipeline.start()
        if self._shadow is not None:
            await self._shadow.start()

    async def stop(self) -> None:
        """Release the pipelines' thread pools once the runtime has committed for the last time."""
        await self._pipeline.stop()
        if self._shadow is not None:
            await self._shadow.stop()

    async def handle(self, batch: Sequence[Delivery]) -> list[Output]:
        # Reload between batches only, so one batch is scored by one set of versions.
        if time.monotonic() >= self._next_reload:
            self._next_reload = time.monotonic() + self._reload_every_s
            await self._pipeline.reload()
            if self._shadow is not None:
                await self._shadow.reload()
        # Features see each customer's orders in the order they were placed.
        deliveries = sorted(
            (d for d in batch if isinstance(d.event, OrderPlaced)),
            key=lambda d: (d.event.placed_at, d.event.order_id),  # type: ignore[attr-defined]
        )
        orders = [d.event for d in deliveries if isinstance(d.event, OrderPlaced)]
        if not orders:
            return []
        shadow = self._shadow if self._shadow is not None and self._shadow.tried else None
        # One prepared batch for both: features and histories are read and recorded once.
        prepared = await self._pipeline.prepare(
            orders,
            histories=self._pipeline.needs_history or (shadow is not None and shadow.needs_history),
        )
        scores = await self._pipeline.score(prepared)
        # The challengers score after the champions, not beside them: on two cores a fresh
        # challenger competing for the CPU pushed champions past their timeouts (degraded
        # scores in CI), and a shadow must never change what the champions decide.
        challenged = await shadow.score(prepared) if shadow is not None else None
        # Read after scoring: the versions that scored this batch are the ones loaded now.
        threshold = self._threshold()
        enriched = enriched_batch(orders, scores, self._menu, threshold)
        outputs = [
            d.emit(self._topics.enriched, e) for d, e in zip(deliveries, enriched, strict=True)
        ]
        if challenged is not None:
            outputs += [
                d.emit(self._topics.enriched, e)
                for d, o, mine, theirs in zip(deliveries, orders, scores, challenged, strict=True)
                for e in shadow_events(o, mine, theirs)
            ]
        flags = [
            d.emit(self._topics.order_events, self._flag(e, threshold))
            for d, e in zip(deliveries, enriched, strict=True)
            if e.flagged
        ]
        self.enriched += len(enriched)
        self.flagged += len(flags)
        return outputs + flags

    def _threshold(self) -> float:
        """The threshold for this batch; logs when it changes (a new version, say)."""
        threshold = hold_threshold(self._pipeline, self._override)
        version = self._pipeline.versions.get("fraud", -1)
        if self._applied != (version, threshold):
            self._applied = (version, threshold)
            policy = fraud_hold(self._pipeline)
            source = (
                "setting enricher.fraud_threshold"
                if self._override is not None
                else f"fraud-v{version}'s hold policy"
                if policy is not None
                else f"fraud-v{version} records none: legacy default"
            )
            logger.info("fraud hold threshold %.4f from %s", threshold, source)
            if (
                policy is not None
                and self._target is not None
                and not math.isclose(policy.target_false_hold_rate, self._target)
            ):
                logger.warning(
                    "fraud-v%d's hold threshold was chosen for a %.4f false-hold rate, "
                    "enricher.target_false_hold_rate is %.4f: retrain to apply it",
                    version,
                    policy.target_false_hold_rate,
                    self._target,
                )
        return threshold

    def _flag(self, enriched: OrderEnriched, threshold: float) -> OrderFlagged:
        lineage = enriched.fraud.lineage
        return OrderFlagged(
            event_id=derived_event_id(enriched.source_event_id, "OrderFlagged"),
            order_id=enriched.order_id,
            fraud_score=enriched.fraud.probability or 0.0,
            threshold=threshold,
            model=f"{lineage.model}-v{lineage.version}" if lineage else "unknown",
        )

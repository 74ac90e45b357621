"""``OrderEnriched`` built from plain data in one validation per order (``enrichers.worker``)
encodes to the very bytes the per-part construction it replaced did, for every shape of result:
scored, degraded, not deployed, not loaded, plug-in models, upsell with and without
attributions of its own."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel, ValidationError

from enrichers.pipeline import UNLOADED, OrderScores, ScoringPipeline
from enrichers.worker import enriched_batch, to_enriched
from ingest.codec import encode
from ingest.events import (
    AnomalyAssessment,
    FeatureContribution,
    FraudAssessment,
    ModelAssessment,
    OrderEnriched,
    OrderPlaced,
    ScoreLineage,
    UpsellAssessment,
    UpsellSuggestion,
    derived_event_id,
)
from models.scorer import Degraded, Result, Scored, Scorer, ScoringBatch
from models.simulator import SimulatedStream
from models.upsell.model import Suggestion
from pizzashop.core.menu import Menu, load_menu

T = TypeVar("T", bound=BaseModel)


class FakeScorer(Scorer[int, int]):
    name = "toy"
    version = 3
    backend = "numpy"
    feature_schema_version = 2

    @classmethod
    def load(cls, artifact: Any, *, prefer_onnx: bool = True) -> FakeScorer:
        return cls()

    def save(self, target: Any) -> dict[str, object]:
        return {}

    def pre(self, batch: ScoringBatch) -> int:
        return len(batch)

    def core(self, inputs: int) -> int:
        return inputs

    def post(self, raw: int, batch: ScoringBatch) -> list[Result]:
        return []


# -- the per-part construction the worker used before, kept as the reference ------------------
def _name(menu: Menu, sku: str) -> str:
    item = menu.get(sku)
    if item is None:
        return sku
    return f"{item.name} ({item.size})" if item.category == "pizza" else item.name


def _assessment(kind: type[T], scores: OrderScores, name: str, **fields: object) -> T:
    result = scores.get(name)
    if result is None:
        return kind(degraded=True, reason=f"no {name} model deployed")
    if isinstance(result, Degraded):
        return kind(degraded=True, reason=result.reason, lineage=result.lineage)
    return kind.model_validate({**result.value, "lineage": result.lineage, **fields})


def _reference(
    order: OrderPlaced, scores: OrderScores, menu: Menu, threshold: float
) -> OrderEnriched:
    fraud = _assessment(FraudAssessment, scores, "fraud")
    upsell = scores.get("upsell")
    upsell_fields: dict[str, Any] = {}
    if isinstance(upsell, Scored):
        found: tuple[Suggestion, ...] = upsell.value["suggestions"]
        lineage = upsell.lineage
        if lineage is not None and not lineage.top_features:
            reasons = tuple(
                FeatureContribution(name=f"{s.reason}:{s.sku}", contribution=round(s.score, 6))
                for s in found
            )
            lineage = lineage.model_copy(update={"top_features": reasons})
        upsell_fields = {
            "suggestions": tuple(
                UpsellSuggestion(
                    sku=s.sku, name=_name(menu, s.sku), reason=s.reason, score=round(s.score, 6)
                )
                for s in found
            ),
            "lineage": lineage,
        }
    others = []
    for name, result in scores.results.items():
        if name in ("fraud", "anomaly", "upsell"):
            continue
        if isinstance(result, Degraded):
            others.append(
                ModelAssessment(
                    model=name, degraded=True, reason=result.reason, lineage=result.lineage
                )
            )
        else:
            others.append(
                ModelAssessment(model=name, values=dict(result.value), lineage=result.lineage)
            )
    probability = fraud.probability
    return OrderEnriched(
        event_id=derived_event_id(order.event_id, "OrderEnriched"),
        order_id=order.order_id,
        source_event_id=order.event_id,
        customer_id=order.customer_id,
        fraud=fraud,
        anomaly=_assessment(AnomalyAssessment, scores, "anomaly"),
        upsell=None
        if upsell is None
        else _assessment(UpsellAssessment, scores, "upsell", **upsell_fields),
        flagged=probability is not None and probability >= threshold,
        others=tuple(others),
    )


# -- every shape of result, drawn at random -------------------------------------------------
def _lineage(rng: random.Random, model: str, *, top: int, backend: str = "onnx") -> ScoreLineage:
    return ScoreLineage(
        model=model,
        version=rng.randint(1, 9),
        feature_schema_version=rng.randint(1, 4),
        backend=backend,
        latency_ms=round(rng.uniform(0, 40), 3),
        top_features=tuple(
            FeatureContribution(name=f"f{i}", contribution=round(rng.gauss(0, 1), 6))
            for i in range(top)
        ),
    )


def _scores(
    rng: random.Random, order: OrderPlaced, skus: list[str], shared: ScoreLineage
) -> OrderScores:
    results: dict[str, Result] = {}
    pick = rng.random()
    if pick < 0.7:
        p = rng.choice([0.0, 1.0, 0.5, rng.random(), rng.random() / 1e7])
        results["fraud"] = Scored({"probability": p}, _lineage(rng, "fraud", top=3))
    elif pick < 0.85:
        results["fraud"] = Degraded("timeout after 2.0s", _lineage(rng, "fraud", top=0))
    elif pick < 0.95:
        results["fraud"] = Degraded(
            "fraud v4 not loaded: ModelError: no", _lineage(rng, "fraud", top=0, backend=UNLOADED)
        )
    # else: no fraud model deployed
    if rng.random() < 0.8:
        value = {"error": rng.expovariate(3.0), "percentile": rng.uniform(0, 100)}
        results["anomaly"] = Scored(value, _lineage(rng, "anomaly", top=3))
    else:
        results["anomaly"] = Degraded("ValueError: nan", None)
    pick = rng.random()
    if pick < 0.6:
        found = tuple(
            Suggestion(
                sku,
                "unused",
                rng.choice(("size_upgrade", "complement", "taste_match")),
                rng.random(),
            )
            for sku in rng.sample(skus, rng.randint(0, 3))
        )
        # Mostly the batch's shared lineage (no attributions: the reasons become them).
        lineage = shared if rng.random() < 0.8 else _lineage(rng, "upsell", top=2)
        results["upsell"] = Scored({"suggestions": found}, lineage)
    elif pick < 0.8:
        results["upsell"] = Degraded("timeout after 2.0s (an earlier batch still runs)", shared)
    # else: no upsell model deployed
    if rng.random() < 0.3:
        values = {"size": rng.randint(1, 9), "label": "big", "share": rng.random(), "ok": True}
        results["toy"] = Scored(values, _lineage(rng, "toy", top=1))
    elif rng.random() < 0.1:
        results["toy"] = Degraded("RuntimeError: kaboom", _lineage(rng, "toy", top=0))
    return OrderScores(order.order_id, results)


def _bytes(event: OrderEnriched, occurred_at: Any) -> bytes:
    # occurred_at is "now" at construction; align it, every other byte must match.
    return encode(
        event.model_copy(update={"occurred_at": occurred_at}),
        "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
    ).value


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_batch_mapping_encodes_byte_identical_records(
    stream: SimulatedStream, seed: int
) -> None:
    rng = random.Random(seed)
    menu = load_menu()
    skus = [*menu, "not_on_the_menu"]
    orders = list(stream.orders[:400])
    shared = _lineage(rng, "upsell", top=0, backend="numpy")
    scores = [_scores(rng, o, skus, shared) for o in orders]
    threshold = rng.choice([0.5, 0.9, 1.0])
    fast = enriched_batch(orders, scores, menu, threshold)
    for order, found, got in zip(orders, scores, fast, strict=True):
        want = _reference(order, found, menu, threshold)
        assert _bytes(got, want.occurred_at) == _bytes(want, want.occurred_at)
        assert got.flagged == want.flagged
        single = to_enriched(order, found, menu, threshold)
        assert _bytes(single, want.occurred_at) == _bytes(want, want.occurred_at)
    assert any(e.flagged for e in fast) and not all(e.flagged for e in fast)
    assert any(e.upsell is not None and e.upsell.suggestions for e in fast)


def test_a_result_off_the_contract_is_still_refused(stream: SimulatedStream) -> None:
    order = stream.orders[0]
    lineage = ScoreLineage(
        model="fraud", version=1, feature_schema_version=1, backend="onnx", latency_ms=1.0
    )
    bad: Mapping[str, Result] = {"fraud": Scored({"probability": 1.5}, lineage)}
    with pytest.raises(ValidationError):
        to_enriched(order, OrderScores(order.order_id, bad), load_menu(), 0.9)
    extra: Mapping[str, Result] = {"fraud": Scored({"probability": 0.1, "oops": 1}, lineage)}
    with pytest.raises(ValidationError):
        to_enriched(order, OrderScores(order.order_id, extra), load_menu(), 0.9)


def test_stamped_lineages_are_the_ones_built_one_by_one() -> None:
    """``ScoringPipeline._stamp`` builds a batch's lineages in one validation; each equals the
    lineage built by its constructors, attributions rounded as before."""

    class Toy(FakeScorer):
        pass

    rng = random.Random(5)
    results: list[Result] = [
        Scored({"p": i}) if i % 4 else Degraded("NaN score") for i in range(50)
    ]
    top = [tuple((f"f{j}", rng.gauss(0, 1)) for j in range(3)) for _ in results]
    stamped = ScoringPipeline._stamp(Toy(), results, top, 12.34567)
    for before, after, row in zip(results, stamped, top, strict=True):
        assert type(after) is type(before)
        shared = {
            "model": "toy",
            "version": 3,
            "feature_schema_version": 2,
            "backend": "numpy",
            "latency_ms": 12.346,
        }
        expected = (
            ScoreLineage(
                **shared,
                top_features=tuple(
                    FeatureContribution(name=f, contribution=round(v, 6)) for f, v in row
                ),
            )
            if isinstance(before, Scored)
            else ScoreLineage(**shared)
        )
        assert after.lineage == expected
        assert after.lineage.model_dump_json() == expected.model_dump_json()
    assert [r.lineage for r in ScoringPipeline._stamp(Toy(), results, None, 1.0)] == [
        ScoreLineage(
            model="toy", version=3, feature_schema_version=2, backend="numpy", latency_ms=1.0
        )
    ] * len(results)

"""Model operations without a broker: the registry's aliases (champion, challenger, rollback),
the ``pizzashop models`` commands, and an enrichment worker that applies alias changes between
batches, shadows every model that has a challenger, and keeps the lineage of a version that
would not load."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from enrichers.pipeline import UNLOADED, OrderScores, ScoringPipeline
from enrichers.worker import Enricher, to_enriched
from ingest.consumer import Delivery
from ingest.events import OrderEnriched, OrderPlaced, ScoreLineage, ScoreShadowed
from ingest.topics import Topics
from models.feature_state import InMemoryFeatureState
from models.registry import SCORERS, ModelVersion, Registry
from models.scorer import Degraded, Result, Scored, Scorer, ScoringBatch
from models.simulator import SimulatedStream
from models.upsell.model import Suggestion
from pizzashop.app.cli import app
from pizzashop.core.errors import ConfigError
from pizzashop.core.menu import load_menu


class WeightScorer(Scorer[np.ndarray, np.ndarray]):
    """A deterministic dummy: each order's item count times a weight kept in its artifact, so
    a score tells which version gave it."""

    name = "weight"

    def __init__(self, weight: float, version: int = 0) -> None:
        self.weight = weight
        self._version = version

    @property
    def version(self) -> int:
        return self._version

    @property
    def backend(self) -> str:
        return "numpy"

    @property
    def feature_schema_version(self) -> int:
        return 1

    @classmethod
    def load(cls, artifact: ModelVersion, *, prefer_onnx: bool = True) -> WeightScorer:
        weight = json.loads((artifact.path / "weight.json").read_text())["weight"]
        return cls(weight, artifact.version)

    def save(self, target: Path) -> dict[str, Any]:
        (target / "weight.json").write_text(json.dumps({"weight": self.weight}))
        return {"weight": self.weight}

    def pre(self, batch: ScoringBatch) -> np.ndarray:
        return np.array([sum(i.quantity for i in o.items) for o in batch.orders], float)

    def core(self, inputs: np.ndarray) -> np.ndarray:
        return self.weight * inputs

    def post(self, raw: np.ndarray, batch: ScoringBatch) -> list[Result]:
        return [Scored({"size": float(v)}) for v in raw]


class CountScorer(WeightScorer):
    """A second model, so a shadow of several models can be told apart."""

    name = "count"


def publish(registry: Registry, name: str, weight: float) -> int:
    scorer = (WeightScorer if name == "weight" else CountScorer)(weight)
    return registry.publish(name, scorer.save, training_data_hash="t", metrics={}).version


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """``weight`` v1..v3 (weights 1, 2, 3) and ``count`` v1..v2 (weights 10, 20)."""
    monkeypatch.setitem(SCORERS, "weight", f"{__name__}:WeightScorer")
    monkeypatch.setitem(SCORERS, "count", f"{__name__}:CountScorer")
    found = Registry(tmp_path / "registry")
    for w in (1.0, 2.0, 3.0):
        publish(found, "weight", w)
    for w in (10.0, 20.0):
        publish(found, "count", w)
    return found


# -- the registry's aliases ------------------------------------------------------------------
def test_the_champion_is_the_latest_until_one_is_promoted(registry: Registry) -> None:
    assert registry.champion("weight") == 3 and registry.challenger("weight") is None
    assert registry.promote("weight", 1).champion == 1
    assert registry.champion("weight") == 1
    publish(registry, "weight", 4.0)  # a newer version does not serve until promoted
    assert registry.champion("weight") == 1
    assert registry.names() == ["count", "weight"]


def test_rollback_restores_each_previous_champion_in_turn(registry: Registry) -> None:
    registry.promote("weight", 1)
    registry.promote("weight", 2)
    assert registry.aliases("weight").previous == (None, 1)
    assert registry.rollback("weight").champion == 1
    # Rolling back the first promotion returns to following the latest version.
    assert registry.rollback("weight").champion is None
    assert registry.champion("weight") == 3
    with pytest.raises(ConfigError, match="nothing to roll back"):
        registry.rollback("weight")


def test_promoting_the_same_version_twice_leaves_one_step_to_roll_back(
    registry: Registry,
) -> None:
    registry.promote("weight", 2)
    registry.promote("weight", 2)
    assert registry.aliases("weight").previous == (None,)


def test_a_promoted_challenger_stops_shadowing(registry: Registry) -> None:
    registry.shadow("weight", 2)
    assert registry.challenger("weight") == 2
    aliases = registry.promote("weight", 2)
    assert (aliases.champion, aliases.challenger) == (2, None)
    registry.shadow("weight", 1)
    assert registry.shadow("weight", None).challenger is None


def test_aliases_refuse_unknown_models_and_versions(registry: Registry) -> None:
    with pytest.raises(ConfigError, match=r"no model 'nope'.*known: \['count', 'weight'\]"):
        registry.promote("nope", 1)
    with pytest.raises(ConfigError, match=r"no version 9 of model 'weight'; it has \[1, 2, 3\]"):
        registry.promote("weight", 9)
    with pytest.raises(ConfigError, match="no version 9"):
        registry.shadow("weight", 9)
    with pytest.raises(ConfigError, match="no model 'nope'"):
        registry.rollback("nope")
    assert registry.aliases("weight").champion is None  # nothing was written


def test_aliases_survive_as_one_json_file_per_model(registry: Registry) -> None:
    registry.promote("weight", 2)
    registry.shadow("weight", 3)
    raw = json.loads((registry.root / "weight" / "aliases.json").read_text())
    assert (raw["champion"], raw["challenger"], raw["previous"]) == (2, 3, [None])
    assert raw["updated_at"]
    # The alias file is not a version, and other models are untouched.
    assert [mv.version for mv in registry.list() if mv.name == "weight"] == [1, 2, 3]
    assert Registry(registry.root).aliases("count").champion is None


# -- the CLI ---------------------------------------------------------------------------------
def run(registry: Registry, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["models", *args, "--registry", str(registry.root)])
    return result.exit_code, result.stdout, result.stderr


def test_promote_rollback_and_shadow_from_the_command_line(registry: Registry) -> None:
    assert run(registry, "promote", "weight", "2") == (
        0,
        "weight: champion v2, challenger none\n",
        "",
    )
    assert run(registry, "shadow", "weight", "3")[1] == "weight: champion v2, challenger v3\n"
    code, out, _ = run(registry, "list")
    assert code == 0
    marks = {line.split("\t")[0]: line.split("\t")[-1] for line in out.splitlines()}
    assert marks["weight-v2"] == "champion" and marks["weight-v3"] == "challenger"
    assert marks["weight-v1"] == "-" and marks["count-v2"] == "champion"  # the latest
    assert run(registry, "rollback", "weight")[1] == (
        "weight: champion latest (v3), challenger v3\n"
    )
    assert run(registry, "shadow", "weight", "--clear")[1] == (
        "weight: champion latest (v3), challenger none\n"
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("promote", "nope", "1"), 1, "error: promote: no model 'nope'"),
        (("promote", "weight", "7"), 1, "error: promote: no version 7 of model 'weight'"),
        (("rollback", "weight"), 1, "error: rollback: nothing to roll back"),
        (("shadow", "count", "5"), 1, "error: shadow: no version 5 of model 'count'"),
        (("shadow", "count"), 2, "give a VERSION or --clear"),
        (("shadow", "count", "1", "--clear"), 2, "give a VERSION or --clear"),
        (("promote", "weight", "0"), 2, ""),  # typer refuses a version below 1
    ],
)
def test_bad_input_is_one_clear_error_and_a_non_zero_exit(
    registry: Registry, args: Sequence[str], code: int, message: str
) -> None:
    got, out, err = run(registry, *args)
    assert got == code and out == ""
    assert message in err
    assert registry.aliases("weight").champion is None


# -- a running worker ------------------------------------------------------------------------
def deliveries(orders: Sequence[OrderPlaced]) -> list[Delivery]:
    return [Delivery("orders", 0, i, o, [], 0) for i, o in enumerate(orders)]


def size(order: OrderPlaced) -> float:
    return float(sum(i.quantity for i in order.items))


class Worker:
    """An ``Enricher`` over the registry's ``weight`` and ``count`` models that reloads before
    every batch, as a running worker does every ``reload_every_s``."""

    def __init__(self, registry: Registry) -> None:
        store = InMemoryFeatureState()
        names = ("weight", "count")
        self.enricher = Enricher(
            ScoringPipeline(registry, store, names=names),
            Topics(),
            load_menu(),
            fraud_threshold=1.0,
            reload_every_s=0.0,
            shadow=ScoringPipeline.shadow(registry, store, names=names),
        )

    async def batch(
        self, orders: Sequence[OrderPlaced]
    ) -> tuple[dict[str, tuple[int, float]], list[ScoreShadowed]]:
        """Per model, the (version, score / size) of the batch's first order; the shadows."""
        outputs = await self.enricher.handle(deliveries(orders))
        enriched = [o.event for o in outputs if isinstance(o.event, OrderEnriched)]
        assert [e.order_id for e in enriched] == [o.order_id for o in orders]
        shadows = [o.event for o in outputs if isinstance(o.event, ScoreShadowed)]
        seen: dict[str, tuple[int, float]] = {}
        for other in enriched[0].others:
            assert other.lineage is not None
            assert isinstance(other.values["size"], float)
            seen[other.model] = (other.lineage.version, other.values["size"] / size(orders[0]))
        return seen, shadows


async def test_a_running_worker_follows_promote_rollback_and_shadow_between_batches(
    registry: Registry, stream: SimulatedStream
) -> None:
    worker = Worker(registry)
    await worker.enricher.start()
    batches = [stream.orders[i : i + 5] for i in range(0, 40, 5)]
    try:
        seen, shadows = await worker.batch(batches[0])
        assert seen == {"weight": (3, 3.0), "count": (2, 20.0)} and shadows == []
        registry.promote("weight", 1)  # down
        assert (await worker.batch(batches[1]))[0]["weight"] == (1, 1.0)
        registry.promote("weight", 2)  # and up again
        assert (await worker.batch(batches[2]))[0]["weight"] == (2, 2.0)
        registry.rollback("weight")
        assert (await worker.batch(batches[3]))[0]["weight"] == (1, 1.0)

        # A challenger for each model: both shadowed, neither decides.
        registry.shadow("weight", 3)
        registry.shadow("count", 1)
        seen, shadows = await worker.batch(batches[4])
        assert seen == {"weight": (1, 1.0), "count": (2, 20.0)}
        assert len(shadows) == 10
        by_model = {s.model: s for s in shadows if s.order_id == batches[4][0].order_id}
        weight, count = by_model["weight"], by_model["count"]
        assert (weight.champion_version, weight.challenger_version) == (1, 3)
        assert (count.champion_version, count.challenger_version) == (2, 1)
        n = size(batches[4][0])
        assert weight.difference == pytest.approx(2.0 * n)
        assert count.difference == pytest.approx(-10.0 * n)
        assert len({s.event_id for s in shadows}) == 10  # one id per order and model

        registry.shadow("weight", None)
        _, shadows = await worker.batch(batches[5])
        assert {s.model for s in shadows} == {"count"}
        registry.shadow("count", None)
        assert (await worker.batch(batches[6]))[1] == []
    finally:
        await worker.enricher.stop()


async def test_a_version_that_will_not_load_keeps_the_one_serving(
    registry: Registry, stream: SimulatedStream
) -> None:
    worker = Worker(registry)
    await worker.enricher.start()
    try:
        (registry.root / "weight" / "v000002" / "weight.json").unlink()  # a broken artifact
        registry.promote("weight", 2)
        assert (await worker.batch(stream.orders[:5]))[0]["weight"] == (3, 3.0)
        registry.rollback("weight")
        assert (await worker.batch(stream.orders[5:10]))[0]["weight"] == (3, 3.0)
    finally:
        await worker.enricher.stop()


async def test_with_nothing_serving_a_degraded_score_names_the_version_tried(
    registry: Registry, stream: SimulatedStream
) -> None:
    (registry.root / "weight" / "v000003" / "weight.json").unlink()
    pipeline = ScoringPipeline(registry, InMemoryFeatureState(), names=("weight", "count"))
    await pipeline.start()
    try:
        assert pipeline.versions == {"count": 2} and pipeline.tried == {"weight": 3, "count": 2}
        scores = await pipeline.score_batch(stream.orders[:3])
        result = scores[0]["weight"]
        assert isinstance(result, Degraded) and "weight v3 not loaded" in result.reason
        assert result.lineage is not None
        assert (result.lineage.model, result.lineage.version) == ("weight", 3)
        assert result.lineage.backend == UNLOADED and result.lineage.feature_schema_version > 0
        # On the wire it stays traceable to the version that failed.
        enriched = to_enriched(stream.orders[0], scores[0], load_menu(), threshold=1.0)
        weight = next(o for o in enriched.others if o.model == "weight")
        assert weight.degraded and weight.lineage is not None and weight.lineage.version == 3
        # Rolling the champion to a version that loads heals it between batches.
        registry.promote("weight", 1)
        assert await pipeline.reload()
        assert isinstance((await pipeline.score_batch(stream.orders[3:4]))[0]["weight"], Scored)
    finally:
        await pipeline.stop()


# -- upsell lineage --------------------------------------------------------------------------
def test_upsell_lineage_carries_each_suggestions_reason_as_an_attribution(
    stream: SimulatedStream,
) -> None:
    order = stream.orders[0]
    menu = load_menu()
    skus = list(menu)[:2]
    lineage = ScoreLineage(
        model="upsell", version=4, feature_schema_version=1, backend="numpy", latency_ms=1.0
    )
    found = (
        Suggestion(skus[0], "a", "size_upgrade", 0.9),
        Suggestion(skus[1], "b", "complement", 0.4),
    )
    results: Mapping[str, Result] = {"upsell": Scored({"suggestions": found}, lineage)}
    enriched = to_enriched(order, OrderScores(order.order_id, results), menu, threshold=1.0)
    assert enriched.upsell is not None and enriched.upsell.lineage is not None
    attributions = [(f.name, f.contribution) for f in enriched.upsell.lineage.top_features]
    assert attributions == [(f"size_upgrade:{skus[0]}", 0.9), (f"complement:{skus[1]}", 0.4)]
    assert enriched.upsell.lineage.version == 4

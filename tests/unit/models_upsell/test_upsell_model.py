from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from models.upsell import (
    REASONS,
    HashEmbedder,
    Suggestion,
    UpsellModel,
    evaluate_upsell,
    prior_histories,
    train_upsell,
)
from models.upsell.synthetic import (
    SyntheticData,
    generate_orders,
    histories_before,
    split_by_day,
)
from pizzashop.core.errors import ModelError
from pizzashop.core.menu import Menu

from .conftest import pizza


def _test_part(synthetic: SyntheticData) -> tuple[list[tuple[str, ...]], list[str]]:
    _, test = split_by_day(synthetic.orders, 270)
    return [o.skus for o in test], [o.customer_id for o in test]


def test_never_suggests_what_the_basket_holds(
    trained: UpsellModel, synthetic: SyntheticData
) -> None:
    baskets, customers = _test_part(synthetic)
    history = histories_before(synthetic.orders)
    suggestions = trained.suggest(baskets, [history[c] for c in customers], k=5)
    assert len(suggestions) == len(baskets)
    for basket, row in zip(baskets, suggestions, strict=True):
        assert len(row) == 5
        assert not {s.sku for s in row} & set(basket)
        assert len({s.sku for s in row}) == 5
        assert [s.score for s in row] == sorted((s.score for s in row), reverse=True)


def test_reasons_match_what_is_offered(
    trained: UpsellModel, synthetic: SyntheticData, menu: Menu
) -> None:
    baskets, _ = _test_part(synthetic)
    seen = set()
    for basket, row in zip(baskets, trained.suggest(baskets, k=8), strict=True):
        for s in row:
            assert isinstance(s, Suggestion)
            assert s.reason in REASONS
            seen.add(s.reason)
            item = menu[s.sku]
            if s.reason == "size_upgrade":
                smaller = [menu[b] for b in basket if menu[b].product == item.product]
                assert smaller
                assert any(item.price > b.price for b in smaller)
            elif s.reason == "complement":
                assert item.category in {"side", "drink", "dessert"}
            else:
                assert item.category == "pizza"
    assert seen == set(REASONS)


def test_suggestion_is_frozen_and_slotted() -> None:
    s = Suggestion("cola", "Cola", "complement", 0.5)
    assert not hasattr(s, "__dict__")
    with pytest.raises(AttributeError):
        s.score = 1.0  # type: ignore[misc]


def test_size_upgrade_offered_for_a_small_step(trained: UpsellModel) -> None:
    eager = replace(trained, config=replace(trained.config, upgrade_score=0.9))
    (row,) = eager.suggest([["bbq_ckn_m"]], k=3)
    assert row[0] == Suggestion("bbq_ckn_l", "The Barbecue Chicken Pizza", "size_upgrade", 0.9)
    # the largest size has nothing to upgrade to
    (row,) = eager.suggest([["bbq_ckn_l"]], k=3)
    assert "size_upgrade" not in {s.reason for s in row}
    # by default the upgrade competes at its floor with what the ranker finds
    (row,) = trained.suggest([["bbq_ckn_m"]], k=trained.catalogue.size)
    upgrade = next(s for s in row if s.sku == "bbq_ckn_l")
    assert upgrade.reason == "size_upgrade"
    assert upgrade.score >= trained.config.upgrade_score


def test_habits_fill_a_category_gap(trained: UpsellModel) -> None:
    (row,) = trained.suggest([["pepperoni_m"]], [["beer"] * 6 + ["pepperoni_m"] * 6], k=3)
    beer = [s for s in row if s.sku == "beer"]
    assert beer
    assert beer[0].reason == "complement"
    # with the beer already in the basket, another drink is not pushed on top
    (row,) = trained.suggest([["pepperoni_m", "beer"]], [["beer"] * 6], k=3)
    assert "beer" not in {s.sku for s in row}


def test_edge_cases(trained: UpsellModel) -> None:
    assert trained.suggest([]) == []
    empty, unknown = trained.suggest([[], ["no_such_sku"]], k=2)
    assert len(empty) == 2
    assert [s.sku for s in empty] == [s.sku for s in unknown]
    (everything,) = trained.suggest([list(trained.skus)[:-1]], k=3)
    assert [s.sku for s in everything] == [trained.skus[-1]]
    with pytest.raises(ValueError, match="k must"):
        trained.suggest([["cola"]], k=0)
    with pytest.raises(ValueError, match="one history per basket"):
        trained.suggest([["cola"], ["beer"]], [["cola"]])


def test_batches_give_the_same_answer_as_one_by_one(
    trained: UpsellModel, synthetic: SyntheticData
) -> None:
    baskets, _ = _test_part(synthetic)
    small = replace(trained, config=replace(trained.config, batch_size=7))
    for one, many in zip(small.suggest(baskets[:50]), trained.suggest(baskets[:50]), strict=True):
        assert [(s.sku, s.reason) for s in one] == [(s.sku, s.reason) for s in many]
        # float32 features: BLAS may block a 7-row product differently from a 50-row one
        assert [s.score for s in one] == pytest.approx([s.score for s in many], rel=1e-6)


def test_save_load_round_trip(tmp_path, trained: UpsellModel, synthetic: SyntheticData) -> None:
    baskets, customers = _test_part(synthetic)
    history = histories_before(synthetic.orders)
    histories = [history[c] for c in customers]
    trained.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"upsell.npz", "upsell.json"}
    loaded = UpsellModel.load(tmp_path / "m")
    assert loaded.suggest(baskets, histories) == trained.suggest(baskets, histories)
    assert loaded.metadata() == trained.metadata()


def test_load_refuses_other_formats(tmp_path, trained: UpsellModel) -> None:
    with pytest.raises(ModelError):
        UpsellModel.load(tmp_path / "missing")
    trained.save(tmp_path / "m")
    meta = (tmp_path / "m" / "upsell.json").read_text()
    (tmp_path / "m" / "upsell.json").write_text(
        meta.replace('"format_version": 1', '"format_version": 99')
    )
    with pytest.raises(ModelError, match="format 99"):
        UpsellModel.load(tmp_path / "m")


def test_metadata_carries_lineage(trained: UpsellModel) -> None:
    meta = trained.metadata()
    assert meta["model"] == "upsell"
    assert meta["embedder"] == "hash-64"
    assert len(meta["menu_fingerprint"]) == 64
    assert meta["feature_schema_version"] == 1
    assert set(meta["weights"]) == set(meta["features"])
    assert "version" not in meta  # the registry assigns it


def test_cold_start_item_gets_neighbours_and_a_finite_score(menu: Menu) -> None:
    items = {sku: menu[sku] for sku in menu}
    new = pizza("smoky_bbq_chicken", style="chicken", price="16.00")
    new = replace(new, description=menu["bbq_ckn_m"].description.replace("Barbecue", "Smoky"))
    items[new.sku] = new
    data = generate_orders(menu, n_customers=60, seed=5)
    model = train_upsell([o.skus for o in data.orders], None, items, HashEmbedder(64))
    j = model.skus.index(new.sku)
    assert model.stats.counts[j] == 0
    assert model.stats.kernel[j, model.skus.index("bbq_ckn_m")] > 0.5
    basket, history = model.encode([["bbq_ckn_m"]], [["bbq_ckn_l"] * 3])
    scores, _ = model.score_matrix(basket, history)
    assert np.isfinite(scores[0, j])
    assert scores[0, j] > 0


def test_prior_histories_count_only_earlier_orders() -> None:
    index = {"a": 0, "b": 1}
    rows = prior_histories(
        [["a"], ["b"], ["a", "a"], ["b"]], ["x", "y", "x", "x"], index, initial={"y": ["a"]}
    )
    np.testing.assert_array_equal(rows, [[0, 0], [1, 0], [1, 0], [3, 0]])
    assert not prior_histories([["a"]], None, index).any()


def test_evaluation_baseline_math_on_a_hand_made_case() -> None:
    items = {p.sku: p for p in (pizza(f"p{i}") for i in range(1, 7))}
    counts = {"p1_m": 6, "p2_m": 5, "p3_m": 4, "p4_m": 3, "p5_m": 2, "p6_m": 1}
    train = [[sku] for sku, n in counts.items() for _ in range(n)] + [["p1_m", "p2_m"]]
    model = train_upsell(train, None, items, HashEmbedder(16))
    np.testing.assert_allclose(model.popularity, np.array([7, 6, 4, 3, 2, 1]) / len(train))
    # Whichever item is hidden, the popular pairs hit and the rare pairs miss; the single-item
    # basket is not evaluated. So popularity scores exactly 2 of 4.
    test = [["p1_m", "p2_m"], ["p1_m", "p3_m"], ["p5_m", "p6_m"], ["p4_m", "p5_m"], ["p1_m"]]
    for seed in range(4):
        result = evaluate_upsell(model, test, None, seed=seed)
        assert result["n_evaluated"] == 4
        assert result["popularity_hit_at_3"] == 0.5
        assert 0.0 <= result["hit_at_3"] <= 1.0
    assert evaluate_upsell(model, test, None, k=6)["popularity_hit_at_6"] == 1.0


def test_beats_popularity_on_synthetic_repeat_customers(
    trained: UpsellModel, synthetic: SyntheticData
) -> None:
    train, test = split_by_day(synthetic.orders, 270)
    result = evaluate_upsell(
        trained, [o.skus for o in test], [o.customer_id for o in test], histories_before(train)
    )
    assert result["n_evaluated"] > 200
    assert result["hit_at_3"] > 1.5 * result["popularity_hit_at_3"]


def test_synthetic_generator_is_seeded_with_repeat_customers(
    menu: Menu, synthetic: SyntheticData
) -> None:
    again = generate_orders(menu, n_customers=300, seed=3)
    assert again == synthetic
    assert generate_orders(menu, n_customers=300, seed=4) != synthetic
    days = [o.day for o in synthetic.orders]
    assert days == sorted(days)
    per_customer = np.bincount([int(o.customer_id[1:]) for o in synthetic.orders])
    assert (per_customer >= 2).mean() > 0.8
    assert all(sku in menu for o in synthetic.orders for sku in o.skus)


def test_serving_throughput(trained: UpsellModel, synthetic: SyntheticData) -> None:
    baskets, customers = _test_part(synthetic)
    history = histories_before(synthetic.orders)
    histories = [history[c] for c in customers]
    trained.warm_up()
    started = time.perf_counter()
    trained.suggest(baskets * 4, histories * 4, k=3)
    rate = 4 * len(baskets) / (time.perf_counter() - started)
    # The target is 5,000/s on one core; a loaded CI runner gets a wide margin.
    assert rate > 2_000


def test_never_suggests_what_the_kitchen_refuses(trained: UpsellModel, menu: Menu) -> None:
    baskets = [["pepperoni_m"], ["hawaiian_m"], ["cola"], ["thai_ckn_s", "fries"]] * 5
    for suggestions in trained.suggest(baskets, k=10):
        assert suggestions
        assert not any(menu[s.sku].has_pineapple for s in suggestions)

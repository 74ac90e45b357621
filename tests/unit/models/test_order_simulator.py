from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

from ingest.events import OrderPlaced
from models.simulator import SCENARIOS, SimulatedStream, simulate


def test_same_seed_same_stream() -> None:
    a, b = simulate(500, seed=11), simulate(500, seed=11)
    assert [o.model_dump() for o in a.orders] == [o.model_dump() for o in b.orders]
    np.testing.assert_array_equal(a.truth.fraud_prob, b.truth.fraud_prob)
    c = simulate(500, seed=12)
    assert [o.customer_id for o in a.orders] != [o.customer_id for o in c.orders]
    assert a.orders[0].customer_id != c.orders[0].customer_id


def test_events_are_real_and_time_ordered(stream: SimulatedStream) -> None:
    assert all(isinstance(o, OrderPlaced) for o in stream.orders)
    times = [o.placed_at for o in stream.orders]
    assert times == sorted(times)
    assert len({o.order_id for o in stream.orders}) == len(stream)
    # pizzaplace's opening hours dominate ordinary traffic
    normal = stream.truth.scenario == 0
    hours = np.array([o.placed_at.hour for o in stream.orders])[normal & ~stream.truth.is_anomaly]
    assert np.mean((hours >= 10) & (hours <= 23)) > 0.97


def test_labels_are_noisy_but_informative() -> None:
    s = simulate(20000, seed=5)
    truth = s.truth
    assert set(np.unique(truth.scenario)) == set(range(len(SCENARIOS)))
    assert 0.01 < truth.is_fraud.mean() < 0.05
    bayes = average_precision_score(truth.is_fraud, truth.fraud_prob)
    assert 0.6 < bayes < 0.9
    assert (
        truth.fraud_prob[truth.scenario > 0].mean()
        > 20 * truth.fraud_prob[truth.scenario == 0].mean()
    )
    assert 0.005 < truth.is_anomaly.mean() < 0.03


def test_card_testing_is_a_burst_of_small_orders_on_one_card(stream: SimulatedStream) -> None:
    idx = np.flatnonzero(stream.truth.scenario == SCENARIOS.index("card_testing"))
    assert len(idx) >= 4
    by_card: dict[str, list[OrderPlaced]] = {}
    for i in idx:
        order = stream.orders[i]
        assert order.total < 10
        by_card.setdefault(str(order.payment.card_fingerprint), []).append(order)
    burst = max(by_card.values(), key=len)
    assert len(burst) >= 4
    assert (burst[-1].placed_at - burst[0].placed_at).total_seconds() < 12 * 150


def test_anomalies_break_the_menu_or_the_clock(stream: SimulatedStream) -> None:
    from pizzashop.core.menu import load_menu

    menu = load_menu()
    kinds = stream.truth.anomaly_kind
    for i in np.flatnonzero(kinds == 3):  # unit price
        order = stream.orders[i]
        assert any(item.unit_price != menu[item.sku].price for item in order.items)
    for i in np.flatnonzero(kinds == 1):  # quantity
        assert max(item.quantity for item in stream.orders[i].items) >= 25
    for i in np.flatnonzero(kinds == 4):  # timing
        assert 3 <= stream.orders[i].placed_at.hour < 7


def test_baskets_for_upsell(stream: SimulatedStream) -> None:
    baskets = stream.baskets()
    assert len(baskets) == len(stream)
    first = baskets[0]
    order = stream.orders[0]
    assert first.customer_id == order.customer_id
    assert first.placed_at == order.placed_at
    assert len(first.skus) == sum(item.quantity for item in order.items)
    # some customers really do like pineapple
    pineapple = {"hawaiian", "thai_ckn"}
    assert any(sku.rsplit("_", 1)[0] in pineapple for b in baskets for sku in b.skus)
    # repeat customers exist, so histories mean something
    customers = [b.customer_id for b in baskets]
    assert len(set(customers)) < 0.8 * len(customers)


def test_worlds_of_the_family_differ_and_repeat() -> None:
    from models._worlds import sample_config
    from models.simulator import SimulationConfig

    a, b = sample_config(1), sample_config(1)
    assert a == b  # the same seed, the same world
    assert a != sample_config(2)
    assert a.world != SimulationConfig().world  # not the project's own numbers
    own = simulate(3000, seed=3)
    other = simulate(3000, seed=3, config=sample_config(5))
    assert not np.array_equal(own.truth.fraud_prob, other.truth.fraud_prob)
    # held-out worlds take some knobs outside the training box: gaps, sizes, shares
    train_gaps = [sample_config(s).world.testing_gap_s[0] for s in range(200)]
    held_gaps = [sample_config(s, held_out=True).world.testing_gap_s[0] for s in range(200)]
    assert max(held_gaps) > max(train_gaps) and min(held_gaps) < min(train_gaps)
    for seed in range(50):  # every drawn world is one the simulator can run
        w = sample_config(seed, held_out=True).world
        for lo, hi in (w.testing_size, w.stolen_size, w.ato_size, w.promo_size):
            assert 1 <= lo <= hi
        assert 0 < w.ato_new_device < 1 and 0 < w.night_share < 1


def test_a_world_can_leave_a_scenario_out() -> None:
    from models._worlds import sample_config

    config = sample_config(4, exclude=("account_takeover",))
    s = simulate(4000, seed=9, config=config)
    present = set(np.unique(s.truth.scenario).tolist())
    assert SCENARIOS.index("account_takeover") not in present
    assert SCENARIOS.index("card_testing") in present

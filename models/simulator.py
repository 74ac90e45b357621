"""A seeded simulator of labelled ``OrderPlaced`` traffic.

Ordinary orders follow pizzaplace: its time-of-day and day-of-week pattern, pizza popularity,
size mix and pizzas per order, shaped per customer by a taste profile (favourite styles, sizes,
pineapple love or hate, a propensity for sides, drinks and desserts). Into that stream the
simulator injects fraud sessions and anomalies:

    card_testing      a fresh card, a burst of tiny orders minutes apart
    stolen_card       a new card and address, a big basket, often late at night
    account_takeover  a customer with history, a new device and/or address, an unusual basket
    promo_abuse       many new accounts on one device and one address

Fraud is *probabilistic*: every order has a true ``fraud_prob`` computed from the generative
variables (the scenario, the position in a burst, the basket value, what changed), and
``is_fraud`` is drawn from it. So the Bayes-optimal score (``fraud_prob`` itself) exists and is
not perfect. Anomalies (absurd quantities, totals, unit prices against the menu, opening hours)
are labelled separately. The ground truth travels beside the events, never inside them.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np

from ingest.events import Address, ChargebackReported, OrderItem, OrderPlaced, PaymentMethod
from models._population import Customer, Population, random_address, random_card, random_device
from models.catalog import Catalog, load_catalog

SCENARIOS: tuple[str, ...] = (
    "normal",
    "card_testing",
    "stolen_card",
    "account_takeover",
    "promo_abuse",
)
ANOMALY_KINDS: tuple[str, ...] = ("none", "quantity", "total", "unit_price", "timing")
DEFAULT_START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday


@dataclass(frozen=True, slots=True)
class WorldParams:
    """The numbers a generator could have chosen otherwise: basket sizes, timings, hours,
    habits and how each fraud scenario plays out. The defaults are the project's own world;
    ``models._worlds.sample_config`` draws others. The *form* of each scenario's true fraud
    probability stays fixed (it is what fraud means here); its intercept moves per world."""

    pizzas_scale: float = 1.0  # multiplies the pizzas in an ordinary order
    hour_shift_h: float = 0.0  # the shop's day moved by this many hours
    habit: tuple[float, float] = (3.0, 2.0)  # Beta of a customer's habit strength
    benign_change: tuple[float, float, float] = (0.02, 0.012, 0.02)  # new device, address, card
    new_account_share: float = 0.7  # fraud sessions on a fresh account, else a known one
    night_share: float = 0.55  # card-testing and stolen-card sessions started late at night
    night_start_h: float = 22.5
    testing_size: tuple[int, int] = (4, 12)
    testing_gap_s: tuple[float, float] = (20.0, 150.0)
    stolen_size: tuple[int, int] = (1, 3)
    stolen_gap_s: tuple[float, float] = (300.0, 2400.0)
    stolen_pizzas: tuple[int, int] = (3, 12)
    stolen_drinks: tuple[int, int] = (0, 6)
    ato_size: tuple[int, int] = (1, 2)
    ato_gap_s: tuple[float, float] = (600.0, 3600.0)
    ato_pizzas: tuple[int, int] = (3, 9)
    ato_drinks: tuple[int, int] = (1, 6)
    ato_new_device: float = 0.8
    ato_new_address: float = 0.7
    ato_new_card: float = 0.4
    promo_size: tuple[int, int] = (4, 10)
    promo_gap_s: tuple[float, float] = (300.0, 2400.0)
    intercept_shift: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # per scenario


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    orders_per_day: int = 400
    customers_per_order: float = 0.15  # distinct customers per ordinary order
    attack_share: float = 0.03  # share of orders that belong to fraud sessions
    anomaly_share: float = 0.012
    scenario_mix: tuple[float, float, float, float] = (0.35, 0.25, 0.2, 0.2)
    start: datetime = DEFAULT_START
    world: WorldParams = WorldParams()


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """Per-order labels, aligned with ``SimulatedStream.orders`` by position."""

    order_id: np.ndarray  # object [n]
    fraud_prob: np.ndarray  # float64 [n], the true P(fraud | generative state)
    is_fraud: np.ndarray  # bool [n], drawn from fraud_prob
    scenario: np.ndarray  # int8 [n], index into SCENARIOS
    is_anomaly: np.ndarray  # bool [n]
    anomaly_kind: np.ndarray  # int8 [n], index into ANOMALY_KINDS

    def scenario_name(self, i: int) -> str:
        return SCENARIOS[int(self.scenario[i])]


@dataclass(frozen=True, slots=True)
class CustomerBasket:
    """What one customer bought in one order: the upsell model's training row."""

    order_id: str
    customer_id: str
    skus: tuple[str, ...]  # one entry per unit, in item order
    placed_at: datetime


@dataclass(frozen=True, slots=True)
class SimulatedStream:
    seed: int
    orders: list[OrderPlaced]  # sorted by placed_at
    truth: GroundTruth

    def __len__(self) -> int:
        return len(self.orders)

    def baskets(self) -> list[CustomerBasket]:
        return baskets(self.orders)


def baskets(orders: list[OrderPlaced]) -> list[CustomerBasket]:
    """Per order: customer id, the SKUs bought (repeated by quantity) and when."""
    return [
        CustomerBasket(
            order_id=o.order_id,
            customer_id=o.customer_id,
            skus=tuple(item.sku for item in o.items for _ in range(item.quantity)),
            placed_at=o.placed_at,
        )
        for o in orders
    ]


@dataclass(slots=True)
class _Slot:
    ts: float  # seconds since config.start
    scenario: int
    session: int  # -1 for ordinary orders
    position: int  # index within the session
    anomaly: int = 0


@dataclass(slots=True)
class _Session:
    scenario: int
    customer: Customer | None = None
    card: tuple[str, str] | None = None
    device: str | None = None
    address: Address | None = None
    voucher: bool = False


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class _Generator:
    def __init__(self, n_orders: int, seed: int, config: SimulationConfig) -> None:
        self.n = n_orders
        self.seed = seed
        self.cfg = config
        self.w = config.world
        self.cat: Catalog = load_catalog()
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.pop = Population(self.cat, self.rng, self.np_rng, habit=self.w.habit)
        self.days = max(1, math.ceil(n_orders / config.orders_per_day))
        n_customers = max(20, int(n_orders * config.customers_per_order))
        activity = self.np_rng.lognormal(0.0, 1.2, n_customers)
        self.customer_ids = [f"cust-{seed}-{i:06d}" for i in range(n_customers)]
        self.customer_cum = list(np.cumsum(activity / activity.sum()).tolist())
        self.n_new_accounts = 0
        self.day_weights = np.tile(self.cat.weekday_weight, self.days // 7 + 1)[: self.days]
        self.day_weights = self.day_weights / self.day_weights.sum()
        self.expensive = [int(i) for i in np.argsort(-self.cat.price)[:20]]

    # -- timing ---------------------------------------------------------------------------
    def _normal_times(self, k: int) -> np.ndarray:
        day = self.np_rng.choice(self.days, size=k, p=self.day_weights)
        secs = self.np_rng.choice(self.cat.seconds_of_day, size=k)
        shift = self.w.hour_shift_h * 3600.0
        secs = np.clip(secs + shift + self.np_rng.uniform(-300, 300, size=k), 0, 86_399)
        return np.asarray(day * 86_400.0 + secs, dtype=np.float64)

    def _slots(self) -> list[_Slot]:
        n_attack = round(self.n * self.cfg.attack_share)
        slots: list[_Slot] = []
        session = 0
        attack_orders = 0
        w = self.w
        mix = np.asarray(self.cfg.scenario_mix, dtype=np.float64)
        mix = mix / mix.sum()
        shapes = {
            1: (w.testing_size, w.testing_gap_s),
            2: (w.stolen_size, w.stolen_gap_s),
            3: (w.ato_size, w.ato_gap_s),
            4: (w.promo_size, w.promo_gap_s),
        }
        while attack_orders < n_attack:
            scenario = 1 + int(self.np_rng.choice(4, p=mix))
            sizes, gap = shapes[scenario]
            size = self.rng.randint(*sizes)
            start = float(self._normal_times(1)[0])
            if scenario in (1, 2) and self.rng.random() < w.night_share:  # late at night
                night = w.night_start_h * 3600
                start = self.rng.randrange(self.days) * 86_400.0 + self.rng.uniform(
                    night, night + 3 * 3600
                )
            ts = start
            for position in range(size):
                slots.append(_Slot(ts=ts, scenario=scenario, session=session, position=position))
                ts += self.rng.uniform(*gap)
            session += 1
            attack_orders += size
        n_normal = max(0, self.n - len(slots))
        slots.extend(
            _Slot(ts=float(t), scenario=0, session=-1, position=0)
            for t in self._normal_times(n_normal)
        )
        slots = slots[: self.n]
        # anomalies: mutations of ordinary orders; timing ones move the order to the small hours
        normal_idx = [i for i, s in enumerate(slots) if s.scenario == 0]
        n_anom = min(len(normal_idx), round(self.n * self.cfg.anomaly_share))
        for i in self.rng.sample(normal_idx, n_anom):
            kind = self.rng.randint(1, 4)
            slots[i].anomaly = kind
            if kind == 4:
                day = math.floor(slots[i].ts / 86_400)
                slots[i].ts = day * 86_400.0 + self.rng.uniform(3 * 3600, 7 * 3600)
        slots.sort(key=lambda s: s.ts)
        return slots

    # -- orders ---------------------------------------------------------------------------
    def run(self) -> SimulatedStream:
        slots = self._slots()
        sessions: dict[int, _Session] = {}
        orders: list[OrderPlaced] = []
        n = len(slots)
        fraud_prob = np.zeros(n)
        scenario = np.zeros(n, dtype=np.int8)
        anomaly = np.zeros(n, dtype=np.int8)
        for i, slot in enumerate(slots):
            placed_at = self.cfg.start + timedelta(seconds=slot.ts)
            if slot.scenario == 0:
                order, p = self._normal(i, placed_at, slot.anomaly)
            else:
                sess = sessions.setdefault(slot.session, _Session(scenario=slot.scenario))
                order, p = self._attack(i, placed_at, sess, slot)
            orders.append(order)
            fraud_prob[i] = p
            scenario[i] = slot.scenario
            anomaly[i] = slot.anomaly
        is_fraud = self.np_rng.random(n) < fraud_prob
        truth = GroundTruth(
            order_id=np.array([o.order_id for o in orders], dtype=object),
            fraud_prob=fraud_prob,
            is_fraud=is_fraud,
            scenario=scenario,
            is_anomaly=anomaly > 0,
            anomaly_kind=anomaly,
        )
        return SimulatedStream(seed=self.seed, orders=orders, truth=truth)

    def _event(
        self,
        i: int,
        placed_at: datetime,
        customer: Customer,
        basket: dict[int, int],
        channel: str,
        address: Address | None,
        device: str | None,
        payment: PaymentMethod,
        prices: dict[int, float] | None = None,
    ) -> OrderPlaced:
        items = []
        total = Decimal(0)
        for pos, qty in basket.items():
            menu_item = self.cat.menu[self.cat.skus[pos]]
            price = (
                menu_item.price
                if prices is None or pos not in prices
                else (Decimal(str(round(prices[pos], 2))))
            )
            items.append(
                OrderItem(
                    sku=menu_item.sku,
                    name=menu_item.name,
                    size=menu_item.size,
                    quantity=qty,
                    unit_price=price,
                )
            )
            total += price * qty
        return OrderPlaced(
            event_id=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            order_id=f"sim{self.seed}-{i:07d}",
            occurred_at=placed_at,
            customer_id=customer.customer_id,
            customer_email=customer.email,
            items=tuple(items[:50]),
            total=sum((it.unit_price * it.quantity for it in items[:50]), Decimal(0)),
            placed_at=placed_at,
            channel=channel,
            delivery_address=address,
            payment=payment,
            device_id=device,
        )

    @staticmethod
    def _total(cat: Catalog, basket: dict[int, int]) -> float:
        return float(sum(cat.price[pos] * q for pos, q in basket.items()))

    def _normal(self, i: int, placed_at: datetime, anomaly: int) -> tuple[OrderPlaced, float]:
        rng = self.rng
        cid = rng.choices(self.customer_ids, cum_weights=self.customer_cum, k=1)[0]
        customer = self.pop.get(cid)
        n_pizzas = min(15, int(rng.choice(self.cat.pizzas_per_order)))
        if self.w.pizzas_scale != 1.0:
            n_pizzas = max(1, min(15, round(n_pizzas * self.w.pizzas_scale)))
        basket = self.pop.basket(customer, n_pizzas)
        channel = self.pop.channel(customer)
        # benign changes: a new phone, a move, a new card; they look like fraud signals
        p_device, p_address, p_card = self.w.benign_change
        new_device = rng.random() < p_device
        new_address = rng.random() < p_address
        new_card = rng.random() < p_card
        if new_device:
            customer.devices.append(random_device(rng))
        if new_address:
            customer.addresses.append(random_address(rng))
        if new_card:
            customer.cards.append(random_card(rng))
        device = (
            (customer.devices[-1] if new_device else rng.choice(customer.devices))
            if (channel in ("web", "app"))
            else None
        )
        address = (
            None
            if channel == "walk_in"
            else (customer.addresses[-1] if new_address else rng.choice(customer.addresses))
        )
        if channel in ("phone", "walk_in") and rng.random() < 0.4:
            payment = PaymentMethod(kind="cash")
        else:
            fp, last4 = customer.cards[-1] if new_card else rng.choice(customer.cards)
            payment = PaymentMethod(kind="card", card_fingerprint=fp, last4=last4)
        prices: dict[int, float] | None = None
        if anomaly == 1:  # absurd quantity of one thing
            pos = rng.choice(list(basket))
            basket[pos] = rng.randint(25, 50)
        elif anomaly == 2:  # an absurd total: many lines of the dearest items
            for pos in rng.sample(self.expensive, rng.randint(8, 15)):
                basket[pos] = rng.randint(12, 30)
        elif anomaly == 3:  # a unit price far from the menu
            pos = rng.choice(list(basket))
            factor = rng.choice((rng.uniform(0.01, 0.3), rng.uniform(4.0, 20.0)))
            prices = {pos: max(0.01, float(self.cat.price[pos]) * factor)}
        total = self._total(self.cat, basket)
        first = customer.n_orders == 0
        logit = (
            -6.2
            + 0.9 * new_card
            + 0.8 * new_device
            + 0.8 * new_address
            + 0.35 * math.log(total / 35.0)
            + 0.4 * first
        )
        customer.n_orders += 1
        customer.spend += total
        order = self._event(
            i, placed_at, customer, basket, channel, address, device, payment, prices
        )
        return order, _sigmoid(logit)

    def _new_account(self) -> Customer:
        self.n_new_accounts += 1
        return self.pop.get(f"acct-{self.seed}-{self.n_new_accounts:06d}")

    def _open_session(self, sess: _Session) -> None:
        """A fraudster's first order: mostly a new account, else a known customer's; a card,
        device and address of the fraudster's own either way."""
        rng = self.rng
        if sess.customer is None:
            sess.customer = (
                self._new_account()
                if rng.random() < self.w.new_account_share
                else self.pop.get(rng.choice(self.customer_ids))
            )
            sess.card, sess.device = random_card(rng), random_device(rng)
            sess.address = random_address(rng)

    def _attack(
        self, i: int, placed_at: datetime, sess: _Session, slot: _Slot
    ) -> tuple[OrderPlaced, float]:
        rng, cat, pop, w = self.rng, self.cat, self.pop, self.w
        hour = placed_at.hour + placed_at.minute / 60.0
        odd_hour = float(hour >= 22.5 or hour < 6)
        k = slot.position
        if slot.scenario == 1:  # card testing
            self._open_session(sess)
            pool = pop.drinks + pop.sides + pop.desserts
            basket = {rng.choice(pool): 1}
            channel = rng.choice(("web", "app"))
            logit = -1.6 + 0.65 * k + 0.4 * odd_hour + rng.gauss(0, 0.4) + w.intercept_shift[0]
        elif slot.scenario == 2:  # stolen card
            self._open_session(sess)
            big = [p for p in pop.pizzas.tolist() if cat.size[p] >= 2]
            basket = {}
            for pos in rng.choices(big, k=rng.randint(*w.stolen_pizzas)):
                basket[pos] = basket.get(pos, 0) + 1
            for pos in rng.choices(pop.drinks[-3:], k=rng.randint(*w.stolen_drinks)):
                basket[pos] = basket.get(pos, 0) + 1
            channel = rng.choice(("web", "app"))
            total = self._total(cat, basket)
            logit = (
                -1.7 + 1.1 * math.log(total / 60.0) + 1.2 * odd_hour + 0.3 * k + rng.gauss(0, 0.4)
            ) + w.intercept_shift[1]
        elif slot.scenario == 3:  # account takeover
            if sess.customer is None:
                victims = pop.with_history(3)
                sess.customer = rng.choice(victims) if victims else self._new_account()
                # one draw for device and address: most takeovers change both, some one of them
                change = rng.random()
                sess.device = (
                    random_device(rng)
                    if change < w.ato_new_device
                    else rng.choice(sess.customer.devices)
                )
                sess.address = (
                    random_address(rng)
                    if change > 1.0 - w.ato_new_address
                    else rng.choice(sess.customer.addresses)
                )
                sess.card = (
                    random_card(rng)
                    if rng.random() < w.ato_new_card
                    else rng.choice(sess.customer.cards)
                )
            customer = sess.customer
            usual = customer.usual_spend
            basket = {}
            for pos in rng.choices(pop.pizzas.tolist(), k=rng.randint(*w.ato_pizzas)):
                basket[pos] = basket.get(pos, 0) + 1
            for pos in rng.choices(pop.drinks[-2:], k=rng.randint(*w.ato_drinks)):
                basket[pos] = basket.get(pos, 0) + 1
            channel = rng.choice(("web", "app"))
            total = self._total(cat, basket)
            new_dev = sess.device not in customer.devices
            new_addr = sess.address not in customer.addresses
            new_card = sess.card not in customer.cards
            logit = (
                -2.4
                + 1.0 * new_dev
                + 1.0 * new_addr
                + 0.6 * new_card
                + 0.9 * math.log(total / usual)
                + rng.gauss(0, 0.4)
                + w.intercept_shift[2]
            )
        else:  # promo abuse: a fresh account per order, one device and one address
            if sess.device is None:
                sess.device, sess.address = random_device(rng), random_address(rng)
                sess.voucher = rng.random() < 0.5
                sess.card = random_card(rng)
            sess.customer = self._new_account()
            basket = pop.basket(sess.customer, rng.randint(1, 2))
            channel = "app"
            logit = -1.9 + 0.55 * k + rng.gauss(0, 0.4) + w.intercept_shift[3]
        assert sess.customer is not None
        customer = sess.customer
        if sess.voucher:
            payment = PaymentMethod(kind="voucher")
        else:
            assert sess.card is not None
            payment = PaymentMethod(kind="card", card_fingerprint=sess.card[0], last4=sess.card[1])
        customer.n_orders += 1
        customer.spend += self._total(cat, basket)
        order = self._event(
            i, placed_at, customer, basket, channel, sess.address, sess.device, payment
        )
        return order, _sigmoid(logit)


def simulate(
    n_orders: int, seed: int = 0, config: SimulationConfig | None = None
) -> SimulatedStream:
    """``n_orders`` orders sorted by ``placed_at``; the same arguments give the same stream."""
    if n_orders < 1:
        raise ValueError("n_orders must be positive")
    return _Generator(n_orders, seed, config or SimulationConfig()).run()


#: Chargeback reasons by scenario (the rest: the generic one).
_REASONS = {"card_testing": "fraud_card_testing", "stolen_card": "fraud_card_absent"}
#: Days from a fraudulent order to its chargeback: card networks give cardholders weeks.
CHARGEBACK_DELAY_DAYS = (3.0, 21.0)


def chargebacks(
    stream: SimulatedStream,
    seed: int = 0,
    delay_days: tuple[float, float] = CHARGEBACK_DELAY_DAYS,
) -> list[ChargebackReported]:
    """A ``ChargebackReported`` for every fraudulent order of ``stream`` (``is_fraud``), a
    uniformly drawn ``delay_days`` after it was placed, in report order. Every fraud is
    reported, held ones too (a real shop learns those from its own review instead)."""
    rng = random.Random(seed)
    out = []
    for i in np.flatnonzero(stream.truth.is_fraud):
        order = stream.orders[int(i)]
        reported = order.placed_at + timedelta(days=rng.uniform(*delay_days))
        reason = _REASONS.get(stream.truth.scenario_name(int(i)), "fraud_other")
        out.append(
            ChargebackReported(
                order_id=order.order_id, occurred_at=reported, reported_at=reported, reason=reason
            )
        )
    return sorted(out, key=lambda c: c.reported_at)


__all__ = [
    "ANOMALY_KINDS",
    "CHARGEBACK_DELAY_DAYS",
    "SCENARIOS",
    "CustomerBasket",
    "GroundTruth",
    "SimulatedStream",
    "SimulationConfig",
    "WorldParams",
    "baskets",
    "chargebacks",
    "simulate",
]

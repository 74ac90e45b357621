"""A small seeded generator of repeat customers with tastes, for upsell notebooks and tests.

pizzaplace has no customers and no sides, so it cannot show what upsell is for. Here each
customer has a taste profile (styles, liked and disliked ingredients, a usual size), propensities
to add a side, a drink or a dessert, favourites among those that follow their tastes (chicken
lovers take wings, veggie lovers salads and lemonade), and an order rate, so most customers
come back. The main simulator in ``models/`` may replace this module; only the notebook and the
upsell tests use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pizzashop.core.menu import MenuItem

__all__ = [
    "CustomerProfile",
    "SyntheticData",
    "SyntheticOrder",
    "generate_orders",
    "histories_before",
    "split_by_day",
]

STYLES: tuple[str, ...] = ("classic", "chicken", "supreme", "veggie")
PIZZA_SIZES: tuple[str, ...] = ("S", "M", "L")

# What each extra goes with: styles and ingredient words that raise a customer's liking for it.
EXTRA_AFFINITY: dict[str, tuple[str, ...]] = {
    "garlic_bread": ("garlic", "classic"),
    "mozz_sticks": ("mozzarella", "cheese", "classic"),
    "wings_bbq": ("chicken", "barbecue"),
    "wings_hot": ("chicken", "jalapeno", "chipotle", "chilli"),
    "caesar_salad": ("chicken", "asiago", "parmigiano"),
    "greek_salad": ("veggie", "feta", "olives", "spinach"),
    "fries": ("classic", "bacon"),
    "cola": ("classic", "pepperoni"),
    "lemonade": ("veggie", "pesto"),
    "water": ("veggie", "supreme"),
    "iced_tea": ("chicken", "thai"),
    "beer": ("jalapeno", "pepperoni", "sausage", "chorizo", "salami"),
    "red_wine": ("supreme", "cheese", "salami", "prosciutto", "capocollo"),
    "tiramisu": ("supreme",),
    "cannoli": ("ricotta", "classic"),
    "brownie": ("chicken", "classic"),
    "gelato": ("veggie", "pistachio"),
}


@dataclass(frozen=True, slots=True)
class CustomerProfile:
    customer_id: str
    styles: tuple[float, ...]  # weights over STYLES, summing to 1
    likes: tuple[str, ...]  # ingredient words
    dislikes: tuple[str, ...]
    sizes: tuple[float, ...]  # weights over PIZZA_SIZES
    p_side: float
    p_drink: float
    p_dessert: float
    orders_per_year: float


@dataclass(frozen=True, slots=True)
class SyntheticOrder:
    order_id: str
    customer_id: str
    day: int
    skus: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SyntheticData:
    customers: tuple[CustomerProfile, ...]
    orders: tuple[SyntheticOrder, ...]  # sorted by day, then order id


def _words(item: MenuItem) -> set[str]:
    text = f"{item.style} {item.product} {' '.join(item.ingredients)}".replace("_", " ")
    return set(text.lower().split())


def _softmax(x: np.ndarray) -> np.ndarray:
    e: np.ndarray = np.exp(x - x.max())
    out: np.ndarray = e / e.sum()
    return out


def generate_orders(
    menu: Mapping[str, MenuItem],
    *,
    n_customers: int = 1000,
    days: int = 365,
    seed: int = 0,
    taste_sharpness: float = 1.5,
    habit_strength: float = 1.0,
    stranger_share: float = 0.15,
) -> SyntheticData:
    """Customers and their orders over ``days`` days; identical for one seed.

    ``taste_sharpness`` scales how strongly tastes (styles, ingredients) drive choices;
    ``habit_strength`` scales personal favourites unrelated to any taste (Gumbel noise fixed per
    customer). Both 0: everyone orders by the house popularity, and nothing is personal.
    ``stranger_share`` of pizzas are picked by popularity alone (a friend's choice).
    """
    rng = np.random.default_rng(seed)
    skus = list(menu)
    pizzas = [s for s in skus if menu[s].category == "pizza"]
    products = sorted({menu[s].product for s in pizzas})
    sizes_of = {p: {menu[s].size: s for s in pizzas if menu[s].product == p} for p in products}
    first = {p: menu[next(iter(sizes_of[p].values()))] for p in products}
    words = {p: _words(first[p]) for p in products}
    style_of = np.array([STYLES.index(first[p].style) for p in products])
    vocabulary = sorted({w for p in products for w in words[p]} - set(STYLES))
    # A fixed "house" popularity, so that a popularity baseline has something to find.
    base = rng.normal(0.0, 0.7, size=len(products))
    extras = {c: [s for s in skus if menu[s].category == c] for c in ("side", "drink", "dessert")}

    customers: list[CustomerProfile] = []
    orders: list[SyntheticOrder] = []
    for c in range(n_customers):
        styles = rng.dirichlet(np.full(len(STYLES), 0.6))
        likes = tuple(rng.choice(vocabulary, size=3, replace=False).tolist())
        dislikes = tuple(
            w for w in rng.choice(vocabulary, size=2, replace=False).tolist() if w not in likes
        )
        profile = CustomerProfile(
            customer_id=f"c{c:05d}",
            styles=tuple(float(x) for x in styles),
            likes=likes,
            dislikes=dislikes,
            sizes=tuple(float(x) for x in rng.dirichlet([1.0, 2.0, 2.0])),
            p_side=float(rng.beta(1.5, 3.0)),
            p_drink=float(rng.beta(2.0, 2.5)),
            p_dessert=float(rng.beta(1.0, 4.0)),
            orders_per_year=float(rng.gamma(2.0, 4.0)),
        )
        customers.append(profile)

        liked = np.array([len(words[p] & set(likes)) for p in products], dtype=float)
        disliked = np.array([len(words[p] & set(dislikes)) for p in products], dtype=float)
        utility = (
            base
            + taste_sharpness
            * (3.0 * np.log(styles[style_of] + 1e-3) / 3.0 + 1.5 * liked - 2.5 * disliked)
            + habit_strength * rng.gumbel(size=len(products))  # favourites for no reason
        )
        choice = _softmax(utility)
        customer_words = set(likes) | {STYLES[int(np.argmax(styles))]}
        favourite: dict[str, np.ndarray] = {}
        for category, options in extras.items():
            fit = np.array(
                [len(set(EXTRA_AFFINITY.get(s, ())) & customer_words) for s in options], float
            )
            favourite[category] = _softmax(
                taste_sharpness * 1.5 * fit + habit_strength * rng.gumbel(size=len(options))
            )

        n_orders = max(1, rng.poisson(profile.orders_per_year * days / 365))
        for day in np.sort(rng.integers(0, days, size=n_orders)):
            basket: list[str] = []
            for _ in range(1 + min(rng.poisson(0.6), 3)):
                if rng.random() < stranger_share:
                    product = products[rng.choice(len(products), p=_softmax(base))]
                else:
                    product = products[rng.choice(len(products), p=choice)]
                size = PIZZA_SIZES[rng.choice(len(PIZZA_SIZES), p=np.array(profile.sizes))]
                available = sizes_of[product]
                basket.append(available.get(size) or next(iter(available.values())))
            for category, p in (
                ("side", profile.p_side),
                ("drink", profile.p_drink),
                ("dessert", profile.p_dessert),
            ):
                if rng.random() < p:
                    options = extras[category]
                    basket.append(options[rng.choice(len(options), p=favourite[category])])
            orders.append(SyntheticOrder("", profile.customer_id, int(day), tuple(basket)))

    orders.sort(key=lambda o: (o.day, o.customer_id))
    numbered = tuple(
        SyntheticOrder(f"s{i:07d}", o.customer_id, o.day, o.skus) for i, o in enumerate(orders)
    )
    return SyntheticData(tuple(customers), numbered)


def split_by_day(
    orders: Sequence[SyntheticOrder], day: int
) -> tuple[list[SyntheticOrder], list[SyntheticOrder]]:
    """Orders before ``day`` and from ``day`` on, order preserved."""
    return [o for o in orders if o.day < day], [o for o in orders if o.day >= day]


def histories_before(orders: Sequence[SyntheticOrder]) -> dict[str, list[str]]:
    """Every customer's purchased SKUs over ``orders`` (the history a later order may use)."""
    history: dict[str, list[str]] = {}
    for order in orders:
        history.setdefault(order.customer_id, []).extend(order.skus)
    return history

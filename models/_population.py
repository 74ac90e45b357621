"""Simulated customers: taste profiles, addresses, devices, cards. Private to the simulator."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from itertools import accumulate

import numpy as np

from ingest.events import Address
from models.catalog import CATEGORIES, SIZES, STYLES, Catalog

_STREETS = (
    "Oak",
    "Elm",
    "Maple",
    "Cedar",
    "Pine",
    "Birch",
    "Walnut",
    "Cherry",
    "Lake",
    "Hill",
    "Park",
    "Mill",
    "River",
    "Church",
    "High",
    "Station",
    "Market",
    "Bridge",
)
_CITIES = (("Springfield", "620"), ("Riverton", "841"), ("Lakeside", "551"), ("Fairview", "372"))
CHANNELS: tuple[str, ...] = ("web", "app", "phone", "walk_in")


def random_address(rng: random.Random) -> Address:
    city, prefix = rng.choice(_CITIES)
    return Address(
        street=f"{rng.randint(1, 9999)} {rng.choice(_STREETS)} St",
        city=city,
        postcode=f"{prefix}{rng.randint(10, 99)}",
    )


def random_device(rng: random.Random) -> str:
    return f"dev-{rng.getrandbits(48):012x}"


def random_card(rng: random.Random) -> tuple[str, str]:
    """A (fingerprint, last4) pair."""
    return f"fp-{rng.getrandbits(64):016x}", f"{rng.randint(0, 9999):04d}"


@dataclass(slots=True)
class Customer:
    """One customer's stable tastes and their (mutable) set of addresses, devices and cards."""

    customer_id: str
    email: str
    pizza_cum_weights: list[float]  # cumulative weights over pizza SKU positions
    pizza_positions: list[int]
    favourites: list[int]  # the pizzas this customer keeps coming back for
    p_habit: float  # chance that a pizza in an order is one of the favourites
    p_side: float
    p_drink: float
    p_dessert: float
    side_cum: list[float]
    drink_cum: list[float]
    dessert_cum: list[float]
    channel_cum: list[float]
    addresses: list[Address] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    cards: list[tuple[str, str]] = field(default_factory=list)
    n_orders: int = 0
    spend: float = 0.0

    @property
    def usual_spend(self) -> float:
        return self.spend / self.n_orders if self.n_orders else 40.0


class Population:
    """Creates customers on first use from one seeded stream, so a run is reproducible."""

    def __init__(
        self,
        catalog: Catalog,
        rng: random.Random,
        np_rng: np.random.Generator,
        *,
        habit: tuple[float, float] = (3.0, 2.0),
    ) -> None:
        self._catalog = catalog
        self._habit = habit
        self._rng = rng
        self._np_rng = np_rng
        self._customers: dict[str, Customer] = {}
        self.pizzas = np.flatnonzero(catalog.category == CATEGORIES.index("pizza"))
        self.sides = [int(i) for i in np.flatnonzero(catalog.category == 1)]
        self.drinks = [int(i) for i in np.flatnonzero(catalog.category == 2)]
        self.desserts = [int(i) for i in np.flatnonzero(catalog.category == 3)]

    def get(self, customer_id: str) -> Customer:
        customer = self._customers.get(customer_id)
        if customer is None:
            customer = self._create(customer_id)
            self._customers[customer_id] = customer
        return customer

    def with_history(self, min_orders: int) -> list[Customer]:
        return [c for c in self._customers.values() if c.n_orders >= min_orders]

    def _create(self, customer_id: str) -> Customer:
        rng, nrng, cat = self._rng, self._np_rng, self._catalog
        style_pref = nrng.dirichlet(np.full(len(STYLES), 0.7))
        size_pref = nrng.dirichlet(np.array([3.0, 3.0, 4.0, 0.3, 0.05]) * 1.5)
        pineapple = rng.choice((3.0, 1.0, 1.0, 0.05))  # lovers, indifferent, haters
        pizzas = self.pizzas
        weights = (
            cat.popularity[pizzas]
            * style_pref[cat.style[pizzas]]
            * size_pref[cat.size[pizzas]]
            / np.array([0.3, 0.3, 0.4, 0.01, 0.001])[cat.size[pizzas]]
            * np.where(cat.pineapple[pizzas], pineapple, 1.0)
        )
        channel_pref = nrng.dirichlet(np.array([4.0, 3.0, 1.0, 1.0]))
        # Habits: people re-order what they liked. Two or three favourites drawn from their own
        # taste, and a peaked preference among sides, drinks and desserts (one "usual" drink).
        favourites = rng.choices(
            [int(p) for p in pizzas], weights=weights.tolist(), k=rng.randint(2, 3)
        )
        extras = 0.35
        customer = Customer(
            customer_id=customer_id,
            email=f"{customer_id}@example.com",
            pizza_cum_weights=list(accumulate(weights.tolist())),
            pizza_positions=[int(p) for p in pizzas],
            favourites=favourites,
            p_habit=float(nrng.beta(*self._habit)),
            p_side=float(nrng.beta(1.2, 3.0)),
            p_drink=float(nrng.beta(1.5, 2.0)),
            p_dessert=float(nrng.beta(0.8, 4.0)),
            side_cum=list(accumulate(nrng.dirichlet(np.full(len(self.sides), extras)).tolist())),
            drink_cum=list(accumulate(nrng.dirichlet(np.full(len(self.drinks), extras)).tolist())),
            dessert_cum=list(
                accumulate(nrng.dirichlet(np.full(len(self.desserts), extras)).tolist())
            ),
            channel_cum=list(accumulate(channel_pref.tolist())),
        )
        customer.addresses.append(random_address(rng))
        if rng.random() < 0.1:
            customer.addresses.append(random_address(rng))
        customer.devices.append(random_device(rng))
        if rng.random() < 0.3:
            customer.devices.append(random_device(rng))
        customer.cards.append(random_card(rng))
        if rng.random() < 0.2:
            customer.cards.append(random_card(rng))
        return customer

    def basket(self, customer: Customer, n_pizzas: int) -> dict[int, int]:
        """SKU position → quantity for one ordinary order of ``customer``."""
        rng = self._rng
        basket: dict[int, int] = {}
        for _ in range(n_pizzas):
            if rng.random() < customer.p_habit:
                pos = rng.choice(customer.favourites)
            else:
                pos = rng.choices(
                    customer.pizza_positions, cum_weights=customer.pizza_cum_weights, k=1
                )[0]
            basket[pos] = basket.get(pos, 0) + 1
        if rng.random() < customer.p_side:
            for pos in rng.choices(self.sides, cum_weights=customer.side_cum, k=1 + (n_pizzas > 2)):
                basket[pos] = basket.get(pos, 0) + 1
        if rng.random() < customer.p_drink:
            for pos in rng.choices(
                self.drinks, cum_weights=customer.drink_cum, k=rng.randint(1, max(1, n_pizzas))
            ):
                basket[pos] = basket.get(pos, 0) + 1
        if rng.random() < customer.p_dessert:
            pos = rng.choices(self.desserts, cum_weights=customer.dessert_cum, k=1)[0]
            basket[pos] = basket.get(pos, 0) + 1
        return basket

    def channel(self, customer: Customer) -> str:
        return self._rng.choices(CHANNELS, cum_weights=customer.channel_cum, k=1)[0]


__all__ = [
    "CHANNELS",
    "SIZES",
    "Customer",
    "Population",
    "random_address",
    "random_card",
    "random_device",
]

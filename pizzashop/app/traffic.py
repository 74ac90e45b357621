"""Realistic order requests for the demo and the benchmarks.

Baskets are real pizzaplace orders (which pizzas, which sizes, how many) replayed in random
order; customers come from a fixed pool, some with a side, drink or dessert added, card tokens
stable per customer. About one order in five holds a pineapple pizza, as in the data.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from models.catalog import PIZZAPLACE_PATH
from pizzashop.core.menu import Menu

PIZZAPLACE = PIZZAPLACE_PATH


@dataclass(frozen=True, slots=True)
class Basket:
    lines: tuple[tuple[str, int], ...]  # (sku, quantity)
    hour: int


@cache
def pizzaplace_baskets(path: Path = PIZZAPLACE) -> tuple[Basket, ...]:
    by_order: dict[str, Counter[str]] = defaultdict(Counter)
    hours: dict[str, int] = {}
    with gzip.open(path, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            by_order[row["order_id"]][f"{row['name']}_{row['size'].lower()}"] += 1
            hours[row["order_id"]] = int(row["time"][:2])
    return tuple(
        Basket(lines=tuple(sorted(counts.items())), hour=hours[order_id])
        for order_id, counts in by_order.items()
    )


class OrderRequests:
    """An endless, seeded stream of ``POST /orders`` bodies."""

    def __init__(self, menu: Menu, *, seed: int = 7, customers: int = 400) -> None:
        self._menu = menu
        self._rng = random.Random(seed)
        self._baskets = pizzaplace_baskets()
        self._extras = [item for item in menu.values() if item.category != "pizza"]
        self._customers = [f"cust-{i:05d}" for i in range(customers)]
        self._counter = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        rng = self._rng
        basket = rng.choice(self._baskets)
        lines = [(sku, min(qty, 20)) for sku, qty in basket.lines if sku in self._menu] or [
            ("pepperoni_m", 1)
        ]
        if rng.random() < 0.35:
            lines.append((rng.choice(self._extras).sku, rng.randint(1, 2)))
        customer = rng.choice(self._customers)
        token = hashlib.sha256(customer.encode()).hexdigest()[:24]
        self._counter += 1
        items = [
            {"sku": sku, "quantity": qty, "unit_price": str(self._menu[sku].price)}
            for sku, qty in lines
        ]
        total = sum((self._menu[sku].price * qty for sku, qty in lines), Decimal(0))
        return {
            "customer_id": customer,
            "customer_email": f"{customer}@example.com",
            "items": items,
            "total": str(total),
            "channel": rng.choice(["web", "web", "app", "phone"]),
            "delivery_address": {
                "street": f"{rng.randint(1, 999)} Main Street",
                "city": "Springfield",
                "postcode": f"{int(token[:4], 16) % 90000 + 10000}",
            },
            "payment": {
                "kind": "card",
                "card_fingerprint": token,
                "last4": f"{int(token[-4:], 16) % 10000:04d}",
            },
            "device_id": f"dev-{token[:8]}",
        }

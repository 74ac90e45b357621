"""The menu: what can be ordered, at which price, with what on it.

Loaded once from ``menu.json`` (built by ``models/data/build_menu.py``) into frozen slotted
records; the order API validates against it and the kitchen reads ingredients from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path

MENU_PATH = Path(__file__).with_name("menu.json")


@dataclass(frozen=True, slots=True)
class MenuItem:
    sku: str
    product: str
    name: str
    category: str  # pizza, side, drink, dessert
    style: str  # pizzaplace type for pizzas (classic, chicken, supreme, veggie), else the category
    size: str  # S..XXL for pizzas, "one" otherwise
    price: Decimal
    ingredients: tuple[str, ...]
    description: str

    @property
    def has_pineapple(self) -> bool:
        return any("pineapple" in ingredient for ingredient in self.ingredients)


@dataclass(frozen=True, slots=True)
class Menu(Mapping[str, MenuItem]):
    """The menu keyed by SKU."""

    currency: str
    by_sku: Mapping[str, MenuItem]

    def __getitem__(self, sku: str) -> MenuItem:
        return self.by_sku[sku]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_sku)

    def __len__(self) -> int:
        return len(self.by_sku)

    def by_category(self, category: str) -> list[MenuItem]:
        return [item for item in self.by_sku.values() if item.category == category]


@cache
def load_menu(path: Path = MENU_PATH) -> Menu:
    raw = json.loads(path.read_text())
    items = {
        entry["sku"]: MenuItem(
            sku=entry["sku"],
            product=entry["product"],
            name=entry["name"],
            category=entry["category"],
            style=entry["style"],
            size=entry["size"],
            price=Decimal(entry["price"]),
            ingredients=tuple(entry["ingredients"]),
            description=entry["description"],
        )
        for entry in raw["items"]
    }
    return Menu(currency=raw["currency"], by_sku=items)

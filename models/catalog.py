"""The menu and the pizzaplace sales history as NumPy arrays, for the simulator and the features.

Built once per process (``load_catalog`` is cached) from ``pizzashop/core/menu.json`` and
``models/data/pizzaplace.csv.gz``. Everything here is read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from pizzashop.core.menu import Menu, load_menu

PIZZAPLACE_PATH = Path(__file__).parent / "data" / "pizzaplace.csv.gz"
CATEGORIES: tuple[str, ...] = ("pizza", "side", "drink", "dessert")
STYLES: tuple[str, ...] = ("classic", "chicken", "supreme", "veggie")
SIZES: tuple[str, ...] = ("S", "M", "L", "XL", "XXL")


@dataclass(frozen=True, slots=True)
class Catalog:
    """Menu columns indexed by SKU position, plus pizzaplace's empirical distributions."""

    menu: Menu
    skus: tuple[str, ...]
    sku_index: dict[str, int]
    price: np.ndarray  # float64 [n_skus]
    category: np.ndarray  # int8 [n_skus], index into CATEGORIES
    style: np.ndarray  # int8 [n_skus], index into STYLES, -1 for non-pizza
    size: np.ndarray  # int8 [n_skus], index into SIZES, -1 for non-pizza
    pineapple: np.ndarray  # bool [n_skus]
    popularity: np.ndarray  # float64 [n_skus], pizzaplace share among pizzas (0 for non-pizza)
    seconds_of_day: np.ndarray  # int32, every pizzaplace order's time of day in seconds
    weekday_weight: np.ndarray  # float64 [7], Monday first, sums to 1
    pizzas_per_order: np.ndarray  # int32, every pizzaplace order's pizza count

    def sku_of(self, index: int) -> str:
        return self.skus[index]


@cache
def load_catalog() -> Catalog:
    menu = load_menu()
    skus = tuple(menu)
    sku_index = {sku: i for i, sku in enumerate(skus)}
    items = [menu[sku] for sku in skus]
    sales = pd.read_csv(PIZZAPLACE_PATH)
    sales["sku"] = sales["name"] + "_" + sales["size"].str.lower()
    counts = sales["sku"].value_counts()
    popularity = np.array([float(counts.get(sku, 0)) for sku in skus])
    popularity /= popularity.sum()
    orders = sales.groupby("order_id").agg(
        date=("date", "first"), time=("time", "first"), n=("sku", "size")
    )
    seconds = pd.to_timedelta(orders["time"]).dt.total_seconds().to_numpy(dtype=np.int32)
    weekday = pd.to_datetime(orders["date"]).dt.day_of_week.value_counts().sort_index()
    weekday_weight = weekday.reindex(range(7), fill_value=0).to_numpy(dtype=np.float64)
    return Catalog(
        menu=menu,
        skus=skus,
        sku_index=sku_index,
        price=np.array([float(item.price) for item in items]),
        category=np.array([CATEGORIES.index(item.category) for item in items], dtype=np.int8),
        style=np.array(
            [STYLES.index(item.style) if item.category == "pizza" else -1 for item in items],
            dtype=np.int8,
        ),
        size=np.array(
            [SIZES.index(item.size) if item.category == "pizza" else -1 for item in items],
            dtype=np.int8,
        ),
        pineapple=np.array([item.has_pineapple for item in items], dtype=bool),
        popularity=popularity,
        seconds_of_day=seconds,
        weekday_weight=weekday_weight / weekday_weight.sum(),
        pizzas_per_order=orders["n"].to_numpy(dtype=np.int32),
    )

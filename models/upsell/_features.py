"""Vectorised candidate features: one (baskets x items x features) tensor per batch.

Inputs are dense float32 matrices over the model's catalogue: ``basket`` (1 where the order
already holds the item), ``history`` (how often the customer bought each item before) and, at
training time only, ``own`` (the whole basket the sample was cut from, so its own co-occurrence
is subtracted: a basket must not vote for its hidden item).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pizzashop.core.menu import MenuItem

CATEGORIES: tuple[str, ...] = ("pizza", "side", "drink", "dessert")
SIZES: tuple[str, ...] = ("S", "M", "L", "XL", "XXL")

FEATURES: tuple[str, ...] = (
    "log_popularity",
    "log_cooccurrence",
    "taste_basket",
    "taste_history",
    "history_item_share",
    "history_category_share",
    "is_side",
    "is_drink",
    "is_dessert",
    "gap_pizza",
    "gap_side",
    "gap_drink",
    "gap_dessert",
    "same_product",
    "is_upgrade",
)
FEATURE_SCHEMA_VERSION = 1

# Smoothing: pseudo-counts toward the (neighbour-smoothed) popularity.
COOC_ALPHA = 5.0
POP_BETA = 1.0


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The menu as arrays aligned on ``skus``."""

    skus: tuple[str, ...]
    names: tuple[str, ...]
    category: np.ndarray  # int8 index into CATEGORIES
    product: np.ndarray  # int32 id, equal for the sizes of one pizza
    price: np.ndarray  # float64
    upgrade_to: np.ndarray  # int32: index of the next size up when the step is small, else -1

    @classmethod
    def from_menu(
        cls, items: Mapping[str, MenuItem], *, max_step_ratio: float, max_step_abs: float
    ) -> Catalogue:
        skus = tuple(items)
        products: dict[str, int] = {}
        product = np.array(
            [products.setdefault(items[s].product, len(products)) for s in skus], dtype=np.int32
        )
        price = np.array([float(items[s].price) for s in skus])
        category = np.array([CATEGORIES.index(items[s].category) for s in skus], dtype=np.int8)
        rank = {size: r for r, size in enumerate(SIZES)}
        upgrade_to = np.full(len(skus), -1, dtype=np.int32)
        for i, sku in enumerate(skus):
            size = items[sku].size
            if size not in rank:
                continue
            bigger = [
                j
                for j in range(len(skus))
                if product[j] == product[i] and rank.get(items[skus[j]].size, -1) > rank[size]
            ]
            if not bigger:
                continue
            j = min(bigger, key=lambda k: rank[items[skus[k]].size])
            step = price[j] - price[i]
            if step <= max_step_abs and step <= max_step_ratio * price[i]:
                upgrade_to[i] = j
        return cls(skus, tuple(items[s].name for s in skus), category, product, price, upgrade_to)

    @property
    def size(self) -> int:
        return len(self.skus)

    def index(self) -> dict[str, int]:
        return {sku: i for i, sku in enumerate(self.skus)}


@dataclass(frozen=True, slots=True)
class Statistics:
    """What training learned from baskets, plus the frozen description-neighbour kernel."""

    n_baskets: int
    counts: np.ndarray  # (n,) baskets holding item i
    pair_counts: np.ndarray  # (n, n) baskets holding i and j; diagonal = counts
    kernel: np.ndarray  # (n, n) description-neighbour kernel, 1 on the diagonal

    @property
    def prior(self) -> np.ndarray:
        """Popularity smoothed over description neighbours: unseen items inherit theirs."""
        share = self.counts / max(self.n_baskets, 1)
        smoothed: np.ndarray = (self.kernel @ share) / np.maximum(self.kernel.sum(axis=1), 1e-9)
        return smoothed


def multi_hot(
    baskets: Sequence[Sequence[str]], index: Mapping[str, int], *, counts: bool = False
) -> np.ndarray:
    """Rows of 0/1 (or counts) over the catalogue; unknown SKUs are skipped."""
    out = np.zeros((len(baskets), len(index)), dtype=np.float32)
    for row, basket in enumerate(baskets):
        for sku in basket:
            j = index.get(sku)
            if j is not None:
                if counts:
                    out[row, j] += 1.0
                else:
                    out[row, j] = 1.0
    return out


def candidate_features(
    catalogue: Catalogue,
    stats: Statistics,
    basket: np.ndarray,
    history: np.ndarray,
    own: np.ndarray | None = None,
) -> np.ndarray:
    """The (m, n, len(FEATURES)) float32 tensor; basket items get rows too, masked later."""
    m, n = basket.shape
    cat = catalogue.category.astype(np.intp)
    own_f = own if own is not None else np.zeros((1, n), dtype=np.float32)
    own_any = own_f.max(axis=1, keepdims=True)

    n_eff = stats.n_baskets - own_any  # (m|1, 1)
    counts = stats.counts[None, :] - own_f  # (m|1, n)
    prior = stats.prior.astype(np.float32)[None, :]
    popularity = (counts + POP_BETA * prior) / (n_eff + POP_BETA)  # (m|1, n)

    size = basket.sum(axis=1, keepdims=True)
    has_basket = size > 0
    # P(j | i) with a popularity prior, averaged over the basket's items i.
    weight = basket / (counts + COOC_ALPHA)
    weight_sum = weight.sum(axis=1, keepdims=True)
    numerator = weight @ stats.pair_counts + COOC_ALPHA * popularity * weight_sum
    if own is not None:
        numerator -= weight_sum * own_f
    cooc = np.where(has_basket, numerator / np.maximum(size, 1.0), popularity)

    taste_basket = (basket @ stats.kernel) / np.maximum(size, 1.0)
    history_total = history.sum(axis=1, keepdims=True)
    history_share = history / np.maximum(history_total, 1.0)
    taste_history = history_share @ stats.kernel

    cat_onehot = np.eye(len(CATEGORIES), dtype=np.float32)[cat]  # (n, 4)
    history_cat = history_share @ cat_onehot  # (m, 4)
    present = (basket @ cat_onehot) > 0  # (m, 4)
    gap = ~present[:, cat]  # (m, n)

    same_product = np.equal.outer(catalogue.product, catalogue.product).astype(np.float32)
    np.fill_diagonal(same_product, 0.0)
    upgrade = np.zeros((n, n), dtype=np.float32)
    has_up = catalogue.upgrade_to >= 0
    upgrade[np.flatnonzero(has_up), catalogue.upgrade_to[has_up]] = 1.0

    out = np.empty((m, n, len(FEATURES)), dtype=np.float32)
    out[..., 0] = np.log(np.maximum(popularity, 1e-9))
    out[..., 1] = np.log(np.maximum(cooc, 1e-9))
    out[..., 2] = taste_basket
    out[..., 3] = taste_history
    out[..., 4] = history_share
    out[..., 5] = history_cat[:, cat]
    out[..., 6] = cat == 1
    out[..., 7] = cat == 2
    out[..., 8] = cat == 3
    for c in range(len(CATEGORIES)):
        out[..., 9 + c] = gap & (cat == c)[None, :]
    out[..., 13] = (basket @ same_product) > 0
    out[..., 14] = (basket @ upgrade) > 0
    return out

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
    m, n = len(baskets), len(index)
    get = index.get
    # One flat pass in Python (a dict lookup per SKU), the rest in numpy.
    cols = np.fromiter((get(sku, -1) for basket in baskets for sku in basket), dtype=np.intp)
    rows = np.repeat(np.arange(m, dtype=np.intp), [len(basket) for basket in baskets])
    known = cols >= 0
    cells = rows[known] * n + cols[known]
    if counts:
        return np.bincount(cells, minlength=m * n).reshape(m, n).astype(np.float32)
    out = np.zeros(m * n, dtype=np.float32)
    out[cells] = 1.0
    return out.reshape(m, n)


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
    counts, popularity = _popularity(stats, own_f)

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

    same_product, upgrade = _pairs(catalogue)

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


@dataclass(frozen=True, slots=True)
class Ranker:
    """The linear ranker's logits at serving time, without the (m, n, F) tensor.

    :func:`candidate_features` followed by ``features @ weights`` writes and reads m x n x F
    floats per batch; at serving (no ``own``), a third of the features do not depend on the
    basket and the category ones are one weight per item. This folds those into a per-item
    bias and adds the remaining (m, n) features, each computed by the same float32 expressions,
    weighted in float64. Equal to the tensor path up to float64 summation order (a test holds
    them together); training keeps the tensor, which it needs for the gradients.
    """

    weights: np.ndarray  # (F,) float64
    bias: np.ndarray  # (n,) float64: popularity and category terms
    gap_weight: np.ndarray  # (n,) float64: the weight of the gap feature of each item's category
    cat: np.ndarray  # (n,) intp
    cat_onehot: np.ndarray  # (n, 4) float32
    counts: np.ndarray  # (1, n) float32
    popularity: np.ndarray  # (1, n) float32
    # basket @ mixed = [taste | same product | upgrade]: three products in one
    mixed: np.ndarray  # (n, 3n) float32
    pair_counts: np.ndarray  # (n, n) float32
    kernel: np.ndarray  # (n, n) float32

    @classmethod
    def build(cls, catalogue: Catalogue, stats: Statistics, weights: np.ndarray) -> Ranker:
        n = catalogue.size
        w = weights.astype(np.float64)
        cat = catalogue.category.astype(np.intp)
        own_f = np.zeros((1, n), dtype=np.float32)
        counts, popularity = _popularity(stats, own_f)
        bias = w[0] * np.log(np.maximum(popularity, 1e-9))[0].astype(np.float32)
        for c in (1, 2, 3):  # is_side, is_drink, is_dessert
            bias = bias + w[5 + c] * (cat == c).astype(np.float32)
        same_product, upgrade = _pairs(catalogue)
        mixed = np.concatenate([stats.kernel, same_product, upgrade], axis=1)
        return cls(
            weights=w,
            bias=bias.astype(np.float64),
            gap_weight=w[9 + cat],
            cat=cat,
            cat_onehot=np.eye(len(CATEGORIES), dtype=np.float32)[cat],
            counts=counts,
            popularity=popularity,
            mixed=mixed.astype(np.float32),
            pair_counts=stats.pair_counts,
            kernel=stats.kernel,
        )

    def logits(self, basket: np.ndarray, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(candidate_features(...) @ weights, is_upgrade)`` for ``own=None``: (m, n) float64
        logits and the (m, n) size-upgrade flags."""
        w = self.weights
        n = basket.shape[1]
        size = basket.sum(axis=1, keepdims=True)
        has_basket = size > 0
        weight = basket / (self.counts + COOC_ALPHA)
        weight_sum = weight.sum(axis=1, keepdims=True)
        numerator = weight @ self.pair_counts + COOC_ALPHA * self.popularity * weight_sum
        cooc = np.where(has_basket, numerator / np.maximum(size, 1.0), self.popularity)
        by_basket = basket @ self.mixed
        taste_basket = by_basket[:, :n] / np.maximum(size, 1.0)
        history_total = history.sum(axis=1, keepdims=True)
        history_share = history / np.maximum(history_total, 1.0)
        taste_history = history_share @ self.kernel
        history_cat = (history_share @ self.cat_onehot)[:, self.cat]
        gap = ~((basket @ self.cat_onehot) > 0)[:, self.cat]
        upgrade = by_basket[:, 2 * n :] > 0
        logits = self.bias + w[1] * np.log(np.maximum(cooc, 1e-9)).astype(np.float32)
        logits += w[2] * taste_basket.astype(np.float32)
        logits += w[3] * taste_history.astype(np.float32)
        logits += w[4] * history_share.astype(np.float32)
        logits += w[5] * history_cat.astype(np.float32)
        logits += gap * self.gap_weight
        logits += w[13] * (by_basket[:, n : 2 * n] > 0)
        logits += w[14] * upgrade
        return logits, upgrade


def _popularity(stats: Statistics, own_f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts without the sample's own basket, and the smoothed popularity, (m|1, n)."""
    own_any = own_f.max(axis=1, keepdims=True)
    n_eff = stats.n_baskets - own_any  # (m|1, 1)
    counts = stats.counts[None, :] - own_f  # (m|1, n)
    prior = stats.prior.astype(np.float32)[None, :]
    popularity = (counts + POP_BETA * prior) / (n_eff + POP_BETA)  # (m|1, n)
    return counts, popularity


def _pairs(catalogue: Catalogue) -> tuple[np.ndarray, np.ndarray]:
    """(n, n) float32: other sizes of the same product; the small-step size upgrade of each."""
    n = catalogue.size
    same_product = np.equal.outer(catalogue.product, catalogue.product).astype(np.float32)
    np.fill_diagonal(same_product, 0.0)
    upgrade = np.zeros((n, n), dtype=np.float32)
    has_up = catalogue.upgrade_to >= 0
    upgrade[np.flatnonzero(has_up), catalogue.upgrade_to[has_up]] = 1.0
    return same_product, upgrade

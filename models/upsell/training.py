"""Training and leave-one-out evaluation of :class:`UpsellModel`.

Training (seconds, not minutes): count items and pairs over the baskets, embed the menu (or read
the cached matrix), freeze description neighbours from a LangChain vector store, then fit a
logistic ranker on leave-one-out samples: hide one item of a basket, and teach the ranker to
put it above every other item the basket lacks. The sample's own basket is subtracted from the
counts it is scored with, so a basket never votes for its own hidden item.

Evaluation hides one item of each held-out basket (with two or more distinct items), asks for
``k`` suggestions from the rest plus the customer's earlier purchases, and counts a hit when the
hidden item is among them. Baselines: the ``k`` most popular training items not in the basket,
and plain co-occurrence (mean P(item | basket item)).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from pizzashop.core.menu import MenuItem

from ._features import FEATURES, Catalogue, Statistics, candidate_features, multi_hot
from .embeddings import Embedder, MiniLMEmbedder, embed_menu
from .model import UpsellConfig, UpsellModel
from .vectorstore import build_menu_store, neighbour_matrix

logger = logging.getLogger(__name__)

__all__ = ["evaluate_upsell", "prior_histories", "train_upsell"]


def prior_histories(
    baskets: Sequence[Sequence[str]],
    customer_ids: Sequence[str] | None,
    index: Mapping[str, int],
    initial: Mapping[str, Sequence[str]] | None = None,
) -> np.ndarray:
    """Row i: purchase counts of basket i's customer strictly before basket i (in list order)."""
    out = np.zeros((len(baskets), len(index)), dtype=np.float32)
    if customer_ids is None:
        return out
    if len(customer_ids) != len(baskets):
        raise ValueError("one customer id per basket")
    running: dict[str, np.ndarray] = {}
    if initial:
        for customer, skus in initial.items():
            running[customer] = multi_hot([skus], index, counts=True)[0]
    basket_counts = multi_hot(baskets, index, counts=True)
    for i, customer in enumerate(customer_ids):
        seen = running.get(customer)
        if seen is None:
            running[customer] = basket_counts[i].copy()
        else:
            out[i] = seen
            seen += basket_counts[i]
    return out


def _hide_one(
    basket: np.ndarray, rows: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """For each chosen row, a random held-in item is hidden: (rest, hidden index)."""
    rest = basket[rows].copy()
    hidden = np.empty(len(rows), dtype=np.intp)
    for r in range(len(rows)):
        items = np.flatnonzero(rest[r])
        hidden[r] = items[rng.integers(len(items))]
        rest[r, hidden[r]] = 0.0
    return rest, hidden


def _fit_softmax_ranker(
    feats: np.ndarray, candidate: np.ndarray, hidden: np.ndarray, *, l2: float
) -> np.ndarray:
    """Weights of a conditional logit: softmax over each sample's candidates, hidden item = label.

    It optimises the ranking within a basket directly (a per-row intercept cancels), which a
    binary classifier over all (basket, item) pairs does not. Features are standardised for the
    optimiser and the scale folded back into the weights.
    """
    flat = feats[candidate]
    mean, scale = flat.mean(axis=0), flat.std(axis=0)
    scale[scale < 1e-9] = np.inf  # a constant feature (no history at all) gets weight 0
    z = ((feats - mean) / scale).astype(np.float64)
    z[~candidate] = 0.0
    rows = np.arange(len(hidden))
    z_hidden = z[rows, hidden]  # (s, F)
    mask = np.where(candidate, 0.0, -np.inf)

    def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        logits = z @ w + mask
        top = logits.max(axis=1, keepdims=True)
        expd = np.exp(logits - top)
        total = expd.sum(axis=1, keepdims=True)
        prob = expd / total
        nll = np.mean(np.log(total[:, 0]) + top[:, 0] - logits[rows, hidden])
        grad = np.mean(np.matmul(prob[:, None, :], z)[:, 0] - z_hidden, axis=0)
        return float(nll + l2 * w @ w), grad + 2 * l2 * w

    result = minimize(
        loss_and_grad,
        np.zeros(z.shape[-1]),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 500},
    )
    if not result.success:
        logger.warning("upsell ranker did not converge: %s", result.message)
    weights: np.ndarray = (result.x / scale).astype(np.float32)
    return weights


def train_upsell(
    baskets: Sequence[Sequence[str]],
    customer_ids: Sequence[str] | None,
    menu: Mapping[str, MenuItem],
    embedder: Embedder | None = None,
    *,
    config: UpsellConfig | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> UpsellModel:
    """Fit the ranker on ``baskets`` (chronological when ``customer_ids`` is given).

    ``embedder`` defaults to MiniLM; ``cache_dir`` keeps the menu's embedding matrix across runs.
    """
    started = time.perf_counter()
    config = config or UpsellConfig()
    embedder = embedder if embedder is not None else MiniLMEmbedder()
    catalogue = Catalogue.from_menu(
        menu, max_step_ratio=config.max_step_ratio, max_step_abs=config.max_step_abs
    )
    index = catalogue.index()

    embeddings = embed_menu(menu, embedder, cache_dir=cache_dir)
    store = build_menu_store(menu, embedder, embeddings)
    kernel = neighbour_matrix(
        store,
        embeddings.skus,
        embeddings.vectors,
        neighbours=config.neighbours,
        temperature=config.kernel_temperature,
    )

    basket = multi_hot(baskets, index)
    stats = Statistics(
        n_baskets=len(baskets),
        counts=basket.sum(axis=0),
        pair_counts=basket.T @ basket,
        kernel=kernel,
    )
    history = prior_histories(baskets, customer_ids, index)

    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(basket.sum(axis=1) >= 2)
    if len(eligible) == 0:
        raise ValueError("training needs baskets with at least two distinct menu items")
    rows = rng.choice(eligible, size=min(len(eligible), config.max_train_samples), replace=False)
    rest, hidden = _hide_one(basket, rows, rng)
    feats = candidate_features(catalogue, stats, rest, history[rows], own=basket[rows])
    weights = _fit_softmax_ranker(feats, rest == 0, hidden, l2=config.l2)

    seconds = time.perf_counter() - started
    info = {
        "embedder": embeddings.embedder,
        "menu_fingerprint": embeddings.fingerprint,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "train_seconds": round(seconds, 3),
        "n_train_samples": len(rows),
        "has_customers": customer_ids is not None,
    }
    logger.info(
        "trained upsell on %d baskets (%d samples) in %.2f s", len(baskets), len(rows), seconds
    )
    return UpsellModel(catalogue, stats, embeddings.vectors, weights, config, info)


def _hits(ranked: np.ndarray, hidden: np.ndarray) -> float:
    return float((ranked == hidden[:, None]).any(axis=1).mean()) if len(hidden) else float("nan")


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def evaluate_upsell(
    model: UpsellModel,
    baskets: Sequence[Sequence[str]],
    customer_ids: Sequence[str] | None,
    history: Mapping[str, Sequence[str]] | None = None,
    *,
    k: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Leave-one-out hit rate of the model and of two baselines on held-out baskets.

    ``baskets`` are in time order; ``history`` maps a customer to what they bought before the
    first of them. Each basket joins its customer's history after it is scored, as in serving.
    Returns ``hit_at_{k}``, ``popularity_hit_at_{k}``, ``cooccurrence_hit_at_{k}`` and
    ``n_evaluated`` (baskets with at least two distinct known items).
    """
    index = model.catalogue.index()
    basket = multi_hot(baskets, index)
    prior = prior_histories(baskets, customer_ids, index, initial=history)
    rows = np.flatnonzero(basket.sum(axis=1) >= 2)
    rng = np.random.default_rng(seed)
    rest, hidden = _hide_one(basket, rows, rng)
    hist = prior[rows]

    ranked_model = np.concatenate(
        [
            model.top_k(rest[s : s + 2048], hist[s : s + 2048], k)[0]
            for s in range(0, len(rows), 2048)
        ]
        or [np.zeros((0, k), dtype=np.intp)]
    )
    masked = np.where(rest > 0, -np.inf, 0.0)
    ranked_pop = _top(masked + model.popularity[None, :], k)
    cooc = candidate_features(model.catalogue, model.stats, rest, np.zeros_like(rest))[
        ..., FEATURES.index("log_cooccurrence")
    ]
    ranked_cooc = _top(masked + cooc, k)
    return {
        f"hit_at_{k}": _hits(ranked_model, hidden),
        f"popularity_hit_at_{k}": _hits(ranked_pop, hidden),
        f"cooccurrence_hit_at_{k}": _hits(ranked_cooc, hidden),
        "n_evaluated": float(len(rows)),
    }

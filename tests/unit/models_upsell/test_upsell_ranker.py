"""The serving ranker (``Ranker``: no (m, n, F) tensor) against the tensor it replaced at
serving: the same logits up to float64 summation order, the same suggestions; and the
vectorised ``multi_hot`` against a loop."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from models.upsell import UpsellModel
from models.upsell._features import FEATURES, candidate_features, multi_hot


def _loop_multi_hot(
    baskets: Sequence[Sequence[str]], index: dict[str, int], *, counts: bool
) -> np.ndarray:
    out = np.zeros((len(baskets), len(index)), dtype=np.float32)
    for row, basket in enumerate(baskets):
        for sku in basket:
            j = index.get(sku)
            if j is not None:
                out[row, j] = out[row, j] + 1.0 if counts else 1.0
    return out


def _baskets(model: UpsellModel, seed: int, m: int) -> tuple[list[list[str]], list[list[str]]]:
    rng = np.random.default_rng(seed)
    skus = [*model.skus, "not_on_the_menu"]
    baskets = [list(rng.choice(skus, size=rng.integers(0, 6))) for _ in range(m)]
    histories = [list(rng.choice(skus, size=rng.integers(0, 60))) for _ in range(m)]
    baskets[0], histories[0] = [], []  # an empty basket, a customer never seen
    baskets[1] = list(model.skus)[2:]  # nearly the whole menu: fewer than k left to offer
    return baskets, histories


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_serving_logits_equal_the_tensor_path(trained: UpsellModel, seed: int) -> None:
    baskets, histories = _baskets(trained, seed, 300)
    basket, history = trained.encode(baskets, histories)
    feats = candidate_features(trained.catalogue, trained.stats, basket, history)
    want = feats.astype(np.float64) @ trained.weights.astype(np.float64)
    got, upgrade = trained._ranker.logits(basket, history)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(upgrade, feats[..., FEATURES.index("is_upgrade")] > 0)
    # ... and so the same suggestions, in the same order, with the same scores.
    idx, top, up = trained.top_k(basket, history, 3)
    scores = want.copy()
    in_basket = basket > 0
    scores[in_basket] = -np.inf
    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
    scores /= scores.sum(axis=1, keepdims=True)
    flagged = feats[..., FEATURES.index("is_upgrade")] > 0
    scores[flagged] = np.maximum(scores[flagged], trained.config.upgrade_score)
    scores[in_basket] = -np.inf
    scores[:, trained._refused] = -np.inf
    want_top = np.take_along_axis(scores, idx, axis=1)
    np.testing.assert_allclose(top, want_top, rtol=1e-9)
    # The picks are the best k of the reference scores (ties aside, the same items).
    kth = np.sort(scores, axis=1)[:, -3][:, None]
    assert np.all((want_top >= kth - 1e-12) | (want_top == -np.inf))
    assert up.dtype == bool


def test_vectorised_multi_hot_equals_the_loop(trained: UpsellModel) -> None:
    baskets, histories = _baskets(trained, 7, 200)
    index = {sku: i for i, sku in enumerate(trained.skus)}
    cases: list[list[list[str]]] = [baskets, histories, [], [[]]]
    for rows in cases:
        for counts in (False, True):
            got = multi_hot(rows, index, counts=counts)
            assert got.dtype == np.float32 and got.shape == (len(rows), len(index))
            np.testing.assert_array_equal(got, _loop_multi_hot(rows, index, counts=counts))

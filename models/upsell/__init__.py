"""Upsell: what to offer next to a basket, with a reason (size upgrade, complement, taste).

Training embeds the menu with MiniLM (cached per menu hash), freezes description neighbours
from a LangChain vector store and fits a softmax ranker; serving is numpy over a batch.
"""

from .embeddings import (
    Embedder,
    HashEmbedder,
    MenuEmbeddings,
    MiniLMEmbedder,
    embed_menu,
    menu_fingerprint,
)
from .model import REASONS, Reason, Suggestion, UpsellConfig, UpsellModel
from .training import evaluate_upsell, prior_histories, train_upsell
from .vectorstore import EmbedderAdapter, build_menu_store, neighbour_matrix

__all__ = [
    "REASONS",
    "Embedder",
    "EmbedderAdapter",
    "HashEmbedder",
    "MenuEmbeddings",
    "MiniLMEmbedder",
    "Reason",
    "Suggestion",
    "UpsellConfig",
    "UpsellModel",
    "build_menu_store",
    "embed_menu",
    "evaluate_upsell",
    "menu_fingerprint",
    "neighbour_matrix",
    "prior_histories",
    "train_upsell",
]

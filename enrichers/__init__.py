"""Enrichment workers: batches of ``OrderPlaced`` → features → models → ``OrderEnriched``."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Enricher": "enrichers.worker",
    "OrderScores": "enrichers.pipeline",
    "ScoringPipeline": "enrichers.pipeline",
    "to_enriched": "enrichers.worker",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'enrichers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

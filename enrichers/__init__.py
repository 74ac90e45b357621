"""Enrichment workers: batches of ``OrderPlaced`` → features → models → ``OrderEnriched``."""

from __future__ import annotations

from pizzashop.core.lazy import lazy_exports

_EXPORTS = {
    "Enricher": "enrichers.worker",
    "OrderScores": "enrichers.pipeline",
    "PreparedBatch": "enrichers.pipeline",
    "ScoringPipeline": "enrichers.pipeline",
    "shadow_events": "enrichers.worker",
    "to_enriched": "enrichers.worker",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)

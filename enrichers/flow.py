"""The enrichment flow's declaration. Light on purpose: torch and the models are imported only
when a process builds the flow, so processes that do not enrich never load them."""

from __future__ import annotations

from ingest.consumer import Handler
from ingest.flows import FlowContext, flow
from ingest.topics import ORDERS


@flow("enricher", topics=(ORDERS,))
def enricher_flow(ctx: FlowContext) -> Handler:
    from enrichers.pipeline import ScoringPipeline
    from enrichers.worker import Enricher
    from models.feature_state import SqlFeatureState
    from models.registry import Registry
    from models.upsell.history import SqlBasketHistory
    from services.menu import load_menu

    cfg = ctx.settings.enricher
    store = SqlFeatureState(ctx.db.url, engine=ctx.db.engine)
    registry = Registry(ctx.settings.resolved_registry_dir)
    history = SqlBasketHistory(ctx.db)
    pipeline = ScoringPipeline(
        registry,
        store,
        history=history,
        timeout_s=cfg.model_timeout_s,
        prefer_onnx=cfg.prefer_onnx,
        with_upsell=cfg.with_upsell,
    )
    shadow = None
    if cfg.shadow_fraud_version is not None:
        shadow = ScoringPipeline.challenger(
            registry,
            store,
            fraud_version=cfg.shadow_fraud_version,
            timeout_s=cfg.model_timeout_s,
            prefer_onnx=cfg.prefer_onnx,
            with_upsell=cfg.with_upsell,
        )
    # Started before the runtime consumes and stopped after it.
    ctx.resources += [store, history]
    return Enricher(
        pipeline,
        ctx.topics,
        load_menu(),
        fraud_threshold=cfg.fraud_threshold,
        reload_every_s=cfg.reload_every_s,
        shadow=shadow,
    )

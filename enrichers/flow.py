"""The enrichment flow's declaration. Light on purpose: torch and the models are imported only
when a process builds the flow, so processes that do not enrich never load them."""

from __future__ import annotations

import logging
from typing import Any

from ingest.consumer import Handler
from ingest.flows import FlowContext, flow
from ingest.topics import ORDERS

logger = logging.getLogger(__name__)


@flow("enricher", topics=(ORDERS,))
def enricher_flow(ctx: FlowContext) -> Handler:
    from enrichers.ledger import OrderLedger
    from enrichers.pipeline import ScoringPipeline
    from enrichers.worker import Enricher
    from models.feature_state import SqlFeatureState
    from models.registry import SCORERS, Registry
    from models.upsell.history import SqlBasketHistory
    from pizzashop.core.menu import load_menu

    cfg = ctx.settings.enricher
    store = SqlFeatureState(ctx.db.url, engine=ctx.db.engine)
    ledger = None
    if ctx.bootstrap:
        # Features wait until every order placed before them is in the state, and read it in
        # event time: any number of workers compute what one does (enrichers.ledger).
        ledger = OrderLedger(
            store,
            bootstrap=ctx.bootstrap,
            topic=ctx.topics.orders,
            group_id=ctx.settings.group("enricher"),
            client_options=ctx.client_options,
        )
        store.gate = ledger
    else:
        logger.warning("no bootstrap for the order ledger: features follow arrival order")
    registry = Registry(ctx.settings.resolved_registry_dir)
    history = SqlBasketHistory(ctx.db)
    options: dict[str, Any] = {
        "timeout_s": cfg.model_timeout_s,
        "timeouts": cfg.model_timeouts,
        "threads": cfg.model_threads,
        "prefer_onnx": cfg.prefer_onnx,
    }
    names = [name for name in SCORERS if cfg.with_upsell or name != "upsell"]
    pipeline = ScoringPipeline(registry, store, names=names, history=history, **options)
    # The challengers follow the registry's aliases (`pizzashop models shadow`); the setting,
    # when set, pins fraud's over its alias. Empty until a challenger is set: it costs nothing.
    pinned = {} if cfg.shadow_fraud_version is None else {"fraud": cfg.shadow_fraud_version}
    shadow = ScoringPipeline.shadow(
        registry, store, names=names, pinned=pinned, history=history, **options
    )
    # Started before the runtime consumes and stopped after it (the ledger before the store).
    ctx.resources += [store, *([ledger] if ledger is not None else []), history]
    return Enricher(
        pipeline,
        ctx.topics,
        load_menu(),
        fraud_threshold=cfg.fraud_threshold,  # None: each fraud version's recorded threshold
        target_false_hold_rate=cfg.target_false_hold_rate,
        reload_every_s=cfg.reload_every_s,
        shadow=shadow,
    )

"""`pizzashop demo` end to end, on the session's broker: every number adds up."""

from __future__ import annotations

from pathlib import Path

from pizzashop.app.demo import run_demo
from pizzashop.core.settings import Settings


async def test_demo_accounts_for_every_order(
    kafka_bootstrap: str, tmp_path: Path, trained_registry: Path, schema_registry_url: str
) -> None:
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap,
        home=tmp_path,
        cook_seconds=0.2,
        registry_dir=trained_registry,
        schema_registry={"url": schema_registry_url},
    )
    report = await run_demo(settings, 60, timeout_s=120)
    assert not report.timed_out
    assert report.orders_submitted == report.orders_confirmed == 60
    assert report.lost == 0
    # Each order ends one way: baked, refused, or stopped by a fraud hold (which may overtake
    # the oven, or the kitchen's decision itself); the refused and the stopped are refunded.
    assert report.ready + report.rejected + report.cancelled == report.orders_confirmed
    assert report.ready <= report.accepted <= report.orders_confirmed - report.rejected
    assert report.receipts_emailed == report.orders_confirmed
    assert report.refunds_issued == report.rejected + report.cancelled
    assert report.rejected > 0
    assert report.refund_notices_emailed == report.refunds_issued
    assert report.dlq_records == report.malformed_injected == 5
    # Every order enriched exactly once, with all three scores.
    assert report.enriched == report.enriched_records == report.orders_confirmed
    assert report.degraded_scores == 0
    # Every record the shop wrote is registry-framed; only the injected garbage is not.
    assert report.schema_registry == schema_registry_url
    assert report.registry_framed_records >= 4 * report.orders_confirmed
    assert report.plain_records == report.malformed_injected
